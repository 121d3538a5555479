"""The data stage: read every source, clean, split, decontaminate, and write train/val/test JSONL + card.md.

    slm data CONFIG        (or inside `slm build`); what it did or would do: slm data inspect PATH_OR_RUN

Document sources (TXT/Markdown/reST/PDF/HTML/URLs, ChromaDB) become token chunks in chunks.jsonl;
table and chat sources become chat records in the splits. Table rows stream through in batches
(build.py): memory holds one batch plus the compact cross-row state listed in docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

from slmkit.config import BuildConfig, SourceConfig
from slmkit.io import atomic_write_jsonl, read_jsonl
from slmkit.runs import RunDir

from .build import Built, build
from .card import write_card
from .read.sources import resolve_sources
from .report import Report
from .split import SPLITS

log = logging.getLogger("slmkit.data")


def _token_stats(tok_name: str, built: Built, out_dir: Path) -> dict[str, Any]:
    lengths = built.lengths
    lengths.extend(c["meta"]["tokens"] for c in built.chunks if c["meta"].get("tokens") is not None)
    if not lengths:
        return {}
    from slmkit.plots import length_histogram

    length_histogram(lengths, out_dir / "lengths.png", title="Tokens per example")
    return {
        "tokenizer": tok_name,
        "min": min(lengths),
        "mean": round(sum(lengths) / len(lengths), 1),
        "max": max(lengths),
        "histogram": "lengths.png",
    }


def _source_rows(results: list) -> list[dict[str, Any]]:
    return [
        {
            "name": r.name,
            "type": r.type,
            "shapes": r.shapes,
            "rows_in": r.rows_in,
            "records": r.records,
            "chunks": len(r.chunks),
            "license": r.license,
            "sha256": r.sha256,
        }
        for r in results
    ]


def _summary(built: Built) -> dict[str, Any]:
    """The stage summary (manifest, card, `slm data inspect`) from a finished build."""
    results, report, chunks, task = built.results, built.report, built.chunks, built.task
    reports = [rep for r in results for rep in r.reports]
    labels = set().union(*built.labels.values()) - {None}
    licenses = sorted(
        {r.license for r in results if r.license} | {c["meta"]["license"] for c in chunks if c["meta"].get("license")}
    )
    steps = report.steps
    return {
        "rows": dict(built.rows),
        "dropped": {
            "duplicate": sum(rep["dropped"]["duplicate"] for rep in reports)
            + steps.get("exact_dedup", {}).get("dropped", 0),
            "empty": sum(rep["dropped"]["empty"] for rep in reports),
            "near_duplicate": steps.get("near_dedup", {}).get("dropped", 0),
            "length": steps.get("length_filter", {}).get("dropped", 0),
            "pii": sum(v["dropped"] for k, v in steps.items() if k.startswith("pii_")),
            "contaminated": steps.get("decontaminate", {}).get("dropped", 0),
        },
        "task": task,
        "labels": sorted(labels) if task == "classification" else [],
        "source": ", ".join(r.name for r in results),
        "source_sha256": results[0].sha256
        if len(results) == 1
        else hashlib.sha256("".join(r.sha256 or "" for r in results).encode()).hexdigest(),
        "license": "; ".join(dict.fromkeys(r.license for r in results if r.license)) or None,
        "columns_picked": next((rep["columns_picked"] for rep in reports), {}),
        "sources": _source_rows(results),
        "chunks": len(chunks),
        "licenses": licenses,
        "notes": report.notes,
        "answers": (answers := _answers(reports)),
        "warnings": _imbalance(answers),
        **report.as_dict(),
    }


# One answer on this share of the rows or more is a model's easiest way to look right (issue 15: 44% `none`
# answers trained a model that said `none` to 98.5% of the test rows).
IMBALANCE_SHARE = 0.4


def _answers(reports: list[dict]) -> dict[str, Any]:
    """Rows and the most common answers (with their share) over every table, as read (before cleaning)."""
    rows = sum(rep.get("answers", {}).get("rows", 0) for rep in reports)
    merged: dict[str, int] = {}
    for rep in reports:
        for answer, n in rep.get("answers", {}).get("top", []):
            merged[answer] = merged.get(answer, 0) + n
    top = sorted(merged.items(), key=lambda kv: -kv[1])[:5]
    return {"rows": rows, "top": [[a, n, round(n / rows, 4)] for a, n in top] if rows else []}


def _imbalance(answers: dict[str, Any]) -> list[str]:
    if answers["rows"] < 10 or len(answers["top"]) < 2 or answers["top"][0][2] < IMBALANCE_SHARE:
        return []
    answer, n, share = answers["top"][0]
    return [
        f"answer {answer[:60]!r} is {share:.0%} of the rows ({n} of {answers['rows']}): a model can score well "
        f"by always giving it; consider train.balance: cap, and check the eval's collapse warning"
    ]


def run(cfg: BuildConfig, run_dir: RunDir, *, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """The run's data/ folder from the config's sources (plus the synth stage's rows when it runs); `resume` has
    nothing to resume: outputs are renamed into place together at the end."""
    run = RunDir(run_dir)
    return prepare(with_synth_rows(cfg, run), run.data_dir)


def with_synth_rows(cfg: BuildConfig, run: RunDir) -> BuildConfig:
    """The config the data stage reads: with `synth` in the stages, the teacher's rows are one more source."""
    rows = run.synth_rows
    if "synth" not in cfg.stages or not rows.is_file():
        return cfg
    sources = resolve_sources(cfg) if (cfg.data.path or cfg.data.sources) else []
    # Rows are canonical chat records; meta.synthetic (teacher, recipe, cache key) rides through cleaning.
    sources.append(SourceConfig(path=str(rows), type="jsonl", license=cfg.synth.license))
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"sources": sources, "path": None})})


def prepare(cfg: BuildConfig, out_dir: Path, show_progress: bool = False) -> dict[str, Any]:
    """Build train/val/test.jsonl, chunks.jsonl (documents), lengths.png and card.md in `out_dir`; returns a summary."""
    out_dir = Path(out_dir)
    built = build(cfg, out_dir, show_progress)
    summary = _summary(built)
    if built.chunks:
        atomic_write_jsonl(out_dir / "chunks.jsonl", built.chunks)
    summary["tokens"] = _token_stats(built.tok_name, built, out_dir)
    write_card(out_dir / "card.md", summary, built.labels)
    log.info(
        "data: %s rows (train/val/test %s), %d chunks, task %s",
        sum(summary["rows"].values()),
        "/".join(str(built.rows[s]) for s in SPLITS),
        len(built.chunks),
        summary["task"],
    )
    return summary


def load_records(
    cfg: BuildConfig, show_progress: bool = False
) -> tuple[dict[str, list], list[dict], dict[str, Any], Report]:
    """Read + clean + split with the records in memory: (groups, chunks, summary without output files, report).

    For callers that need the records themselves; prepare() and inspect() stream instead.
    """
    with tempfile.TemporaryDirectory(prefix="slm-data-") as tmp:
        built = build(cfg, Path(tmp), show_progress)
        groups = {s: read_jsonl(Path(tmp) / f"{s}.jsonl") for s in SPLITS}
    summary = _summary(built)
    summary["_tok_name"] = built.tok_name
    return groups, built.chunks, summary, built.report


def inspect(cfg: BuildConfig) -> dict[str, Any]:
    """The summary prepare() would produce, without writing anything (split files go to a temp folder)."""
    with tempfile.TemporaryDirectory(prefix="slm-data-") as tmp:
        return _summary(build(cfg, Path(tmp)))
