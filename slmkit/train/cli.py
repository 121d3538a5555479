"""What `slm train` prints when it finishes (the stage runs through the pipeline, like every stage)."""

from __future__ import annotations

from rich.console import Console

out = Console()


def show(summary: dict, console: Console = out) -> None:
    """Steps, last logged loss, held-out loss and speed."""
    if "steps" not in summary:
        return
    val = summary.get("val_loss")
    console.print(f"{summary['steps']} steps, loss {summary['final_loss']:.4f}"
                  + (f", val loss {val:.4f}" if val is not None else "")
                  + f", {summary.get('tokens_per_s', 0)} tokens/s ({summary.get('method')}, {summary.get('dtype')})")
