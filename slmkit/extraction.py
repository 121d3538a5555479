"""Extraction answers as sets of (type, span) items: rendered (the data stage's canonical answers), parsed, and
scored like CoNLL entity F1 (eval). Shared by the data stage (BIO/CoNLL readers, task detection) and eval.

An answer is `type: span; type: span` (the data stage's canonical rendering), `none` for no items, or JSON: an object
{"type": "span" | ["span", ...]} or a list of {"type": ..., "span"/"text": ...} objects. Types and spans are compared
case-insensitively with whitespace collapsed; an item repeated in one answer counts once (a set, as in CoNLL's
evaluation of entity mentions per sentence). A prediction that parses to nothing it can read is malformed and scores
as an empty set, so it costs recall, never precision.
"""

from __future__ import annotations

import json
import re
from collections import Counter

Item = tuple[str, str]
NONE_WORDS = {"", "none", "no entities", "n/a", "[]", "{}"}
_TYPE = re.compile(r"[a-z_][\w.\- ]{0,48}")  # a type name: starts with a letter, so "2:30 pm" is not an item


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split()).strip(" .\"'`")


def _from_json(value) -> set[Item] | None:
    if isinstance(value, dict):
        out = set()
        for k, v in value.items():
            for span in v if isinstance(v, list) else [v]:
                if span not in (None, ""):
                    out.add((_norm(k), _norm(span)))
        return out
    if isinstance(value, list) and all(isinstance(x, dict) for x in value):
        out = set()
        for x in value:
            kind, span = x.get("type") or x.get("label"), x.get("span") or x.get("text") or x.get("value")
            if kind and span:
                out.add((_norm(kind), _norm(span)))
        return out
    return None


def parse_items(answer: str) -> tuple[set[Item], bool]:
    """(items, well_formed) of one answer; `none` (and empty) is the empty set, well formed."""
    text = answer.strip()
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if _norm(first) in NONE_WORDS:
        return set(), True
    if text[:1] in "{[":
        try:
            found = _from_json(json.loads(text))
        except ValueError:
            found = None
        if found is not None:
            return found, True
    items, bad = set(), 0
    for part in first.split(";"):
        if not part.strip():
            continue
        kind, sep, span = part.partition(":")
        if not sep or not _TYPE.fullmatch(_norm(kind)) or not _norm(span):
            bad += 1
            continue
        items.add((_norm(kind), _norm(span)))
    return items, bad == 0 and bool(items)


def render_items(items: list[Item], fmt: str = "pairs") -> str:
    """The canonical answer for items in order of appearance: `type: span; type: span` (or `none`), or JSON
    `{"type": ["span", ...]}` (`{}` for none). Repeats are kept once."""
    items = list(dict.fromkeys(items))
    if fmt == "json":
        grouped: dict[str, list[str]] = {}
        for kind, span in items:
            grouped.setdefault(kind, []).append(span)
        return json.dumps(grouped, ensure_ascii=False)
    return "; ".join(f"{kind}: {span}" for kind, span in items) or "none"


def looks_like_extraction(answers: list[str]) -> bool:
    """True when most answers are `type: span; ...` lists, `none`, or JSON objects of typed spans (and some have items)."""
    if not answers:
        return False
    parsed = [parse_items(a) for a in answers]
    readable = sum(ok for _, ok in parsed)
    with_items = sum(bool(items) for items, _ in parsed)
    return readable >= 0.9 * len(answers) and with_items >= 0.2 * len(answers)


def _prf(tp: int, n_pred: int, n_ref: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else (1.0 if n_ref == 0 else 0.0)
    r = tp / n_ref if n_ref else (1.0 if n_pred == 0 else 0.0)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def extraction_scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Micro precision/recall/F1 over (type, span) items, exact set match, and the share of well-formed predictions."""
    tp = n_pred = n_ref = exact = ok = 0
    for p, r in zip(preds, refs):
        p_items, well = parse_items(p)
        r_items, _ = parse_items(r)
        tp, n_pred, n_ref = tp + len(p_items & r_items), n_pred + len(p_items), n_ref + len(r_items)
        exact += p_items == r_items
        ok += well
    precision, recall, f1 = _prf(tp, n_pred, n_ref)
    return {
        "entity_f1": f1,
        "precision": precision,
        "recall": recall,
        "exact_match": exact / len(preds),
        "well_formed": ok / len(preds),
    }


def per_type_f1(preds: list[str], refs: list[str]) -> dict[str, float]:
    """F1 of each item type found in the references, most frequent type first."""
    tp, n_pred, n_ref = Counter(), Counter(), Counter()
    for p, r in zip(preds, refs):
        p_items, r_items = parse_items(p)[0], parse_items(r)[0]
        tp.update(t for t, _ in p_items & r_items)
        n_pred.update(t for t, _ in p_items)
        n_ref.update(t for t, _ in r_items)
    return {t: round(_prf(tp[t], n_pred[t], n_ref[t])[2], 4) for t, _ in n_ref.most_common()}
