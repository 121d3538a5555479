"""The train stage's commands: `slm tune CONFIG --budget 45m` (the recipe search), and what `slm train` prints when
it finishes (the stage itself runs through the pipeline, like every stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from slmkit.config import flag_overrides, load_config
from slmkit.errors import SlmError
from slmkit.log import setup_logging
from slmkit.options import LogFmtOpt, NameOpt, OutOpt, SetOpt
from slmkit.runs import RunDir, read_manifest

out = Console()


def show(summary: dict, console: Console = out) -> None:
    """Steps, last logged loss, held-out loss and speed (and the recipe search, when one ran)."""
    if "steps" not in summary:
        return
    val = summary.get("val_loss")
    console.print(
        f"{summary['steps']} steps, loss {summary['final_loss']:.4f}"
        + (f", val loss {val:.4f}" if val is not None else "")
        + f", {summary.get('tokens_per_s', 0)} tokens/s ({summary.get('method')}, {summary.get('dtype')})"
    )
    if summary.get("search"):
        show_search(summary["search"], console)


def show_search(s: dict, console: Console = out) -> None:
    best = s["best"]
    states = [t["state"] for t in s["trials"]]
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
    console.print(
        f"search: {states.count('COMPLETE')} finished, {states.count('PRUNED')} pruned, "
        f"{states.count('FAIL')} failed in {s['spent_s'] / 60:.1f} of {s['budget_s'] / 60:.1f} min "
        f"({s['rows']} of {s['rows_total']} rows a trial); best {s['metric']} {best['value']:.4f} "
        f"(trial {best['number']}: {params})"
    )
    console.print(f"best config: {s['best_config']}")


def tune(
    config: Path,
    budget: Optional[str] = typer.Option(
        None, "--budget", help="Wall time for the search: 45m, 1h30m, 90s (default: train.search.budget_minutes)"
    ),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="At most this many finished trials"),
    sets: Optional[list[str]] = SetOpt,
    name: Optional[str] = NameOpt,
    output_dir: Optional[str] = OutOpt,
    log_format: str = LogFmtOpt,
) -> None:
    """Search lr, epochs, LoRA r/alpha and train.balance within a time budget (Optuna); resumable; writes
    runs/<name>/tune/best.yaml (rerun it with `slm build`) and a table of the trials."""
    from slmkit.train.budget import parse_budget

    seconds = parse_budget(budget) if budget is not None else None
    cfg = load_config(config, flag_overrides(sets, name=name, output_dir=output_dir))
    run = RunDir.of(cfg)
    setup_logging(log_format, run.log_file)
    if (read_manifest(run.root, "data") or {}).get("status") != "done":
        raise SlmError(f"no finished data stage in {run.root}", f"run `slm data {config}` first")
    from slmkit.train.search import search
    from slmkit.train.stage import fine_tune

    s = search(cfg, run, fine_tune, budget_s=seconds, trials=trials)
    out.print(f"[bold]tune[/]: {len(s['trials'])} trials ({s['stopped']}) -> {Path(s['best_config']).parent}")
    show_search(s)
