"""The budgeted recipe search (`slm tune`, train.search): budgets, trial planning, a search on the tiny model, its
outputs, the build path, and resuming after kill -9 without rerunning finished trials."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmkit.errors import SlmError
from slmkit.train import budget
from tests.conftest import ROOT

SPACE = {"epochs": None, "steps": [2, 8]}  # tiny trials: a few steps each
needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="optuna (slmkit[tune]) missing")


def lora_score(self, model, tok, autocast) -> float:
    """A stand-in val metric that moves with training (a random tiny model never gets an answer right): the size of
    the trained LoRA B matrices, rounded so that two processes agree on it."""
    return round(float(sum(p.detach().abs().sum() for n, p in model.named_parameters() if "lora_B" in n)), 3)


def _overrides(tmp_path: Path, model_dir: Path, csv: Path, **search) -> dict:
    return {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "model": {"base_model": str(model_dir)},
        "data": {
            "path": str(csv),
            "system_prompt": "classify request reply with one intent",
            "split": {"val": 0.1, "test": 0.2},
        },
        "train": {"batch_size": 4, "logging_steps": 1, "search": {"trials": 3, "space": SPACE, **search}},
        "eval": {"max_new_tokens": 4, "batch_size": 8},
    }


def _prepared(tmp_path, model_dir, csv, **search):
    from slmkit.config import load_config
    from slmkit.data import prepare
    from slmkit.runs import RunDir, stage_manifest

    cfg = load_config(None, _overrides(tmp_path, model_dir, csv, **search), environ={})
    run = RunDir.of(cfg)
    with stage_manifest(run.root, "data", "fp", {}, {}) as summary:  # `slm tune` wants the data stage done
        summary.update(prepare(cfg, run.data_dir))
    return cfg, run


def _trials(run) -> list[dict]:
    from slmkit.train.trials import read_trials

    return read_trials(run.root / "tune" / "trials.jsonl")


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("45m", 2700),
        ("1h30m", 5400),
        ("90s", 90),
        ("2h", 7200),
        ("1.5h", 5400),
        ("10", 600),
        ("2m30s", 150),
        (" 5 min ", 300),
    ],
)
def test_budget_durations(text, seconds):
    assert budget.parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "m", "0m", "-5m"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(SlmError, match="--budget"):
        budget.parse_budget(text)


def test_durations_print_back():
    assert [budget.fmt_duration(s) for s in (2700, 5400, 90, 12.3)] == ["45m", "1h30m", "1m30s", "13s"]
    assert budget.round_up_minutes(61) == "2m" and budget.round_up_minutes(40.2) == "41s"


def test_trial_costs_and_the_row_plan():
    from slmkit.config import TrainConfig

    t_cfg = TrainConfig(batch_size=8)
    space = t_cfg.search.space  # epochs 1..4, balance off/cap/oversample
    speed = budget.Speed.measure([{"wall_s": 12, "train_s": 8, "tokens": 800, "val_s": 2, "n_val": 1}])
    assert (speed.tokens_per_s, speed.setup_s, speed.val_s) == (100, 2, 2)
    modes = {"off": 800, "cap": 500, "oversample": 1200}
    assert budget.step_range(space, t_cfg, modes) == (63, 600)  # 1 epoch of cap .. 4 epochs of oversample
    assert budget.eval_every(63, 600) == 75  # <= 8 validations in the longest trial
    worst, steps = budget.worst_trial_seconds(speed, space, t_cfg, modes, tokens_per_row=50)
    assert steps == 600 and worst == pytest.approx(2 + 600 * 8 * 50 / 100 + 8 * 2)
    rows = budget.plan_rows(300, speed, space, t_cfg, modes, 50, floor=16)
    scaled = {m: -(-n * rows // 800) for m, n in modes.items()}
    assert 16 < rows < 800 and budget.worst_trial_seconds(speed, space, t_cfg, scaled, 50)[0] <= 300
    assert budget.plan_rows(1e9, speed, space, t_cfg, modes, 50, floor=16) == 800
    assert budget.plan_rows(1, speed, space, t_cfg, modes, 50, floor=16) == 16


def test_the_final_training_is_capped_to_what_the_budget_has_left():
    from slmkit.config import TrainConfig

    speed = budget.Speed(tokens_per_s=100.0, setup_s=10.0, val_s=2.0)
    t_cfg = TrainConfig(batch_size=8, epochs=4)  # 800 rows: 100 steps an epoch, 400 in all
    step_s = 8 * 50 / 100 * (1 + budget.FINAL_VAL_SHARE)  # 4.4 s a step with its share of validation
    free = budget.final_steps(speed, t_cfg, 800, 50, left_s=10 + 400 * step_s + 1)
    assert free["steps"] == free["natural_steps"] == 400 and not free["capped"] and free["max_steps"] is None
    tight = budget.final_steps(speed, t_cfg, 800, 50, left_s=10 + 100 * step_s + 1)
    assert (tight["steps"], tight["capped"], tight["max_steps"]) == (100, True, 100)
    assert tight["estimated_s"] == pytest.approx(10 + 100 * step_s)
    assert budget.final_steps(speed, t_cfg, 800, 50, left_s=0, floor=30)["steps"] == 30  # the best trial's steps
    assert budget.final_steps(speed, t_cfg, 800, 50, left_s=None)["max_steps"] is None  # final_share: null


def test_best_config_carries_the_cap():
    from slmkit.config import load_config
    from slmkit.train.trials import best_config

    cfg = load_config(None, {"train": {"search": {"enabled": True}}}, environ={})
    capped = best_config(cfg, {"lr": 1e-3, "epochs": 3}, {"max_steps": 42, "epochs": None})
    assert (capped.train.lr, capped.train.epochs, capped.train.max_steps) == (1e-3, 3.0, 42)
    longer = best_config(cfg, {"lr": 1e-3, "epochs": 1}, {"max_steps": None, "epochs": 4.0})
    assert (longer.train.epochs, longer.train.max_steps) == (4.0, None)
    assert not capped.train.search.enabled and best_config(cfg, {"epochs": 3}).train.max_steps is None


def test_the_config_s_recipe_as_trial_parameters_is_clamped_into_the_space():
    from slmkit.config.train import SearchSpace, TrainConfig
    from slmkit.train.trials import config_params

    train = TrainConfig(lr=1e-2, epochs=2.6, lora={"r": 12, "alpha": 48}, balance="cap")
    p = config_params(train, SearchSpace())
    assert p == {"lr": 2e-3, "epochs": 3, "lora_r": 8, "alpha_multiplier": 2, "balance": "cap"}
    space = SearchSpace(lr=[1e-4, 1e-3], epochs=None, steps=[10, 100], lora_r=[32], alpha_multiplier=None, balance=None)
    assert config_params(TrainConfig(lr=5e-5, max_steps=500), space) == {"lr": 1e-4, "steps": 100, "lora_r": 32}
    assert "steps" not in config_params(TrainConfig(), space)  # no max_steps: the sampler picks the steps
    assert config_params(TrainConfig(method="full", epochs=0.3), SearchSpace()) == {
        "lr": 2e-4,
        "epochs": 1,
        "balance": "off",
    }


def test_search_space_is_validated():
    from slmkit.config import load_config

    with pytest.raises(SlmError, match="space"):
        load_config(None, {"train": {"search": {"space": {"steps": [10, 100]}}}}, environ={})  # epochs set too
    with pytest.raises(SlmError, match="space"):
        load_config(None, {"train": {"search": {"space": {"lr": [1e-3, 1e-4]}}}}, environ={})


def test_the_validation_hook_sees_every_validation_and_can_stop_the_run(tmp_path, tiny_model_dir, tiny_csv):
    from slmkit.train.stage import fine_tune

    cfg, run = _prepared(tmp_path, tiny_model_dir, tiny_csv)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 6, "eval_steps": 2})})
    seen = []
    summary = fine_tune(
        cfg, run, show_progress=False, on_validation=lambda step, v: seen.append((step, v)) or step >= 4
    )
    assert [s for s, _ in seen] == [2, 4] and summary["pruned_at"] == 4 and summary["steps"] == 4
    assert summary["planned_steps"] == 6 and [h["step"] for h in summary["val_history"]] == [2, 4]
    assert "pruned_at" not in fine_tune(cfg, run, show_progress=False, on_validation=lambda step, v: step >= 6)


@needs_optuna
def test_a_budget_too_small_for_one_trial_names_the_minimum(tmp_path, tiny_model_dir, tiny_csv):
    from slmkit.train.search import search
    from slmkit.train.stage import fine_tune

    cfg, run = _prepared(tmp_path, tiny_model_dir, tiny_csv)
    with pytest.raises(SlmError, match=r"too small for one trial.*the minimum is \d+s") as e:
        search(cfg, run, fine_tune, budget_s=0.5)
    assert "--budget" in e.value.hint and not _trials_exist(run)


def _trials_exist(run) -> bool:
    return (run.root / "tune" / "trials.jsonl").is_file()


@needs_optuna
def test_search_writes_best_config_and_trials_and_a_rerun_adds_nothing(tmp_path, tiny_model_dir, tiny_csv, monkeypatch):
    from slmkit.config import load_config
    from slmkit.train import validate
    from slmkit.train.search import search
    from slmkit.train.stage import fine_tune

    monkeypatch.setattr(validate.Validator, "score", lora_score)
    cfg, run = _prepared(tmp_path, tiny_model_dir, tiny_csv)
    t0 = time.monotonic()
    s = search(cfg, run, fine_tune, budget_s=600)
    assert time.monotonic() - t0 < 60
    tune = run.root / "tune"
    assert [t["number"] for t in s["trials"]] == [0, 1, 2] and s["stopped"] == "trials"
    assert {t["state"] for t in s["trials"]} <= {"COMPLETE", "PRUNED"}
    best = max((t for t in s["trials"] if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    assert s["best"] == {k: best[k] for k in ("number", "value", "params")}
    assert set(best["params"]) == {"lr", "steps", "lora_r", "alpha_multiplier", "balance"}
    assert _trials(run) == s["trials"] and (tune / "trials.png").read_bytes()[:4] == b"\x89PNG"
    assert "(best)" in (tune / "trials.md").read_text()
    first = s["trials"][0]  # trial 0 is the config's own recipe (lr, r16 alpha32, balance off); steps are sampled
    assert first["from_config"] and "(your config)" in (tune / "trials.md").read_text()
    assert {k: first["params"][k] for k in ("lr", "lora_r", "alpha_multiplier", "balance")} == {
        "lr": cfg.train.lr,
        "lora_r": 16,
        "alpha_multiplier": 2,
        "balance": "off",
    }
    assert 2 <= first["params"]["steps"] <= 8 and not any(t.get("from_config") for t in s["trials"][1:])
    final = s["final"]  # the final training: the best trial's steps (space.steps), well inside the budget
    assert final["natural_steps"] == final["steps"] == best["params"]["steps"] and not final["capped"]
    assert 0 < final["left_s"] < 600 and s["final_share"] == 0.5
    assert not (tune / "trials" / "0" / "train" / "final").exists()  # trial weights are not kept
    rerun = load_config(tune / "best.yaml", environ={})
    p = best["params"]
    assert rerun.train.lr == p["lr"] and rerun.train.max_steps == p["steps"] and rerun.train.balance == p["balance"]
    assert rerun.train.lora.r == p["lora_r"] and rerun.train.lora.alpha == p["lora_r"] * p["alpha_multiplier"]
    assert not rerun.train.search.enabled and Path(rerun.data.path).is_absolute() and rerun.name == cfg.name

    again = search(cfg, run, fine_tune, budget_s=600)  # the study is done: nothing reruns
    assert again["trials"] == s["trials"] and again["best"] == s["best"]
    more = search(cfg, run, fine_tune, budget_s=600, trials=4)  # a bigger trial count continues the same study
    assert more["trials"][:3] == s["trials"] and len(more["trials"]) == 4


@needs_optuna
def test_build_searches_then_trains_the_best_recipe_and_the_report_shows_the_trials(
    tmp_path, tiny_model_dir, tiny_csv, monkeypatch
):
    from slmkit.eval.report import read_search, render_report
    from slmkit.train import validate
    from slmkit.train.stage import run as train

    monkeypatch.setattr(validate.Validator, "score", lora_score)
    cfg, run = _prepared(tmp_path, tiny_model_dir, tiny_csv, enabled=True, budget_minutes=10)
    summary = train(cfg, run, show_progress=False)
    found = summary["search"]
    p = found["best"]["params"]
    assert summary["steps"] == p["steps"] and summary["balance"]["mode"] == p["balance"]
    adapter = json.loads((run.train_final / "adapter_config.json").read_text())
    assert adapter["r"] == p["lora_r"] and adapter["lora_alpha"] == p["lora_r"] * p["alpha_multiplier"]

    (run.root / "train" / "manifest.json").write_text(json.dumps({"summary": summary}))
    html = render_report(
        {"task": "classification", "n": 1, "models": {"trained": {"accuracy": 1.0}}},
        [],
        search=read_search({"tiny": run.root}),
    )
    assert "Recipe search" in html and html.count("<tr") >= 4 and "alt='recipe search trials'" in html
    assert f"Final training on all {found['final']['rows']} rows: {found['final']['steps']} steps" in html

    from slmkit.config import load_config  # `slm build tune/best.yaml` later: the summary still records the search

    rerun = load_config(run.root / "tune" / "best.yaml", environ={})
    assert train(rerun, run, show_progress=False)["search"]["best"] == found["best"]


def test_tune_command_needs_the_data_stage_done_for_this_config(tmp_path, tiny_model_dir, tiny_csv):
    from typer.testing import CliRunner

    from slmkit.cli import app
    from slmkit.config import load_config
    from slmkit.runs import RunDir, stage_manifest

    over = _overrides(tmp_path, tiny_model_dir, tiny_csv)
    (tmp_path / "c.yaml").write_text(json.dumps(over))
    res = CliRunner().invoke(app, ["tune", str(tmp_path / "c.yaml"), "--budget", "5m"])
    assert isinstance(res.exception, SlmError) and "slm data" in res.exception.hint
    with stage_manifest(RunDir.of(load_config(None, over, environ={})).root, "data", "another-config", {}, {}):
        pass  # a data stage done, but for other data settings
    res = CliRunner().invoke(app, ["tune", str(tmp_path / "c.yaml"), "--budget", "5m"])
    assert isinstance(res.exception, SlmError) and "needs stage 'data' done for this config" in res.exception.message
    res = CliRunner().invoke(app, ["tune", str(tmp_path / "c.yaml"), "--budget", "soon"])
    assert isinstance(res.exception, SlmError) and "not a duration" in res.exception.message


KILL_SCRIPT = """
import json, sys, time
from pathlib import Path
from slmkit.config import load_config
from slmkit.runs import RunDir
from slmkit.train import validate
from slmkit.train.search import search
from slmkit.train.stage import fine_tune
from tests.unit.test_tune import lora_score

validate.Validator.score = lora_score
cfg = load_config(None, json.loads(sys.argv[1]), environ={})
marker = Path(sys.argv[2])

def stalling(cfg, root, **kw):  # trial 1 stops after its second validation, until it is killed
    hook = kw.get("on_validation")
    if Path(root).name == "1" and hook is not None:
        def slow(step, value):
            stop = hook(step, value)
            if step >= 2:
                marker.write_text("trial 1 is running")
                time.sleep(600)
            return stop
        kw["on_validation"] = slow
    return fine_tune(cfg, root, **kw)

search(cfg, RunDir.of(cfg), stalling, budget_s=600)
"""


@needs_optuna
def test_kill_9_mid_search_then_rerun_keeps_finished_trials_and_finds_the_same_best(
    tmp_path, tiny_model_dir, tiny_csv, monkeypatch
):
    import optuna

    from slmkit.train import validate
    from slmkit.train.search import TunePaths, search, study_key
    from slmkit.train.stage import fine_tune

    monkeypatch.setattr(validate.Validator, "score", lora_score)
    # the same search without a kill, in its own folder, for the reference best
    cfg_ref, run_ref = _prepared(tmp_path / "ref", tiny_model_dir, tiny_csv)
    ref = search(cfg_ref, run_ref, fine_tune, budget_s=600)

    cfg, run = _prepared(tmp_path, tiny_model_dir, tiny_csv)
    marker = tmp_path / "stalled"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, json.dumps(_overrides(tmp_path, tiny_model_dir, tiny_csv)), str(marker)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "trial 1 never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    paths = TunePaths.of(run)
    study = optuna.load_study(study_name=study_key(cfg, run), storage=f"sqlite:///{paths.study}")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "RUNNING"] and len(study.trials[1].intermediate_values) == 2
    first = study.trials[0]
    first_log = paths.trial(0) / "train" / "log.jsonl"
    first_mtime = first_log.stat().st_mtime_ns

    resumed = search(cfg, run, fine_tune, budget_s=600)
    rows = resumed["trials"]
    assert [(r["number"], r["state"]) for r in rows][:2] == [(0, "COMPLETE"), (1, "FAIL")]
    assert rows[0]["value"] == first.value and rows[0]["params"] == first.params
    assert first_log.stat().st_mtime_ns == first_mtime  # trial 0 did not run again
    assert rows[2]["params"] == rows[1]["params"] and rows[2]["requeued_from"] == 1  # the killed trial, again
    finished = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    assert [r["number"] for r in finished] == [0, 2, 3]
    ref_finished = [r for r in ref["trials"] if r["state"] in ("COMPLETE", "PRUNED")]
    assert [(r["params"], r["value"], r["state"]) for r in finished] == [
        (r["params"], r["value"], r["state"]) for r in ref_finished
    ]
    assert resumed["best"]["params"] == ref["best"]["params"] and resumed["best"]["value"] == ref["best"]["value"]


@needs_optuna
def test_a_search_without_a_val_split_holds_out_the_rows_the_final_training_will(
    tmp_path, tiny_model_dir, tiny_csv, monkeypatch
):
    from slmkit.config import load_config
    from slmkit.data import prepare
    from slmkit.io import read_jsonl
    from slmkit.runs import RunDir, stage_manifest
    from slmkit.train import validate
    from slmkit.train.stage import run as train

    monkeypatch.setattr(validate.Validator, "score", lora_score)
    over = _overrides(tmp_path, tiny_model_dir, tiny_csv, enabled=True, trials=2, budget_minutes=10)
    over["data"]["split"] = {"val": 0.0, "test": 0.2}
    cfg = load_config(None, over, environ={})
    run = RunDir.of(cfg)
    with stage_manifest(run.root, "data", "fp", {}, {}) as summary:
        summary.update(prepare(cfg, run.data_dir))
    summary = train(cfg, run, show_progress=False)
    trial_val = read_jsonl(run.root / "tune" / "data" / "val.jsonl")
    final_val = read_jsonl(run.root / "train" / "val.jsonl")
    assert trial_val and [r["id"] for r in trial_val] == [r["id"] for r in final_val]
    assert not (run.root / "tune" / "data" / "val.jsonl").is_symlink() and summary["val_rows"] == len(final_val)
    trial_train = {r["id"] for r in read_jsonl(run.root / "tune" / "data" / "train.jsonl")}
    assert not trial_train & {r["id"] for r in trial_val}  # trials never train on what scores them


@needs_optuna
def test_a_search_over_answers_that_never_repeat_runs_without_balance(tmp_path, tiny_model_dir, monkeypatch):
    from slmkit.train import validate
    from slmkit.train.search import search
    from slmkit.train.stage import fine_tune

    monkeypatch.setattr(validate.Validator, "score", lora_score)
    words = ["alpha", "bravo", "delta", "gamma", "kilo", "lima", "oscar", "tango"]
    rows = [f"play {a} by {b},artist: {b}; song: {a}" for a in words for b in words[:5]]  # 40 distinct answers
    csv = tmp_path / "slots.csv"
    csv.write_text("text,output\n" + "\n".join(rows) + "\n")
    cfg, run = _prepared(tmp_path, tiny_model_dir, csv, trials=2, space={**SPACE, "epochs": None})
    s = search(cfg, run, fine_tune, budget_s=600)
    assert len(s["trials"]) == 2 and all("balance" not in t["params"] for t in s["trials"])
    assert s["final"]["rows"] == s["rows_total"]


def test_balance_is_searched_only_when_answers_repeat(tmp_path):
    from slmkit.config import load_config
    from slmkit.io import atomic_write_jsonl
    from slmkit.runs import RunDir
    from slmkit.train.search import _without_idle_balance

    cfg = load_config(None, {"output_dir": str(tmp_path)}, environ={})
    run = RunDir.of(cfg)

    def rows(answers):
        return [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": a}]} for a in answers]

    atomic_write_jsonl(run.split("train"), rows([f"artist: band {i}" for i in range(50)]))  # extraction: all distinct
    assert _without_idle_balance(cfg, run).train.search.space.balance is None
    atomic_write_jsonl(run.split("train"), rows(["yes"] * 40 + ["no"] * 10))
    assert _without_idle_balance(cfg, run).train.search.space.balance == ["off", "cap", "oversample"]


def test_the_final_training_may_use_the_space_s_most_epochs_within_the_budget():
    from types import SimpleNamespace

    from slmkit.config import load_config
    from slmkit.train.search import _final

    cfg = load_config(None, {"train": {"batch_size": 8, "search": {"enabled": True}}}, environ={})  # epochs 1..4
    plan = {"rows_by_mode": {"off": 800, "cap": 500, "oversample": 1200}}
    speed = budget.Speed(tokens_per_s=100.0, setup_s=10.0, val_s=2.0)
    trials = [SimpleNamespace(number=3, user_attrs={"steps": 12, "best_step": 9})]
    best = {"number": 3, "value": 0.5, "params": {"lr": 1e-3, "epochs": 1, "balance": "cap"}}
    roomy = _final(cfg, plan, speed, {"mean_tokens": 50}, trials, best, left_s=1e6)
    assert roomy["epochs"] == 4.0 and roomy["rows"] == 500 and roomy["natural_steps"] == 4 * 63
    assert not roomy["capped"] and roomy["max_steps"] is None
    tight = _final(cfg, plan, speed, {"mean_tokens": 50}, trials, best, left_s=10 + 50 * 4.4 + 1)
    assert tight["capped"] and tight["max_steps"] == 50
    no_time = _final(cfg, plan, speed, {"mean_tokens": 50}, trials, best, left_s=0)
    assert no_time["steps"] == 9  # the best trial's best step, at least
