"""`slm index` (chunk + MiniLM embed + ChromaDB) round trip, the collection as a data source, and the
`slm data inspect` / `slm data CONFIG` CLI wiring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slmkit.chroma import query, read_collection
from slmkit.cli import app as slm_app
from slmkit.config import BuildConfig
from slmkit.config.data import ChunkConfig
from slmkit.data.index import build_index
from slmkit.errors import SlmError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "data"
DOCS = FIX / "docs"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chroma") / "index"
    res = build_index(
        [str(DOCS / "markdown"), str(DOCS / "rst" / "pep-0020.rst")],
        "httpx-docs",
        out,
        ChunkConfig(max_tokens=128, overlap=16),
        show_progress=False,
    )
    assert res["chunks"] == res["count"] > 10
    return out


def test_round_trip_query_finds_the_right_chunk(index_dir):
    hits = query(index_dir, "httpx-docs", "How do I disable timeouts on a client?", k=3)
    assert hits[0]["meta"]["source"].split("#")[0].endswith("httpx_advanced_timeouts.md")
    assert hits[0]["distance"] < hits[-1]["distance"] or len({h["id"] for h in hits}) == 3
    zen = query(index_dir, "httpx-docs", "Beautiful is better than ugly. Explicit is better than implicit.", k=1)
    assert zen[0]["meta"]["source"].split("#")[0].endswith("pep-0020.rst")
    assert "[EMAIL]" in " ".join(
        c["text"] for c in read_collection(index_dir, "httpx-docs") if "pep-0020" in c["meta"]["source"]
    )  # Tim Peters' address was redacted


def test_reindex_is_idempotent_and_stored_metadata_is_provenance(index_dir):
    before = read_collection(index_dir, "httpx-docs")
    res = build_index(
        [str(DOCS / "markdown")], "httpx-docs", index_dir, ChunkConfig(max_tokens=128, overlap=16), show_progress=False
    )
    assert res["count"] == len(before)  # upsert by content id, no duplicates
    meta = next(c["meta"] for c in before if "httpx_exceptions.md" in c["meta"]["source"])
    assert meta["kind"] == "markdown" and meta["tokens"] <= 128 and len(meta["source_sha256"]) == 64
    assert meta["license"].endswith("(LICENSE-httpx-BSD-3-Clause.md)") and "chunk" in meta["transformations"]


def test_collection_is_a_data_source(index_dir, tmp_path, tiny_model_dir):
    from slmkit.data import prepare

    cfg = BuildConfig(
        model={"base_model": str(tiny_model_dir)},
        data={"sources": [{"path": str(index_dir), "collection": "httpx-docs"}]},
    )
    summary = prepare(cfg, tmp_path / "o")
    chunks = [json.loads(line) for line in (tmp_path / "o" / "chunks.jsonl").open()]
    assert summary["sources"][0]["type"] == "chroma" and len(chunks) == summary["chunks"] > 10
    assert chunks[0]["meta"]["source"].startswith(f"chroma:{index_dir}#httpx-docs/")
    with pytest.raises(SlmError, match="no collection 'nope'"):
        read_collection(index_dir, "nope")


def test_index_errors(tmp_path):
    with pytest.raises(SlmError, match="nothing to index"):
        build_index([str(tmp_path / "missing")], "abc", tmp_path / "i", show_progress=False)
    with pytest.raises(SlmError, match="not a ChromaDB folder"):
        read_collection(tmp_path, "abc")


def test_cli_keeps_data_config_and_adds_inspect_and_index(tmp_path):
    runner = CliRunner()
    app = slm_app
    res = runner.invoke(app, ["data", "no-such-build.yaml", "--force"])  # `slm data CONFIG` runs the stage command
    assert isinstance(res.exception, SlmError) and "config file not found: no-such-build.yaml" in res.exception.message
    res = runner.invoke(
        app,
        [
            "data",
            "inspect",
            str(FIX / "alpaca" / "alpaca_40.json"),
            "--json",
            "--base-model",
            str(FIX.parent / "no-such-model"),
        ],
    )
    assert isinstance(res.exception, SlmError) and "no-such-model" in res.exception.message  # user error, no traceback
    res = runner.invoke(app, ["index", str(DOCS), "--collection", "x"])
    assert isinstance(res.exception, SlmError)
    res = runner.invoke(
        app,
        [
            "index",
            str(DOCS / "rst" / "pep-0020.rst"),
            "--collection",
            "zen",
            "--persist-dir",
            str(tmp_path / "ix"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "-> collection 'zen'" in res.output and (tmp_path / "ix" / "chroma.sqlite3").is_file()
    res = runner.invoke(app, ["index", str(DOCS), "--collection", "zen"])
    assert isinstance(res.exception, SlmError) and "--persist-dir" in res.exception.hint


def test_data_inspect_on_file_and_run(tmp_path, tiny_model_dir):
    from slmkit.data.cli import inspect_target

    summary = inspect_target(str(FIX / "alpaca" / "alpaca_40.json"), str(tiny_model_dir))
    assert sum(summary["rows"].values()) <= 40 and summary["sources"][0]["shapes"] == ["alpaca"]
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "manifest.json").write_text(json.dumps({"summary": summary}))
    assert inspect_target(str(run)) == json.loads(json.dumps(summary))
    res = CliRunner().invoke(slm_app, ["data", "inspect", str(run)])
    assert res.exit_code == 0 and "rows" in res.output and "alpaca" in res.output
