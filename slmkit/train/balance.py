"""`train.balance`: even out the answers of the train split before encoding (classification-style data).

    balance_records(records, mode, seed) -> (records', report)

records: canonical chat records ({"messages": [...], ...}); a row's answer is the content of its last assistant
message, normalised (`answer_key`: first non-empty line, lowercased, whitespace collapsed, quotes and trailing
punctuation dropped). Modes:

- `off`: the rows as they are.
- `cap`: every answer keeps at most as many rows as the second most common answer has (a seeded sample of the
  majority's rows, in file order). Capping at the runner-up, not at the rarest answer, removes the one dominant
  class without throwing away most of the data when the tail is long.
- `oversample`: every answer is repeated (whole copies, then a seeded sample of its rows) up to the majority count,
  but to at most OVERSAMPLE_MAX x its own count: a 3-row answer repeated 100 times is memorised, not learned.

report: {"mode", "seed", "answers", "rows_before", "rows_after", "per_answer": {answer: [before, after]}}, with
per_answer limited to the REPORT_ANSWERS most common answers and left out when there are no classes. Data whose
answers are (nearly) all distinct (generation, QA) has no classes to balance: every mode then keeps the rows as they
are and says so (`skipped`).
"""

from __future__ import annotations

import random
from collections import Counter

OVERSAMPLE_MAX = 4  # an answer gets at most this many times its own rows under `oversample`
REPORT_ANSWERS = 30  # answers listed in the report's per_answer (most common first)
_STRIP = "\"'`.,;:!? "


def answer_key(record: dict) -> str:
    """The normalised content of the record's last assistant message ('' when it has none)."""
    content = next(
        (m.get("content") or "" for m in reversed(record.get("messages") or []) if m.get("role") == "assistant"), ""
    )
    line = next((ln for ln in str(content).splitlines() if ln.strip()), "")
    return " ".join(line.strip(_STRIP).lower().split())


def target_counts(counts: Counter, mode: str) -> dict[str, int]:
    """Rows each answer keeps under `mode` ({answer: rows}); the answers' own counts when there is nothing to do."""
    if mode == "off" or not has_classes(counts):
        return dict(counts)
    ranked = [n for _, n in counts.most_common()]
    if mode == "cap":
        return {a: min(n, ranked[1]) for a, n in counts.items()}
    if mode == "oversample":
        return {a: max(n, min(ranked[0], OVERSAMPLE_MAX * n)) for a, n in counts.items()}
    raise ValueError(f"unknown balance mode {mode!r}")


def has_classes(counts: Counter) -> bool:
    """At least two answers, and answers that repeat (on average twice or more): something to balance."""
    total = sum(counts.values())
    return len(counts) >= 2 and total >= 2 * len(counts)


def balance_records(records: list[dict], mode: str, seed: int) -> tuple[list[dict], dict]:
    """The rows `mode` keeps (file order, then the added copies) and a report of what was done."""
    keys = [answer_key(r) for r in records]
    counts = Counter(keys)
    target = target_counts(counts, mode)
    report = {"mode": mode, "seed": seed, "answers": len(counts), "rows_before": len(records)}
    if mode != "off" and not has_classes(counts):
        report["skipped"] = "answers do not repeat: no classes to balance"
    rng = random.Random(seed)
    by_answer: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_answer.setdefault(k, []).append(i)
    keep: set[int] = set()
    extra: list[int] = []
    for answer in sorted(by_answer):  # sorted: the seeded draws do not depend on file order of the answers
        rows, want = by_answer[answer], target[answer]
        if want <= len(rows):
            keep.update(rows if want == len(rows) else rng.sample(rows, want))
            continue
        keep.update(rows)
        copies, rest = divmod(want - len(rows), len(rows))
        extra += rows * copies + sorted(rng.sample(rows, rest))
    out = [records[i] for i in range(len(records)) if i in keep] + [records[i] for i in extra]
    report["rows_after"] = len(out)
    if has_classes(counts):
        report["per_answer"] = {a: [n, target[a]] for a, n in counts.most_common(REPORT_ANSWERS)}
    return out, report
