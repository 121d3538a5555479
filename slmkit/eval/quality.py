"""Is a score worth believing? A bootstrap confidence interval for the headline metric, and a check for a collapsed
model (one answer to everything), which exact match or accuracy alone can hide."""

from __future__ import annotations

import random
from collections import Counter

from slmkit.eval.metrics import HEADLINE, normalize_label

# A prediction covering at least this share of the rows, and this many times its share of the references, means
# the model answers one thing to (almost) everything: e.g. `none` for 98.5% of rows where 44% of answers are none.
COLLAPSE_SHARE = 0.5
COLLAPSE_RATIO = 1.5
# Distinct predictions at or below this share of distinct references (and at most 2 of them) is near-constant output.
CONSTANT_DISTINCT = 0.2
SMALL_TEST = 100  # below this many test rows a 95% interval is wider than most differences users care about


def _row_scores(preds: list[str], refs: list[str], task: str):
    """Per-row statistics whose resampled aggregate is the task's headline metric, and that aggregate: a mean of
    per-row scores (accuracy, token F1, ROUGE-L), or micro F1 from per-row item counts (extraction)."""
    if task == "extraction":
        from slmkit.extraction import _prf, parse_items

        rows = []
        for p, r in zip(preds, refs):
            pi, ri = parse_items(p)[0], parse_items(r)[0]
            rows.append((len(pi & ri), len(pi), len(ri)))
        return rows, lambda sample: _prf(*(sum(x[k] for x in sample) for k in range(3)))[2]
    if task == "classification":
        rows = [float(normalize_label(p) == normalize_label(r)) for p, r in zip(preds, refs)]
    elif task == "math":
        from slmkit.eval.metrics import math_accuracy

        rows = [math_accuracy([p], [r]) for p, r in zip(preds, refs)]
    elif task == "qa":
        from slmkit.eval.metrics import token_f1

        rows = [token_f1(p, r) for p, r in zip(preds, refs)]
    else:
        from slmkit.eval.metrics import rouge_l

        rows = [rouge_l([p], [r]) for p, r in zip(preds, refs)]
    return rows, lambda sample: sum(sample) / len(sample)


def bootstrap_ci(
    preds: list[str], refs: list[str], task: str, samples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of the task's headline metric: rows resampled with replacement `samples`
    times (Efron & Tibshirani 1993), with a fixed seed so a report is reproducible. Per-row statistics are computed
    once, so the resampling costs sums, not re-scoring."""
    rows, aggregate = _row_scores(preds, refs, task)
    rng = random.Random(seed)
    n = len(rows)
    values = sorted(aggregate([rows[rng.randrange(n)] for _ in range(n)]) for _ in range(samples))
    return values[int(0.025 * (samples - 1))], values[int(0.975 * (samples - 1))]


def collapse(preds: list[str], refs: list[str]) -> dict:
    """{'collapsed', 'reason', 'top', 'share', 'ref_share', 'distinct'} for one model's predictions."""
    p = Counter(normalize_label(x) for x in preds)
    r = Counter(normalize_label(x) for x in refs)
    top, count = p.most_common(1)[0]
    share, ref_share = count / len(preds), r.get(top, 0) / len(refs)
    out = {
        "collapsed": False,
        "reason": "",
        "top": top,
        "share": round(share, 4),
        "ref_share": round(ref_share, 4),
        "distinct": len(p),
    }
    if share >= COLLAPSE_SHARE and share >= COLLAPSE_RATIO * ref_share and len(r) > 1:
        out |= {
            "collapsed": True,
            "reason": f"answers {top!r} to {share:.0%} of rows, where {ref_share:.0%} of the references are {top!r}",
        }
    elif len(r) >= 3 and len(p) <= max(2, CONSTANT_DISTINCT * len(r)) and len(p) < len(r):
        out |= {
            "collapsed": True,
            "reason": f"near-constant output: {len(p)} distinct answers for {len(r)} distinct references",
        }
    return out


def assess(preds: list[str], refs: list[str], task: str) -> dict:
    """Confidence interval of the headline metric plus the collapse check, for the eval summary."""
    lo, hi = bootstrap_ci(preds, refs, task)
    out = {"metric": HEADLINE[task], "ci95": [round(lo, 4), round(hi, 4)], "collapse": collapse(preds, refs)}
    if task == "extraction":
        from slmkit.extraction import per_type_f1

        out["per_type_f1"] = per_type_f1(preds, refs)
    return out


def collapsed_models(summary: dict, skip: tuple[str, ...] = ("base",)) -> list[str]:
    """Names of collapsed models (not the base model): what `--fail-on-collapse` fails on."""
    return [
        name
        for name, q in (summary.get("quality") or {}).items()
        if q["collapse"]["collapsed"] and name.split("+")[0] not in skip
    ]


def warnings_for(summary: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """Plain-language warnings about an eval summary: a small test split, collapsed models (not those named in
    `skip` or their +rag rows: an untrained base model answering one thing is expected, not news)."""
    out = []
    if summary.get("n", 0) < SMALL_TEST:
        out.append(
            f"only {summary['n']} test rows: the 95% intervals are wide; add rows or set data.test_path "
            f"to a larger test file"
        )
    for name, q in (summary.get("quality") or {}).items():
        if q["collapse"]["collapsed"] and name.split("+")[0] not in skip:
            out.append(f"{name} collapsed: {q['collapse']['reason']}")
    return out
