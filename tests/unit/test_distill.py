"""Distillation runs on a tiny random teacher: online, offline cache, on-policy, sequence-level; bad inputs."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from typer.testing import CliRunner

from slmkit.cli import app
from slmkit.distill.stage import DistillConfig, build_teacher_cache, distill
from slmkit.errors import SlmError
from tests.conftest import make_tiny_model_dir, make_tiny_tokenizer, tiny_config, write_tiny_csv


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """A run folder with the data stage done on 40 rows of the tiny intent router."""
    from slmkit.data import prepare
    from slmkit.runs import RunDir

    tmp = tmp_path_factory.mktemp("distill")
    csv = write_tiny_csv(tmp)
    cfg = tiny_config(tmp, tiny_model_dir, csv)
    run_dir = RunDir.of(cfg).root
    prepare(cfg, run_dir / "data")
    return cfg, run_dir, tmp


def _dcfg(teacher, **kw) -> DistillConfig:
    base = {
        "teacher": str(teacher),
        "student": {"prune": {"layers": 1}},
        "alpha": 0.0,
        "top_k": 16,
        "train": {
            "max_steps": 16,
            "batch_size": 4,
            "lr": 2e-2,
            "logging_steps": 1,
            "save_steps": 100,
            "warmup_ratio": 0.0,
            "lr_scheduler": "constant",
        },
    }
    for k, v in kw.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return DistillConfig.model_validate(base)


def _kd_dropped(summary, run_dir):
    hist = [json.loads(line) for line in (run_dir / "distill" / "log.jsonl").read_text().splitlines()]
    hist = [h for h in hist if not h["on_policy"]]  # KD on the student's own samples is not comparable step to step
    start, end = sum(h["kd"] for h in hist[:4]) / 4, sum(h["kd"] for h in hist[-4:]) / 4
    return end < 0.9 * start, (start, end)


@pytest.mark.parametrize(
    "mode,loss,positions",
    [
        ("online", "forward_kl", "assistant"),
        ("offline", "jsd", "assistant"),
        ("on_policy", "reverse_kl", "assistant"),
        ("offline", "forward_kl", "all"),
    ],
)
def test_modes_lower_the_kd_loss(run, tiny_model_dir, mode, loss, positions):
    from transformers import AutoModelForCausalLM

    cfg, run_dir, _ = run
    dcfg = _dcfg(
        tiny_model_dir,
        mode=mode,
        loss=loss,
        lmbda=0.5,
        max_new_tokens=6,
        kd_positions=positions,
        alpha=0.3 if positions == "all" else 0.0,  # "all": CE on the reply subset of the KD positions
        cache_dir=str(run_dir / "distill" / f"cache-{positions}"),
    )  # a cache is keyed by its positions
    summary = distill(cfg, run_dir, dcfg, show_progress=False)
    dropped, values = _kd_dropped(summary, run_dir)
    assert dropped, values
    out = run_dir / "distill"
    assert (out / "loss.png").is_file() and (out / "student_init" / "config.json").is_file()
    student = AutoModelForCausalLM.from_pretrained(str(out / "final"))
    assert student.config.num_hidden_layers == 1
    if mode == "offline":
        assert summary["cache_bytes_per_token"] > 16 * 6
        manifest = json.loads((out / f"cache-{positions}" / "manifest.json").read_text())
        assert manifest["key"]["positions"] == positions
        if positions == "all":  # every real next-token position is cached, prompt included: far more than the replies
            assert manifest["tokens"] > 3 * summary["train_rows"] * 2
    if mode == "on_policy":
        assert 0 < summary["on_policy_steps"] < summary["steps"]


def test_interrupted_cache_build_resumes(run, tiny_model_dir):
    cfg, run_dir, tmp = run
    dcfg = _dcfg(tiny_model_dir, mode="offline", cache_dir=str(tmp / "cache2"), cache_shard_rows=8)

    def interrupt(index):
        if index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_teacher_cache(cfg, run_dir, dcfg, show_progress=False, on_shard=interrupt)
    manifest = json.loads((tmp / "cache2" / "manifest.json").read_text())
    assert [s["index"] for s in manifest["shards"]] == [0, 1] and not manifest["complete"]
    seen = []
    summary = build_teacher_cache(cfg, run_dir, dcfg, show_progress=False, on_shard=seen.append)
    assert seen == list(range(2, summary["shards"])) and summary["rows"] > 16


def test_cache_from_another_teacher_is_refused(run, tiny_model_dir):
    cfg, run_dir, tmp = run
    other = make_tiny_model_dir(tmp / "other_teacher", seed=7)
    dcfg = _dcfg(tiny_model_dir, mode="offline", cache_dir=str(tmp / "cache3"))
    build_teacher_cache(cfg, run_dir, dcfg, show_progress=False)
    with pytest.raises(SlmError, match="another teacher"):
        distill(cfg, run_dir, _dcfg(other, mode="offline", cache_dir=str(tmp / "cache3")), show_progress=False)


def test_bad_inputs_are_refused_before_compute(run, tiny_model_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg, run_dir, tmp = run
    big = tmp / "big"
    tok = make_tiny_tokenizer()
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).save_pretrained(big)
    tok.save_pretrained(big)
    with pytest.raises(SlmError, match="larger than teacher"):
        distill(cfg, run_dir, _dcfg(tiny_model_dir, student={"model": str(big), "prune": None}), show_progress=False)
    other_vocab = tmp / "other_vocab"
    make_tiny_model_dir(other_vocab, seed=3)
    t2 = make_tiny_tokenizer()
    t2.add_tokens(["newword"])
    t2.save_pretrained(other_vocab)
    with pytest.raises(SlmError, match="different tokenizers"):
        distill(
            cfg, run_dir, _dcfg(tiny_model_dir, student={"model": str(other_vocab), "prune": None}), show_progress=False
        )
    with pytest.raises(SlmError, match="top_k"):
        distill(
            cfg,
            run_dir,
            _dcfg(tiny_model_dir, mode="offline", top_k=100_000, cache_dir=str(tmp / "c4")),
            show_progress=False,
        )
    with pytest.raises(SlmError, match="no layers"):
        distill(cfg, run_dir, _dcfg(tiny_model_dir, student={"prune": {"ratio": 0.99}}), show_progress=False)
    with pytest.raises(Exception, match="exactly one"):
        DistillConfig.model_validate({"student": {"model": "default", "prune": {"layers": 1}}})


def test_sequence_level_when_tokenizers_differ(run, tiny_model_dir):
    cfg, run_dir, tmp = run
    other_vocab = tmp / "seq_student"
    make_tiny_model_dir(other_vocab, seed=4)
    t2 = make_tiny_tokenizer()
    t2.add_tokens(["newword"])
    t2.save_pretrained(other_vocab)
    summary = distill(
        cfg,
        run_dir,
        _dcfg(
            tiny_model_dir,
            student={"model": str(other_vocab), "prune": None},
            tokenizer_mismatch="sequence",
            max_new_tokens=4,
            train={"max_steps": 2},
        ),
        show_progress=False,
    )
    assert summary["sequence_level"] and summary["steps"] == 2 and summary["final_loss"] > 0


def test_cli_cache_then_offline_distill(run, tiny_model_dir):
    cfg, run_dir, tmp = run
    conf = tmp / "build.yaml"
    dump = cfg.model_dump(mode="json")
    dump.pop("config_dir")
    dump["distill"] = _dcfg(
        tiny_model_dir, mode="offline", cache_dir=str(tmp / "cli_cache"), train={"max_steps": 3}
    ).model_dump(mode="json")
    dump["stages"] = ["data", "distill"]
    conf.write_text(yaml.safe_dump(dump))
    runner = CliRunner()
    res = runner.invoke(app, ["data", str(conf)])  # `slm distill` needs the data stage done for this config
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["distill-cache", str(conf), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "bytes/token" in res.output
    res = runner.invoke(app, ["distill", str(conf), "--no-progress", "--set", "distill.alpha=0.5"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((run_dir / "distill" / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["config"]["alpha"] == 0.5
    # the same stage, the same fingerprint: `slm build` of that config finds distill done and skips it
    res = runner.invoke(app, ["build", str(conf), "--no-progress", "--set", "distill.alpha=0.5"])
    assert res.exit_code == 0, res.output
    assert re.search(r"distill\s+skipped", res.output) and re.search(r"data\s+skipped", res.output), res.output
    assert json.loads((run_dir / "distill" / "manifest.json").read_text())["finished"] == manifest["finished"]
    res = runner.invoke(app, ["distill", str(conf), "--set", "distill.loss=kl"])
    assert isinstance(res.exception, SlmError) and "distill.loss" in str(res.exception)
    assert torch.isfinite(torch.tensor(manifest["summary"]["final_loss"]))


def test_kd_mask_positions():
    from slmkit.distill.kd_losses import kd_mask

    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, 6, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert kd_mask(labels, mask, "assistant").tolist() == [[False, True, True, False], [True, True, False, False]]
    assert kd_mask(labels, mask, "all").tolist() == [[True, True, True, True], [True, True, False, False]]
    with pytest.raises(ValueError):
        kd_mask(labels, mask, "some")


@pytest.mark.parametrize("positions", ["assistant", "all"])
def test_offline_step_loss_fused_head_equals_generic_path(tiny_model_dir, positions, monkeypatch):
    """The fused head + top-k forward KL gives the generic autograd path's loss and gradients on a real batch."""
    import slmkit.distill.stage as distill_mod
    from slmkit.distill.kd_losses import kd_mask, labelled_logits, log_probs
    from slmkit.distill.prune import load_full_model
    from slmkit.encoding import collate, encode_chat

    model, tok = load_full_model(str(tiny_model_dir))
    rows = [
        [{"role": "user", "content": f"book a table for {n}"}, {"role": "assistant", "content": "restaurant booking"}]
        for n in ("two", "four people tonight")
    ]
    batch = collate([encode_chat(tok, m, 64) for m in rows], tok.pad_token_id)
    keep = kd_mask(batch["labels"], batch["attention_mask"], positions)
    with torch.no_grad():  # the "teacher": the same model, perturbed logits
        t = log_probs(labelled_logits(model, batch["input_ids"], batch["attention_mask"], keep) * 1.5)
    vals, ids = t.topk(8, -1)
    cached = (ids, vals.half(), (1 - vals.exp().sum(-1)).clamp_min(0))
    dcfg = DistillConfig.model_validate(
        {"teacher": "x", "student": {"model": "y"}, "alpha": 0.3, "temperature": 2.0, "kd_positions": positions}
    )
    grads, losses, fused_calls = [], [], []
    real_head = distill_mod.topk_forward_kl_head
    monkeypatch.setattr(distill_mod, "topk_forward_kl_head", lambda *a: fused_calls.append(1) or real_head(*a))
    real_fusable = distill_mod._fusable
    for fused in (True, False):
        monkeypatch.setattr(distill_mod, "_fusable", real_fusable if fused else (lambda found, d: False))
        model.zero_grad(set_to_none=True)
        loss, kd = distill_mod.step_loss(model, batch, dcfg, cached=cached)
        loss.backward()
        losses.append((float(loss.detach()), kd))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert fused_calls == [1]  # the first pass took the fused path, the second the generic one
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4) and grads[0].abs().sum() > 0
