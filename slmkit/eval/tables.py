"""The metrics table of an eval summary, headline metric first with its 95% interval: as Markdown (metrics.md, model
cards) and as a rich table (terminal), plus the summary's warnings."""

from __future__ import annotations

from slmkit.eval.metrics import HEADLINE


def metric_keys(summary: dict) -> list[str]:
    """Metric names, the task's headline first, then first-seen order over all models (models may differ:
    perplexity needs a torch model)."""
    keys: dict[str, None] = {}
    head = HEADLINE.get(summary.get("task"))
    if head and any(head in m for m in summary["models"].values()):
        keys[head] = None
    for m in summary["models"].values():
        keys.update((k, None) for k in m if k != "n")
    return list(keys)


def _fmt(m: dict, k: str, digits: int) -> str:
    return f"{m[k]:.{digits}f}" if isinstance(m.get(k), (int, float)) else "-"


def _ci(summary: dict, name: str, digits: int) -> str:
    q = (summary.get("quality") or {}).get(name)
    return f"{q['ci95'][0]:.{digits}f}-{q['ci95'][1]:.{digits}f}" if q else "-"


def _columns(summary: dict) -> tuple[list[str], bool]:
    keys = metric_keys(summary)
    return keys, bool(summary.get("quality")) and bool(keys)


def metrics_table_md(summary: dict) -> str:
    keys, with_ci = _columns(summary)
    names = keys[:1] + (["95% CI"] if with_ci else []) + keys[1:]
    lines = [
        f"Task: {summary['task']}, {summary['n']} test examples",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for name, m in summary["models"].items():
        cells = [_fmt(m, k, 4) for k in keys]
        if with_ci:
            cells.insert(1, _ci(summary, name, 3))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [""] + [f"**Warning:** {w}" for w in summary.get("warnings") or []]
    return "\n".join(lines).rstrip() + "\n"


def print_table(summary: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    keys, with_ci = _columns(summary)
    table = Table(title=f"{summary['task']} · {summary['n']} test examples")
    table.add_column("model", no_wrap=True)
    for i, k in enumerate(keys):
        table.add_column(k, justify="right")
        if i == 0 and with_ci:
            table.add_column("95% CI", justify="right")
    for name, m in summary["models"].items():
        cells = [_fmt(m, k, 3) for k in keys]
        if with_ci:
            cells.insert(1, _ci(summary, name, 3))
        table.add_row(name, *cells)
    console = console or Console()
    console.print(table)
    for w in summary.get("warnings") or []:
        console.print(f"[bold red]warning:[/] {w}", soft_wrap=True)
