"""Splits: a record's split is a hash of the seed and its own id; split files are written as records stream in.

So adding or removing other rows never moves a record between train, val and test. Records with a
`meta.group` (e.g. questions on one SQuAD context) are split by the group, so a group stays together.

While records stream, each one is appended to an unnamed staging file of its split (SplitFiles), and the word
n-grams of val/test records go to the decontamination set. At the end, `finish()` reads each staging file back
in batches, drops train records that share an n-gram with val/test, sets the final labels, and writes the final
file to a temp file beside it; `commit()` renames them all into place (so a failure leaves the old outputs
untouched). Memory: one batch of records at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from slmkit.config import SplitConfig
from slmkit.errors import SlmError
from slmkit.io import _umask

from .clean.dedup import HeldNgrams, near_text
from .report import Report

SPLITS = ("train", "val", "test")
BATCH = 2000
Record = dict[str, Any]


def bucket(seed: str, record_id: str) -> float:
    """sha256(seed + id) read as an integer and mapped to [0, 1)."""
    digest = hashlib.sha256((seed + record_id).encode("utf-8")).hexdigest()
    # Keep the top 53 bits: a float holds them exactly, so the result can never round up to 1.0.
    return (int(digest, 16) >> (256 - 53)) / 2**53


def split_of(record_id: str, cfg: SplitConfig) -> str:
    """'test' below cfg.test, 'val' below cfg.test + cfg.val, else 'train'."""
    b = bucket(cfg.seed, record_id)
    if b < cfg.test:
        return "test"
    return "val" if b < cfg.test + cfg.val else "train"


def assign_splits(records: list[dict[str, Any]], cfg: SplitConfig) -> dict[str, list[dict[str, Any]]]:
    """Set meta.split on every record and group them by split, keeping input order within each."""
    if cfg.val + cfg.test >= 1:
        raise SlmError(
            f"data.split.val ({cfg.val}) + data.split.test ({cfg.test}) leaves nothing for training",
            "make val + test well below 1, e.g. 0.1 each",
        )
    groups: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for rec in records:
        rec["meta"]["split"] = split_of(rec["meta"].get("group") or rec["id"], cfg)
        groups[rec["meta"]["split"]].append(rec)
    return groups


# ----------------------------------------------------------------------------- split files


def _dump(rec: Record) -> str:
    return json.dumps(rec, ensure_ascii=False, default=str) + "\n"


class _AtomicFile:
    """A text file written to a temp name beside `path` and renamed onto it by commit()."""

    def __init__(self, path: Path):
        self.path = path
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.f = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        Path(self.tmp).unlink(missing_ok=True)


class SplitFiles:
    """Staging files per split (records as they come), then the final split files; use as a context manager."""

    def __init__(self, out_dir: Path, split: SplitConfig, held: HeldNgrams | None):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.split, self.held = split, held
        self._stage = {s: tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n", dir=self.dir) for s in SPLITS}
        self._final: dict[str, _AtomicFile] = {}
        self.staged = 0
        self.rows = {s: 0 for s in SPLITS}
        self.labels = {s: Counter() for s in SPLITS}
        self.lengths = array("i")

    def __enter__(self) -> SplitFiles:
        return self

    def __exit__(self, *exc) -> None:
        for f in self._stage.values():
            f.close()
        for f in self._final.values():
            if not f.f.closed:
                f.abort()

    def add(self, records: list[Record]) -> None:
        """Set meta.split on each record and stage it; val/test texts feed the decontamination set."""
        for rec in records:
            # a record from a test source (data.test_path) keeps its split; the rest are hashed
            split = rec["meta"].get("split") or split_of(rec["meta"].get("group") or rec["id"], self.split)
            rec["meta"]["split"] = split
            if self.held is not None and split != "train":
                self.held.add(near_text(rec))
            self._stage[split].write(_dump(rec))
        self.staged += len(records)

    def _read_back(self, split: str) -> Iterator[list[Record]]:
        f = self._stage[split]
        f.seek(0)
        while lines := list(islice(f, BATCH)):
            yield [json.loads(line) for line in lines]

    def finish(
        self, label: Callable[[Record], Any] | None, count_labels: bool, report: Report | None = None
    ) -> tuple[int, int]:
        """Write the final files (not yet renamed); returns (train rows before, after decontamination), which also
        go to `report` as the step "decontaminate" (when it ran on staged records)."""
        train_in = 0
        for split in SPLITS:
            out = self._final[split] = _AtomicFile(self.dir / f"{split}.jsonl")
            for batch in self._read_back(split):
                if split == "train":
                    train_in += len(batch)
                    if self.held is not None:
                        batch = [r for r, ok in zip(batch, self.held.clean([near_text(r) for r in batch])) if ok]
                self._write(split, batch, out, label, count_labels)
            self._stage[split].close()
        if report is not None and self.held is not None and self.staged:
            report.step("decontaminate", train_in, self.rows["train"])
        return train_in, self.rows["train"]

    def _write(
        self,
        split: str,
        batch: list[Record],
        out: _AtomicFile,
        label: Callable[[Record], Any] | None,
        count_labels: bool,
    ) -> None:
        for rec in batch:
            if label is not None:
                rec["label"] = label(rec)
            if count_labels:
                self.labels[split][rec["label"]] += 1
            if rec["meta"].get("tokens") is not None:
                self.lengths.append(rec["meta"]["tokens"])
            out.f.write(_dump(rec))
        self.rows[split] += len(batch)

    def commit(self) -> None:
        for split in SPLITS:
            self._final[split].commit()
