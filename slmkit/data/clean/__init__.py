"""Cleaning, batch by batch: normalise -> user steps -> PII -> exact dedup -> near dedup -> length filter.

A record is a chat record (`messages`, maybe `rejected`) or a document chunk (`text`). Steps that change a
record append their name to `meta.transformations`; each step's rows in/out/changed go to the Report. The
steps live beside this file (normalize.py, steps.py, pii.py, dedup.py); decontamination runs when the split
files are finished (split.py), with dedup.HeldNgrams.

    with Cleaner(cfg.data.clean, tok, report) as clean:
        for batch in batches:
            kept = clean(batch)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmkit.config.data import CleanConfig, LengthConfig

from ..records import refresh_id
from ..report import Report
from ..tokens import count_tokens
from .dedup import ExactDedup, NearDedup, near_text
from .normalize import normalize_batch
from .pii import pii_batch

Record = dict[str, Any]


def full_text(rec: Record) -> str:
    """What the length filter counts: every content, system prompt included, without chat-template markup."""
    return rec["text"] if "text" in rec else "\n".join(m["content"] for m in rec["messages"])


def length_batch(records: list[Record], cfg: LengthConfig, tok: Any) -> list[Record]:
    """Store meta.tokens (tokens of all contents, without chat-template markup) and drop out-of-range rows."""
    counts = count_tokens(tok, [full_text(r) for r in records]) if records else []
    kept = []
    for rec, n in zip(records, counts):
        rec["meta"]["tokens"] = n
        if n >= cfg.min_tokens and (cfg.max_tokens is None or n <= cfg.max_tokens):
            kept.append(rec)
    return kept


def refresh_ids(records: list[Record]) -> list[Record]:
    for rec in records:
        refresh_id(rec)
    return records


class Cleaner:
    """The cleaning steps over batches of records, in order; only compact state crosses batches.

    Per-row steps (normalise, user steps, PII, length) keep nothing; exact and near dedup keep their
    indexes (see dedup.py). Ids are refreshed after PII, so dedup and the splits see the cleaned text. The
    length filter runs when a tokenizer is given. Step counts add up over batches and go to report.steps in
    finish(); as a context manager it closes on exit and finishes when no error was raised.
    """

    def __init__(
        self,
        cfg: CleanConfig,
        tok: Any,
        report: Report,
        base_dir: str | None = None,
        spill_dir: str | Path | None = None,
    ):
        self.cfg, self.tok, self.report, self.base_dir, self.spill_dir = cfg, tok, report, base_dir, spill_dir
        self.counts: list[tuple[str, list[int]]] = []
        self._stages: list[Callable] | None = None
        self._near: NearDedup | None = None

    def __enter__(self) -> Cleaner:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close()
        if exc_type is None:
            self.finish()

    def _start(self) -> None:
        """Resolve user steps (imported once) and build the stage list on the first records seen."""
        from .steps import get_step, import_steps, run_step

        cfg, stages = self.cfg, []
        if cfg.normalize.enabled:
            stages.append(("normalize", lambda b: (b, normalize_batch(b, cfg.normalize))))
        if cfg.steps:
            import_steps(cfg.imports, self.base_dir)
            for step in cfg.steps:
                fn = get_step(step.name)
                stages.append((f"step:{step.name}", lambda b, fn=fn, step=step: (run_step(fn, step, b), 0)))
        if cfg.pii.enabled:
            stages.append((f"pii_{cfg.pii.action}", lambda b: pii_batch(b, cfg.pii, self.report.pii)))
        exact = ExactDedup() if cfg.dedup.exact else None
        stages.append(
            ("exact_dedup" if exact else "", lambda b: (exact.filter(refresh_ids(b)) if exact else refresh_ids(b), 0))
        )
        if cfg.dedup.near:
            d = cfg.dedup
            self._near = NearDedup(d.threshold, d.num_perm, d.ngram, d.seed, self.spill_dir)
            stages.append(("near_dedup", lambda b: (self._near.filter(b, [near_text(r) for r in b]), 0)))
        if self.tok is not None:
            stages.append(("length_filter", lambda b: (length_batch(b, cfg.length, self.tok), 0)))
        self.counts = [(name, [0, 0, 0]) for name, _ in stages]
        self._stages = [fn for _, fn in stages]

    def __call__(self, records: list[Record]) -> list[Record]:
        if not records:
            return records
        if self._stages is None:
            if self.counts:
                raise RuntimeError("Cleaner used after close()")
            self._start()
        for (name, slot), fn in zip(self.counts, self._stages):
            n_in, start = len(records), time.perf_counter()
            records, changed = fn(records)
            self.report.seconds[name or "refresh_ids"] += time.perf_counter() - start
            slot[0] += n_in
            slot[1] += len(records)
            slot[2] += changed
        return records

    def close(self) -> None:
        """Free the dedup indexes and the signature file (the counts stay for finish())."""
        if self._near is not None:
            self._near.close()
        self._near = self._stages = None

    def finish(self) -> None:
        """Write the step counts to the report (nothing when no record came through)."""
        for name, (n_in, n_out, changed) in self.counts:
            if name and (name != "near_dedup" or n_in):
                self.report.step(name, n_in, n_out, changed)
