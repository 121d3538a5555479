"""Source rows -> canonical chat records: pick columns, drop empties, dedup by id, detect the task; record ids.

A record is a chat record (`id`, `messages`, maybe `rejected`, `label`, `meta`) or a document chunk (`text`
instead of `messages`, see chunk.py). `to_records` maps a list of rows at once; a table's rows stream through
`table_stream.TableStream`, batch by batch, with the same RecordMaker. `map_texts`, `mark` and `refresh_id` are what
the cleaning steps use to edit a record.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
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
MAX_ANSWERS = 100_000  # distinct answers counted for the answer distribution (~100 B each)
EXTRACTION_SAMPLE = 2000  # outputs kept to tell extraction answers apart


@dataclass
class _Draft:
    """A usable row before the system prompt is known: its turns and its final answer."""

    locator: str
    system: str | None
    turns: list[dict[str, str]]
    output: str
    rejected: str | None = None  # preference pairs: the dispreferred final answer
    group: str | None = None  # rows that must share a split (e.g. questions on one SQuAD context)
    synthetic: dict | None = None  # teacher-written rows (synth stage): teacher, recipe, cache key


def available_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every column seen in any row, in first-seen order (internal `_` columns left out)."""
    return list(dict.fromkeys(k for row in rows for k in row if not k.startswith("_")))


def _find(available: list[str], candidates: tuple[str, ...]) -> str | None:
    """First candidate present, matched case-insensitively."""
    by_lower = {c.lower(): c for c in reversed(available)}
    return next((by_lower[c] for c in candidates if c in by_lower), None)


def pick_columns(rows: list[dict[str, Any]], data: DataConfig, source: str = "data") -> tuple[dict, list[str]]:
    """Columns for each role ({input, output, system, messages}) and which of them were auto-detected."""
    return pick_from(available_columns(rows), data, source)


def pick_from(avail: list[str], data: DataConfig, source: str = "data") -> tuple[dict, list[str]]:
    """pick_columns given the columns seen (in first-seen order)."""
    listing = ", ".join(avail) or "(none)"
    cols = data.columns
    for field in ("input", "output", "system", "messages"):
        name = getattr(cols, field)
        if name and name not in avail:
            raise SlmError(
                f"{source}: column {name!r} (data.columns.{field}) not found; available columns: {listing}",
                f"set data.columns.{field} to one of the available columns",
            )
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
            raise SlmError(
                f"{source}: no {field} column found (looked for {', '.join(candidates)}); available columns: {listing}",
                "set data.columns.input and data.columns.output to the right columns",
            )
    return picked, auto


def _text(value: Any) -> str:
    """A cell as stripped text; None is empty, non-strings are JSON-encoded (3 -> '3')."""
    if value is None:
        return ""
    # default=str: Excel/Parquet cells can be dates, decimals or bytes
    return (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)).strip()


def parse_messages(value: Any, locator: str) -> list[dict[str, str]]:
    """An OpenAI-style messages list (or its JSON text) as [{'role', 'content'}]; [] when empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise SlmError(
                f"{locator}: messages column is not valid JSON ({e.msg})",
                'store messages as a JSON list of {"role", "content"} objects',
            ) from None
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content", ""), str) for m in value
    )
    if not ok:
        raise SlmError(
            f"{locator}: messages must be a list of {{role, content}} with role in {', '.join(ROLES)}",
            "fix that row's messages value",
        )
    return [{"role": m["role"], "content": m.get("content") or ""} for m in value]


def _draft(row: dict[str, Any], picked: dict, locator: str) -> _Draft | None:
    """The usable part of one row, or None when its input or output is empty."""
    system = _text(row.get(picked["system"])) if picked["system"] else ""
    if picked["messages"]:
        msgs = parse_messages(row.get(picked["messages"]), locator)
        if msgs and msgs[0]["role"] == "system":
            system, msgs = msgs[0]["content"], msgs[1:]
        has_user = any(m["role"] == "user" and m["content"].strip() for m in msgs)
        if not has_user or msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            return None
        rejected = row.get("rejected")
        meta = row.get("meta")
        synthetic = (
            meta.get("synthetic") if isinstance(meta, dict) and isinstance(meta.get("synthetic"), dict) else None
        )
        return _Draft(
            locator,
            system or None,
            msgs,
            msgs[-1]["content"].strip(),
            rejected if isinstance(rejected, str) and rejected.strip() else None,
            synthetic=synthetic,
        )
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


def refresh_id(rec: dict[str, Any]) -> None:
    """Ids follow content, so splits and dedup see the cleaned text (a chunk's id is the sha1 of its text)."""
    if "text" in rec:
        rec["id"] = hashlib.sha1(rec["text"].encode("utf-8")).hexdigest()
    else:
        rec["id"] = record_id(rec["messages"] + ([{"rejected": rec["rejected"]}] if rec.get("rejected") else []))


def map_texts(rec: dict[str, Any], fn: Callable[[str], str]) -> bool:
    """Apply fn to every text field of the record in place; True when anything changed."""
    changed = False
    if "text" in rec:
        new = fn(rec["text"])
        changed, rec["text"] = new != rec["text"], new
        return changed
    for m in rec["messages"]:
        new = fn(m["content"])
        changed |= new != m["content"]
        m["content"] = new
    if rec.get("rejected"):
        new = fn(rec["rejected"])
        changed |= new != rec["rejected"]
        rec["rejected"] = new
    return changed


def mark(rec: dict[str, Any], step: str) -> None:
    """Note a step that changed the record in meta.transformations."""
    rec["meta"].setdefault("transformations", []).append(step)


def _build(draft: _Draft, system_prompt: str | None) -> dict[str, Any]:
    system = draft.system or system_prompt
    messages = ([{"role": "system", "content": system}] if system else []) + draft.turns
    rec = {
        "id": record_id(messages),
        "messages": messages,
        "label": None,
        "_output": draft.output,
        "meta": {
            "source": draft.locator,
            "source_sha256": None,
            "license": None,
            "split": None,
            "synthetic": draft.synthetic,
            "pii_redacted": [],
        },
    }
    if draft.rejected is not None:
        rec["rejected"] = draft.rejected
    if draft.group is not None:
        rec["meta"]["group"] = draft.group
    return rec


@dataclass
class TaskDetector:
    """The task of a stream of outputs: 'extraction' when they are `type: span; ...` lists or `none` (or JSON objects
    of typed spans), 'classification' when they are short and few distinct (<= MAX_LABELS and <= half the rows),
    else 'generation'; label counts are dropped once more than MAX_LABELS are distinct. `answers` counts every
    distinct answer (up to MAX_ANSWERS of them) for the answer distribution the card and `slm data inspect` show."""

    keep_all: bool = False  # explicit classification: count every label, however many
    rows: int = 0
    short: bool = True
    counts: Counter | None = None
    answers: Counter | None = None
    sample: list | None = None

    def __post_init__(self) -> None:
        self.counts, self.answers, self.sample = Counter(), Counter(), []

    def add(self, output: str) -> None:
        self.rows += 1
        if len(self.sample) < EXTRACTION_SAMPLE:
            self.sample.append(output)
        key = " ".join(output.lower().split())
        if key in self.answers or len(self.answers) < MAX_ANSWERS:
            self.answers[key] += 1
        if self.short and len(output.split()) > MAX_LABEL_WORDS:
            self.short = False
        if self.counts is not None:
            self.counts[output] += 1
            if not self.keep_all and (len(self.counts) > MAX_LABELS or not self.short):
                self.counts = None

    def task(self) -> str:
        from slmkit.extraction import looks_like_extraction

        if looks_like_extraction(self.sample):
            return "extraction"
        few = self.counts is not None and len(self.counts) <= MAX_LABELS and len(self.counts) <= self.rows / 2
        return "classification" if self.rows and self.short and few else "generation"

    def top_answers(self, k: int = 5) -> list[list]:
        """[[answer, rows], ...] of the k most common answers (a lower bound past MAX_ANSWERS distinct answers)."""
        return [[a, n] for a, n in self.answers.most_common(k)]


def drafts_of(pairs: Iterable[tuple[dict[str, Any], str]], picked: dict) -> tuple[list[_Draft], int]:
    """The usable drafts of (row, locator) pairs and how many rows were empty."""
    drafts, empty = [], 0
    for row, loc in pairs:
        d = _draft(row, picked, loc)
        if d is None:
            empty += 1
        else:
            drafts.append(d)
    return drafts, empty


def no_usable_rows(source: str, n_rows: int, picked: dict) -> SlmError:
    return SlmError(
        f"{source}: no usable rows; all {n_rows} rows have an empty input or output "
        f"(columns used: {', '.join(f'{k}={v}' for k, v in picked.items() if v)})",
        "check data.columns points at the right columns",
    )


class RecordMaker:
    """Drafts -> records batch by batch, with exact dedup by id (data.dedup) and task detection across batches.

    `label_task` is the source's task when already known (explicit data.task, or a first pass): records of a
    classification source get their answer as label, as to_records() gives them.
    """

    def __init__(self, data: DataConfig, system_prompt: str | None, label_task: str | None = None):
        from .clean.dedup import ExactDedup

        self.prompt = system_prompt
        self.seen = ExactDedup() if data.dedup else None
        self.detector = TaskDetector(keep_all=data.task == "classification")
        self.task_cfg = data.task
        self.label_task = data.task if data.task != "auto" else label_task
        self.duplicates = 0

    def add(self, drafts: list[_Draft]) -> tuple[list[dict[str, Any]], list[str]]:
        """Records of these drafts (duplicates of earlier ones dropped) and their outputs."""
        records = [_build(d, self.prompt) for d in drafts]
        if self.seen is not None:
            kept = self.seen.filter(records)
            self.duplicates += len(records) - len(kept)
            records = kept
        outputs = [r.pop("_output") for r in records]
        for rec, out in zip(records, outputs):
            self.detector.add(out)
            if self.label_task == "classification":
                rec["label"] = out
        return records, outputs

    def task(self) -> str:
        return self.task_cfg if self.task_cfg != "auto" else self.detector.task()

    def report(self, picked: dict, auto: list[str], rows_in: int, empty: int) -> dict[str, Any]:
        task = self.task()
        counts = dict(sorted(self.detector.counts.items())) if task == "classification" and self.detector.counts else {}
        return {
            "columns_picked": picked,
            "auto_detected": auto,
            "task": task,
            "labels": list(counts),
            "label_counts": counts,
            "answers": {
                "rows": self.detector.rows,
                "distinct": len(self.detector.answers),
                "top": self.detector.top_answers(),
            },
            "dropped": {"duplicate": self.duplicates, "empty": empty},
            "rows_in": rows_in,
        }


def log_auto(picked: dict, auto: list[str]) -> None:
    for role in auto:
        log.info("data: %s column auto-detected as %r", role, picked[role])


def to_records(
    rows: list[dict[str, Any]], data: DataConfig, locators: list[str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Canonical records (meta.split etc. left unset) and a report: columns_picked, task, labels, dropped."""
    locators = locators or [f"row={i}" for i in range(1, len(rows) + 1)]
    source = locators[0].split("#")[0] if locators and "#" in locators[0] else "data"
    picked, auto = pick_columns(rows, data, source)
    log_auto(picked, auto)
    drafts, empty = drafts_of(zip(rows, locators), picked)
    if not drafts:
        raise no_usable_rows(source, len(rows), picked)
    maker = RecordMaker(data, expand_labels(data.system_prompt, [d.output for d in drafts]))
    records, outputs = maker.add(drafts)
    if maker.task() == "classification":
        for rec, out in zip(records, outputs):
            rec["label"] = out
    return records, maker.report(picked, auto, len(rows), empty)
