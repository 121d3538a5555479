"""Row shapes of common datasets, turned into rows with a `messages` column (and `rejected` for preferences).

OpenAI `messages` rows pass through; ShareGPT `conversations`, Alpaca instruction/input/output, SQuAD
articles and preference pairs (prompt/chosen/rejected, HH-RLHF transcripts) are converted.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

from slmkit.errors import SlmError

log = logging.getLogger("slmkit.data")

Rows = list[dict[str, Any]]
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


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


def sharegpt(rows: Rows, locators: list[str]) -> tuple[Rows, list[str]]:
    out = []
    for row, loc in zip(rows, locators):
        turns = row.get("conversations") or []
        msgs = []
        for t in turns:
            role = SHAREGPT_ROLES.get(str(t.get("from", "")).lower()) if isinstance(t, dict) else None
            if role is None:
                raise SlmError(f"{loc}: ShareGPT turn with unknown 'from' {t.get('from') if isinstance(t, dict) else t!r}",
                               f"use one of {', '.join(SHAREGPT_ROLES)}")
            msgs.append({"role": role, "content": str(t.get("value") or "")})
        out.append({"messages": msgs})
    return out, locators


def alpaca(rows: Rows, locators: list[str]) -> tuple[Rows, list[str]]:
    out = []
    for row in rows:
        instruction, extra = str(row.get("instruction") or "").strip(), str(row.get("input") or "").strip()
        out.append({"input": f"{instruction}\n\n{extra}" if extra else instruction, "output": row.get("output")})
    return out, locators


def squad(rows: Rows, locators: list[str]) -> tuple[Rows, list[str]]:
    """One row per question: user = context + question, assistant = the first answer.

    Questions on one context share a `_group`, so the split keeps them together (no context leaks into eval).
    """
    out, locs = [], []
    for article, loc in zip(rows, locators):
        for p_no, para in enumerate(article.get("paragraphs") or [], 1):
            context = para.get("context", "")
            for qa in para.get("qas") or []:
                answers = [a.get("text", "") for a in qa.get("answers") or []]
                out.append({"input": f"{context}\n\nQuestion: {qa.get('question', '')}",
                            "output": answers[0] if answers else "", "title": article.get("title"),
                            "_group": hashlib.sha1(context.encode("utf-8")).hexdigest()})
                locs.append(f"{loc}&paragraph={p_no}&qa={qa.get('id', len(locs) + 1)}")
    return out, locs


def _as_turns(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, list):
        return [{"role": m["role"], "content": m.get("content") or ""} for m in value]
    return [{"role": role, "content": str(value or "")}]


def preference(rows: Rows, locators: list[str]) -> tuple[Rows, list[str]]:
    """prompt/chosen/rejected with strings or message lists."""
    out = []
    for row in rows:
        prompt = _as_turns(row.get("prompt"), "user")
        chosen, rejected = _as_turns(row.get("chosen"), "assistant"), _as_turns(row.get("rejected"), "assistant")
        out.append({"messages": prompt + chosen[-1:], "rejected": rejected[-1]["content"]})
    return out, locators


def hh_turns(transcript: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' as messages."""
    parts = _HH_TURN.split("\n\n" + transcript.lstrip("\n") if not transcript.startswith("\n\n") else transcript)
    return [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
            for who, text in zip(parts[1::2], parts[2::2])]


def hh(rows: Rows, locators: list[str]) -> tuple[Rows, list[str]]:
    """HH-RLHF: the shared prefix is the prompt; the final assistant turns are chosen and rejected."""
    out = []
    for row in rows:
        chosen, rejected = hh_turns(str(row.get("chosen") or "")), hh_turns(str(row.get("rejected") or ""))
        if not chosen or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            out.append({"messages": [], "rejected": None})  # counted as empty by to_records
            continue
        out.append({"messages": chosen, "rejected": rejected[-1]["content"]})
    return out, locators


CONVERTERS = {"sharegpt": sharegpt, "alpaca": alpaca, "squad": squad, "preference": preference, "hh": hh}


def convert(rows: Rows, locators: list[str], shape: str = "auto", where: str = "data") -> tuple[Rows, list[str], str]:
    """Rows in the canonical table shape and the shape that was used (auto-detected unless given)."""
    if shape == "auto":
        shape = detect_shape(rows)
        if shape != "table":
            log.info("%s: rows look like %s data", where, shape)
    if shape in ("table", "openai"):
        return rows, locators, shape
    out, locs = CONVERTERS[shape](rows, locators)
    return out, locs, shape
