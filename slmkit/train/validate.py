"""Validation while training: the task's headline metric (accuracy, entity F1, ...) on a capped val subset, decoded
greedily as eval decodes the test split, every `eval_steps` steps; the best weights so far kept in train/best/, and
early stopping when the metric stops improving.

`eval_steps: auto` spends at most ~10% of training time on validation: the first validation is timed, and the
interval is set so that (validations x their time) stays under a tenth of the run's planned training time.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slmkit.eval import HEADLINE, compute_metrics, load_test_split, max_new_tokens_for, task_of
from slmkit.generation import generate
from slmkit.runs import RunDir, read_manifest
from slmkit.train.speed import eager

log = logging.getLogger("slmkit")
VAL_TIME_SHARE = 0.1  # validation's share of training time under eval_steps: auto
CARVE_SHARE = 0.1  # no val split in the data: this share of the train rows (at most eval_max_rows) is held out
CARVE_MIN_ROWS = 20  # fewer train rows than this: no held-out rows are carved, training runs without validation
MIN_DELTA = 1e-4  # a smaller gain is no improvement (a metric over 64 rows moves in steps of 1/64)


@dataclass
class Validator:
    prompts: list[list[dict]]
    refs: list[str]
    task: str
    max_new_tokens: int
    batch_size: int
    every: int | None  # steps between validations; None until the first (timed) one under `auto`
    patience: int | None
    history: list[dict] = field(default_factory=list)  # [{"step", "value", "seconds"}]
    best: dict | None = None  # {"step", "value"}
    since_best: int = 0

    @property
    def metric(self) -> str:
        return HEADLINE[self.task]

    def due(self, step: int, total: int) -> bool:
        """Validate at the first step of the auto schedule, every `every` steps, and at the last step."""
        if step == total:
            return True
        return step % self.every == 0 if self.every else step == max(1, total // 10)

    @torch.no_grad()
    def score(self, model, tok, autocast) -> float:
        was_training = model.training
        model.eval()
        side = tok.padding_side
        try:
            with autocast(), eager():
                preds = generate(model, tok, self.prompts, self.max_new_tokens, self.batch_size)
        finally:
            tok.padding_side = side
            model.train(was_training)
        return compute_metrics(preds, self.refs, self.task)[self.metric]

    def record(self, step: int, value: float, seconds: float, total_steps: int, step_seconds: float) -> bool:
        """Log one validation; returns True when it is the new best (ties go to the later, longer-trained step; only
        a real gain resets the early-stopping count). Sets the auto interval after the first validation."""
        self.history.append({"step": step, "value": value, "seconds": round(seconds, 2)})
        if self.every is None:
            budget = VAL_TIME_SHARE * total_steps * max(step_seconds, 1e-6)
            runs = max(1, int(budget // max(seconds, 1e-6)))
            self.every = max(1, math.ceil(total_steps / runs))
            log.info(
                "validation takes %.1f s: every %d steps keeps it under %d%% of training time",
                seconds,
                self.every,
                round(100 * VAL_TIME_SHARE),
            )
        if self.best is None or value > self.best["value"] + MIN_DELTA:
            self.best, self.since_best = {"step": step, "value": value}, 0
            return True
        self.since_best += 1
        if value >= self.best["value"] - MIN_DELTA:
            self.best = {"step": step, "value": self.best["value"]}
            return True
        return False

    @property
    def should_stop(self) -> bool:
        """A plateau after learning: `patience` validations without a gain, once the metric has risen above its first
        value (a model still at its starting score is not on a plateau, it has not started)."""
        learned = (
            bool(self.history) and self.best is not None and self.best["value"] > self.history[0]["value"] + MIN_DELTA
        )
        return self.patience is not None and learned and self.since_best >= self.patience

    def state(self) -> dict:
        return {"every": self.every, "history": self.history, "best": self.best, "since_best": self.since_best}

    def load(self, state: dict | None) -> None:
        if state:
            self.every, self.history = state["every"], state["history"]
            self.best, self.since_best = state["best"], state["since_best"]


def has_rows(path: Path) -> bool:
    """A JSONL file with at least one row; reads up to its first non-blank line, not the whole file."""
    if not path.is_file():
        return False
    with path.open(encoding="utf-8") as f:
        return any(line.strip() for line in f)


def carve_val(records: list[dict], t_cfg, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val) for data without a val split while validation is on: CARVE_SHARE of the rows (at most
    train.eval_max_rows), picked by a seeded hash of each row's id, so every run and every search trial holds out
    the same rows whatever their order. ([rows], []) when validation is off or there are too few rows."""
    if t_cfg.eval_steps is None or len(records) < CARVE_MIN_ROWS:
        return records, []
    n = max(1, min(t_cfg.eval_max_rows, round(CARVE_SHARE * len(records))))
    rank = sorted(
        range(len(records)),
        key=lambda i: hashlib.sha256(f"{seed}:{records[i].get('id') or i}".encode()).hexdigest(),
    )
    held = set(rank[:n])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def make_validator(cfg, run: RunDir, tok, path: Path | None = None) -> Validator | None:
    """A Validator over the first `train.eval_max_rows` rows of the val split (or `path`), or None (no val rows, or
    eval_steps: null)."""
    t_cfg = cfg.train
    path = path or run.split("val")
    if t_cfg.eval_steps is None or not has_rows(path):
        return None
    prompts, refs = load_test_split(path, t_cfg.eval_max_rows)
    data_task = ((read_manifest(run.root, "data") or {}).get("summary") or {}).get("task")
    task = cfg.eval.task if cfg.eval.task != "auto" else task_of(data_task, refs)  # as eval scores it
    every = None if t_cfg.eval_steps == "auto" else t_cfg.eval_steps
    return Validator(
        prompts,
        refs,
        task,
        max_new_tokens_for(tok, refs, task, cfg.eval.max_new_tokens),
        cfg.eval.batch_size,
        every,
        t_cfg.early_stopping_patience,
    )
