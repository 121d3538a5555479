"""The whole pipeline in-process on a tiny random llama: stages, skips, export check, registry."""

from __future__ import annotations

import pytest
import torch

from slmkit.errors import SlmError
from slmkit.runs import get_model, read_manifest
from tests.conftest import read_json, tiny_config


def test_build_runs_every_stage_then_skips(tmp_path, tiny_model_dir, tiny_csv):
    from slmkit.pipeline import build
    from slmkit.runs import RunDir

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv)
    outcomes = build(cfg, show_progress=False)
    assert [(o.stage, o.status) for o in outcomes] == [
        ("data", "ran"),
        ("train", "ran"),
        ("eval", "ran"),
        ("export", "ran"),
    ]
    run = RunDir.of(cfg).root
    for stage in ("data", "train", "eval", "export"):
        assert read_manifest(run, stage)["status"] == "done"
    metrics = read_json(run / "eval" / "metrics.json")
    assert set(metrics["models"]) == {"base", "trained"}
    assert metrics["n"] == len((run / "data" / "test.jsonl").read_text().splitlines())
    assert 0.0 <= metrics["models"]["trained"]["accuracy"] <= 1.0
    merged = run / "export" / "merged"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "generation_config.json"):
        assert (merged / name).is_file(), name
    assert read_json(merged / "slmkit.json")["verify"]["max_abs_diff"] < 1e-3
    card = (merged / "README.md").read_text()
    assert "sha256" in card and "accuracy" in card
    assert get_model("tiny")["path"] == str(merged.resolve())

    again = build(cfg, show_progress=False)
    assert [o.status for o in again] == ["skipped"] * 4
    # A changed train setting reruns train and everything after it, but not data.
    cfg.train.lr = 5e-3
    third = build(cfg, show_progress=False)
    assert [o.status for o in third] == ["skipped", "ran", "ran", "ran"]


def test_merged_export_matches_adapter_logits(tmp_path, tiny_model_dir, tiny_csv):
    from transformers import AutoModelForCausalLM

    from slmkit.export.merge import prompt_logits
    from slmkit.models import load_model, load_tokenizer
    from slmkit.pipeline import build
    from slmkit.runs import RunDir

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv)
    build(cfg, show_progress=False)
    run = RunDir.of(cfg).root
    tok = load_tokenizer(run / "train" / "final")
    with_adapter = load_model(tiny_model_dir, adapter=run / "train" / "final")
    merged = AutoModelForCausalLM.from_pretrained(run / "export" / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    a, m, b = prompt_logits(with_adapter, tok), prompt_logits(merged, tok), prompt_logits(base, tok)
    assert torch.allclose(a, m, atol=1e-4)
    assert not torch.allclose(a, b, atol=1e-3)  # training changed the model, so the check above means something


def test_stage_without_upstream_is_refused(tmp_path, tiny_model_dir, tiny_csv):
    from slmkit.pipeline import fingerprints, run_stage
    from slmkit.runs import RunDir

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv)
    with pytest.raises(SlmError, match="needs stage 'data'"):
        run_stage(cfg, RunDir.of(cfg).root, "train", fingerprints(cfg))


def test_failed_stage_is_not_done_and_downstream_refuses(tmp_path, tiny_model_dir, tiny_csv):
    from slmkit.pipeline import build
    from slmkit.runs import RunDir

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv, lora={"target_modules": ["nope"]})
    with pytest.raises(SlmError, match="nope"):
        build(cfg, show_progress=False)
    run = RunDir.of(cfg).root
    assert read_manifest(run, "data")["status"] == "done"
    assert read_manifest(run, "train")["status"] == "failed"
    assert not (run / "train" / "final").exists() and not (run / "eval").exists()


def test_build_with_distill_stage_ships_the_student(tmp_path, tiny_model_dir, tiny_csv):
    """data -> train (teacher) -> distill (pruned student) -> eval (teacher and student) -> export (student)."""
    from transformers import AutoConfig

    from slmkit.pipeline import build
    from slmkit.runs import RunDir

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv)
    cfg = cfg.model_copy(
        update={"stages": ["export", "distill", "data", "train", "eval"]}
    )  # any order: run canonically
    cfg = type(cfg).model_validate(
        cfg.model_dump()
        | {
            "distill": {
                "student": {"prune": {"ratio": 0.5, "calibration_rows": 8}},
                "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "save_steps": 100, "logging_steps": 1},
            }
        }
    )
    outcomes = build(cfg, show_progress=False)
    assert [o.stage for o in outcomes] == ["data", "train", "distill", "eval", "export"]
    run = RunDir.of(cfg).root
    assert RunDir.of(cfg).final_model == run / "distill" / "final"
    assert read_manifest(run, "distill")["summary"]["steps"] == 3
    metrics = read_json(run / "eval" / "metrics.json")
    assert {"trained", "student"} <= set(metrics["models"])
    teacher_layers = AutoConfig.from_pretrained(tiny_model_dir).num_hidden_layers
    exported = AutoConfig.from_pretrained(run / "export" / "merged")
    assert exported.num_hidden_layers == teacher_layers // 2  # the export is the student, not the teacher
    assert get_model("tiny")["path"] == str((run / "export" / "merged").resolve())
    # A changed distill setting reruns distill, eval and export, not the teacher's training.
    cfg.distill.train.lr = 5e-3
    again = build(cfg, show_progress=False)
    assert [(o.stage, o.status) for o in again] == [
        ("data", "skipped"),
        ("train", "skipped"),
        ("distill", "ran"),
        ("eval", "ran"),
        ("export", "ran"),
    ]


def test_build_with_synth_stage_feeds_teacher_rows_through_cleaning(tmp_path, tiny_model_dir):
    """synth (local teacher) -> data: the teacher's rows are cleaned and split like real rows, meta.synthetic kept."""
    from slmkit.config import load_config
    from slmkit.io import read_jsonl
    from slmkit.pipeline import build, plan
    from slmkit.runs import RunDir

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "".join(f"question number {i} about the weather\n" for i in range(12)) + "my email is jane.doe@example.com\n"
    )
    cfg = load_config(
        None,
        {
            "name": "syn",
            "output_dir": str(tmp_path / "runs"),
            "config_dir": str(tmp_path),
            "stages": ["synth", "data"],
            "model": {"base_model": str(tiny_model_dir)},
            "data": {"task": "generation", "split": {"val": 0.1, "test": 0.1}},
            "synth": {
                "cache": "run",
                "license": "apache-2.0",
                "teacher": {
                    "backend": "local",
                    "model": str(tiny_model_dir),
                    "max_tokens": 6,
                    "temperature": 0.0,
                    "api_key_env": None,
                },
                "recipes": [{"type": "respond", "prompts": "prompts.txt"}],
            },
        },
        environ={},
    )
    p = plan(cfg)
    assert p["synth"]["calls"] == 13 and p["synth"]["cached"] == 0 and "rows" not in p
    outcomes = build(cfg, show_progress=False)
    assert [(o.stage, o.status) for o in outcomes] == [("synth", "ran"), ("data", "ran")]
    run = RunDir.of(cfg).root
    rows = [r for s in ("train", "val", "test") for r in read_jsonl(run / "data" / f"{s}.jsonl")]
    assert 0 < len(rows) <= 13
    assert all(r["meta"]["synthetic"]["recipe"] == "respond" and r["meta"]["license"] == "apache-2.0" for r in rows)
    users = " ".join(m["content"] for r in rows for m in r["messages"] if m["role"] == "user")
    assert "jane.doe@example.com" not in users and "my email is [EMAIL]" in users  # redacted, not dropped
    assert plan(cfg)["synth"]["cached"] == 13
    assert [o.status for o in build(cfg, show_progress=False)] == ["skipped", "skipped"]
