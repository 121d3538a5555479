"""Cleaning steps over canonical records, each counted in the Report.

A record is a chat record (`messages`, maybe `rejected`) or a document chunk (`text`). Steps that
change a record append their name to `meta.transformations`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from .config import CleanConfig, DecontamConfig, DedupConfig, LengthConfig, NormalizeConfig, PiiConfig
from .pii import redact
from .records import record_id
from .report import Report
from .tokens import count_tokens

Record = dict[str, Any]
_WORD = re.compile(r"\w+")
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


def normalize(records: list[Record], cfg: NormalizeConfig, report: Report) -> list[Record]:
    changed = 0
    for rec in records:
        if _map_texts(rec, lambda t: normalize_text(t, cfg)):
            changed += 1
            _mark(rec, "normalize")
    report.step("normalize", len(records), len(records), changed)
    return records


def pii_step(records: list[Record], cfg: PiiConfig, report: Report) -> list[Record]:
    """Redact (or drop, or only count) PII; per-type counts go to report.pii, types to meta.pii_redacted."""
    kept, changed = [], 0
    for rec in records:
        found: list[str] = []

        def _one(text: str) -> str:
            new, spans = redact(text, cfg.types, cfg.placeholder)
            found.extend(s.type for s in spans)
            return new if cfg.action == "redact" else text

        _map_texts(rec, _one)
        report.pii.update(found)
        if found:
            changed += 1
            rec["meta"]["pii_redacted"] = sorted(set(rec["meta"].get("pii_redacted") or []) | set(found))
            if cfg.action == "redact":
                _mark(rec, "pii_redact")
            if cfg.action == "drop":
                continue
        kept.append(rec)
    report.step(f"pii_{cfg.action}", len(records), len(kept), changed)
    return kept


def exact_dedup(records: list[Record], report: Report) -> list[Record]:
    """Drop records whose (cleaned) content was already seen; the first one is kept."""
    seen: set[str] = set()
    kept = []
    for rec in records:
        refresh_id(rec)
        if rec["id"] not in seen:
            seen.add(rec["id"])
            kept.append(rec)
    report.step("exact_dedup", len(records), len(kept))
    return kept


def shingles(text: str, n: int) -> set[bytes]:
    """Lower-cased word n-grams; a text shorter than n words is one shingle."""
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def near_dedup(records: list[Record], cfg: DedupConfig, report: Report) -> list[Record]:
    """MinHash LSH (datasketch): drop a record whose estimated Jaccard with a kept one is >= threshold.

    LSH candidates are checked against the MinHash estimate, so banding false positives are not dropped.
    """
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    # datasketch needs >= 2 bands, i.e. a threshold below 1; candidates are re-checked at cfg.threshold anyway.
    lsh = MinHashLSH(threshold=min(cfg.threshold, 0.95), num_perm=cfg.num_perm)
    signatures: dict[str, np.ndarray] = {}  # hash values fit in 32 bits in datasketch
    kept = []
    batch = 2000
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        sets = [list(shingles("\n".join(texts_of(r)), cfg.ngram)) for r in chunk]
        for rec, mh in zip(chunk, MinHash.bulk(sets, num_perm=cfg.num_perm, seed=cfg.seed)):
            sig = mh.hashvalues.astype(np.uint32)
            dupe = next((k for k in lsh.query(mh) if np.mean(signatures[k] == sig) >= cfg.threshold), None)
            if dupe is not None:
                rec["meta"]["near_duplicate_of"] = dupe
                continue
            lsh.insert(rec["id"], mh)
            signatures[rec["id"]] = sig
            kept.append(rec)
    report.step("near_dedup", len(records), len(kept))
    return kept


def full_text(rec: Record) -> str:
    return rec["text"] if "text" in rec else "\n".join(m["content"] for m in rec["messages"])


def length_filter(records: list[Record], cfg: LengthConfig, tok: Any, report: Report) -> list[Record]:
    """Store meta.tokens (tokens of all contents, without chat-template markup) and drop out-of-range rows."""
    counts = count_tokens(tok, [full_text(r) for r in records]) if records else []
    kept = []
    for rec, n in zip(records, counts):
        rec["meta"]["tokens"] = n
        if n >= cfg.min_tokens and (cfg.max_tokens is None or n <= cfg.max_tokens):
            kept.append(rec)
    report.step("length_filter", len(records), len(kept))
    return kept


def _ngrams(text: str, n: int) -> set[int]:
    words = tuple(_WORD.findall(text.lower()))
    if len(words) < n:
        return {hash(("short",) + words)} if words else set()
    return {hash(words[i:i + n]) for i in range(len(words) - n + 1)}


def decontaminate(groups: dict[str, list[Record]], cfg: DecontamConfig, report: Report) -> dict[str, list[Record]]:
    """Drop train records sharing a word n-gram with any val/test record (whole text when shorter than n)."""
    train = groups["train"]
    if not cfg.enabled:
        return groups
    held = set().union(*(_ngrams("\n".join(texts_of(r)), cfg.ngram) for s in ("val", "test") for r in groups[s]))
    kept = [r for r in train if held.isdisjoint(_ngrams("\n".join(texts_of(r)), cfg.ngram))]
    report.step("decontaminate", len(train), len(kept))
    return {**groups, "train": kept}


def clean(records: list[Record], cfg: CleanConfig, tok: Any, report: Report, base_dir: str | None = None) -> list[Record]:
    """normalize -> user steps -> PII -> exact dedup -> near dedup -> length filter (each optional)."""
    from .registry import apply_steps

    if cfg.normalize.enabled:
        records = normalize(records, cfg.normalize, report)
    if cfg.steps:
        records = apply_steps(records, cfg.steps, cfg.imports, report, base_dir)
    if cfg.pii.enabled:
        records = pii_step(records, cfg.pii, report)
    if cfg.dedup.exact:
        records = exact_dedup(records, report)
    else:
        for rec in records:
            refresh_id(rec)
    if cfg.dedup.near and records:
        records = near_dedup(records, cfg.dedup, report)
    if tok is not None:
        records = length_filter(records, cfg.length, tok, report)
    return records
