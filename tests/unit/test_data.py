"""Data stage: readers, column mapping, records, dedup, split, provenance, bad input, prepare()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmkit.config import BuildConfig, DataConfig, SplitConfig
from slmkit.data import prepare, read_table, to_records
from slmkit.data.split import assign_splits, bucket, split_of
from slmkit.errors import SlmError
from slmkit.io import read_jsonl, sha256_file

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
EXAMPLE = ROOT / "examples" / "intent-router" / "data" / "clinc150_subset.csv"


def build_cfg(path: Path | str | None, **data) -> BuildConfig:
    return BuildConfig(data={"path": None if path is None else str(path), **data})


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def written(out: Path) -> list[dict]:
    """Every record prepare() wrote, train then val then test."""
    return [r for s in ("train", "val", "test") for r in read_jsonl(out / f"{s}.jsonl")]


def csv_text(rows: list[tuple[str, ...]], header=("text", "intent")) -> str:
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


def test_read_csv_handles_quoting_and_locators():
    rows, locs = read_table(FIX / "clinc_20.csv")
    assert len(rows) == 20 and len(locs) == 20
    assert rows[1] == {"text": "set an alarm for 6am, please", "intent": "alarm"}
    assert locs[0] == f"{FIX / 'clinc_20.csv'}#row=1" and locs[19].endswith("#row=20")


def test_read_tsv_and_format_override(tmp_path):
    rows, _ = read_table(FIX / "clinc_10.tsv")
    assert len(rows) == 10 and set(rows[0]) == {"utterance", "label"}
    assert rows[8] == {"utterance": "in spanish, meet me tomorrow is said how", "label": "translate"}
    rows, _ = read_table(write(tmp_path / "data.txt", "text\tintent\nhello\tgreeting\n"), DataConfig(format="tsv"))
    assert rows == [{"text": "hello", "intent": "greeting"}]


def test_read_jsonl_keeps_line_numbers_across_blank_lines(tmp_path):
    rows, locs = read_table(FIX / "clinc_10.jsonl")
    assert len(rows) == 10 and rows[3]["query"] == "play the song called baby shark"
    assert locs[3].endswith("clinc_10.jsonl#line=4")
    p = write(tmp_path / "gaps.jsonl", '{"text": "a", "label": "x"}\n\n\n{"text": "b", "label": "y"}\n')
    rows, locs = read_table(p)
    assert [r["text"] for r in rows] == ["a", "b"]
    assert locs == [f"{p}#line=1", f"{p}#line=4"]


def test_read_json_shapes(tmp_path):
    rows, locs = read_table(FIX / "clinc_full_shape.json", DataConfig(json_field="test"))  # [text, label] pairs
    assert len(rows) == 4 and set(rows[0]) == {"text", "label"}
    assert rows[0]["label"] == "alarm" and locs[3].endswith("clinc_full_shape.json#row=4")
    rows, _ = read_table(FIX / "clinc_nested.json")  # the only top-level list is picked
    assert len(rows) == 8 and rows[0] == {"text": "please set an alarm for mid day", "intent": "alarm"}
    doc = {"meta": {"n": 2}, "data": {"rows": [{"q": "hi", "a": "greeting"}, {"q": "bye", "a": "goodbye"}]}}
    rows, _ = read_table(write(tmp_path / "d.json", json.dumps(doc)), DataConfig(json_field="data.rows"))
    assert [r["q"] for r in rows] == ["hi", "bye"]
    rows, _ = read_table(write(tmp_path / "l.json", json.dumps([["hello there", "greeting"]])))
    assert rows == [{"text": "hello there", "label": "greeting"}]


@pytest.mark.parametrize(
    "name,expected",
    [
        ("clinc_20.csv", ("text", "intent")),
        ("clinc_10.tsv", ("utterance", "label")),
        ("clinc_10.jsonl", ("query", "intent")),
    ],
)
def test_column_auto_detect(name, expected):
    rows, locs = read_table(FIX / name)
    records, report = to_records(rows, DataConfig(), locs)
    picked = report["columns_picked"]
    assert (picked["input"], picked["output"]) == expected
    assert set(report["auto_detected"]) == {"input", "output"}
    assert records[0]["messages"] == [
        {"role": "user", "content": rows[0][expected[0]]},
        {"role": "assistant", "content": rows[0][expected[1]]},
    ]


def test_explicit_column_mapping_beats_auto_detect():
    rows = [{"text": "ignored", "q": "how do i make pie crust", "a": "recipe", "label": "wrong"}]
    records, report = to_records(rows, DataConfig(columns={"input": "q", "output": "a"}))
    assert report["columns_picked"]["input"] == "q" and report["columns_picked"]["output"] == "a"
    assert report["auto_detected"] == []
    assert [m["content"] for m in records[0]["messages"]] == ["how do i make pie crust", "recipe"]


def test_messages_column_is_used_when_present():
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    rows = [{"messages": json.dumps(msgs)}, {"messages": msgs[1:2]}]  # second row has no answer -> dropped
    records, report = to_records(rows, DataConfig())
    assert report["columns_picked"]["messages"] == "messages"
    assert records[0]["messages"] == msgs and report["dropped"]["empty"] == 1


def test_labels_placeholder_expands_to_sorted_distinct_labels():
    rows, locs = read_table(FIX / "clinc_20.csv")
    records, report = to_records(rows, DataConfig(system_prompt="Pick one of: {labels}. Reply {json}."), locs)
    expected = ", ".join(sorted({r["intent"] for r in rows}))
    assert expected.startswith("alarm, balance, book_flight")
    assert records[0]["messages"][0] == {"role": "system", "content": f"Pick one of: {expected}. Reply {{json}}."}
    assert {r["messages"][0]["content"] for r in records} == {records[0]["messages"][0]["content"]}


def test_no_system_message_without_prompt_or_column_and_system_column_used():
    records, _ = to_records([{"text": "hi", "label": "greeting"}], DataConfig())
    assert [m["role"] for m in records[0]["messages"]] == ["user", "assistant"]
    records, report = to_records([{"text": "hi", "label": "greeting", "system": "sys A"}], DataConfig())
    assert report["columns_picked"]["system"] == "system"
    assert records[0]["messages"][0] == {"role": "system", "content": "sys A"}


def test_record_shape_id_and_label():
    rows, locs = read_table(FIX / "clinc_20.csv")
    records, report = to_records(rows, DataConfig(), locs)
    rec = records[0]
    assert set(rec) == {"id", "messages", "label", "meta"}
    assert len(rec["id"]) == 40 and int(rec["id"], 16) >= 0
    assert rec["label"] == "alarm" and report["task"] == "classification"
    assert rec["meta"]["source"].endswith("clinc_20.csv#row=1") and rec["meta"]["pii_redacted"] == []
    assert report["label_counts"]["alarm"] == 2 and len(report["labels"]) == 10


def test_exact_dedup_counts_planted_duplicates():
    rows, locs = read_table(FIX / "clinc_20.csv")
    planted = rows + [rows[0], rows[5], dict(rows[0])]
    records, report = to_records(planted, DataConfig())
    assert report["dropped"]["duplicate"] == 3 and len(records) == 20
    assert len({r["id"] for r in records}) == 20
    records, report = to_records(planted, DataConfig(dedup=False))
    assert report["dropped"]["duplicate"] == 0 and len(records) == 23


def test_empty_rows_are_dropped_and_counted():
    rows = [
        {"text": "hi", "label": "greeting"},
        {"text": "  ", "label": "greeting"},
        {"text": "bye", "label": None},
        {"label": "x"},
        {"text": "thanks", "label": "thank_you"},
    ]
    records, report = to_records(rows, DataConfig())
    assert report["dropped"]["empty"] == 3 and [r["messages"][0]["content"] for r in records] == ["hi", "thanks"]


def test_task_detection():
    short = [{"text": f"utterance {i}", "label": ["a", "b", "c"][i % 3]} for i in range(12)]
    assert to_records(short, DataConfig())[1]["task"] == "classification"
    long = [{"text": f"q{i}", "label": f"a long free-form answer number {i} here"} for i in range(12)]
    _, report = to_records(long, DataConfig())
    assert report["task"] == "generation" and report["labels"] == []
    unique = [{"text": f"q{i}", "label": f"l{i}"} for i in range(12)]  # distinct > half the rows
    records, report = to_records(unique, DataConfig())
    assert report["task"] == "generation" and records[0]["label"] is None
    assert to_records(unique, DataConfig(task="classification"))[0][0]["label"] == "l0"


def test_split_is_deterministic_and_proportions_are_rough():
    ids = [f"{i:040x}" for i in range(500)]
    cfg = SplitConfig(val=0.1, test=0.2, seed="s1")
    splits = [split_of(i, cfg) for i in ids]
    assert splits == [split_of(i, cfg) for i in ids]
    assert 0.05 < splits.count("val") / 500 < 0.15 and 0.14 < splits.count("test") / 500 < 0.26
    assert all(0 <= bucket("s1", i) < 1 for i in ids)
    other = [split_of(i, SplitConfig(val=0.1, test=0.2, seed="s2")) for i in ids]
    assert other != splits  # the seed matters


def test_split_is_stable_when_rows_are_added(tmp_path):
    small = prepare(build_cfg(EXAMPLE, max_rows=300), tmp_path / "small")
    full = prepare(build_cfg(EXAMPLE), tmp_path / "full")
    before, after = ({r["id"]: r["meta"]["split"] for r in written(tmp_path / d)} for d in ("small", "full"))
    dropped = lambda s: s["dropped"]["near_duplicate"] + s["dropped"]["contaminated"]  # noqa: E731
    assert len(before) == sum(small["rows"].values()) == 300 - dropped(small)
    assert len(after) == sum(full["rows"].values()) == 576 - dropped(full) and len(after) > 560
    assert all(after[i] == s for i, s in before.items() if i in after)
    assert sum(i in after for i in before) >= len(before) - dropped(full)


def test_assign_splits_rejects_no_room_for_train():
    with pytest.raises(SlmError, match="leaves nothing for training"):
        assign_splits([], SplitConfig(val=0.5, test=0.5))


def test_prepare_on_example_writes_four_files_and_counts_add_up(tmp_path):
    out = tmp_path / "data"
    summary = prepare(build_cfg(EXAMPLE, system_prompt="Intents: {labels}"), out)
    assert sorted(p.name for p in out.iterdir()) == ["card.md", "lengths.png", "test.jsonl", "train.jsonl", "val.jsonl"]
    assert {"rows", "dropped", "task", "labels", "source", "source_sha256", "license", "columns_picked"} <= set(summary)
    counts = {s: len(read_jsonl(out / f"{s}.jsonl")) for s in ("train", "val", "test")}
    assert counts == summary["rows"] and sum(counts.values()) == 576 - summary["dropped"]["near_duplicate"]
    assert summary["dropped"]["duplicate"] == 0 and summary["dropped"]["empty"] == 0
    assert all(40 < counts[s] < 80 for s in ("val", "test"))
    assert summary["task"] == "classification" and len(summary["labels"]) == 12
    card = (out / "card.md").read_text()
    assert summary["source_sha256"] in card and f"| train | {counts['train']} |" in card
    assert "| weather | 48 |" in card and "| input | text |" in card and "![token lengths](lengths.png)" in card


def test_provenance_fields(tmp_path):
    summary = prepare(build_cfg(EXAMPLE), tmp_path)
    sha = sha256_file(EXAMPLE)
    assert summary["source_sha256"] == sha and summary["source"] == str(EXAMPLE)
    assert summary["license"] == "Creative Commons Legal Code (LICENSE-CC-BY-3.0.txt)"
    assert all(r["meta"]["split"] == s for s in ("train", "val", "test") for r in read_jsonl(tmp_path / f"{s}.jsonl"))
    records = written(tmp_path)
    assert {(r["meta"]["source_sha256"], r["meta"]["license"], r["meta"]["synthetic"]) for r in records} == {
        (sha, summary["license"], None)
    }
    first = next(r for r in records if r["meta"]["source"] == f"{EXAMPLE}#row=1")
    assert first["messages"][0]["content"] == "wake me up at noon tomorrow"


def test_license_from_config_or_none(tmp_path):
    p = write(tmp_path / "d.csv", csv_text([(f"q{i}", "a" if i % 2 else "b") for i in range(20)]))
    assert prepare(build_cfg(p), tmp_path / "o1")["license"] is None
    assert prepare(build_cfg(p, license="MIT"), tmp_path / "o2")["license"] == "MIT"
    write(tmp_path / "LICENSE", "\nApache License 2.0\nmore\n")
    summary = prepare(build_cfg(p), tmp_path / "o3")
    assert summary["license"] == "Apache License 2.0 (LICENSE)"


def test_licence_warning_names_a_data_path_source(tmp_path, tiny_model_dir):
    """The export licence check reads the data stage's summary: a source given as data.path is named by its file."""
    from slmkit.export.licence import check_licences
    from slmkit.runs import RunDir

    p = write(tmp_path / "d.csv", csv_text([(f"q{i}", "a" if i % 2 else "b") for i in range(20)]))
    run = RunDir(tmp_path / "run")
    summary = prepare(build_cfg(p), run.data_dir)
    run.manifest("data").write_text(json.dumps({"summary": summary}))
    warnings = check_licences(str(tiny_model_dir), run.root)["warnings"]
    assert f"data source {p} has an unknown licence (none given)" in warnings, warnings


def raises(cfg: BuildConfig, tmp_path: Path) -> SlmError:
    with pytest.raises(SlmError) as exc:
        prepare(cfg, tmp_path / "out")
    assert exc.value.hint
    return exc.value


def test_unset_missing_directory_and_empty(tmp_path):
    assert "data.path is not set" in raises(build_cfg(None), tmp_path).message
    assert f"not found: {tmp_path / 'nope.csv'}" in raises(build_cfg(tmp_path / "nope.csv"), tmp_path).message
    (tmp_path / "empty_dir").mkdir()
    err = raises(build_cfg(tmp_path / "empty_dir"), tmp_path)  # a folder is a source now; an empty one is refused
    assert "nothing usable" in err.message and "empty folder" in err.message
    empty = write(tmp_path / "empty.csv", b"")
    err = raises(build_cfg(empty), tmp_path)
    assert "empty" in err.message and str(empty) in err.message
    header_only = write(tmp_path / "h.csv", "text,intent\n")
    assert "no rows" in raises(build_cfg(header_only), tmp_path).message
    assert "no rows" in raises(build_cfg(write(tmp_path / "e.json", "[]")), tmp_path).message


def test_json_syntax_errors_name_file_and_position(tmp_path):
    assert f"{FIX / 'malformed.jsonl'}:3: malformed" in raises(build_cfg(FIX / "malformed.jsonl"), tmp_path).message
    p = write(tmp_path / "bad.json", '[\n  {"text": "hi", "label": "x"},\n  {"text": "yo" "label": "y"}\n]\n')
    assert f"{p}:3:17: invalid JSON" in raises(build_cfg(p), tmp_path).message


def test_json_without_obvious_row_list(tmp_path):
    err = raises(build_cfg(FIX / "clinc_full_shape.json"), tmp_path)
    assert "train, test" in err.message and "json_field" in err.hint
    err = raises(build_cfg(FIX / "clinc_full_shape.json", json_field="dev"), tmp_path)
    assert "'dev' not found" in err.message and "train, test" in err.message


def test_column_errors(tmp_path):
    err = raises(build_cfg(FIX / "clinc_20.csv", columns={"output": "label"}), tmp_path)
    assert "'label' (data.columns.output)" in err.message and "available columns: text, intent" in err.message
    p = write(tmp_path / "x.csv", csv_text([("a", "b")] * 3, header=("foo", "bar")))
    err = raises(build_cfg(p), tmp_path)
    assert "available columns: foo, bar" in err.message and "data.columns.input" in err.hint
    p = write(tmp_path / "x.csv", csv_text([("hello", "")] * 3))
    assert "no usable rows" in raises(build_cfg(p), tmp_path).message


def test_unsupported_extension_and_not_utf8(tmp_path):
    err = raises(build_cfg(write(tmp_path / "data.docx", "whatever")), tmp_path)
    assert "'.docx'" in err.message and "CSV" in err.message and "JSONL" in err.message
    p = write(tmp_path / "latin.csv", "text,intent\nhi,greeting\ncaf\xe9 please,order\n".encode("latin-1"))
    err = raises(build_cfg(p), tmp_path)
    assert f"{p}:3: not valid UTF-8" in err.message and "UTF-8" in err.hint


def test_csv_row_with_extra_fields(tmp_path):
    p = write(tmp_path / "x.csv", "text,intent\nhi,greeting\nset an alarm for 6am, please,alarm\n")
    assert f"{p}: row 2 (line 3) has 3 fields" in raises(build_cfg(p), tmp_path).message


def test_zero_train_rows(tmp_path):
    # One usable row, and a seed that puts it in test.
    p = write(tmp_path / "one.csv", csv_text([("hello", "greeting")]))
    rec_id = to_records([{"text": "hello", "intent": "greeting"}], DataConfig())[0][0]["id"]
    seed = next(s for s in map(str, range(100)) if bucket(s, rec_id) < 0.5)
    err = raises(build_cfg(p, split={"val": 0.0, "test": 0.5, "seed": seed}), tmp_path)
    assert "no training rows" in err.message and str(p) in err.message
