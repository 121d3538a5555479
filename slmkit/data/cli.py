"""The data stage's commands: `slm data inspect PATH_OR_RUN` and `slm index DOCS --collection NAME`, and what
`slm data` prints when it finishes (the stage itself runs through the pipeline, like every stage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from slmkit.errors import SlmError
from slmkit.runs import RunDir

out = Console()


def _summary_of_run(run_dir: Path) -> dict[str, Any] | None:
    manifest = RunDir(run_dir).manifest("data")
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("summary")
    return None


def print_summary(summary: dict[str, Any], console: Console = out) -> None:
    """The card's numbers as a few rich tables."""
    from rich.table import Table

    rows = summary.get("rows", {})
    console.print(
        f"[bold]rows[/]: {sum(rows.values())} ({', '.join(f'{k} {v}' for k, v in rows.items())}); "
        f"task {summary.get('task')}; chunks {summary.get('chunks', 0)}"
    )
    if summary.get("sources"):
        t = Table("source", "type", "shape", "rows read", "records", "chunks", "licence")
        for s in summary["sources"]:
            t.add_row(
                s["name"],
                s["type"],
                ", ".join(s["shapes"]),
                str(s["rows_in"]),
                str(s["records"]),
                str(s["chunks"]),
                s["license"] or "-",
            )
        console.print(t)
    if summary.get("steps"):
        t = Table("step", "in", "out", "dropped", "changed")
        for name, c in summary["steps"].items():
            t.add_row(name, *(str(c[k]) for k in ("in", "out", "dropped", "changed")))
        console.print(t)
    answers = summary.get("answers") or {}
    if answers.get("top"):
        shown = ", ".join(f"{a[:40]!r} {share:.0%}" for a, _n, share in answers["top"][:3])
        console.print(f"[bold]answers[/]: {shown}", soft_wrap=True)
    for w in summary.get("warnings", []):
        console.print(f"[bold red]warning:[/] {w}", soft_wrap=True)
    console.print(f"[bold]PII[/]: {', '.join(f'{k} {v}' for k, v in summary.get('pii', {}).items()) or 'none found'}")
    if summary.get("skipped"):
        console.print(
            f"[bold]skipped[/] {len(summary['skipped'])}: "
            + ", ".join(f"{k} x{v}" for k, v in summary["skip_reasons"].items())
        )
    console.print(
        f"[bold]licences[/]: {'; '.join(summary.get('licenses') or []) or summary.get('license') or 'unknown'}"
    )
    if summary.get("tokens"):
        t = summary["tokens"]
        console.print(f"[bold]tokens[/] ({t['tokenizer']}): min {t['min']}, mean {t['mean']}, max {t['max']}")


def inspect_target(target: str, base_model: str = "default", sets: list[str] | None = None) -> dict[str, Any]:
    """Summary of a run folder's data stage, or of reading + cleaning a file/folder/URL/config (nothing written)."""
    from slmkit.config import cli_overrides, load_config

    from .stage import inspect

    path = Path(target).expanduser()
    if path.is_dir() and RunDir(path).data_dir.is_dir():
        summary = _summary_of_run(path)
        if summary is None:
            raise SlmError(f"{path}: the data stage has no manifest yet", "run `slm data` for that run first")
        return summary
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
        cfg = load_config(path, cli_overrides(sets or []))
    else:
        over = cli_overrides(sets or [])
        over.setdefault("data", {})["path"] = target if "://" in target else str(path.resolve())
        over.setdefault("model", {}).setdefault("base_model", base_model)
        cfg = load_config(None, over)
    return inspect(cfg)


def show(summary: dict[str, Any], console: Console = out) -> None:
    """After `slm data`: rows per split and the task."""
    rows = summary.get("rows", {})
    if rows:
        console.print(
            f"rows: {sum(rows.values())} ({', '.join(f'{k} {v}' for k, v in rows.items())}); task {summary.get('task')}"
        )
    for w in summary.get("warnings", []):
        console.print(f"[bold red]warning:[/] {w}", soft_wrap=True)


def data_inspect(
    target: str = typer.Argument(
        ..., metavar="PATH_OR_RUN", help="a run folder, a config YAML, or a data file/folder/URL"
    ),
    base_model: str = typer.Option("default", "--base-model", help="tokenizer for token counts"),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="config override, e.g. data.clean.pii.action=drop"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Print what the data stage did (or would do): sources, steps, PII counts, licences, token lengths."""
    summary = inspect_target(target, base_model, sets)
    if as_json:
        out.print_json(data=summary)
    else:
        print_summary(summary)


def index(
    docs: list[str] = typer.Argument(..., metavar="DOCS...", help="files, folders or URLs of documents"),
    collection: str = typer.Option(..., "--collection", help="ChromaDB collection name (3-512 chars)"),
    persist_dir: Optional[Path] = typer.Option(None, "--persist-dir", help="ChromaDB folder"),
    run: Optional[Path] = typer.Option(None, "--run", help="run folder: the index goes in RUN/index"),
    max_tokens: int = typer.Option(256, "--max-tokens", help="chunk size in MiniLM tokens"),
    overlap: int = typer.Option(32, "--overlap", help="tokens repeated between chunks"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Chunk documents, embed them with the local all-MiniLM-L6-v2 and store them in ChromaDB."""
    from slmkit.config.data import ChunkConfig

    from .index import build_index

    if persist_dir is None and run is None:
        raise SlmError(
            "where should the index go?", "pass --persist-dir DIR, or --run RUN_DIR (stored in RUN_DIR/index)"
        )
    if overlap >= max_tokens:
        raise SlmError(f"--overlap {overlap} must be smaller than --max-tokens {max_tokens}", "e.g. --overlap 32")
    target = persist_dir if persist_dir is not None else RunDir(run).index_dir
    res = build_index(
        docs, collection, target, ChunkConfig(max_tokens=max_tokens, overlap=overlap), show_progress=progress
    )
    out.print(
        f"[bold]index[/]: {res['chunks']} chunks -> collection {collection!r} in {target} ({res['count']} stored)"
    )
    if res["skipped"]:
        out.print(f"skipped {len(res['skipped'])}: " + ", ".join(f"{k} x{v}" for k, v in res["skip_reasons"].items()))
