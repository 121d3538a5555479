"""Budgeted recipe search: `slm tune CONFIG --budget 45m`, or `train.search.enabled: true` inside `slm build`.

An Optuna study over `train.search.space` (lr, epochs or steps, LoRA r and alpha, train.balance): trial 0 is the
train section's own recipe (`start_from_config`: with a handful of trials in a CPU budget, TPE's random startup
trials alone can all land below a sensible config, as XQuAD's one 24-minute trial did), then TPE sampler,
median pruning on the task's val metric, which each trial reports at every validation (a trial is the train
stage's own `fine_tune`, stopped through its `on_validation` hook). The objective is the trial's best val metric.

Budget (search and final training together): the search gets (1 - train.search.final_share) of it. A timed probe
(3 steps, one validation) measures this machine; trials train on as many rows as let ~TARGET_TRIALS of the largest
fit (`train.search.rows: auto`), and start only while the largest trial still fits (speeds re-measured after each).
The final training (`_final`) gets what is left, its steps capped to fit. A budget too small for the probe and one
trial is an SlmError naming the minimum. Time spent by finished trials counts on a rerun.

Resume: the study lives in tune/study.sqlite (one study per search fingerprint: model, train and eval sections and
the data fingerprint, not the budget or trial count). A rerun keeps every finished trial; a trial a kill left
running is marked failed and its parameters queued again, so it reruns first. The sampler is reseeded before each
trial with seed + finished trials, so a resumed search samples what an uninterrupted one would have.

Layout (`TunePaths`: the one place these paths are spelled out; they can move into RunDir later):
    tune/study.sqlite   tune/data/ (train.jsonl: the row subset or a link; links to val.jsonl and the data manifest)
    tune/probe/         tune/trials/<n>/ (trial n as a run folder, data/ -> tune/data; weights deleted after it)
    tune/trials.jsonl   tune/trials.md   tune/trials.png   tune/best.yaml (rerunnable: `slm build tune/best.yaml`)
    tune/summary.json   (what `search` returns)
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from slmkit.config import BuildConfig
from slmkit.errors import SlmError
from slmkit.io import atomic_write_json, atomic_write_jsonl, read_jsonl, sha256_json
from slmkit.runs import RunDir, read_manifest
from slmkit.train import budget
from slmkit.train.balance import answer_key, has_classes, target_counts
from slmkit.train.trials import (
    apply_params,
    best_config,
    config_params,
    drop_weights,
    fmt_params,
    fresh_dir,
    link,
    search_lock,
    trial_rows,
    write_outputs,
)
from slmkit.train.validate import carve_val, has_rows

log = logging.getLogger("slmkit")
PROBE_STEPS = 3
MIN_ROWS = 32  # a trial trains on at least this many rows (or all of them), and on ~4 per distinct answer
MIN_STEPS = 25  # ... and its shortest epochs take at least this many steps: fewer tell lrs apart by noise alone
TrainFn = Callable[..., dict]  # stage.fine_tune(cfg, run_dir, *, show_progress, on_validation) -> summary


@dataclass(frozen=True)
class TunePaths:
    root: Path

    @classmethod
    def of(cls, run_dir) -> TunePaths:
        return cls(RunDir(run_dir).tune_dir)

    study = property(lambda self: self.root / "study.sqlite")
    lock = property(lambda self: self.root / ".lock")
    data = property(lambda self: self.root / "data")
    probe = property(lambda self: self.root / "probe")
    trials_dir = property(lambda self: self.root / "trials")
    current = property(lambda self: self.root / "current.json")
    summary = property(lambda self: self.root / "summary.json")
    best_yaml = property(lambda self: self.root / "best.yaml")

    def trial(self, number: int) -> Path:
        return self.trials_dir / str(number)


def study_key(cfg: BuildConfig, run: RunDir) -> str:
    """Study name: the run name and a hash of what makes trials comparable (not the budget or the trial count)."""
    dump = cfg.model_dump(mode="json")
    train = dict(dump["train"])
    search = {k: v for k, v in train.pop("search").items() if k not in ("enabled", "budget_minutes", "trials")}
    data_fp = (read_manifest(run.root, "data") or {}).get("fingerprint")
    digest = sha256_json(
        {"model": dump["model"], "train": train, "search": search, "eval": dump["eval"], "data": data_fp}
    )
    return f"{cfg.name}-{digest[:12]}"


def tuned_config(cfg: BuildConfig, run_dir, train: TrainFn) -> tuple[BuildConfig, dict]:
    """For `slm build` with train.search.enabled: search (budget from the config), then the best config."""
    found = search(cfg, run_dir, train)
    return best_config(cfg, found["best"]["params"], found["final"]), found


def recorded_search(cfg: BuildConfig, run_dir) -> dict:
    """{"search": tune/summary.json} when this training is the recipe a finished search found (e.g. `slm build
    tune/best.yaml` after `slm tune`), so the train summary and the report show the trials; else {}."""
    path = TunePaths.of(run_dir).summary
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return {"search": found} if found.get("best_train") == cfg.train.model_dump(mode="json") else {}


def search(
    cfg: BuildConfig, run_dir, train: TrainFn, *, budget_s: float | None = None, trials: int | None = None
) -> dict:
    """Run (or resume) the recipe search of cfg.train.search; write tune/ outputs; return the summary. `train` is
    the train stage's `fine_tune` (passed in: the stage imports this module, so this one cannot import it)."""
    try:
        import optuna
    except ImportError:
        raise SlmError(
            "the recipe search needs optuna, which is not installed",
            "pip install 'slmkit[tune]' (or: pip install 'optuna>=4')",
        ) from None

    s_cfg, run, paths = cfg.train.search, RunDir(run_dir), TunePaths.of(run_dir)
    budget_s = s_cfg.budget_minutes * 60 if budget_s is None else budget_s
    search_s = budget_s * (1 - s_cfg.final_share) if s_cfg.final_share is not None else budget_s
    max_trials = trials or s_cfg.trials
    seed = cfg.train.seed if s_cfg.seed is None else s_cfg.seed
    _require_inputs(cfg, run)
    cfg = _without_idle_balance(cfg, run)
    s_cfg = cfg.train.search
    paths.root.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with search_lock(paths.lock, run):
        name = study_key(cfg, run)
        _forget_other_study(paths, name)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{paths.study}", engine_kwargs={"connect_args": {"timeout": 60}}
        )
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
        _requeue_killed(study, storage)
        if s_cfg.start_from_config and not study.trials:  # only in a new study: a resumed one has it already
            study.enqueue_trial(config_params(cfg.train, s_cfg.space), user_attrs={"from_config": True})
        if "probe" not in study.user_attrs:
            study.set_user_attr("probe", _probe(cfg, run, paths, train))
        probe = study.user_attrs["probe"]
        plan, plan_modes = _trial_plan(study, cfg, run, paths, probe, search_s, max_trials, seed)
        # no pruning before two trials finished, nor at a trial's first validation (still warming up)
        study.pruner = optuna.pruners.MedianPruner(
            n_startup_trials=2, n_warmup_steps=plan["eval_steps"] + 1, n_min_trials=2
        )
        stopped = "trials"
        while len(finished := _finished(study)) < max_trials:
            speed = _speed(probe, finished)
            worst, worst_steps = budget.worst_trial_seconds(
                speed, s_cfg.space, cfg.train, plan_modes, probe["mean_tokens"], plan["eval_steps"]
            )
            left = search_s - _spent(study, probe)
            if worst > left:
                if not finished:
                    raise budget.too_small(
                        budget_s, budget_s / search_s, probe["wall_s"], worst, worst_steps, plan["rows"], speed
                    )
                stopped = "budget"
                break
            if "plan" not in study.user_attrs:  # fixed from the first trial on: trials stay comparable
                study.set_user_attr("plan", plan)
            # reseeded per trial: what the next trial samples depends only on the seed and the finished trials, so a
            # resumed search samples what an uninterrupted one would have
            study.sampler = optuna.samplers.TPESampler(seed=seed + len(finished), n_startup_trials=plan["startup"])
            _run_trial(study, cfg, plan, paths, train)
            write_outputs(paths, cfg, study, _summary(study, cfg, paths, plan, probe, budget_s, "running"), plot=False)
        summary = _summary(study, cfg, paths, plan, probe, budget_s, stopped)
        write_outputs(paths, cfg, study, summary, plot=True)
    best = summary["best"]
    if best is None:
        raise SlmError("the recipe search finished no trial", f"see the trials in {paths.root / 'trials.jsonl'}")
    log.info(
        "search: %d trials (%s), best %s %.4f (trial %d: %s) -> %s",
        len(summary["trials"]),
        stopped,
        summary["metric"],
        best["value"],
        best["number"],
        fmt_params(best["params"]),
        paths.best_yaml,
    )
    return summary


def _require_inputs(cfg: BuildConfig, run: RunDir) -> None:
    if not has_rows(p := run.split("train")):
        raise SlmError(f"the recipe search needs {p}", "run `slm data CONFIG` first")
    if cfg.train.eval_steps is None:
        raise SlmError(
            "train.search scores trials by validation, and train.eval_steps is null",
            "set train.eval_steps: auto (the search picks its own interval)",
        )


def _without_idle_balance(cfg: BuildConfig, run: RunDir) -> BuildConfig:
    """cfg without train.balance in the space when the train answers do not repeat (extraction, QA): every mode
    would train on the same rows, and the sampler would spend trials on a no-op dimension."""
    space = cfg.train.search.space
    if not space.balance or has_classes(Counter(answer_key(r) for r in read_jsonl(run.split("train")))):
        return cfg
    log.info("search: train.balance is not searched (the answers do not repeat: there are no classes to balance)")
    dump = cfg.model_dump()
    dump["train"]["search"]["space"]["balance"] = None
    return BuildConfig.model_validate(dump)


def _trial_plan(
    study, cfg: BuildConfig, run: RunDir, paths: TunePaths, probe: dict, budget_s: float, max_trials: int, seed: int
) -> tuple[dict, dict[str, int]]:
    """The trials' rows and validation interval (the study's, once its first trial started; else planned now from
    the budget), tune/data/ written for them, and the trial train rows after each balance mode."""
    records, val = read_jsonl(run.split("train")), None
    if not has_rows(run.split("val")):  # held out as the final training will (validate.carve_val), said once here
        records, val = carve_val(records, cfg.train, cfg.train.seed)
        if not val:
            raise SlmError(
                "the recipe search scores trials on val rows, and the data has too few rows to hold any out",
                "add rows, or set data.split.val",
            )
        log.warning(
            "no val split in the data: the search and the final training validate on %d rows held out of train",
            len(val),
        )
    counts = Counter(answer_key(r) for r in records)
    modes = cfg.train.search.space.balance or [cfg.train.balance]
    rows_by_mode = {m: sum(target_counts(counts, m).values()) for m in {*modes, "off"}}
    plan = study.user_attrs.get("plan")
    speed = _speed(probe, _finished(study))
    rows = plan["rows"] if plan else _plan_rows(cfg, rows_by_mode, len(counts), probe, speed, budget_s, max_trials)
    sub_counts = Counter(answer_key(r) for r in _write_trial_data(run, paths, records, rows, seed, val))
    plan_modes = {m: sum(target_counts(sub_counts, m).values()) for m in rows_by_mode}
    if plan is None:
        lo, hi = budget.step_range(cfg.train.search.space, cfg.train, plan_modes)
        val_steps = speed.val_steps(cfg.train.batch_size * cfg.train.grad_accum, probe["mean_tokens"])
        plan = {
            "rows": rows,
            "rows_total": len(records),
            "rows_by_mode": rows_by_mode,  # all train rows after each balance mode (the final training trains on them)
            "eval_steps": budget.eval_every(lo, hi, val_steps),
            "steps": [lo, hi],
            "startup": max(2, min(10, min(max_trials, budget.TARGET_TRIALS) // 3)),
        }  # random trials before TPE
        log.info(
            "search plan: trials train on %d of %d rows, %d-%d steps, validating every %d steps",
            rows,
            len(records),
            lo,
            hi,
            plan["eval_steps"],
        )
    return plan, plan_modes


def _plan_rows(cfg, rows_by_mode, answers: int, probe, speed, budget_s: float, max_trials: int) -> int:
    """Train rows per trial: train.search.rows, or (auto) as many as let ~TARGET_TRIALS of the largest trials fit,
    but at least MIN_ROWS, MIN_STEPS steps at the fewest epochs, and ~4 rows per answer when answers repeat."""
    s_cfg, t_cfg = cfg.train.search, cfg.train
    if s_cfg.rows != "auto":
        return min(s_cfg.rows, rows_by_mode["off"])
    classes = answers if 2 * answers <= rows_by_mode["off"] else 0
    fewest_epochs = s_cfg.space.epochs[0] if s_cfg.space.epochs else (None if s_cfg.space.steps else t_cfg.epochs)
    by_steps = math.ceil(MIN_STEPS * t_cfg.batch_size * t_cfg.grad_accum / fewest_epochs) if fewest_epochs else 0
    floor = max(MIN_ROWS, 2 * t_cfg.batch_size * t_cfg.grad_accum, 4 * classes, by_steps)
    per_trial = max(budget_s - probe["wall_s"], 1.0) / min(max_trials, budget.TARGET_TRIALS)
    return budget.plan_rows(per_trial, speed, s_cfg.space, t_cfg, rows_by_mode, probe["mean_tokens"], floor)


def _probe(cfg: BuildConfig, run: RunDir, paths: TunePaths, train: TrainFn) -> dict:
    """A PROBE_STEPS-step run with one validation on all train rows, at the largest LoRA rank of the space: this
    machine's tokens/s, set-up and validation seconds for the budget."""
    space = cfg.train.search.space
    params = {"lora_r": max(space.lora_r)} if space.lora_r and cfg.train.method == "lora" else {}
    probe_cfg = trial_config(cfg, params, eval_steps=PROBE_STEPS, max_steps=PROBE_STEPS)
    fresh_dir(paths.probe)
    link(run.data_dir, paths.probe / "data")
    t0 = time.monotonic()
    s = train(probe_cfg, paths.probe, show_progress=False)
    wall = time.monotonic() - t0
    drop_weights(paths.probe)
    out = {
        "wall_s": round(wall, 2),
        "train_s": s["seconds"],
        "tokens": s["tokens"],
        "val_s": s.get("val_seconds", 0.0),
        "n_val": len(s.get("val_history") or []),
        "mean_tokens": s["mean_tokens"],
        "metric": s.get("val_metric"),
    }
    log.info(
        "search probe: %.0f tokens/s, %.1f s a validation, %.1f s set-up (%.1f s in all)",
        out["tokens"] / max(out["train_s"], 1e-6),
        out["val_s"] / max(out["n_val"], 1),
        out["wall_s"] - out["train_s"] - out["val_s"],
        wall,
    )
    return out


def trial_config(cfg: BuildConfig, params: dict, *, eval_steps: int, max_steps: int | None = None) -> BuildConfig:
    """cfg with `params` applied to its train section and the search's own settings for a short scored run."""
    dump = cfg.model_dump()
    tr = apply_params(dump["train"], params)
    tr.update(eval_steps=eval_steps, load_best_model_at_end=True, save_steps=10**9, report_to=[], compile=False)
    tr["search"]["enabled"] = False
    if max_steps is not None:
        tr.update(max_steps=max_steps, early_stopping_patience=None, balance="off")
    return BuildConfig.model_validate(dump)


def suggest(trial, space, method: str) -> dict:
    p = {}
    if space.lr:
        p["lr"] = trial.suggest_float("lr", space.lr[0], space.lr[1], log=True)
    if space.epochs:
        p["epochs"] = trial.suggest_int("epochs", space.epochs[0], space.epochs[1])
    if space.steps:
        p["steps"] = trial.suggest_int("steps", space.steps[0], space.steps[1], log=True)
    if method == "lora" and space.lora_r:
        p["lora_r"] = trial.suggest_categorical("lora_r", list(space.lora_r))
    if method == "lora" and space.alpha_multiplier:
        p["alpha_multiplier"] = trial.suggest_categorical("alpha_multiplier", list(space.alpha_multiplier))
    if space.balance:
        p["balance"] = trial.suggest_categorical("balance", list(space.balance))
    return p


def _run_trial(study, cfg: BuildConfig, plan: dict, paths: TunePaths, train: TrainFn) -> None:
    from optuna.trial import TrialState

    trial = study.ask()
    params = suggest(trial, cfg.train.search.space, cfg.train.method)
    root = paths.trial(trial.number)
    fresh_dir(root)
    link(paths.data, root / "data")

    def on_validation(step: int, value: float) -> bool:
        trial.report(value, step)
        return trial.should_prune()

    t0 = time.monotonic()
    try:
        s = train(
            trial_config(cfg, params, eval_steps=plan["eval_steps"]),
            root,
            show_progress=False,
            on_validation=on_validation,
        )
    except Exception as e:  # a Ctrl-C (or a kill) leaves the trial running: the next run queues it again
        trial.set_user_attr("error", f"{type(e).__name__}: {e}")
        study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        drop_weights(root)
    attrs = {
        "wall_s": round(time.monotonic() - t0, 2),
        "train_s": s["seconds"],
        "tokens": s["tokens"],
        "val_s": s.get("val_seconds", 0.0),
        "n_val": len(s.get("val_history") or []),
        "steps": s["steps"],
        "train_rows": s["train_rows"],
        "best_step": s.get("best_step"),
        "pruned_at": s.get("pruned_at"),
        "balance_rows": s["balance"]["rows_after"],
    }
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if s.get("pruned_at") is not None:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, s["best_val"])
    how = f"pruned at step {s['pruned_at']}" if s.get("pruned_at") else f"best at step {s.get('best_step')}"
    log.info(
        "trial %d: %s %.4f (%s) in %.0f s: %s",
        trial.number,
        s.get("val_metric"),
        s.get("best_val") or 0.0,
        how,
        attrs["wall_s"],
        fmt_params(params),
    )


def _summary(study, cfg: BuildConfig, paths: TunePaths, plan: dict, probe: dict, budget_s: float, stopped: str) -> dict:
    rows = trial_rows(study)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(done, key=lambda r: (r["value"], -r["number"])) if done else None  # ties: the earlier trial
    finished = _finished(study)
    speed = _speed(probe, finished)
    final = best and _final(cfg, plan, speed, probe, finished, best, budget_s - _spent(study, probe))
    return {
        "study": study.study_name,
        "storage": str(paths.study),
        "metric": probe["metric"],
        "budget_s": round(budget_s, 1),
        "final_share": cfg.train.search.final_share,
        "spent_s": round(_spent(study, probe), 1),
        "stopped": stopped,
        "rows": plan["rows"],
        "rows_total": plan["rows_total"],
        "eval_steps": plan["eval_steps"],
        "tokens_per_s": round(speed.tokens_per_s, 1),
        "best": best and {k: best[k] for k in ("number", "value", "params")},
        "best_config": str(paths.best_yaml),
        "final": final,
        "best_train": best and best_config(cfg, best["params"], final).train.model_dump(mode="json"),
        "trials": rows,
        "plot": str(paths.root / "trials.png"),
    }


def _final(cfg: BuildConfig, plan: dict, speed, probe: dict, finished: list, best: dict, left_s: float) -> dict:
    """The final training of the best recipe on all train rows. Epochs on a trial's row subset do not carry over to
    all rows, so it may train up to the space's most epochs (validation keeps the best step and stops on a plateau),
    capped to what the budget has left (final_share), and at least the best trial's steps."""
    space, t_cfg = cfg.train.search.space, best_config(cfg, best["params"]).train
    epochs = None
    if space.epochs and t_cfg.eval_steps is not None and cfg.train.search.final_share is not None:
        epochs = float(max(space.epochs[1], t_cfg.epochs))
        t_cfg = t_cfg.model_copy(update={"epochs": epochs})
    trial = next(t.user_attrs for t in finished if t.number == best["number"])
    rows = plan["rows_by_mode"][t_cfg.balance]
    left = left_s if cfg.train.search.final_share is not None else None
    floor = trial.get("best_step") or trial.get("steps") or 1
    return budget.final_steps(speed, t_cfg, rows, probe["mean_tokens"], left, floor) | {"rows": rows, "epochs": epochs}


def _speed(probe: dict, finished: list) -> budget.Speed:
    """This machine's speeds from the finished trials (the probe's set-up also holds one-time costs such as a first
    model conversion, so it stands in only until a trial has finished)."""
    return budget.Speed.measure([t.user_attrs for t in finished] or [probe])


def _finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _spent(study, probe: dict) -> float:
    """Seconds this search has used: the probe and every trial that ended (a killed trial's time is lost)."""
    ended = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    return probe["wall_s"] + sum((t.datetime_complete - t.datetime_start).total_seconds() for t in ended)


def _requeue_killed(study, storage) -> None:
    """Trials left RUNNING (the lock says no other search runs) were killed: fail them and queue their params."""
    from optuna.trial import TrialState

    waiting = [t.params for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params not in waiting:
            attrs = {"requeued_from": t.number} | ({"from_config": True} if t.user_attrs.get("from_config") else {})
            study.enqueue_trial(t.params, user_attrs=attrs)
            log.info("trial %d was interrupted: queued again (%s)", t.number, fmt_params(t.params))


def _write_trial_data(run: RunDir, paths: TunePaths, records: list[dict], rows: int, seed: int, val) -> list[dict]:
    """tune/data/: the trials' train rows (a seeded subset, in file order, or a link to all) and links to val and
    the data manifest (validation reads the task from it). Returns the subset."""
    paths.data.mkdir(parents=True, exist_ok=True)
    if rows < len(records) or val is not None:  # a subset, or all rows but the held-out ones
        keep = sorted(random.Random(seed).sample(range(len(records)), rows))
        subset = [records[i] for i in keep]
        target = paths.data / "train.jsonl"
        if target.is_symlink():
            target.unlink()
        atomic_write_jsonl(target, subset)
    else:
        subset = records
        link(run.split("train"), paths.data / "train.jsonl")
    if val is None:
        link(run.split("val"), paths.data / "val.jsonl")
    else:
        (paths.data / "val.jsonl").unlink(missing_ok=True)  # a link to the data's (empty) split, say
        atomic_write_jsonl(paths.data / "val.jsonl", val)
    if run.manifest("data").is_file():
        link(run.manifest("data"), paths.data / "manifest.json")
    return subset


def _forget_other_study(paths: TunePaths, name: str) -> None:
    """Trial folders belong to one study: a search with another fingerprint starts with none (the sqlite file keeps
    every study)."""
    current = json.loads(paths.current.read_text()).get("study") if paths.current.is_file() else None
    if current != name:
        for old in (paths.trials_dir, paths.probe, paths.data):
            if old.exists():
                shutil.rmtree(old)
        atomic_write_json(paths.current, {"study": name})
