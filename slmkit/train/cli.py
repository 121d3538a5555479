"""The train stage's command-line parts: what `slm train` prints when it finishes, and the work of `slm tune CONFIG
--budget 45m` (the recipe search; the typer command is in slmkit/cli.py, which checks the data stage first)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from slmkit.runs import RunDir

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
    if final := s.get("final"):
        cap = f" (capped from {final['natural_steps']} to fit the budget)" if final["capped"] else ""
        console.print(
            f"final training: {final['steps']} steps on {final['rows']} rows{cap}, ~{final['estimated_s'] / 60:.1f} min"
        )
    console.print(f"best config: {s['best_config']}")


def run_tune(cfg, seconds: float | None, trials: int | None) -> None:
    """`slm tune` once its data stage is checked (slmkit.cli.tune): the search, then its table and best config."""
    from slmkit.train.search import search
    from slmkit.train.stage import fine_tune

    s = search(cfg, RunDir.of(cfg), fine_tune, budget_s=seconds, trials=trials)
    out.print(f"[bold]tune[/]: {len(s['trials'])} trials ({s['stopped']}) -> {Path(s['best_config']).parent}")
    show_search(s)
