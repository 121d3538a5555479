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


Labels = dict[str, Counter] | dict[str, list[dict[str, Any]]]


def label_counts(groups: Labels) -> dict[str, Counter]:
    """Per split label counts: given as Counters, or counted from lists of records."""
    return {s: v if isinstance(v, Counter) else Counter(r["label"] for r in v) for s, v in groups.items()}


def _label_table(groups: Labels) -> list[str]:
    per_split = label_counts(groups)
    labels = sorted(set().union(*per_split.values()))
    lines = ["| label | total | " + " | ".join(SPLITS) + " |", "|---|---:|" + "---:|" * len(SPLITS)]
    for label in labels:
        counts = [per_split[s][label] for s in SPLITS]
        lines.append(f"| {_cell(label)} | {sum(counts)} | " + " | ".join(map(str, counts)) + " |")
    return lines


def render_card(summary: dict[str, Any], groups: Labels) -> str:
    """Markdown text of the card from prepare()'s summary and the label counts (or records) of each split."""
    rows, dropped = summary["rows"], summary["dropped"]
    lines = [
        "# Dataset card",
        "",
        "## Source",
        "",
        f"- **File**: `{summary['source']}`",
        f"- **sha256**: `{summary['source_sha256']}`",
        f"- **Licence**: {_cell(summary['license'] or 'unknown (set data.license)')}",
        f"- **Task**: {summary['task']}",
        "",
        "## Columns picked",
        "",
        "| role | column |",
        "|---|---|",
        *(f"| {role} | {_cell(col)} |" for role, col in summary["columns_picked"].items() if col),
        "",
        "## Rows",
        "",
        "| split | rows |",
        "|---|---:|",
        *(f"| {s} | {rows[s]} |" for s in SPLITS),
        f"| **total** | {sum(rows.values())} |",
        "",
        f"- Duplicates dropped (identical conversations, first kept): {dropped['duplicate']}",
        f"- Rows dropped for an empty input or output: {dropped['empty']}",
        "",
    ]
    if summary["task"] == "classification":
        lines += [f"## Labels ({len(summary['labels'])})", "", *_label_table(groups), ""]
    lines += _answer_section(summary)
    return "\n".join(lines + _cleaning_sections(summary))


def _answer_section(summary: dict[str, Any]) -> list[str]:
    """The most common answers with their share of the rows (as read), and the imbalance warning."""
    answers = summary.get("answers") or {}
    if not answers.get("top"):
        return []
    lines = ["## Most common answers", "", "| answer | rows | share |", "|---|---:|---:|"]
    lines += [f"| {_cell(a[:80])} | {n} | {share:.1%} |" for a, n, share in answers["top"]]
    return lines + [""] + [f"**Warning:** {w}" for w in summary.get("warnings", [])] + [""]


def _cleaning_sections(summary: dict[str, Any]) -> list[str]:
    """Sources, steps, PII, skipped inputs, licences and token lengths (when prepare() reported them)."""
    lines: list[str] = []
    if summary.get("sources"):
        lines += [
            "## Sources",
            "",
            "| source | type | shape | rows read | records | chunks | licence | sha256 |",
            "|---|---|---|---:|---:|---:|---|---|",
        ]
        lines += [
            f"| `{_cell(s['name'])}` | {s['type']} | {_cell(', '.join(s['shapes']) or None)} | {s['rows_in']} | "
            f"{s['records']} | {s['chunks']} | {_cell(s['license'])} | {_cell((s['sha256'] or '')[:12] or None)} |"
            for s in summary["sources"]
        ]
        lines.append("")
    if summary.get("steps"):
        lines += ["## Cleaning steps", "", "| step | in | out | dropped | changed |", "|---|---:|---:|---:|---:|"]
        lines += [
            f"| {name} | {c['in']} | {c['out']} | {c['dropped']} | {c['changed']} |"
            for name, c in summary["steps"].items()
        ]
        lines.append("")
    if "pii" in summary:
        pii = summary["pii"]
        lines += [
            "## PII found",
            "",
            *(
                ["| type | count |", "|---|---:|", *(f"| {t} | {n} |" for t, n in pii.items())]
                if pii
                else ["None found by the detectors."]
            ),
            "",
        ]
    if summary.get("skipped"):
        lines += [
            f"## Skipped inputs ({len(summary['skipped'])})",
            "",
            "| reason | count |",
            "|---|---:|",
            *(f"| {_cell(r)} | {n} |" for r, n in summary["skip_reasons"].items()),
            "",
        ]
        lines += [f"- `{_cell(s['where'])}`: {_cell(s['reason'])}" for s in summary["skipped"][:50]] + [""]
    if summary.get("licenses"):
        lines += ["## Licences", "", *(f"- {_cell(lic)}" for lic in summary["licenses"]), ""]
    if summary.get("tokens"):
        t = summary["tokens"]
        lines += [
            "## Token lengths",
            "",
            f"Tokenizer: `{t['tokenizer']}`; min {t['min']}, mean {t['mean']}, "
            f"max {t['max']} tokens per example (contents only, no chat markup).",
            "",
        ]
        if t.get("histogram"):
            lines += [f"![token lengths]({t['histogram']})", ""]
    if summary.get("chunks"):
        lines += [
            "## Document chunks",
            "",
            f"{summary['chunks']} chunks in `chunks.jsonl` (input for synth and `slm index`).",
            "",
        ]
    return lines


def write_card(path: str | Path, summary: dict[str, Any], groups: Labels) -> Path:
    """Write card.md atomically."""
    return atomic_write_text(path, render_card(summary, groups))
