"""Hand-checked cases for the task kinds added in issue 8: QA, math (GSM8K), confusion matrix, task inference, perplexity."""

from __future__ import annotations

import math

import pytest

from slmkit.errors import SlmError
from slmkit.eval.metrics import (
    compute_metrics,
    confusion_matrix,
    exact_match,
    extract_number,
    infer_task,
    math_accuracy,
    normalize_answer,
    token_f1,
)


def test_squad_normalisation_cases() -> None:
    # lowercase, punctuation and articles dropped, whitespace collapsed (SQuAD evaluate-v1.1.py order)
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and THE fig.") == "apple pear and fig"
    assert exact_match("Denver Broncos.", "the denver broncos")
    assert not exact_match("Denver", "Denver Broncos")
    # pred "in 1990s" vs ref "the 1990s": normalised "in 1990s" / "1990s" -> P 1/2, R 1/1 -> F1 2/3
    assert token_f1("in 1990s", "the 1990s") == pytest.approx(2 / 3)


def test_qa_task_metrics() -> None:
    out = compute_metrics(["The Broncos", "Paris, France", "no idea"], ["Broncos", "Paris", "Lyon"], "qa")
    assert set(out) == {"n", "exact_match", "f1"}
    assert out["exact_match"] == pytest.approx(1 / 3)
    # F1 per row: 1, 2*(1/2*1)/(1/2+1)=2/3, 0 -> mean 5/9
    assert out["f1"] == pytest.approx(5 / 9)


@pytest.mark.parametrize(
    "text, value",
    [
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", 72.0),
        ("so the total is 1,000 + 234\n#### 1,234", 1234.0),
        ("#### -5", -5.0),
        ("The answer is $1,250.50.", 1250.5),
        ("first 3 then 17 apples", 17.0),
        ("no digits here", None),
    ],
)
def test_extract_number(text: str, value: float | None) -> None:
    assert extract_number(text) == value


def test_math_accuracy_with_commas() -> None:
    refs = ["... #### 1,234", "... #### 72", "... #### 5"]
    preds = ["so 1000+234 = 1234", "#### 72.0", "I think 6"]
    assert math_accuracy(preds, refs) == pytest.approx(2 / 3)
    out = compute_metrics(preds + ["no answer"], refs + ["#### 1"], "math")
    assert out == {"n": 4, "accuracy": 0.5, "answered": 0.75}


def test_confusion_matrix_by_hand() -> None:
    refs = ["weather", "weather", "alarm", "alarm", "alarm"]
    preds = ["Weather.", "alarm", "alarm", "'alarm'", "play music"]
    cm = confusion_matrix(preds, refs)
    assert cm["labels"] == ["alarm", "weather"]
    assert cm["columns"] == ["alarm", "weather", "(other)"]
    assert cm["matrix"] == [[2, 0, 1], [1, 1, 0]]
    assert sum(map(sum, cm["matrix"])) == len(refs)
    assert confusion_matrix(["a", "b"], ["a", "b"])["columns"] == ["a", "b"]  # no "(other)" when not needed


def test_infer_task() -> None:
    assert infer_task(["#### 3", "x #### 4", "#### 1,000"]) == "math"
    assert infer_task(["alarm", "weather", "alarm", "weather", "alarm"]) == "classification"
    assert infer_task(["Denver Broncos", "in 1990", "Santa Clara, California", "the Eiffel tower"]) == "qa"
    long = "a long free-form answer that goes on for well over eight words in total"
    assert infer_task([long, long + " again", long + " more"]) == "generation"
    with pytest.raises(SlmError, match="empty"):
        infer_task([])


def test_generation_data_scores_as_qa_or_math_by_its_answers() -> None:
    from slmkit.eval.metrics import task_of

    spans = ["Denver Broncos", "in 1990", "Santa Clara, California", "the Eiffel tower"]
    assert task_of("generation", spans) == "qa" and task_of("generation", ["#### 3", "x #### 4"]) == "math"
    long = "a long free-form answer that goes on for well over eight words in total"
    assert task_of("generation", [long, long + " again"]) == "generation"
    assert task_of("classification", ["a", "b", "a", "b"]) == "classification" and task_of(None, spans) == "qa"


def test_unknown_task_lists_new_kinds() -> None:
    with pytest.raises(SlmError) as err:
        compute_metrics(["a"], ["a"], "summarize")
    assert "math" in err.value.hint and "qa" in err.value.hint


def test_perplexity_matches_hand_computed_cross_entropy(tiny_model_dir) -> None:
    import torch

    from slmkit.encoding import encode_chat
    from slmkit.eval.perplexity import answer_perplexity
    from slmkit.models import load_model, load_tokenizer

    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    conv = [{"role": "user", "content": "set an alarm"}, {"role": "assistant", "content": "alarm"}]
    enc = encode_chat(tok, conv, 64)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([enc["input_ids"]])).logits[0], -1)
    scored = [(t, lab) for t, lab in enumerate(enc["labels"]) if lab != -100 and t > 0]
    nll = -sum(float(logp[t - 1, lab]) for t, lab in scored) / len(scored)
    assert len(scored) == 2  # "alarm" and the end-of-turn token
    assert answer_perplexity(model, tok, [conv]) == pytest.approx(math.exp(nll), rel=1e-5)
