"""train.balance: capping the majority answer or oversampling the minorities of the train split, seeded and recorded."""

from __future__ import annotations

from collections import Counter

import pytest

from slmkit.train.balance import OVERSAMPLE_MAX, answer_key, balance_records
from tests.conftest import tiny_config


def rec(i: int, answer: str) -> dict:
    return {"id": str(i), "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": answer}]}


def rows(counts: dict[str, int]) -> list[dict]:
    return [rec(i, answer) for i, answer in enumerate(a for a, n in counts.items() for _ in range(n))]


def answers(records: list[dict]) -> Counter:
    return Counter(answer_key(r) for r in records)


def test_answer_key_is_the_normalised_last_assistant_message():
    r = {
        "messages": [
            {"role": "assistant", "content": "first"},
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": '  "Weather."\nmore text'},
        ]
    }
    assert answer_key(r) == "weather"
    assert answer_key({"messages": [{"role": "user", "content": "x"}]}) == ""


def test_off_keeps_the_rows_and_reports_the_counts():
    data = rows({"a": 6, "b": 2, "c": 1})
    out, report = balance_records(data, "off", seed=0)
    assert out == data
    assert report["rows_before"] == report["rows_after"] == 9 and report["answers"] == 3
    assert report["per_answer"] == {"a": [6, 6], "b": [2, 2], "c": [1, 1]}


def test_cap_limits_the_majority_to_the_runner_up_seeded_and_in_file_order():
    data = rows({"a": 10, "b": 4, "c": 2})
    out, report = balance_records(data, "cap", seed=1)
    assert answers(out) == {"a": 4, "b": 4, "c": 2}
    assert report["rows_after"] == 10 and report["per_answer"]["a"] == [10, 4] and report["seed"] == 1
    ids = [int(r["id"]) for r in out]
    assert ids == sorted(ids)  # file order kept
    again, _ = balance_records(data, "cap", seed=1)
    other, _ = balance_records(data, "cap", seed=2)
    assert again == out
    assert {r["id"] for r in other} != {r["id"] for r in out}  # another seed keeps other majority rows


def test_oversample_repeats_minorities_up_to_the_majority_but_at_most_a_few_times_their_count():
    data = rows({"a": 12, "b": 5, "c": 1})
    out, report = balance_records(data, "oversample", seed=0)
    got = answers(out)
    assert got["a"] == 12 and got["b"] == 12 and got["c"] == OVERSAMPLE_MAX
    assert out[: len(data)] == data  # the original rows first, then the copies
    b_ids = Counter(r["id"] for r in out if answer_key(r) == "b")
    assert sorted(b_ids.values()) == [2, 2, 2, 3, 3]  # whole copies, then a seeded sample for the rest
    assert report["rows_before"] == 18 and report["rows_after"] == 28
    assert balance_records(data, "oversample", seed=0)[0] == out


def test_rows_without_repeating_answers_are_left_alone():
    data = [rec(i, f"answer number {i}") for i in range(10)]  # generation data: every answer distinct
    for mode in ("cap", "oversample"):
        out, report = balance_records(data, mode, seed=0)
        assert out == data and "skipped" in report and "per_answer" not in report


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        balance_records(rows({"a": 3, "b": 1}), "undersample", seed=0)


def test_train_records_what_balance_did(tmp_path, tiny_model_dir):
    from slmkit.data import prepare
    from slmkit.runs import RunDir
    from slmkit.train.stage import run as train

    lines = (
        ["text,intent"]
        + [f"play some music number {i},play_music" for i in range(24)]
        + [f"what is the weather on day {i},weather" for i in range(6)]
    )
    csv = tmp_path / "skewed.csv"
    csv.write_text("\n".join(lines) + "\n")
    cfg = tiny_config(tmp_path, tiny_model_dir, csv, max_steps=2, balance="oversample", balance_seed=7, eval_steps=None)
    run = RunDir.of(cfg).root
    prepare(cfg, run / "data")
    summary = train(cfg, run, show_progress=False)
    b = summary["balance"]
    assert b["mode"] == "oversample" and b["seed"] == 7 and b["rows_after"] > b["rows_before"]
    before = {a: n[0] for a, n in b["per_answer"].items()}
    after = {a: n[1] for a, n in b["per_answer"].items()}
    assert after["weather"] == min(before["play_music"], OVERSAMPLE_MAX * before["weather"])
    assert summary["train_rows"] == b["rows_after"]
