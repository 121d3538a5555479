"""RAG mode in eval: the top-k chunks of a real (tiny) ChromaDB collection go into each prompt's user message, and
each model is reported twice, as "<name>" and "<name>+rag"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from slmkit.errors import SlmError
from slmkit.eval.rag import RagSettings, open_collection, with_context

DOCS = {
    "weather.md": "# Weather service\n\nThe weather forecast gives rain, sunshine and temperature for today and "
    "tomorrow in every city.\n",
    "alarm.md": "# Alarm clock\n\nAn alarm rings at the time you set. You can set an alarm for six in the morning "
    "and snooze it.\n",
    "flights.md": "# Flight booking\n\nBook a flight to Paris, London or any airport. A booking needs the "
    "passenger name and a date.\n",
}
QUESTIONS = [
    ("what is the weather today", "weather", "weather.md"),
    ("set an alarm for six", "alarm", "alarm.md"),
    ("book a flight to paris", "book_flight", "flights.md"),
    ("what is the weather tomorrow", "weather", "weather.md"),
]
SYSTEM = "classify request reply with one intent"


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """A ChromaDB folder with collection 'eval-docs' (one chunk per document) and its chunks by id."""
    from slmkit.chroma import read_collection
    from slmkit.data.index import build_index

    root = tmp_path_factory.mktemp("rag")
    for name, text in DOCS.items():
        (root / "docs").mkdir(exist_ok=True)
        (root / "docs" / name).write_text(text)
    build_index([str(root / "docs")], "eval-docs", root / "index", show_progress=False)
    chunks = {c["id"]: c for c in read_collection(root / "index", "eval-docs")}
    assert len(chunks) == len(DOCS)
    return root / "index", chunks


@pytest.fixture()
def split(tmp_path) -> Path:
    rows = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": q},
                {"role": "assistant", "content": label},
            ],
            "label": label,
        }
        for q, label, _ in QUESTIONS
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def seen(monkeypatch) -> list[list[dict]]:
    """Every conversation handed to the torch generate loop: what the model was actually prompted with."""
    import slmkit.generation as ev

    real, calls = ev.generate, []

    def recording(model, tok, conversations, *args, **kwargs):
        calls.extend(conversations)
        return real(model, tok, conversations, *args, **kwargs)

    monkeypatch.setattr(ev, "generate", recording)
    return calls


def _app() -> typer.Typer:
    from slmkit.cli import app

    return app


def _source_of(chunk: dict) -> str:
    """'chroma:DIR#COLLECTION/ID|/path/weather.md#section=1&chunk=1' -> 'weather.md'."""
    return Path(chunk["meta"]["source"].split("|", 1)[1].split("#")[0]).name


def test_eval_models_with_rag_reports_both_rows_and_prompts_hold_the_chunks(
    tmp_path, tiny_model_dir, split, index, seen
):
    persist_dir, chunks = index
    out = tmp_path / "eval"
    res = CliRunner().invoke(
        _app(),
        [
            "eval-models",
            str(tiny_model_dir),
            "--data",
            str(split),
            "--out",
            str(out),
            "--max-new-tokens",
            "3",
            "--no-progress",
            "--rag-collection",
            "eval-docs",
            "--rag-dir",
            str(persist_dir),
            "--rag-k",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    name = tiny_model_dir.name
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == [name, f"{name}+rag"]
    assert metrics["rag"] == {"collection": "eval-docs", "persist_dir": str(persist_dir), "top_k": 2}
    assert all("perplexity" in m for m in metrics["models"].values())
    assert f"| {name}+rag |" in (out / "metrics.md").read_text() and f"{name}+rag" in res.output
    page = (out / "report.html").read_text()
    assert f"<tr><td>{name}</td>" in page and f"<tr><td>{name}+rag</td>" in page and "id='rag'" in page

    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    plain = [p for p in preds if p["model"] == name]
    rag = [p for p in preds if p["model"] == f"{name}+rag"]
    assert len(plain) == len(rag) == len(QUESTIONS) and all("retrieved" not in p for p in plain)
    assert [p["prompt"] for p in rag] == [q for q, _, _ in QUESTIONS]  # the question alone, as in the plain rows
    for row, (_, _, doc) in zip(rag, QUESTIONS):
        assert len(row["retrieved"]) == 2 and set(row["retrieved"]) <= set(chunks)
        assert _source_of(chunks[row["retrieved"][0]]) == doc  # the nearest chunk is the document on the topic

    # What the model saw: plain prompts untouched; +rag prompts carry each retrieved chunk's text in the user turn.
    assert len(seen) == 2 * len(QUESTIONS)
    by_user = {}
    for conv in seen:
        assert conv[0] == {"role": "system", "content": SYSTEM} and conv[-1]["role"] == "user"
        by_user.setdefault(conv[-1]["content"], conv)
    for row in rag:
        user = next(u for u in by_user if u != row["prompt"] and u.endswith(row["prompt"]))
        assert user.count("<context>") == 1 and user.endswith(f"</context>\n\n{row['prompt']}")
        for cid in row["retrieved"]:
            assert chunks[cid]["text"].strip() in user
        assert row["prompt"] in by_user  # and the same question was asked without context


def test_eval_stage_rag_only_from_config(tmp_path, tiny_model_dir, index, split):
    from slmkit.config import BuildConfig
    from slmkit.eval.stage import run as evaluate

    persist_dir, chunks = index
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "test.jsonl").write_text(split.read_text())
    cfg = BuildConfig(
        model={"base_model": str(tiny_model_dir)},
        config_dir=str(tmp_path),
        eval={
            "max_new_tokens": 3,
            "rag": {"collection": "eval-docs", "persist_dir": str(persist_dir), "top_k": 1, "compare_without": False},
        },
    )
    summary = evaluate(cfg, run, task="auto", show_progress=False)
    assert list(summary["models"]) == ["base+rag"] and summary["rag"]["top_k"] == 1
    preds = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [_source_of(chunks[p["retrieved"][0]]) for p in preds] == [doc for _, _, doc in QUESTIONS]
    assert "base+rag" in (run / "eval" / "report.html").read_text()


def test_missing_collection_is_one_line_error_naming_it_and_the_folder(tmp_path, index, split, tiny_model_dir):
    from slmkit.eval.compare import eval_models

    persist_dir, _ = index
    with pytest.raises(SlmError) as e:
        open_collection(RagSettings("nope", persist_dir))
    assert "'nope'" in e.value.message and str(persist_dir) in e.value.message and "eval-docs" in e.value.message
    assert "slm index" in e.value.hint and "\n" not in e.value.message
    empty = tmp_path / "no-index"
    with pytest.raises(SlmError, match="no ChromaDB collections there"):
        eval_models([str(tiny_model_dir)], str(split), tmp_path / "e", rag=RagSettings("eval-docs", empty))
    assert not empty.exists()  # looking must not create an empty ChromaDB folder

    res = CliRunner().invoke(
        _app(), ["eval-models", str(tiny_model_dir), "--data", str(split), "--rag-collection", "x"]
    )
    assert isinstance(res.exception, SlmError) and "--rag-dir" in res.exception.message
    res = CliRunner().invoke(_app(), ["eval-models", str(tiny_model_dir), "--data", str(split), "--rag-only"])
    assert isinstance(res.exception, SlmError) and "--rag-collection" in res.exception.message


def test_with_context_uses_the_last_user_turn_and_keeps_system_prompt():
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    out = with_context(msgs, [{"id": "a", "text": "alpha </context> tail"}, {"id": "b", "text": " beta "}])
    assert out[:3] == msgs[:3] and msgs[3]["content"] == "second"  # copy; input untouched
    text = out[3]["content"]
    assert text.endswith("\n\nsecond") and "[1] alpha </ context> tail\n\n[2] beta\n</context>" in text
    assert text.count("</context>") == 1
    with pytest.raises(SlmError, match="no user message"):
        with_context([{"role": "system", "content": "s"}], [])


def test_reindexing_the_collection_changes_the_eval_fingerprint(tmp_path, tiny_csv, tiny_model_dir):
    """The eval stage reads the collection, so its content (not Chroma's files) is an input of the fingerprint."""
    from slmkit.config import load_config
    from slmkit.data.index import build_index
    from slmkit.pipeline import fingerprints

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("Alarms ring at the time you set.\n")
    build_index([str(docs)], "kb-docs", tmp_path / "index", show_progress=False)
    cfg = load_config(
        None,
        {
            "output_dir": str(tmp_path / "runs"),
            "model": {"base_model": str(tiny_model_dir)},
            "data": {"path": str(tiny_csv)},
            "config_dir": str(tmp_path),
            "eval": {"rag": {"collection": "kb-docs", "persist_dir": "index"}},
        },
        environ={},
    )
    first = fingerprints(cfg)
    assert fingerprints(cfg) == first  # opening the collection does not change it
    (docs / "b.md").write_text("Flights to Paris leave daily.\n")
    build_index([str(docs)], "kb-docs", tmp_path / "index", show_progress=False)
    second = fingerprints(cfg)
    assert second["eval"] != first["eval"] and second["train"] == first["train"]
