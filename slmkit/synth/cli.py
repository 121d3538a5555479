"""The synth stage's command-line parts: the `slm synth --dry-run` plan and what `slm synth` prints when it finishes
(the stage itself runs through the pipeline, like every stage)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from slmkit.config import BuildConfig
from slmkit.errors import SlmError
from slmkit.runs import RunDir

out = Console()


def require_recipes(cfg: BuildConfig, config: Path | None) -> None:
    if not cfg.synth.recipes:
        raise SlmError(f"{config}: the 'synth' section has no recipes", "add synth: {teacher: {...}, recipes: [...]}")


def dry_run(cfg: BuildConfig, log_format: str) -> None:
    """Print the calls the config would make and how many are cached; contacts no teacher."""
    from slmkit.synth.stage import plan

    p = plan(cfg.synth, RunDir.of(cfg).root, Path(cfg.config_dir or "."))
    if log_format == "json":
        out.print_json(data=p)
        return
    for r in p["recipes"]:
        out.print(
            f"  {r['recipe']:<14} {r['calls']:>5} calls  {r['cached']:>5} cached  "
            f"+{r['more_at_most']} at most  ~{r['rows_expected']} rows",
            soft_wrap=True,
        )
    out.print(
        f"total: {p['calls']} calls, {p['cached']} cached, {p['calls'] - p['cached']} to make, "
        f"+ up to {p['more_at_most']} more depending on replies (retries, judge, batches)",
        soft_wrap=True,
    )
    out.print(f"cache: {p['cache']}", soft_wrap=True, highlight=False)


def show(summary: dict, console: Console = out) -> None:
    """Rows per recipe, teacher calls and cost, and where the rows went."""
    if "stats" not in summary:
        return
    s = summary["stats"]
    for label, r in summary["recipes"].items():
        console.print(f"  {label:<14} {r['rows']:>5} rows  dropped {r['dropped'] or '-'}", soft_wrap=True)
    console.print(
        f"calls: {s['calls']} made, {s['cached']} cached, {s['retries']} retries, failed {s['failed'] or '-'}; "
        f"tokens {s['prompt_tokens']} in / {s['completion_tokens']} out; cost ${s['cost_usd']:.4f}",
        soft_wrap=True,
    )
    if summary["stopped"]:
        console.print(f"[yellow]stopped early: {summary['stopped']}[/] (rerun to continue; cached calls are free)")
    console.print(f"[bold]synth[/]: {summary['rows']} rows -> {summary['path']}", soft_wrap=True)
