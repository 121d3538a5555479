"""The whole pipeline in-process on a tiny random llama: stages, skips, export check, registry."""

from __future__ import annotations

import pytest
import torch

from slmkit.errors import SlmError
from slmkit.runs import get_model, read_manifest
from tests.conftest import read_json, tiny_config


def test_build_runs_every_stage_then_skips(tmp_path, tiny_model_dir, tiny_csv):
    from slmkit.pipeline import build, run_dir_of

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv)
    outcomes = build(cfg, show_progress=False)
    assert [(o.stage, o.status) for o in outcomes] == [("data", "ran"), ("train", "ran"), ("eval", "ran"), ("export", "ran")]
    run = run_dir_of(cfg)
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
    from slmkit.pipeline import build, run_dir_of

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv)
    build(cfg, show_progress=False)
    run = run_dir_of(cfg)
    tok = load_tokenizer(run / "train" / "final")
    with_adapter = load_model(tiny_model_dir, adapter=run / "train" / "final")
    merged = AutoModelForCausalLM.from_pretrained(run / "export" / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    a, m, b = prompt_logits(with_adapter, tok), prompt_logits(merged, tok), prompt_logits(base, tok)
    assert torch.allclose(a, m, atol=1e-4)
    assert not torch.allclose(a, b, atol=1e-3)  # training changed the model, so the check above means something


def test_stage_without_upstream_is_refused(tmp_path, tiny_model_dir, tiny_csv):
    from slmkit.pipeline import fingerprints, run_dir_of, run_stage

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv)
    with pytest.raises(SlmError, match="needs stage 'data'"):
        run_stage(cfg, run_dir_of(cfg), "train", fingerprints(cfg))


def test_failed_stage_is_not_done_and_downstream_refuses(tmp_path, tiny_model_dir, tiny_csv):
    from slmkit.pipeline import build, run_dir_of

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv, lora={"target_modules": ["nope"]})
    with pytest.raises(SlmError, match="nope"):
        build(cfg, show_progress=False)
    run = run_dir_of(cfg)
    assert read_manifest(run, "data")["status"] == "done"
    assert read_manifest(run, "train")["status"] == "failed"
    assert not (run / "train" / "final").exists() and not (run / "eval").exists()
