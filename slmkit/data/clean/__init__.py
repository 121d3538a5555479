"""Cleaning steps over canonical records, each counted in the Report.

A record is a chat record (`messages`, maybe `rejected`) or a document chunk (`text`). Steps that
change a record append their name to `meta.transformations`. `Cleaner` runs the steps over batches
(the data stage streams); the list functions (normalize, pii_step, exact_dedup, ...) run one step over
a whole list.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from slmkit.config.data import CleanConfig, DecontamConfig, DedupConfig, LengthConfig, NormalizeConfig, PiiConfig
from .dedup import ExactDedup, HeldNgrams, NearDedup, id_key
from .pii import redact
from .records import record_id
from .report import Report
from .tokens import count_tokens

Record = dict[str, Any]
BATCH = 2000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_BLANKS = re.compile(r"\n{3,}")


def texts_of(rec: Record, roles: tuple[str, ...] = ("user", "assistant")) -> list[str]:
    """The contents that carry the record's meaning: user/assistant turns (not the shared system prompt)."""
    if "text" in rec:
        return [rec["text"]]
    return [m["content"] for m in rec["messages"] if m["role"] in roles] + \
        ([rec["rejected"]] if rec.get("rejected") and "assistant" in roles else [])


def _map_texts(rec: Record, fn: Callable[[str], str]) -> bool:
    """Apply fn to every text field of the record in place; True when anything changed."""
    changed = False
    if "text" in rec:
        new = fn(rec["text"])
        changed, rec["text"] = new != rec["text"], new
        return changed
    for m in rec["messages"]:
        new = fn(m["content"])
        changed |= new != m["content"]
        m["content"] = new
    if rec.get("rejected"):
        new = fn(rec["rejected"])
        changed |= new != rec["rejected"]
        rec["rejected"] = new
    return changed


def _mark(rec: Record, step: str) -> None:
    rec["meta"].setdefault("transformations", []).append(step)


def refresh_id(rec: Record) -> None:
    """Ids follow content, so splits and dedup see the cleaned text."""
    if "text" in rec:
        rec["id"] = hashlib.sha1(rec["text"].encode("utf-8")).hexdigest()
    else:
        rec["id"] = record_id(rec["messages"] + ([{"rejected": rec["rejected"]}] if rec.get("rejected") else []))


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    """Unicode normal form, control/zero-width characters removed, runs of spaces and blank lines collapsed."""
    text = unicodedata.normalize(cfg.form, text)
    if cfg.strip_control:
        text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if cfg.collapse_whitespace:
        text = _BLANKS.sub("\n\n", "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n")))
    return text.strip()


def normalize_batch(records: list[Record], cfg: NormalizeConfig) -> int:
    """Normalise every text in place; returns how many records changed."""
    changed = 0
    for rec in records:
        if _map_texts(rec, lambda t: normalize_text(t, cfg)):
            changed += 1
            _mark(rec, "normalize")
    return changed


def pii_batch(records: list[Record], cfg: PiiConfig, counts: Counter) -> tuple[list[Record], int]:
    """Redact (or drop, or only count) PII; per-type counts go to `counts`, types to meta.pii_redacted."""
    kept, changed = [], 0
    for rec in records:
        found: list[str] = []

        def _one(text: str) -> str:
            new, spans = redact(text, cfg.types, cfg.placeholder)
            found.extend(s.type for s in spans)
            return new if cfg.action == "redact" else text

        _map_texts(rec, _one)
        counts.update(found)
        if found:
            changed += 1
            rec["meta"]["pii_redacted"] = sorted(set(rec["meta"].get("pii_redacted") or []) | set(found))
            if cfg.action == "redact":
                _mark(rec, "pii_redact")
            if cfg.action == "drop":
                continue
        kept.append(rec)
    return kept, changed


def exact_batch(records: list[Record], seen: ExactDedup) -> list[Record]:
    """Refresh ids and drop records whose (cleaned) content was seen before; the first one is kept."""
    for rec in records:
        refresh_id(rec)
    return [r for r, new in zip(records, seen.keep([id_key(r["id"]) for r in records])) if new]


def full_text(rec: Record) -> str:
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


def near_text(rec: Record) -> str:
    return "\n".join(texts_of(rec))


def new_near_dedup(cfg: DedupConfig, spill_dir: str | Path | None = None) -> NearDedup:
    return NearDedup(cfg.threshold, cfg.num_perm, cfg.ngram, cfg.seed, spill_dir)


def batches(items: list, size: int = BATCH) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ----------------------------------------------------------------------------- one list at a time

def normalize(records: list[Record], cfg: NormalizeConfig, report: Report) -> list[Record]:
    report.step("normalize", len(records), len(records), normalize_batch(records, cfg))
    return records


def pii_step(records: list[Record], cfg: PiiConfig, report: Report) -> list[Record]:
    """Redact (or drop, or only count) PII; per-type counts go to report.pii, types to meta.pii_redacted."""
    kept, changed = pii_batch(records, cfg, report.pii)
    report.step(f"pii_{cfg.action}", len(records), len(kept), changed)
    return kept


def exact_dedup(records: list[Record], report: Report) -> list[Record]:
    """Drop records whose (cleaned) content was already seen; the first one is kept."""
    kept = exact_batch(records, ExactDedup())
    report.step("exact_dedup", len(records), len(kept))
    return kept


def near_dedup(records: list[Record], cfg: DedupConfig, report: Report) -> list[Record]:
    """MinHash LSH: drop a record whose estimated Jaccard with a kept one is >= threshold (see dedup.NearDedup)."""
    near = new_near_dedup(cfg)
    try:
        kept = [r for b in batches(records) for r in near.filter(b, [near_text(x) for x in b])]
    finally:
        near.close()
    report.step("near_dedup", len(records), len(kept))
    return kept


def length_filter(records: list[Record], cfg: LengthConfig, tok: Any, report: Report) -> list[Record]:
    """Store meta.tokens and drop out-of-range rows."""
    kept = length_batch(records, cfg, tok)
    report.step("length_filter", len(records), len(kept))
    return kept


def decontaminate(groups: dict[str, list[Record]], cfg: DecontamConfig, report: Report) -> dict[str, list[Record]]:
    """Drop train records sharing a word n-gram with any val/test record (whole text when shorter than n)."""
    train = groups["train"]
    if not cfg.enabled:
        return groups
    held = HeldNgrams(cfg.ngram)
    for rec in (r for s in ("val", "test") for r in groups[s]):
        held.add(near_text(rec))
    kept = [r for r, ok in zip(train, held.clean([near_text(r) for r in train])) if ok]
    report.step("decontaminate", len(train), len(kept))
    return {**groups, "train": kept}


def clean(records: list[Record], cfg: CleanConfig, tok: Any, report: Report, base_dir: str | None = None) -> list[Record]:
    """normalize -> user steps -> PII -> exact dedup -> near dedup -> length filter (each optional)."""
    cleaner = Cleaner(cfg, tok, report, base_dir)
    try:
        out = [r for b in batches(records) for r in cleaner(b)]
    finally:
        cleaner.close()
    cleaner.finish()
    return out


# ----------------------------------------------------------------------------- streaming

class Cleaner:
    """The cleaning steps over batches of records, in order; only compact state crosses batches.

    Per-row steps (normalise, user steps, PII, length) keep nothing; exact and near dedup keep their
    indexes (see dedup.py). Step counts add up over batches and go to report.steps in finish().
    """

    def __init__(self, cfg: CleanConfig, tok: Any, report: Report, base_dir: str | None = None,
                 spill_dir: str | Path | None = None):
        self.cfg, self.tok, self.report, self.base_dir, self.spill_dir = cfg, tok, report, base_dir, spill_dir
        self.counts: list[tuple[str, list[int]]] = []
        self._stages: list[Callable] | None = None
        self._near: NearDedup | None = None

    def _start(self) -> None:
        """Resolve user steps (imported once) and build the stage list on the first records seen."""
        from .registry import get_step, import_steps, run_step

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
        stages.append(("exact_dedup" if exact else "", lambda b: (exact_batch(b, exact) if exact else _refresh(b), 0)))
        if cfg.dedup.near:
            self._near = new_near_dedup(cfg.dedup, self.spill_dir)
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


def _refresh(records: list[Record]) -> list[Record]:
    for rec in records:
        refresh_id(rec)
    return records
