"""CLI of the data stage: `slm index DOCS --collection NAME` and `slm data inspect PATH_OR_RUN`.

`register(app)` turns the existing `slm data CONFIG` command into a group whose default command is the
old one, so `slm data CONFIG ...` keeps working and `slm data inspect ...` is added beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from slmkit.errors import SlmError

out = Console()


class _DefaultGroup(TyperGroup):
    """A group that runs its `run` command when the first argument is not a sub-command name."""

    def parse_args(self, ctx, args):  # noqa: ANN001 - click's signature
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _summary_of_run(run_dir: Path) -> dict[str, Any] | None:
    manifest = run_dir / "data" / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("summary")
    return None


def print_summary(summary: dict[str, Any], console: Console = out) -> None:
    """The card's numbers as a few rich tables."""
    from rich.table import Table

    rows = summary.get("rows", {})
    console.print(f"[bold]rows[/]: {sum(rows.values())} ({', '.join(f'{k} {v}' for k, v in rows.items())}); "
                  f"task {summary.get('task')}; chunks {summary.get('chunks', 0)}")
    if summary.get("sources"):
        t = Table("source", "type", "shape", "rows read", "records", "chunks", "licence")
        for s in summary["sources"]:
            t.add_row(s["name"], s["type"], ", ".join(s["shapes"]), str(s["rows_in"]), str(s["records"]),
                      str(s["chunks"]), s["license"] or "-")
        console.print(t)
    if summary.get("steps"):
        t = Table("step", "in", "out", "dropped", "changed")
        for name, c in summary["steps"].items():
            t.add_row(name, *(str(c[k]) for k in ("in", "out", "dropped", "changed")))
        console.print(t)
    console.print(f"[bold]PII[/]: {', '.join(f'{k} {v}' for k, v in summary.get('pii', {}).items()) or 'none found'}")
    if summary.get("skipped"):
        console.print(f"[bold]skipped[/] {len(summary['skipped'])}: "
                      + ", ".join(f"{k} x{v}" for k, v in summary["skip_reasons"].items()))
    console.print(f"[bold]licences[/]: {'; '.join(summary.get('licenses') or []) or summary.get('license') or 'unknown'}")
    if summary.get("tokens"):
        t = summary["tokens"]
        console.print(f"[bold]tokens[/] ({t['tokenizer']}): min {t['min']}, mean {t['mean']}, max {t['max']}")


def inspect_target(target: str, base_model: str = "default", sets: list[str] | None = None) -> dict[str, Any]:
    """Summary of a run folder's data stage, or of reading + cleaning a file/folder/URL/config (nothing written)."""
    from slmkit.config import cli_overrides, load_config

    from . import inspect

    path = Path(target).expanduser()
    if path.is_dir() and (path / "data").is_dir():
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


def register(app: typer.Typer) -> None:
    """Add `slm index` and `slm data inspect` to the `slm` app."""
    existing = next((c for c in app.registered_commands if (c.name or c.callback.__name__) == "data"), None)
    data_app = typer.Typer(cls=_DefaultGroup, no_args_is_help=True,
                           help="Prepare the data (`slm data CONFIG`) or inspect it (`slm data inspect PATH_OR_RUN`).")
    if existing is not None:
        app.registered_commands.remove(existing)
        data_app.command("run", help=existing.callback.__doc__)(existing.callback)
    app.add_typer(data_app, name="data")

    @data_app.command("inspect")
    def data_inspect(target: str = typer.Argument(..., metavar="PATH_OR_RUN",
                                                 help="a run folder, a config YAML, or a data file/folder/URL"),
                     base_model: str = typer.Option("default", "--base-model", help="tokenizer for token counts"),
                     sets: Optional[list[str]] = typer.Option(None, "--set", help="config override, e.g. data.clean.pii.action=drop"),
                     as_json: bool = typer.Option(False, "--json", help="print the summary as JSON")) -> None:
        """Print what the data stage did (or would do): sources, steps, PII counts, licences, token lengths."""
        summary = inspect_target(target, base_model, sets)
        if as_json:
            out.print_json(data=summary)
        else:
            print_summary(summary)

    @app.command("index")
    def index(docs: list[str] = typer.Argument(..., metavar="DOCS...", help="files, folders or URLs of documents"),
              collection: str = typer.Option(..., "--collection", help="ChromaDB collection name (3-512 chars)"),
              persist_dir: Optional[Path] = typer.Option(None, "--persist-dir", help="ChromaDB folder"),
              run: Optional[Path] = typer.Option(None, "--run", help="run folder: the index goes in RUN/index"),
              max_tokens: int = typer.Option(256, "--max-tokens", help="chunk size in MiniLM tokens"),
              overlap: int = typer.Option(32, "--overlap", help="tokens repeated between chunks"),
              progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
        """Chunk documents, embed them with the local all-MiniLM-L6-v2 and store them in ChromaDB."""
        from .config import ChunkConfig
        from .index import build_index

        if persist_dir is None and run is None:
            raise SlmError("where should the index go?", "pass --persist-dir DIR, or --run RUN_DIR (stored in RUN_DIR/index)")
        if overlap >= max_tokens:
            raise SlmError(f"--overlap {overlap} must be smaller than --max-tokens {max_tokens}", "e.g. --overlap 32")
        target = persist_dir if persist_dir is not None else run / "index"
        res = build_index(docs, collection, target, ChunkConfig(max_tokens=max_tokens, overlap=overlap),
                          show_progress=progress)
        out.print(f"[bold]index[/]: {res['chunks']} chunks -> collection {collection!r} in {target} "
                  f"({res['count']} stored)")
        if res["skipped"]:
            out.print(f"skipped {len(res['skipped'])}: " + ", ".join(f"{k} x{v}" for k, v in res["skip_reasons"].items()))
