"""Build the data stage's outputs in one streaming pass: sources -> record batches -> cleaning -> split files.

Table rows are read in batches (table_stream.py), turned into records, cleaned (clean.Cleaner) and staged per
split (split.SplitFiles) one batch at a time; document chunks are kept in memory and cleaned as one more run
of the Cleaner (no user steps). What stays in memory across rows is listed in docs/architecture.md ("Data stage
memory").
"""

from __future__ import annotations

import logging
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.config import BuildConfig
from slmkit.errors import SlmError

from .clean import Cleaner
from .clean.dedup import HeldNgrams
from .read.sources import SourceResult, read_source, resolve_sources
from .report import Report
from .split import SPLITS, SplitFiles, assign_splits
from .table_stream import TableStream
from .tokens import get_tokenizer, tokenizer_name

log = logging.getLogger("slmkit.data")
CHUNK_BATCH = 2000  # document chunks per Cleaner call


@dataclass
class Built:
    """What a streaming build leaves: counts for the summary; the split files are in the output folder."""

    results: list[SourceResult]
    chunks: list[dict[str, Any]]
    report: Report
    task: str
    tok_name: str
    rows: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    labels: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in SPLITS})
    lengths: array = field(default_factory=lambda: array("i"))


class _SourceError(Exception):
    """A table failed before any of its records went downstream: the source is skipped (or the run fails)."""

    def __init__(self, error: SlmError):
        super().__init__(error.message)
        self.error = error


def _stream_table(table: TableStream, sink: Callable[[list], None]) -> None:
    """Send the table's record batches to `sink`; its own errors become _SourceError while nothing was sent."""
    batches, sent = table.batches(), False
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except SlmError as e:
            if sent:
                raise
            raise _SourceError(e) from None
        sent = True
        sink(batch)


def _stream_source(res: SourceResult, sink: Callable[[list], None], report: Report) -> None:
    late = 0  # skips inserted so far, each at the place its file had when the folder was read
    for table in res.tables:
        try:
            _stream_table(table, sink)
        except _SourceError as e:
            if table.skip_as is None:
                raise
            report.skip_at(table.skip_index + late, table.skip_as, e.error.message)  # skip just that file
            late += 1
            table.failed = True
            continue
        res.table_done(table)


def _ingest(
    cfg: BuildConfig, tok: Any, report: Report, sink: Callable[[list], None], show_progress: bool
) -> list[SourceResult]:
    """Read every source, streaming its records into `sink`; a bad source is skipped when there are several.

    Only the source's own errors are skipped: an error from `sink` (cleaning, user steps) stops the run.
    """
    from rich.progress import Progress

    sources = resolve_sources(cfg)
    results = []

    def failed(err: SlmError, src: Any) -> None:
        if len(sources) == 1 or src.role == "test":  # a test split that fails to read is never skipped
            raise err
        report.skip(src.path, err.message)

    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task("reading sources", total=len(sources))
        for src in sources:
            bar.advance(task)
            try:
                res = read_source(src, cfg, tok, report)
            except SlmError as e:
                failed(e, src)
                continue
            try:
                _stream_source(res, sink, report)
            except _SourceError as e:
                failed(e.error, src)
                continue
            res.finish()
            results.append(res)
    if not any(r.records or r.chunks for r in results):
        reasons = "; ".join(f"{s['where']}: {s['reason']}" for s in report.skipped[:5])
        raise SlmError(
            f"nothing usable in the data ({reasons or 'no rows or documents found'})",
            "fix or replace the inputs listed; supported: tables, chat logs, TXT/Markdown/reST/PDF/HTML, URLs",
        )
    return results


def _task(cfg: BuildConfig, results: list[SourceResult]) -> str:
    """data.task, else classification (or extraction) when every table looked like it."""
    if cfg.data.task != "auto":
        return cfg.data.task
    reports = [rep for r in results for rep in r.reports]
    for task in ("classification", "extraction"):
        if reports and all(rep["task"] == task for rep in reports):
            return task
    return "generation"


def _label_rule(cfg: BuildConfig, task: str) -> Callable[[dict], Any] | None:
    """How finish() sets labels: auto classification labels follow the cleaned answer; explicit tasks keep theirs."""
    if cfg.data.task != "auto":
        return None
    if task == "classification":
        return lambda rec: rec["messages"][-1]["content"]
    return lambda rec: None


def _clean_chunks(cfg: BuildConfig, chunks: list[dict], tok: Any, report: Report) -> list[dict]:
    """The document chunks through the cleaning steps (no user steps); counted as steps "chunks/<step>"."""
    if not chunks:
        return []
    chunk_report = Report()
    with Cleaner(cfg.data.clean.model_copy(update={"steps": []}), tok, chunk_report, cfg.config_dir) as cleaner:
        chunks = [
            c for start in range(0, len(chunks), CHUNK_BATCH) for c in cleaner(chunks[start : start + CHUNK_BATCH])
        ]
    report.pii.update(chunk_report.pii)
    report.steps.update({f"chunks/{k}": v for k, v in chunk_report.steps.items()})
    return chunks


def build(cfg: BuildConfig, out_dir: Path, show_progress: bool = False) -> Built:
    """Read, clean and split every source into out_dir/{train,val,test}.jsonl (renamed into place at the end)."""
    tok_name = tokenizer_name(cfg)
    tok = get_tokenizer(tok_name)
    report = Report()
    clean_cfg = cfg.data.clean
    held = HeldNgrams(clean_cfg.decontaminate.ngram) if clean_cfg.decontaminate.enabled else None
    split = cfg.data.split
    if any(s.role == "test" for s in resolve_sources(cfg)):  # the user's test file is the test split, whole
        log.info(
            "data: the test split is %s, as given; data.split.test (%s) is not used",
            cfg.data.test_path or "the test source",
            split.test,
        )
        split = split.model_copy(update={"test": 0.0})
    with SplitFiles(Path(out_dir), split, held) as files:
        with Cleaner(clean_cfg, tok, report, cfg.config_dir, spill_dir=files.dir) as cleaner:
            results = _ingest(cfg, tok, report, lambda batch: files.add(cleaner(batch)), show_progress)
        chunks = _clean_chunks(cfg, [c for r in results for c in r.chunks], tok, report)
        built = Built(results, chunks, report, _task(cfg, results), tok_name)
        assign_splits([], cfg.data.split)  # refuses val + test >= 1, at the same point as before
        _finish_splits(cfg, files, built)
        files.commit()
    return built


def _finish_splits(cfg: BuildConfig, files: SplitFiles, built: Built) -> None:
    """Decontaminate train, set labels, count; refuse a run whose records all landed in val/test."""
    start = time.perf_counter()
    _, train_out = files.finish(_label_rule(cfg, built.task), built.task == "classification", built.report)
    built.report.seconds["finish_splits"] += time.perf_counter() - start
    built.rows, built.labels, built.lengths = files.rows, files.labels, files.lengths
    if not files.staged:
        log.warning(
            "data: only documents (%d chunks); the synth stage turns them into training pairs", len(built.chunks)
        )
        return
    if not train_out:
        raise SlmError(
            f"{built.results[0].name}: no training rows left ({files.staged} usable rows, all in val/test)",
            "add more rows or lower data.split.val / data.split.test",
        )
