"""Validation-driven training: the val metric on a schedule, the best weights kept, early stop on a plateau."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from slmkit.train.validate import Validator
from tests.conftest import tiny_config


def _validator(every=None, patience=3) -> Validator:
    return Validator(
        prompts=[[{"role": "user", "content": "x"}]],
        refs=["a"],
        task="classification",
        max_new_tokens=4,
        batch_size=1,
        every=every,
        patience=patience,
    )


def test_auto_interval_keeps_validation_under_a_tenth_of_training():
    v = _validator()
    assert v.due(10, 100) and not v.due(9, 100) and v.due(100, 100)  # first at 10% of the run, always at the end
    v.record(10, 0.2, seconds=2.0, total_steps=100, step_seconds=1.0)  # 100 s of training, 2 s a validation
    assert v.every == 20  # 5 validations x 2 s = 10 s = 10% of 100 s
    assert v.due(40, 100) and not v.due(50, 100)


def test_ties_go_to_the_later_step_and_only_gains_reset_patience():
    v = _validator(every=5, patience=2)
    assert v.record(5, 0.2, 1, 100, 1)  # first: best
    assert v.record(10, 0.5, 1, 100, 1)  # gain
    assert v.record(15, 0.5, 1, 100, 1)  # tie: the later step becomes the best, but it is no gain
    assert v.best == {"step": 15, "value": 0.5} and v.since_best == 1 and not v.should_stop
    assert not v.record(20, 0.4, 1, 100, 1)  # worse: kept step 15
    assert v.best["step"] == 15 and v.should_stop


def test_no_early_stop_before_the_metric_has_moved():
    v = _validator(every=5, patience=2)
    for step in (5, 10, 15, 20):
        v.record(step, 0.0, 1, 100, 1)
    assert v.since_best == 3 and not v.should_stop and v.best["step"] == 20


def test_training_stops_on_a_plateau_and_keeps_the_best_weights(tmp_path, tiny_model_dir, tiny_csv, monkeypatch):
    from slmkit.data import prepare
    from slmkit.runs import RunDir
    from slmkit.train import validate
    from slmkit.train.stage import run as train

    scores = iter([0.1, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5])  # best at the 2nd validation, then a plateau below it
    monkeypatch.setattr(validate.Validator, "score", lambda self, model, tok, autocast: next(scores))
    cfg = tiny_config(
        tmp_path, tiny_model_dir, tiny_csv, max_steps=20, eval_steps=2, early_stopping_patience=3, dtype="float32"
    )
    run = RunDir.of(cfg).root
    prepare(cfg, run / "data")
    summary = train(cfg, run, show_progress=False)
    assert [h["step"] for h in summary["val_history"]] == [2, 4, 6, 8, 10]
    assert summary["early_stopped_at"] == 10 and summary["steps"] == 10 and summary["planned_steps"] == 20
    assert summary["best_step"] == 4 and summary["best_val"] == 0.6 and summary["kept"] == "best"
    assert summary["val_metric"] == "accuracy" and summary["val_rows"] > 0
    best = load_file(run / "train" / "best" / "adapter_model.safetensors")
    final = load_file(run / "train" / "final" / "adapter_model.safetensors")
    assert best.keys() == final.keys() and all(torch.equal(best[k], final[k]) for k in best)
    assert (run / "train" / "val.png").read_bytes()[:4] == b"\x89PNG"
    history = [json.loads(ln) for ln in (run / "train" / "log.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 10
    from slmkit.eval.report import read_val_series, render_report

    (run / "train" / "manifest.json").write_text(json.dumps({"summary": summary}))
    series = read_val_series({"tiny": run})
    assert series == {"tiny val accuracy": [(h["step"], h["value"]) for h in summary["val_history"]]}
    html = render_report(
        {"task": "classification", "n": 1, "models": {"trained": {"accuracy": 1.0}}}, [], val_series=series
    )
    assert "Validation during training" in html and "alt='validation metric curves'" in html


def test_eval_steps_null_turns_validation_off(tmp_path, tiny_model_dir, tiny_csv):
    from slmkit.data import prepare
    from slmkit.runs import RunDir
    from slmkit.train.stage import run as train

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv, max_steps=3, eval_steps=None)
    run = RunDir.of(cfg).root
    prepare(cfg, run / "data")
    summary = train(cfg, run, show_progress=False)
    assert "val_history" not in summary and summary["steps"] == 3 and not (run / "train" / "best").exists()


@pytest.mark.parametrize("bad", [{"eval_steps": 0}, {"eval_max_rows": 0}, {"early_stopping_patience": 0}])
def test_bad_validation_settings_are_refused(tmp_path, tiny_model_dir, tiny_csv, bad):
    from slmkit.errors import SlmError

    with pytest.raises(SlmError, match="train."):
        tiny_config(tmp_path, tiny_model_dir, tiny_csv, **bad)


def test_carved_val_rows_are_seeded_capped_and_order_free():
    from slmkit.config import TrainConfig
    from slmkit.train.validate import carve_val

    rows = [{"id": f"r{i}", "n": i} for i in range(300)]
    t_cfg = TrainConfig(eval_max_rows=64)
    train, val = carve_val(rows, t_cfg, seed=0)
    assert len(val) == 30 and len(train) == 270 and {r["n"] for r in train} | {r["n"] for r in val} == set(range(300))
    _, val_rev = carve_val(rows[::-1], t_cfg, seed=0)
    assert sorted(r["n"] for r in val_rev) == sorted(r["n"] for r in val)  # the same rows whatever the order
    assert {r["n"] for r in carve_val(rows, t_cfg, seed=1)[1]} != {r["n"] for r in val}
    assert len(carve_val(rows * 10, t_cfg, seed=0)[1]) == 64  # capped at eval_max_rows
    assert carve_val(rows[:10], t_cfg, seed=0) == (rows[:10], [])  # too few rows to spare any
    assert carve_val(rows, TrainConfig(eval_steps=None), seed=0) == (rows, [])  # validation off


def test_no_val_split_holds_train_rows_out_and_says_so(tmp_path, tiny_model_dir, tiny_csv, caplog):
    from slmkit.data import prepare
    from slmkit.io import read_jsonl
    from slmkit.runs import RunDir
    from slmkit.train.stage import run as train

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv, max_steps=3, eval_steps=3, dtype="float32")
    cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"split": cfg.data.split.model_copy(update={"val": 0.0})})}
    )
    run = RunDir.of(cfg)
    prepare(cfg, run.data_dir)
    assert not read_jsonl(run.split("val"))
    all_train = read_jsonl(run.split("train"))
    with caplog.at_level("WARNING", logger="slmkit"):
        summary = train(cfg, run.root, show_progress=False)
    held = read_jsonl(run.root / "train" / "val.jsonl")
    assert held and summary["val_rows"] == len(held) and summary["val_source"].endswith("val.jsonl")
    assert summary["train_rows"] == len(all_train) - len(held) and summary["val_history"]
    assert {r["id"] for r in held} <= {r["id"] for r in all_train}
    assert any("no val split" in r.message and "held out" in r.message for r in caplog.records)
