"""Evaluation metrics: SQuAD EM/F1, label accuracy and macro-F1, ROUGE-L and BLEU."""

from __future__ import annotations

import re
import string
from collections import Counter

from slmkit.errors import SlmError

_INSTALL_HINT = "pip install rouge-score sacrebleu"
_TASKS = ("classification", "generation")
_QUOTES = "\"'`"
_TRAILING_PUNCT = ".,;:!?"
_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace.

    Same steps, in the same order, as SQuAD's official evaluate-v1.1.py, so scores are comparable.
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def normalize_label(s: str) -> str:
    """First non-empty line, without surrounding quotes or trailing punctuation, lowercased."""
    line = next((ln for ln in s.splitlines() if ln.strip()), "")
    prev = None
    # Loop because models wrap labels in either order: '"Weather".' and '"Weather."'.
    while line != prev:
        prev = line
        line = line.strip().strip(_QUOTES).rstrip(_TRAILING_PUNCT)
    return " ".join(line.lower().split())


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the SQuAD-normalised strings are equal, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD token-overlap F1 on normalised tokens."""
    pred_toks = normalize_answer(pred).split()
    ref_toks = normalize_answer(ref).split()
    if not pred_toks or not ref_toks:
        # SQuAD v2 convention: two empty answers agree, one empty answer scores zero.
        return float(pred_toks == ref_toks)
    same = sum((Counter(pred_toks) & Counter(ref_toks)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_toks)
    recall = same / len(ref_toks)
    return 2 * precision * recall / (precision + recall)


def rouge_l(preds: list[str], refs: list[str]) -> float:
    """Mean ROUGE-L F-measure (Porter stemming) via the rouge_score package."""
    _check_pairs(preds, refs)
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise SlmError("ROUGE-L needs the 'rouge-score' package, which is not installed",
                       _INSTALL_HINT) from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    # rouge_score's argument order is (target, prediction).
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]
    return float(sum(scores) / len(scores))


def bleu(preds: list[str], refs: list[str]) -> float:
    """Corpus BLEU from sacrebleu, on its 0-100 scale, one reference per prediction."""
    _check_pairs(preds, refs)
    try:
        import sacrebleu
    except ImportError:
        raise SlmError("BLEU needs the 'sacrebleu' package, which is not installed",
                       _INSTALL_HINT) from None
    return float(sacrebleu.corpus_bleu(preds, [refs]).score)


def accuracy(preds: list[str], refs: list[str]) -> float:
    """Share of predictions whose normalize_label equals the reference's."""
    _check_pairs(preds, refs)
    hits = sum(normalize_label(p) == normalize_label(r) for p, r in zip(preds, refs))
    return hits / len(preds)


def macro_f1(preds: list[str], refs: list[str]) -> float:
    """Per-label F1 averaged over the labels that occur in the references."""
    _check_pairs(preds, refs)
    p_labels = [normalize_label(p) for p in preds]
    r_labels = [normalize_label(r) for r in refs]
    predicted = Counter(p_labels)
    actual = Counter(r_labels)
    true_pos = Counter(r for p, r in zip(p_labels, r_labels) if p == r)
    f1s = []
    for label in actual:
        tp = true_pos[label]
        f1s.append(0.0 if tp == 0 else 2 * tp / (predicted[label] + actual[label]))
    return sum(f1s) / len(f1s)


def compute_metrics(preds: list[str], refs: list[str], task: str) -> dict[str, float]:
    """All metrics for `task` ("classification" or "generation"), plus the count "n"."""
    if task not in _TASKS:
        raise SlmError(f"unknown eval task {task!r}", f"use one of: {', '.join(_TASKS)}")
    _check_pairs(preds, refs)
    out: dict[str, float] = {"n": len(preds)}
    if task == "classification":
        out["accuracy"] = accuracy(preds, refs)
    out["exact_match"] = sum(map(exact_match, preds, refs)) / len(preds)
    out["f1"] = sum(map(token_f1, preds, refs)) / len(preds)
    if task == "classification":
        out["macro_f1"] = macro_f1(preds, refs)
    else:
        out["rouge_l"] = rouge_l(preds, refs)
        out["bleu"] = bleu(preds, refs)
    return out


def _check_pairs(preds: list[str], refs: list[str]) -> None:
    """Raise SlmError unless preds and refs are equal-length, non-empty lists of strings."""
    if not preds or not refs:
        raise SlmError(f"cannot score empty inputs "
                       f"({len(preds)} predictions, {len(refs)} references)",
                       "check that the eval split has examples and that generation produced output")
    if len(preds) != len(refs):
        raise SlmError(f"{len(preds)} predictions but {len(refs)} references",
                       "each prediction must pair with exactly one reference")
    bad = next((x for x in (*preds, *refs) if not isinstance(x, str)), None)
    if bad is not None:
        raise SlmError(f"predictions and references must be strings, got {type(bad).__name__}",
                       "convert labels to text before scoring")
