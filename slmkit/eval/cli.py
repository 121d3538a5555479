"""The eval stage's commands: `slm eval-models MODEL... --data SPLIT [--fail-under METRIC=VALUE] [--rag-collection NAME]`
(compare models on a split), and what `slm eval` prints when it finishes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

TASKS = ("auto", "classification", "extraction", "qa", "generation", "math")


def rag_settings(collection: str | None, persist_dir: Path | None, top_k: int, rag_only: bool, data: str):
    """The --rag-* flags -> RagSettings, or None without --rag-collection."""
    from slmkit.errors import SlmError
    from slmkit.eval.rag import RagSettings
    from slmkit.runs import RunDir

    if collection is None:
        if persist_dir is not None or rag_only:
            raise SlmError("--rag-dir and --rag-only need --rag-collection", "name the collection built by `slm index`")
        return None
    if persist_dir is None:
        run = Path(data).expanduser()
        if not run.is_dir():
            raise SlmError(
                "--rag-collection needs --rag-dir when --data is a file",
                "pass the folder given to `slm index --persist-dir`",
            )
        persist_dir = RunDir(run).index_dir  # where `slm index --run RUN` stores its collection
    return RagSettings(collection, persist_dir.expanduser(), top_k, compare_without=not rag_only)


def show(summary: dict, console=None) -> None:
    """After `slm eval`: the metrics table."""
    if summary.get("models"):
        from slmkit.eval.tables import print_table

        print_table(summary, console)


def fail_on_collapse(summary: dict) -> None:
    """`--fail-on-collapse`: exit 1, naming each collapsed model (the base model does not count)."""
    from rich.console import Console

    from slmkit.eval.quality import collapsed_models

    bad = collapsed_models(summary)
    for name in bad:
        Console(stderr=True).print(
            f"[bold red]collapsed:[/] {name}: {summary['quality'][name]['collapse']['reason']}", soft_wrap=True
        )
    if bad:
        raise typer.Exit(1)


def eval_models(
    models: list[str] = typer.Argument(
        ..., metavar="MODEL...", help="Run folders, export folders, .gguf files, HF folders, 'default'"
    ),
    data: str = typer.Option(
        ...,
        "--data",
        help="a run folder, its JSONL split (runs/NAME/data/test.jsonl), "
        "or your own CSV/TSV/JSON/JSONL/Parquet of input/output rows",
    ),
    system: Optional[str] = typer.Option(
        None, "--system", help="system prompt for rows of your own file ({labels} lists the answers)"
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="a build YAML whose data: section (columns, system_prompt) reads your file"
    ),
    out_dir: Path = typer.Option(Path("eval"), "--out", help="Folder for metrics.json, report.html..."),
    task: str = typer.Option("auto", "--task", help="auto, classification, qa, generation or math"),
    fail_under: Optional[list[str]] = typer.Option(
        None, "--fail-under", help="METRIC=VALUE or MODEL:METRIC=VALUE; exit 1 below it"
    ),
    max_examples: Optional[int] = typer.Option(None, "--max-examples", min=1),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    perplexity: bool = typer.Option(True, "--perplexity/--no-perplexity"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    rag_collection: Optional[str] = typer.Option(
        None,
        "--rag-collection",
        help="ChromaDB collection (`slm index`): also score each model "
        "with its top-k chunks before the prompt, as MODEL+rag",
    ),
    rag_dir: Optional[Path] = typer.Option(
        None, "--rag-dir", help="its ChromaDB folder (default: RUN/index when --data is a run folder)"
    ),
    rag_k: int = typer.Option(3, "--rag-k", min=1, help="chunks retrieved per prompt"),
    rag_only: bool = typer.Option(False, "--rag-only", help="score only the +rag rows"),
    fail_collapse: bool = typer.Option(
        False, "--fail-on-collapse", help="exit 1 when a model collapsed (one answer to nearly everything)"
    ),
) -> None:
    """Score every MODEL on the same split; write metrics.json, predictions.jsonl and a self-contained report.html."""
    from rich.console import Console

    from slmkit.errors import SlmError
    from slmkit.eval.compare import check_fail_under, parse_fail_under
    from slmkit.eval.compare import eval_models as score_models
    from slmkit.eval.tables import print_table
    from slmkit.log import setup_logging

    if task not in TASKS:
        raise SlmError(
            f"--task {task!r} is not one of {', '.join(TASKS)}", "or leave it at auto to infer it from the data"
        )
    rules = parse_fail_under(fail_under or [])  # bad syntax fails before any model loads
    rag = rag_settings(rag_collection, rag_dir, rag_k, rag_only, data)
    setup_logging("text")
    summary = score_models(
        models,
        data,
        out_dir,
        task,
        max_examples,
        max_new_tokens,
        batch_size,
        perplexity,
        progress,
        rag=rag,
        system=system,
        config=config,
    )
    out = Console()
    print_table(summary, out)
    out.print(f"report: {out_dir / 'report.html'}")
    if fail_collapse:
        fail_on_collapse(summary)
    failures = check_fail_under(summary, rules)
    for f in failures:
        Console(stderr=True).print(f"[bold red]below threshold:[/] {f}")
    if failures:
        raise typer.Exit(1)
