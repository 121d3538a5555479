"""Token-level extraction data: CoNLL files and seq.in/seq.out folders become rows with canonical answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmkit.data.read.bio import conll_rows, seq_rows, tags_to_items
from slmkit.errors import SlmError
from tests.conftest import make_tiny_tokenizer

SNIPS = Path(__file__).parent.parent / "fixtures" / "data" / "snips"


def test_bio_and_bioes_tags_become_entities():
    toks = "listen to westbam alumb allergic on google music".split()
    tags = "O O B-artist O B-album O B-service I-service".split()
    assert tags_to_items(toks, tags, "x:1", set()) == [
        ("artist", "westbam"),
        ("album", "allergic"),
        ("service", "google music"),
    ]
    assert tags_to_items(["new", "york", "now"], ["B-city", "E-city", "S-time"], "x:1", set()) == [
        ("city", "new york"),
        ("time", "now"),
    ]
    assert tags_to_items(["a", "b"], ["B-x", "B-x"], "x:1", set()) == [("x", "a"), ("x", "b")]


@pytest.mark.parametrize(
    "tokens,tags,match",
    [
        ("a b c", "O B-x", "3 tokens but 2 tags"),
        ("a b", "O I-x", "token 2: tag 'I-x' continues an entity, but no x entity is open"),
        ("a b", "B-x I-y", "no y entity is open"),
        ("a b", "B-x X-x", "is not O or a B-/I-"),
    ],
)
def test_bad_tag_sequences_name_file_line_and_token(tokens, tags, match):
    with pytest.raises(SlmError, match=match) as e:
        tags_to_items(tokens.split(), tags.split(), "data/seq.out:7", set())
    assert e.value.message.startswith("data/seq.out:7")


def test_mixed_tag_schemes_are_refused(tmp_path):
    path = tmp_path / "mixed.conll"
    path.write_text("new B-city\nyork E-city\n\nparis U-city\n")
    with pytest.raises(SlmError, match=r"mixed.conll:4 token 1: tag 'U-city' mixes tag schemes \(BILOU and BIOES\)"):
        list(conll_rows(path))


def test_seq_folder_rows_with_intents_and_json_answers():
    rows = list(seq_rows(SNIPS / "train"))
    assert len(rows) == 40
    first, loc = rows[0]
    assert first == {
        "input": "listen to westbam alumb allergic on google music",
        "output": "artist: westbam; album: allergic; service: google music",
        "intent": "PlayMusic",
    }
    assert loc.endswith("seq.in#line=1")
    as_json = list(seq_rows(SNIPS / "train", "json"))[0][0]["output"]
    assert json.loads(as_json) == {"artist": ["westbam"], "album": ["allergic"], "service": ["google music"]}


def test_seq_folder_with_a_short_file_is_refused(tmp_path):
    (tmp_path / "seq.in").write_text("a b\nc d\n")
    (tmp_path / "seq.out").write_text("O O\n")
    with pytest.raises(SlmError, match=r"different numbers of lines \(seq.in 2, seq.out 1\)"):
        list(seq_rows(tmp_path))


def test_conll_file_sentences_and_docstart(tmp_path):
    path = tmp_path / "ner.conll"
    path.write_text("-DOCSTART- O\n\nEU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n\nfine O\n")
    rows = [r for r, _ in conll_rows(path)]
    assert rows == [
        {"input": "EU rejects German", "output": "ORG: EU; MISC: German"},
        {"input": "Peter Blackburn", "output": "PER: Peter Blackburn"},
        {"input": "fine", "output": "none"},
    ]
    bad = tmp_path / "bad.conll"
    bad.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(SlmError, match=r"bad.conll:2: 'rejects' has no tag column"):
        list(conll_rows(bad))


def test_data_stage_reads_a_seq_folder_as_extraction_with_a_test_path(tmp_path, monkeypatch):
    """SNIPS-style folders: the task is detected as extraction, the answer distribution is in the summary, and
    data.test_path is the test split as given (never resampled; data.split.test unused)."""
    from slmkit.config import load_config
    from slmkit.data import prepare
    from slmkit.io import read_jsonl

    monkeypatch.setattr("slmkit.data.tokens.get_tokenizer", lambda name: make_tiny_tokenizer(), raising=False)
    cfg = load_config(
        None,
        {
            "data": {
                "path": str(SNIPS / "train"),
                "test_path": str(SNIPS / "test"),
                "system_prompt": "List the slots as type: span; ...",
                "split": {"val": 0.2, "test": 0.3},
            }
        },
        environ={},
    )
    summary = prepare(cfg, tmp_path / "data")
    assert summary["task"] == "extraction"
    test = read_jsonl(tmp_path / "data" / "test.jsonl")
    assert len(test) == summary["rows"]["test"] == 40  # every test row, none resampled
    assert [r["messages"][1]["content"] for r in test] == [
        " ".join(ln.split()) for ln in (SNIPS / "test" / "seq.in").read_text().splitlines()
    ]
    assert summary["rows"]["train"] + summary["rows"]["val"] == 40 - summary["dropped"]["contaminated"]
    assert summary["rows"]["val"] > 0
    assert summary["answers"]["rows"] == 80 and summary["answers"]["top"]
    assert "Most common answers" in (tmp_path / "data" / "card.md").read_text()


def test_a_dominant_answer_is_warned_about(tmp_path):
    from slmkit.config import load_config
    from slmkit.data import inspect

    csv = tmp_path / "rows.csv"
    rows = [f"text {i},none" for i in range(45)] + [f"show {i},city: c{i}" for i in range(55)]
    csv.write_text("text,answer\n" + "\n".join(rows) + "\n")
    summary = inspect(load_config(None, {"data": {"path": str(csv)}, "model": {"base_model": "default"}}, environ={}))
    assert summary["task"] == "extraction"
    assert summary["answers"]["top"][0][:2] == ["none", 45]
    assert summary["warnings"] and "'none' is 45% of the rows" in summary["warnings"][0]
