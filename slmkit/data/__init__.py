"""Data stage: read a table, turn rows into chat records, split, and write train/val/test JSONL + card.md."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from slmkit.config import BuildConfig, resolve_path
from slmkit.errors import SlmError
from slmkit.io import atomic_write_jsonl, sha256_file

from .card import write_card
from .records import to_records
from .sources import find_license, read_table
from .split import SPLITS, assign_splits

__all__ = ["prepare", "read_table", "to_records"]

log = logging.getLogger("slmkit.data")


def _source_path(cfg: BuildConfig) -> Path:
    if not cfg.data.path:
        raise SlmError("data.path is not set",
                       "set data.path in the config (or --set data.path=FILE) to a CSV/TSV/JSON/JSONL file")
    return resolve_path(cfg, cfg.data.path)


def prepare(cfg: BuildConfig, out_dir: Path) -> dict[str, Any]:
    """Build train/val/test.jsonl and card.md in `out_dir` from cfg.data; returns a summary dict."""
    path = _source_path(cfg)
    rows, locators = read_table(path, cfg.data)
    if cfg.data.max_rows:
        rows, locators = rows[:cfg.data.max_rows], locators[:cfg.data.max_rows]
    records, report = to_records(rows, cfg.data, locators)
    sha, license_ = sha256_file(path), find_license(path, cfg.data.license)
    for rec in records:
        rec["meta"].update(source_sha256=sha, license=license_)
    groups = assign_splits(records, cfg.data.split)
    if not groups["train"]:
        raise SlmError(f"{path}: no training rows left ({len(records)} usable rows, all in val/test)",
                       "add more rows or lower data.split.val / data.split.test")
    out_dir = Path(out_dir)
    for split in SPLITS:
        atomic_write_jsonl(out_dir / f"{split}.jsonl", groups[split])
    summary = {
        "rows": {s: len(groups[s]) for s in SPLITS},
        "dropped": report["dropped"],
        "task": report["task"],
        "labels": report["labels"],
        "source": str(path),
        "source_sha256": sha,
        "license": license_,
        "columns_picked": report["columns_picked"],
    }
    write_card(out_dir / "card.md", summary, groups)
    log.info("data: %s rows (train/val/test %s), task %s", len(records),
             "/".join(str(len(groups[s])) for s in SPLITS), report["task"])
    return summary
