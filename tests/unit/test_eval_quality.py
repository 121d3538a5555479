"""Scores worth believing: extraction entity F1 on hand-made cases, bootstrap intervals, collapsed models flagged."""

from __future__ import annotations

import json

import pytest

from slmkit.eval.metrics import compute_metrics, infer_task
from slmkit.eval.quality import bootstrap_ci, collapse, collapsed_models, warnings_for
from slmkit.extraction import extraction_scores, looks_like_extraction, parse_items, per_type_f1


def test_extraction_items_ignore_order_duplicates_case_and_spacing():
    ref = "artist: the beatles; playlist: road trip"
    assert parse_items("playlist:  Road Trip ;artist: The Beatles; artist: the beatles")[0] == parse_items(ref)[0]
    assert extraction_scores(["playlist: road trip; artist: THE BEATLES"], [ref])["entity_f1"] == 1.0
    assert parse_items("none") == (set(), True) and parse_items("None.") == (set(), True)
    assert parse_items('{"artist": ["the beatles"], "playlist": "road trip"}')[0] == parse_items(ref)[0]
    assert parse_items('[{"type": "artist", "span": "The Beatles"}]')[0] == {("artist", "the beatles")}


def test_extraction_scores_partial_wrong_and_malformed_answers():
    refs = ["artist: a; album: b", "none", "city: paris", "city: rome"]
    preds = [
        "artist: a; album: c",  # 1 of 2 right, 1 wrong
        "none",  # right (empty = empty)
        "city paris",  # malformed: no item read
        "city: rome; country: italy",
    ]  # 1 right, 1 extra
    s = extraction_scores(preds, refs)
    # tp = 1 + 0 + 0 + 1 = 2; predicted items = 2 + 0 + 0 + 2 = 4; reference items = 2 + 0 + 1 + 1 = 4
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)
    assert s["entity_f1"] == pytest.approx(0.5)
    assert s["exact_match"] == pytest.approx(0.25) and s["well_formed"] == pytest.approx(0.75)
    assert per_type_f1(preds, refs) == {"city": pytest.approx(2 / 3, abs=1e-4), "artist": 1.0, "album": 0.0}
    assert compute_metrics(preds, refs, "extraction")["entity_f1"] == pytest.approx(0.5)


def test_all_none_everywhere_is_perfect_and_none_to_everything_is_not():
    assert extraction_scores(["none", "none"], ["none", "none"])["entity_f1"] == 1.0
    refs = ["city: paris", "none", "city: rome", "none"]
    assert extraction_scores(["none"] * 4, refs)["entity_f1"] == 0.0


def test_task_inference_knows_extraction_and_not_times_of_day():
    refs = ["city: paris", "none", "city: rome; date: today", "artist: abba", "none"]
    assert looks_like_extraction(refs) and infer_task(refs) == "extraction"
    assert infer_task(["2:30 pm", "10:15 am", "9:00 pm", "noon today"]) != "extraction"
    assert infer_task(["weather", "alarm", "weather", "alarm"]) == "classification"


def test_bootstrap_interval_brackets_the_score_and_is_reproducible():
    refs = ["a"] * 50 + ["b"] * 50
    preds = ["a"] * 50 + ["b"] * 25 + ["a"] * 25  # accuracy 0.75
    lo, hi = bootstrap_ci(preds, refs, "classification")
    assert lo < 0.75 < hi and hi - lo < 0.25
    assert bootstrap_ci(preds, refs, "classification") == (lo, hi)
    lo2, hi2 = bootstrap_ci(preds * 4, refs * 4, "classification")  # 4x the rows: about half as wide
    assert hi2 - lo2 < 0.7 * (hi - lo)
    elo, ehi = bootstrap_ci(["city: paris"] * 30 + ["none"] * 30, ["city: paris"] * 60, "extraction")
    assert elo < 2 / 3 < ehi


def test_collapsed_model_is_flagged_and_a_good_one_is_not():
    refs = ["none"] * 44 + [f"city: c{i}" for i in range(56)]
    collapsed = ["none"] * 98 + ["city: c1", "city: c2"]
    good = ["none"] * 40 + [f"city: c{i}" for i in range(56)] + ["none"] * 4
    assert collapse(collapsed, refs)["collapsed"] and "'none' to 98% of rows" in collapse(collapsed, refs)["reason"]
    assert not collapse(good, refs)["collapsed"]
    intents = ["weather", "alarm", "music", "flight", "recipe"] * 10
    assert collapse(["weather"] * 50, intents)["collapsed"]  # 100% vs 20%
    assert not collapse(intents, intents)["collapsed"]
    # a majority answer predicted about as often as it occurs is not a collapse
    assert not collapse(["none"] * 60 + ["city: x"] * 40, ["none"] * 55 + ["city: x"] * 45)["collapsed"]


def test_warnings_name_small_splits_and_collapsed_models_but_not_the_base_model():
    summary = {
        "n": 40,
        "quality": {
            "base": {"collapse": {"collapsed": True, "reason": "r0"}},
            "trained": {"collapse": {"collapsed": True, "reason": "r1"}},
            "student": {"collapse": {"collapsed": False, "reason": ""}},
        },
    }
    w = warnings_for(summary, skip=("base",))
    assert any("only 40 test rows" in x for x in w) and "trained collapsed: r1" in w
    assert not any(x.startswith("base") for x in w)
    assert collapsed_models(summary) == ["trained"]


def test_a_model_trained_on_one_answer_is_flagged_and_fails_on_collapse(tmp_path, tiny_model_dir, capsys):
    """Train the tiny model on rows that all answer 'weather', score it on rows with five answers: flagged as
    collapsed in metrics.json, metrics.md and report.html, and `--fail-on-collapse` exits 1."""
    from slmkit.cli import main
    from slmkit.data import prepare
    from slmkit.runs import RunDir
    from slmkit.train.stage import run as train
    from tests.conftest import TINY_ROWS, tiny_config

    majority = tmp_path / "majority.csv"
    majority.write_text(
        "text,intent\n" + "".join(f"{t}{s},weather\n" for s in ("", " please", " today", " now") for t, _ in TINY_ROWS)
    )
    cfg = tiny_config(tmp_path, tiny_model_dir, majority, max_steps=60, lr=5e-2, warmup_ratio=0.0, dtype="float32")
    run = RunDir.of(cfg).root
    prepare(cfg, run / "data")
    train(cfg, run, show_progress=False)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"input": t, "output": label}) + "\n" for t, label in TINY_ROWS))
    args = [
        "eval-models",
        str(run),
        "--data",
        str(rows),
        "--system",
        "classify request reply with one intent",
        "--out",
        str(tmp_path / "e"),
        "--no-progress",
        "--no-perplexity",
        "--max-new-tokens",
        "3",
    ]
    with pytest.raises(SystemExit) as e:
        main([*args, "--fail-on-collapse"])
    assert e.value.code == 1
    assert "collapsed:" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    ((name, q),) = metrics["quality"].items()
    assert q["metric"] == "accuracy" and q["collapse"]["collapsed"] and q["collapse"]["top"].startswith("weather")
    assert len(q["ci95"]) == 2 and q["ci95"][0] <= metrics["models"][name]["accuracy"] <= q["ci95"][1]
    assert any("collapsed" in w for w in metrics["warnings"])
    html = (tmp_path / "e" / "report.html").read_text()
    assert "role='alert'" in html and "collapsed" in html
    md = (tmp_path / "e" / "metrics.md").read_text()
    assert "| model | accuracy | 95% CI |" in md and "**Warning:**" in md
