"""Chat-log and dataset row shapes turned into rows with a `messages` column (and `rejected` for preferences).

OpenAI `messages` rows pass through; ShareGPT `conversations`, Alpaca instruction/input/output, SQuAD
articles and preference pairs (prompt/chosen/rejected, HH-RLHF transcripts) are converted.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from slmkit.errors import SlmError

log = logging.getLogger("slmkit.data")

Rows = list[dict[str, Any]]
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


Pairs = Iterable[tuple[dict[str, Any], str]]


def detect_shape(rows: Rows) -> str:
    """'openai', 'sharegpt', 'alpaca', 'squad', 'preference', 'hh' or 'table' from the first row's keys."""
    keys = set(rows[0]) if rows else set()
    if "paragraphs" in keys:
        return "squad"
    if "conversations" in keys:
        return "sharegpt"
    if {"chosen", "rejected"} <= keys:
        return "preference" if "prompt" in keys else "hh"
    if "messages" in keys:
        return "openai"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    return "table"


def sharegpt(pairs: Pairs) -> Iterator[tuple[dict[str, Any], str]]:
    for row, loc in pairs:
        msgs = []
        for t in row.get("conversations") or []:
            role = SHAREGPT_ROLES.get(str(t.get("from", "")).lower()) if isinstance(t, dict) else None
            if role is None:
                raise SlmError(
                    f"{loc}: ShareGPT turn with unknown 'from' {t.get('from') if isinstance(t, dict) else t!r}",
                    f"use one of {', '.join(SHAREGPT_ROLES)}",
                )
            msgs.append({"role": role, "content": str(t.get("value") or "")})
        yield {"messages": msgs}, loc


def alpaca(pairs: Pairs) -> Iterator[tuple[dict[str, Any], str]]:
    for row, loc in pairs:
        instruction, extra = str(row.get("instruction") or "").strip(), str(row.get("input") or "").strip()
        yield {"input": f"{instruction}\n\n{extra}" if extra else instruction, "output": row.get("output")}, loc


def squad(pairs: Pairs) -> Iterator[tuple[dict[str, Any], str]]:
    """One row per question: user = context + question, assistant = the first answer.

    Questions on one context share a `_group`, so the split keeps them together (no context leaks into eval).
    """
    n = 0
    for article, loc in pairs:
        for p_no, para in enumerate(article.get("paragraphs") or [], 1):
            context = para.get("context", "")
            for qa in para.get("qas") or []:
                answers = [a.get("text", "") for a in qa.get("answers") or []]
                n += 1
                yield (
                    {
                        "input": f"{context}\n\nQuestion: {qa.get('question', '')}",
                        "output": answers[0] if answers else "",
                        "title": article.get("title"),
                        "_group": hashlib.sha1(context.encode("utf-8")).hexdigest(),
                    },
                    f"{loc}&paragraph={p_no}&qa={qa.get('id', n)}",
                )


def _as_turns(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, list):
        return [{"role": m["role"], "content": m.get("content") or ""} for m in value]
    return [{"role": role, "content": str(value or "")}]


def preference(pairs: Pairs) -> Iterator[tuple[dict[str, Any], str]]:
    """prompt/chosen/rejected with strings or message lists."""
    for row, loc in pairs:
        prompt = _as_turns(row.get("prompt"), "user")
        chosen, rejected = _as_turns(row.get("chosen"), "assistant"), _as_turns(row.get("rejected"), "assistant")
        yield {"messages": prompt + chosen[-1:], "rejected": rejected[-1]["content"]}, loc


def hh_turns(transcript: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' as messages."""
    parts = _HH_TURN.split("\n\n" + transcript.lstrip("\n") if not transcript.startswith("\n\n") else transcript)
    return [
        {"role": "user" if who == "Human" else "assistant", "content": text.strip()}
        for who, text in zip(parts[1::2], parts[2::2])
    ]


def hh(pairs: Pairs) -> Iterator[tuple[dict[str, Any], str]]:
    """HH-RLHF: the shared prefix is the prompt; the final assistant turns are chosen and rejected."""
    for row, loc in pairs:
        chosen, rejected = hh_turns(str(row.get("chosen") or "")), hh_turns(str(row.get("rejected") or ""))
        if not chosen or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            yield {"messages": [], "rejected": None}, loc  # counted as empty by to_records
            continue
        yield {"messages": chosen, "rejected": rejected[-1]["content"]}, loc


CONVERTERS = {"sharegpt": sharegpt, "alpaca": alpaca, "squad": squad, "preference": preference, "hh": hh}


def resolve_shape(first: dict[str, Any] | None, shape: str = "auto", where: str = "data") -> str:
    """The shape to convert with: `shape`, or the one the first row looks like (preference without a prompt: hh)."""
    if shape == "auto":
        shape = detect_shape([first] if first is not None else [])
        if shape != "table":
            log.info("%s: rows look like %s data", where, shape)
    elif shape == "preference" and first is not None and "prompt" not in first:
        shape = "hh"
    return shape


def convert_pairs(pairs: Pairs, shape: str) -> Iterable[tuple[dict[str, Any], str]]:
    """(row, locator) pairs in the canonical table shape, converted lazily; `shape` as resolve_shape gives it."""
    return pairs if shape in ("table", "openai") else CONVERTERS[shape](pairs)
