"""Map source rows to canonical chat records: pick columns, drop empties, dedup, detect the task."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from slmkit.config import DataConfig
from slmkit.errors import SlmError

log = logging.getLogger("slmkit.data")

INPUT_CANDIDATES = ("input", "text", "prompt", "question", "instruction", "utterance", "query")
OUTPUT_CANDIDATES = ("output", "label", "intent", "answer", "response", "completion", "target")
ROLES = ("system", "user", "assistant")
MAX_LABEL_WORDS = 5
MAX_LABELS = 50


@dataclass
class _Draft:
    """A usable row before the system prompt is known: its turns and its final answer."""

    locator: str
    system: str | None
    turns: list[dict[str, str]]
    output: str
    rejected: str | None = None  # preference pairs: the dispreferred final answer
    group: str | None = None  # rows that must share a split (e.g. questions on one SQuAD context)


def available_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every column seen in any row, in first-seen order (internal `_` columns left out)."""
    return list(dict.fromkeys(k for row in rows for k in row if not k.startswith("_")))


def _find(available: list[str], candidates: tuple[str, ...]) -> str | None:
    """First candidate present, matched case-insensitively."""
    by_lower = {c.lower(): c for c in reversed(available)}
    return next((by_lower[c] for c in candidates if c in by_lower), None)


def pick_columns(rows: list[dict[str, Any]], data: DataConfig, source: str = "data") -> tuple[dict, list[str]]:
    """Columns for each role ({input, output, system, messages}) and which of them were auto-detected."""
    avail = available_columns(rows)
    listing = ", ".join(avail) or "(none)"
    cols = data.columns
    for field in ("input", "output", "system", "messages"):
        name = getattr(cols, field)
        if name and name not in avail:
            raise SlmError(f"{source}: column {name!r} (data.columns.{field}) not found; available columns: {listing}",
                           f"set data.columns.{field} to one of the available columns")
    picked: dict[str, str | None] = {"input": None, "output": None, "system": cols.system, "messages": None}
    auto: list[str] = []
    if not cols.system and (sys_col := _find(avail, ("system",))):
        picked["system"], auto = sys_col, ["system"]
    msg_col = cols.messages or (None if cols.input or cols.output else _find(avail, ("messages",)))
    if msg_col:
        picked["messages"] = msg_col
        return picked, auto + ([] if cols.messages else ["messages"])
    for field, candidates in (("input", INPUT_CANDIDATES), ("output", OUTPUT_CANDIDATES)):
        picked[field] = getattr(cols, field) or _find(avail, candidates)
        if not getattr(cols, field):
            auto.append(field)
        if not picked[field]:
            raise SlmError(f"{source}: no {field} column found (looked for {', '.join(candidates)}); "
                           f"available columns: {listing}",
                           "set data.columns.input and data.columns.output to the right columns")
    return picked, auto


def _text(value: Any) -> str:
    """A cell as stripped text; None is empty, non-strings are JSON-encoded (3 -> '3')."""
    if value is None:
        return ""
    # default=str: Excel/Parquet cells can be dates, decimals or bytes
    return (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)).strip()


def _parse_messages(value: Any, locator: str) -> list[dict[str, str]]:
    """An OpenAI-style messages list (or its JSON text) as [{'role', 'content'}]; [] when empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise SlmError(f"{locator}: messages column is not valid JSON ({e.msg})",
                           "store messages as a JSON list of {\"role\", \"content\"} objects") from None
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content", ""), str) for m in value)
    if not ok:
        raise SlmError(f"{locator}: messages must be a list of {{role, content}} with role in {', '.join(ROLES)}",
                       "fix that row's messages value")
    return [{"role": m["role"], "content": m.get("content") or ""} for m in value]


def _draft(row: dict[str, Any], picked: dict, locator: str) -> _Draft | None:
    """The usable part of one row, or None when its input or output is empty."""
    system = _text(row.get(picked["system"])) if picked["system"] else ""
    if picked["messages"]:
        msgs = _parse_messages(row.get(picked["messages"]), locator)
        if msgs and msgs[0]["role"] == "system":
            system, msgs = msgs[0]["content"], msgs[1:]
        has_user = any(m["role"] == "user" and m["content"].strip() for m in msgs)
        if not has_user or msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            return None
        rejected = row.get("rejected")
        return _Draft(locator, system or None, msgs, msgs[-1]["content"].strip(),
                      rejected if isinstance(rejected, str) and rejected.strip() else None)
    user, output = _text(row.get(picked["input"])), _text(row.get(picked["output"]))
    if not user or not output:
        return None
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return _Draft(locator, system or None, turns, output, group=row.get("_group"))


def expand_labels(prompt: str | None, labels: list[str]) -> str | None:
    """Replace `{labels}` with the sorted distinct labels joined by ', ' (other braces are left alone)."""
    return prompt.replace("{labels}", ", ".join(sorted(set(labels)))) if prompt else prompt


def record_id(messages: list[dict[str, str]]) -> str:
    """sha1 of the canonical JSON of the messages: equal conversations share an id."""
    canon = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha1(canon.encode("utf-8")).hexdigest()


def _build(draft: _Draft, system_prompt: str | None) -> dict[str, Any]:
    system = draft.system or system_prompt
    messages = ([{"role": "system", "content": system}] if system else []) + draft.turns
    rec = {"id": record_id(messages), "messages": messages, "label": None, "_output": draft.output,
           "meta": {"source": draft.locator, "source_sha256": None, "license": None, "split": None,
                    "synthetic": None, "pii_redacted": []}}
    if draft.rejected is not None:
        rec["rejected"] = draft.rejected
    if draft.group is not None:
        rec["meta"]["group"] = draft.group
    return rec


def dedup(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Drop records whose id was already seen (keep the first); returns (kept, n_dropped)."""
    seen: set[str] = set()
    kept = []
    for rec in records:
        if rec["id"] not in seen:
            seen.add(rec["id"])
            kept.append(rec)
    return kept, len(records) - len(kept)


def detect_task(outputs: list[str]) -> str:
    """'classification' when outputs are short and few distinct (≤50 and ≤ half the rows), else 'generation'."""
    distinct = set(outputs)
    short = all(len(o.split()) <= MAX_LABEL_WORDS for o in outputs)
    few = len(distinct) <= MAX_LABELS and len(distinct) <= len(outputs) / 2
    return "classification" if outputs and short and few else "generation"


def to_records(rows: list[dict[str, Any]], data: DataConfig,
               locators: list[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Canonical records (meta.split etc. left unset) and a report: columns_picked, task, labels, dropped."""
    locators = locators or [f"row={i}" for i in range(1, len(rows) + 1)]
    source = locators[0].split("#")[0] if locators and "#" in locators[0] else "data"
    picked, auto = pick_columns(rows, data, source)
    for role in auto:
        log.info("data: %s column auto-detected as %r", role, picked[role])
    drafts = [d for row, loc in zip(rows, locators) if (d := _draft(row, picked, loc)) is not None]
    empty = len(rows) - len(drafts)
    if not drafts:
        raise SlmError(f"{source}: no usable rows; all {len(rows)} rows have an empty input or output "
                       f"(columns used: {', '.join(f'{k}={v}' for k, v in picked.items() if v)})",
                       "check data.columns points at the right columns")
    system_prompt = expand_labels(data.system_prompt, [d.output for d in drafts])
    records = [_build(d, system_prompt) for d in drafts]
    duplicates = 0
    if data.dedup:
        records, duplicates = dedup(records)
    outputs = [r.pop("_output") for r in records]
    task = data.task if data.task != "auto" else detect_task(outputs)
    counts: dict[str, int] = {}
    if task == "classification":
        for rec, out in zip(records, outputs):
            rec["label"] = out
        counts = dict(sorted(Counter(outputs).items()))
    report = {"columns_picked": picked, "auto_detected": auto, "task": task, "labels": list(counts),
              "label_counts": counts, "dropped": {"duplicate": duplicates, "empty": empty}, "rows_in": len(rows)}
    return records, report
