"""Deterministic hash split: a record's split depends only on the seed and its own id.

So adding or removing other rows never moves a record between train, val and test. Records with a
`meta.group` (e.g. questions on one SQuAD context) are split by the group, so a group stays together.
"""

from __future__ import annotations

import hashlib
from typing import Any

from slmkit.config import SplitConfig
from slmkit.errors import SlmError

SPLITS = ("train", "val", "test")


def bucket(seed: str, record_id: str) -> float:
    """sha256(seed + id) read as an integer and mapped to [0, 1)."""
    digest = hashlib.sha256((seed + record_id).encode("utf-8")).hexdigest()
    # Keep the top 53 bits: a float holds them exactly, so the result can never round up to 1.0.
    return (int(digest, 16) >> (256 - 53)) / 2 ** 53


def split_of(record_id: str, cfg: SplitConfig) -> str:
    """'test' below cfg.test, 'val' below cfg.test + cfg.val, else 'train'."""
    b = bucket(cfg.seed, record_id)
    if b < cfg.test:
        return "test"
    return "val" if b < cfg.test + cfg.val else "train"


def assign_splits(records: list[dict[str, Any]], cfg: SplitConfig) -> dict[str, list[dict[str, Any]]]:
    """Set meta.split on every record and group them by split, keeping input order within each."""
    if cfg.val + cfg.test >= 1:
        raise SlmError(f"data.split.val ({cfg.val}) + data.split.test ({cfg.test}) leaves nothing for training",
                       "make val + test well below 1, e.g. 0.1 each")
    groups: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for rec in records:
        rec["meta"]["split"] = split_of(rec["meta"].get("group") or rec["id"], cfg)
        groups[rec["meta"]["split"]].append(rec)
    return groups
