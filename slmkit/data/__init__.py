"""Data stage: read every source, clean, split, decontaminate, and write train/val/test JSONL + card.md.

Document sources (TXT/Markdown/reST/PDF/HTML/URLs, ChromaDB) become token chunks in chunks.jsonl;
table and chat sources become chat records in the splits.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from slmkit.config import BuildConfig
from slmkit.errors import SlmError
from slmkit.io import atomic_write_jsonl

from .card import write_card
from .clean import clean, decontaminate
from .ingest import read_source, resolve_sources, source_fingerprint
from .records import to_records
from .report import Report
from .sources import read_table
from .split import SPLITS, assign_splits
from .tokens import get_tokenizer, tokenizer_name

__all__ = ["prepare", "inspect", "read_table", "to_records", "source_fingerprint"]

log = logging.getLogger("slmkit.data")


def _ingest(cfg: BuildConfig, tok: Any, report: Report, show_progress: bool = False) -> list:
    from rich.progress import Progress

    sources = resolve_sources(cfg)
    results = []
    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task("reading sources", total=len(sources))
        for src in sources:
            try:
                results.append(read_source(src, cfg, tok, report))
            except SlmError as e:
                if len(sources) == 1:
                    raise
                report.skip(src.path, e.message)
            bar.advance(task)
    if not any(r.records or r.chunks for r in results):
        reasons = "; ".join(f"{s['where']}: {s['reason']}" for s in report.skipped[:5])
        raise SlmError(f"nothing usable in the data ({reasons or 'no rows or documents found'})",
                       "fix or replace the inputs listed; supported: tables, chat logs, TXT/Markdown/reST/PDF/HTML, URLs")
    return results


def _task_and_labels(cfg: BuildConfig, results: list, records: list[dict]) -> str:
    reports = [rep for r in results for rep in r.reports]
    if cfg.data.task == "generation":
        for rec in records:
            rec["label"] = None
    if cfg.data.task != "auto":
        return cfg.data.task
    if reports and all(rep["task"] == "classification" for rep in reports):
        for rec in records:  # labels follow the cleaned answer text
            rec["label"] = rec["messages"][-1]["content"]
        return "classification"
    for rec in records:
        rec["label"] = None
    return "generation"


def _token_stats(tok_name: str, records: list[dict], chunks: list[dict], out_dir: Path) -> dict[str, Any]:
    lengths = [r["meta"]["tokens"] for r in records + chunks if r["meta"].get("tokens") is not None]
    if not lengths:
        return {}
    from slmkit.plots import length_histogram

    length_histogram(lengths, out_dir / "lengths.png", title="Tokens per example")
    return {"tokenizer": tok_name, "min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1),
            "max": max(lengths), "histogram": "lengths.png"}


def _source_rows(results: list) -> list[dict[str, Any]]:
    return [{"name": r.name, "type": r.type, "shapes": r.shapes, "rows_in": r.rows_in, "records": len(r.records),
             "chunks": len(r.chunks), "license": r.license, "sha256": r.sha256} for r in results]


def run(cfg: BuildConfig, show_progress: bool = False) -> tuple[dict[str, list], list[dict], dict[str, Any], Report]:
    """Read + clean + split in memory: (groups, chunks, summary without output files, report)."""
    clean_cfg = cfg.data.clean
    tok_name = tokenizer_name(cfg)
    tok = get_tokenizer(tok_name)
    report = Report()
    results = _ingest(cfg, tok, report, show_progress)
    records = [rec for r in results for rec in r.records]
    chunks = [c for r in results for c in r.chunks]
    first_dupes = sum(rep["dropped"]["duplicate"] for r in results for rep in r.reports)
    empty = sum(rep["dropped"]["empty"] for r in results for rep in r.reports)
    records = clean(records, clean_cfg, tok, report, cfg.config_dir) if records else []
    chunk_report = Report()
    chunks = clean(chunks, clean_cfg.model_copy(update={"steps": []}), tok, chunk_report, cfg.config_dir) if chunks else []
    report.pii.update(chunk_report.pii)
    report.steps.update({f"chunks/{k}": v for k, v in chunk_report.steps.items()})
    task = _task_and_labels(cfg, results, records)
    groups = assign_splits(records, cfg.data.split)
    if records:
        groups = decontaminate(groups, clean_cfg.decontaminate, report)
        if not groups["train"]:
            raise SlmError(f"{results[0].name}: no training rows left ({len(records)} usable rows, all in val/test)",
                           "add more rows or lower data.split.val / data.split.test")
    else:
        log.warning("data: only documents (%d chunks); the synth stage turns them into training pairs", len(chunks))
    final = [r for s in SPLITS for r in groups[s]]
    labels = Counter(r["label"] for r in final if r.get("label") is not None)
    licenses = sorted({r.license for r in results if r.license} | {c["meta"]["license"] for c in chunks if c["meta"].get("license")})
    steps = report.steps
    summary = {
        "rows": {s: len(groups[s]) for s in SPLITS},
        "dropped": {"duplicate": first_dupes + steps.get("exact_dedup", {}).get("dropped", 0), "empty": empty,
                    "near_duplicate": steps.get("near_dedup", {}).get("dropped", 0),
                    "length": steps.get("length_filter", {}).get("dropped", 0),
                    "pii": sum(v["dropped"] for k, v in steps.items() if k.startswith("pii_")),
                    "contaminated": steps.get("decontaminate", {}).get("dropped", 0)},
        "task": task,
        "labels": sorted(labels) if task == "classification" else [],
        "source": ", ".join(r.name for r in results),
        "source_sha256": results[0].sha256 if len(results) == 1 else
        hashlib.sha256("".join(r.sha256 or "" for r in results).encode()).hexdigest(),
        "license": "; ".join(dict.fromkeys(r.license for r in results if r.license)) or None,
        "columns_picked": next((rep["columns_picked"] for r in results for rep in r.reports), {}),
        "sources": _source_rows(results),
        "chunks": len(chunks),
        "licenses": licenses,
        "notes": report.notes,
        **report.as_dict(),
    }
    summary["_tok_name"] = tok_name
    return groups, chunks, summary, report


def prepare(cfg: BuildConfig, out_dir: Path, show_progress: bool = False) -> dict[str, Any]:
    """Build train/val/test.jsonl, chunks.jsonl (documents), lengths.png and card.md in `out_dir`; returns a summary."""
    groups, chunks, summary, _ = run(cfg, show_progress)
    out_dir = Path(out_dir)
    for split in SPLITS:
        atomic_write_jsonl(out_dir / f"{split}.jsonl", groups[split])
    if chunks:
        atomic_write_jsonl(out_dir / "chunks.jsonl", chunks)
    summary["tokens"] = _token_stats(summary.pop("_tok_name"), [r for s in SPLITS for r in groups[s]], chunks, out_dir)
    write_card(out_dir / "card.md", summary, groups)
    log.info("data: %s rows (train/val/test %s), %d chunks, task %s", sum(summary["rows"].values()),
             "/".join(str(len(groups[s])) for s in SPLITS), len(chunks), summary["task"])
    return summary


def inspect(cfg: BuildConfig) -> dict[str, Any]:
    """The summary prepare() would produce, without writing anything."""
    _, _, summary, _ = run(cfg)
    summary.pop("_tok_name", None)
    return summary
