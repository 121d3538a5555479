"""The metrics table of an eval summary: as Markdown (metrics.md, model cards) and as a rich table (terminal)."""

from __future__ import annotations


def metric_keys(summary: dict) -> list[str]:
    """Metric names in first-seen order over all models (models may differ: perplexity needs a torch model)."""
    keys: dict[str, None] = {}
    for m in summary["models"].values():
        keys.update((k, None) for k in m if k != "n")
    return list(keys)


def _fmt(m: dict, k: str, digits: int) -> str:
    return f"{m[k]:.{digits}f}" if isinstance(m.get(k), (int, float)) else "-"


def metrics_table_md(summary: dict) -> str:
    keys = metric_keys(summary)
    lines = [f"Task: {summary['task']}, {summary['n']} test examples", "",
             "| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in summary["models"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m, k, 4) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def print_table(summary: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = metric_keys(summary)
    table = Table(title=f"{summary['task']} · {summary['n']} test examples")
    table.add_column("model")
    for k in keys:
        table.add_column(k, justify="right")
    for name, m in summary["models"].items():
        table.add_row(name, *(_fmt(m, k, 3) for k in keys))
    (console or Console()).print(table)
