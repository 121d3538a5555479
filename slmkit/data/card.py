"""The dataset card (`card.md`): where the data came from and what was done to it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from slmkit.io import atomic_write_text

from .split import SPLITS


def _cell(value: Any) -> str:
    """Text safe inside a markdown table cell."""
    return "—" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _label_table(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    per_split = {s: Counter(r["label"] for r in groups[s]) for s in SPLITS}
    labels = sorted(set().union(*per_split.values()))
    lines = ["| label | total | " + " | ".join(SPLITS) + " |", "|---|---:|" + "---:|" * len(SPLITS)]
    for label in labels:
        counts = [per_split[s][label] for s in SPLITS]
        lines.append(f"| {_cell(label)} | {sum(counts)} | " + " | ".join(map(str, counts)) + " |")
    return lines


def render_card(summary: dict[str, Any], groups: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown text of the card from prepare()'s summary and the records grouped by split."""
    rows, dropped = summary["rows"], summary["dropped"]
    lines = [
        "# Dataset card", "",
        "## Source", "",
        f"- **File**: `{summary['source']}`",
        f"- **sha256**: `{summary['source_sha256']}`",
        f"- **Licence**: {_cell(summary['license'] or 'unknown (set data.license)')}",
        f"- **Task**: {summary['task']}", "",
        "## Columns picked", "",
        "| role | column |", "|---|---|",
        *(f"| {role} | {_cell(col)} |" for role, col in summary["columns_picked"].items() if col), "",
        "## Rows", "",
        "| split | rows |", "|---|---:|",
        *(f"| {s} | {rows[s]} |" for s in SPLITS),
        f"| **total** | {sum(rows.values())} |", "",
        f"- Duplicates dropped (identical conversations, first kept): {dropped['duplicate']}",
        f"- Rows dropped for an empty input or output: {dropped['empty']}", "",
    ]
    if summary["task"] == "classification":
        lines += [f"## Labels ({len(summary['labels'])})", "", *_label_table(groups), ""]
    return "\n".join(lines)


def write_card(path: str | Path, summary: dict[str, Any], groups: dict[str, list[dict[str, Any]]]) -> Path:
    """Write card.md atomically."""
    return atomic_write_text(path, render_card(summary, groups))
