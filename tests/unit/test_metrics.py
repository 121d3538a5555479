"""Metric values checked by hand against the SQuAD / ROUGE / BLEU definitions."""

from __future__ import annotations

import math
import sys

import pytest

from slmkit.errors import SlmError
from slmkit.eval.metrics import (
    accuracy,
    bleu,
    compute_metrics,
    exact_match,
    macro_f1,
    normalize_answer,
    normalize_label,
    rouge_l,
    token_f1,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The Cat, sat!  on a mat.", "cat sat on mat"),
        ("An apple a day", "apple day"),
        ("Theatre then", "theatre then"),  # articles only as whole words
        ("U.S.A. don't", "usa dont"),  # punctuation is deleted, not turned into spaces
        ("  \tthe  \n", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Book_Flight.\nblah", "book_flight"),
        ("\n\n  Weather  \n", "weather"),
        ('"Play  Music"!', "play music"),
        ("'Weather.'", "weather"),
        ("", ""),
    ],
)
def test_normalize_label(raw: str, expected: str) -> None:
    assert normalize_label(raw) == expected


def test_exact_match() -> None:
    assert exact_match("The answer.", "answer") == 1.0
    assert exact_match("cat", "cats") == 0.0


def test_token_f1_by_hand() -> None:
    # pred -> [cat, sat], ref -> [cat, sat, down]: P = 2/2, R = 2/3, F1 = 2PR/(P+R) = 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # repeated tokens count by multiplicity: common = min(3,1) = 1, P = 1/3, R = 1/1 -> 0.5
    assert token_f1("cat cat cat", "cat") == pytest.approx(0.5)
    assert token_f1("dog", "cat") == 0.0


def test_token_f1_empty_cases() -> None:
    assert token_f1("", "the") == 1.0  # both normalise to nothing
    assert token_f1("", "cat") == 0.0
    assert token_f1("cat", "") == 0.0


def test_accuracy_on_messy_predictions() -> None:
    preds = [" Weather.\n", '"book_flight"', "Book_Flight.\nblah", "play music"]
    refs = ["weather", "book_flight", "book_flight", "weather"]
    assert accuracy(preds, refs) == 0.75


def test_macro_f1_by_hand() -> None:
    # refs a a b c / preds a b b a
    # a: tp 1, predicted 2, actual 2 -> P .5 R .5 F .5
    # b: tp 1, predicted 2, actual 1 -> P .5 R 1 F 2/3
    # c: tp 0 -> F 0;  macro = (1/2 + 2/3 + 0) / 3 = 7/18
    preds = ["A.", "b", "'B'", "a\nbecause"]
    refs = ["a", "a", "b", "c"]
    assert macro_f1(preds, refs) == pytest.approx(7 / 18)


def test_rouge_l() -> None:
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert rouge_l(["alpha beta"], ["gamma delta"]) == 0.0
    # LCS "the cat on the mat" = 5 of 6 tokens each side -> P = R = F = 5/6
    assert rouge_l(["the cat sat on the mat"], ["the cat lay on the mat"]) == pytest.approx(5 / 6)
    # stemming maps cats->cat, running->run; the mean of 1.0 and 0.0 is 0.5
    assert rouge_l(["cats running", "x"], ["cat run", "y"]) == pytest.approx(0.5)


def test_bleu() -> None:
    corpus = ["the quick brown fox jumps", "over the lazy dog today"]
    assert bleu(corpus, corpus) == pytest.approx(100.0)
    assert bleu(["alpha beta gamma delta"], ["one two three four"]) == pytest.approx(0.0)
    # all n-gram precisions are 1; brevity penalty exp(1 - 6/4) for 4 hypothesis vs 6 ref tokens
    assert bleu(["a b c d"], ["a b c d e f"]) == pytest.approx(100 * math.exp(-0.5), abs=1e-3)


def test_compute_metrics_classification() -> None:
    preds = ["A.", "b", "'B'", "a\nbecause"]
    refs = ["a", "a", "b", "c"]
    out = compute_metrics(preds, refs, "classification")
    assert set(out) == {"n", "accuracy", "exact_match", "f1", "macro_f1"}
    assert out["n"] == 4
    assert out["accuracy"] == 0.5
    # SQuAD normalisation drops the article "a": pairs become ("", ""), ("b", ""), ("b", "b"),
    # ("because", "c") -> EM 1,0,1,0 and token F1 1 (both empty),0,1,0
    assert out["exact_match"] == 0.5
    assert out["f1"] == 0.5
    assert out["macro_f1"] == pytest.approx(7 / 18)
    assert all(type(v) in (int, float) for v in out.values())


def test_compute_metrics_generation() -> None:
    preds = ["the cat sat on the mat", "hello world"]
    refs = ["the cat sat on the mat", "goodbye world"]
    out = compute_metrics(preds, refs, "generation")
    assert set(out) == {"n", "exact_match", "f1", "rouge_l", "bleu"}
    assert out["n"] == 2
    assert out["exact_match"] == 0.5
    # second pair: 1 common of 2 tokens each -> F1 0.5; mean with 1.0 -> 0.75
    assert out["f1"] == pytest.approx(0.75)
    assert out["rouge_l"] == pytest.approx(0.75)
    assert 0.0 < out["bleu"] < 100.0
    assert all(isinstance(v, float) for k, v in out.items() if k != "n")


@pytest.mark.parametrize(
    "preds, refs, task, needle",
    [
        ([], [], "generation", "empty"),
        (["a"], ["a", "b"], "generation", "1 predictions but 2 references"),
        (["a"], ["a"], "summarize", "unknown eval task"),
        (["a"], [1], "classification", "must be strings"),
    ],
)
def test_compute_metrics_errors(preds: list, refs: list, task: str, needle: str) -> None:
    with pytest.raises(SlmError, match=needle) as err:
        compute_metrics(preds, refs, task)
    assert err.value.hint


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    for fn in (rouge_l, bleu):
        with pytest.raises(SlmError) as err:
            fn(["a"], ["a"])
        assert "pip install rouge-score sacrebleu" in err.value.hint
