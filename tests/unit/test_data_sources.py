"""Readers: Parquet, Excel, folders of TXT/Markdown/reST, PDF pages, HTML files and URLs (local server),
chat shapes (OpenAI, ShareGPT), Alpaca, SQuAD, preference pairs incl. HH-RLHF, saved HF datasets,
SM_CHANNEL_TRAIN; provenance per record; bad inputs skipped with reasons or refused with SlmError."""

from __future__ import annotations

import gzip
import json
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from slmkit.config import BuildConfig
from slmkit.data import inspect, prepare
from slmkit.data.read.documents import markdown_sections, rst_sections
from slmkit.errors import SlmError
from slmkit.io import read_jsonl, sha256_file

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "data"
DOCS = FIX / "docs"


@pytest.fixture()
def cfg_for(tiny_model_dir, tmp_path):
    def make(path=None, **data):
        base = {"path": None if path is None else str(path), "split": {"val": 0.1, "test": 0.1}, **data}
        return BuildConfig(config_dir=str(tmp_path), model={"base_model": str(tiny_model_dir)}, data=base)

    return make


def records(out: Path) -> list[dict]:
    return [r for s in ("train", "val", "test") for r in read_jsonl(out / f"{s}.jsonl")]


def test_parquet_and_excel(tmp_path, cfg_for):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from openpyxl import Workbook

    rows = [{"question": f"what is {i} plus {i}", "answer": f"the sum is {2 * i} exactly"} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa.parquet")
    wb = Workbook()
    ws = wb.active
    ws.title = "Sheet A"
    ws.append([])  # a blank first row: the header is the first non-empty row
    ws.append(["question", "answer"])
    for r in rows:
        ws.append([r["question"], r["answer"]])
    wb.save(tmp_path / "qa.xlsx")
    for name, loc in (("qa.parquet", "#row=1"), ("qa.xlsx", "#sheet=Sheet A&row=3")):
        summary = prepare(cfg_for(tmp_path / name), tmp_path / name.replace(".", "_"))
        recs = records(tmp_path / name.replace(".", "_"))
        assert sum(summary["rows"].values()) == 12 and summary["columns_picked"]["input"] == "question"
        first = next(r for r in recs if r["meta"]["source"].endswith(loc))
        assert first["messages"][0]["content"] == "what is 0 plus 0"


def test_folder_of_documents_with_pages_headings_licences(tmp_path, cfg_for):
    summary = prepare(cfg_for(DOCS, chunk={"max_tokens": 64, "overlap": 8}), tmp_path / "out")
    chunks = read_jsonl(tmp_path / "out" / "chunks.jsonl")
    assert summary["rows"] == {"train": 0, "val": 0, "test": 0} and summary["chunks"] == len(chunks) > 50
    by_kind = {k: [c for c in chunks if c["meta"]["kind"] == k] for k in ("pdf", "markdown", "rst")}
    pdf = by_kind["pdf"]
    assert {c["meta"]["page"] for c in pdf} == set(range(1, 14))  # 13 pages, numbers kept
    assert pdf[0]["meta"]["source"].startswith(str(DOCS / "pdf" / "clinc_oos_supplementary.pdf") + "#page=1&chunk=1")
    assert pdf[0]["meta"]["source_sha256"] == sha256_file(DOCS / "pdf" / "clinc_oos_supplementary.pdf")
    assert pdf[0]["meta"]["license"] == "Creative Commons Legal Code (LICENSE-CC-BY-3.0.txt)"
    assert by_kind["markdown"][0]["meta"]["license"].endswith("(LICENSE-httpx-BSD-3-Clause.md)")
    assert "Exceptions > Exception classes" in {c["meta"]["heading"] for c in by_kind["markdown"]}
    assert {"Abstract", "Specification"} <= {c["meta"]["heading"] for c in by_kind["rst"]}
    assert all(c["meta"]["tokens"] <= 64 for c in chunks)
    # PEP author e-mails are redacted and counted
    assert summary["pii"]["email"] >= 4 and not any("@python.org" in c["text"] for c in chunks)
    assert (tmp_path / "out" / "lengths.png").is_file() and "## Document chunks" in (
        tmp_path / "out" / "card.md"
    ).read_text()


def test_markdown_and_rst_heading_rules():
    md = "# Top\nintro\n```python\n# not a heading\n```\n## Sub\nbody\n"
    secs = markdown_sections(md)
    assert [s.heading for s in secs] == ["Top", "Top > Sub"] and "# not a heading" in secs[0].text
    rst = "Title\n=====\n\nintro\n\nPart\n----\n\ntext\n\nNext\n====\n\nmore\n"
    assert [s.heading for s in rst_sections(rst)] == ["Title", "Title > Part", "Next"]


def test_chat_shapes_alpaca_squad_preferences(tmp_path, cfg_for):
    openai_rows = [
        {"messages": [{"role": "user", "content": f"q{i} hi"}, {"role": "assistant", "content": f"answer {i} ok"}]}
        for i in range(10)
    ]
    (tmp_path / "openai.jsonl").write_text("\n".join(json.dumps(r) for r in openai_rows) + "\n")
    sharegpt_rows = [
        {
            "conversations": [
                {"from": "system", "value": "be nice"},
                {"from": "human", "value": f"hello {i}"},
                {"from": "gpt", "value": f"hi there number {i}"},
            ]
        }
        for i in range(10)
    ]
    (tmp_path / "sharegpt.json").write_text(json.dumps(sharegpt_rows))
    cases = {
        "openai.jsonl": lambda r: r["messages"][-1]["content"].startswith("answer"),
        "sharegpt.json": lambda r: r["messages"][0] == {"role": "system", "content": "be nice"},
        str(FIX / "alpaca" / "alpaca_40.json"): lambda r: r["messages"][0]["role"] == "user",
        str(FIX / "xquad" / "xquad_en_3articles.json"): lambda r: "\n\nQuestion: " in r["messages"][0]["content"],
        str(FIX / "hh_rlhf" / "harmless_test_8.jsonl.gz"): lambda r: (
            isinstance(r.get("rejected"), str)
            and r["messages"][-1]["role"] == "assistant"
            and r["rejected"] != r["messages"][-1]["content"]
        ),
    }
    for i, (name, check) in enumerate(cases.items()):
        cfg = cfg_for(name, clean={"decontaminate": {"enabled": False}, "dedup": {"near": False}})
        summary = prepare(cfg, tmp_path / f"o{i}")
        recs = records(tmp_path / f"o{i}")
        assert recs and all(check(r) for r in recs), name
        assert summary["sources"][0]["shapes"][0] in ("openai", "sharegpt", "alpaca", "squad", "hh")
    squad = records(tmp_path / "o3")
    # 43 questions, one of them an exact repeat (same context, question and answer) in the real data
    assert len(squad) == 42 and any("#row=1&paragraph=2&qa=" in r["meta"]["source"] for r in squad)
    by_group: dict[str, set] = {}
    for r in squad:
        by_group.setdefault(r["meta"]["group"], set()).add(r["meta"]["split"])
    assert len(by_group) == 6 and all(len(splits) == 1 for splits in by_group.values())  # a context never straddles
    assert {r["meta"]["license"] for r in squad} == {
        "CC BY-SA 4.0 (Creative Commons Attribution-ShareAlike 4.0 International) (LICENSE.txt)"
    }
    # near dedup on: questions on one context share that context, and are compared on question and answer only
    kept = prepare(cfg_for(str(FIX / "xquad" / "xquad_en_3articles.json")), tmp_path / "near")
    assert kept["dropped"]["near_duplicate"] == 0 and len(records(tmp_path / "near")) == 42
    prefs = [{"prompt": "pick a colour", "chosen": "blue, because it is calm", "rejected": "no"}] * 1 + [
        {"prompt": f"p{i} tell me", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"} for i in range(9)
    ]
    (tmp_path / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in prefs) + "\n")
    prepare(cfg_for(tmp_path / "prefs.jsonl", clean={"decontaminate": {"enabled": False}}), tmp_path / "op")
    recs = records(tmp_path / "op")
    assert {r["rejected"] for r in recs} == {p["rejected"] for p in prefs}


def test_hf_dataset_multiple_sources_and_sagemaker(tmp_path, cfg_for, monkeypatch):
    import datasets

    rows = {
        "text": [f"turn the lights {w} in room {i}" for i in range(10) for w in ("on", "off")],
        "label": [w for _ in range(10) for w in ("on", "off")],
    }
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(tmp_path / "hf")
    sources = [
        {"path": str(tmp_path / "hf")},
        {"path": str(FIX / "alpaca" / "alpaca_40.json"), "license": "CC BY-NC 4.0"},
        {"path": str(tmp_path / "missing.csv")},
    ]
    summary = prepare(cfg_for(sources=sources, clean={"decontaminate": {"enabled": False}}), tmp_path / "o")
    names = [s["type"] for s in summary["sources"]]
    assert names == ["hf_dataset", "table"] and summary["skip_reasons"] == {"data file not found": 1}
    assert summary["task"] == "generation" and sum(summary["rows"].values()) == 60
    assert any(r["meta"]["source"] == f"{tmp_path / 'hf'}#split=train&row=1" for r in records(tmp_path / "o"))
    assert "CC BY-NC 4.0" in summary["licenses"]
    sm = tmp_path / "sm"
    sm.mkdir()
    shutil.copy(FIX / "alpaca" / "alpaca_40.json", sm / "train.json")
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(sm))
    summary = inspect(cfg_for(None, clean={"decontaminate": {"enabled": False}}))
    assert summary["sources"][0]["name"] == str(sm) and summary["sources"][0]["type"] == "folder"
    assert sum(summary["rows"].values()) == 40


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_html_file_and_urls_with_robots_size_cap_and_unreachable(tmp_path, cfg_for, http_root):
    root, base = http_root
    body = " ".join(f"Sentence {i} explains how timeouts work in the client library." for i in range(40))
    page = (
        f"<html><head><title>Guide</title></head><body><nav>Home | About | Login</nav><article><h1>Timeouts</h1>"
        f"<p>{body}</p><h2>Retries</h2><p>{body.replace('timeouts', 'retries')}</p></article>"
        "<footer>Copyright footer text</footer></body></html>"
    )
    (root / "guide.html").write_text(page)
    (root / "private").mkdir()
    (root / "private" / "secret.html").write_text(page)
    (root / "big.html").write_text(page * 50)
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    local = tmp_path / "guide.html"
    local.write_text(page)
    sources = [
        {"path": f"{base}/guide.html"},
        {"path": f"{base}/private/secret.html"},
        {"path": f"{base}/big.html"},
        {"path": f"{base}/missing.html"},
        {"path": "http://127.0.0.1:9/nothing-listens-here"},
        {"path": str(local)},
    ]
    cfg = cfg_for(
        sources=sources, fetch={"timeout_s": 3, "max_bytes": 20_000}, clean={"dedup": {"near": False, "exact": False}}
    )
    summary = prepare(cfg, tmp_path / "o")
    chunks = read_jsonl(tmp_path / "o" / "chunks.jsonl")
    url_chunks = [c for c in chunks if c["meta"]["source"].startswith(f"{base}/guide.html")]
    assert url_chunks and {c["meta"]["heading"] for c in url_chunks} >= {"Timeouts", "Timeouts > Retries"}
    assert not any("Login" in c["text"] or "Copyright footer" in c["text"] for c in chunks)  # boilerplate removed
    assert any(c["meta"]["source"].startswith(str(local)) for c in chunks)
    reasons = {s["where"]: s["reason"] for s in summary["skipped"]}
    assert reasons[f"{base}/private/secret.html"].startswith("disallowed by robots.txt")
    assert reasons[f"{base}/big.html"].startswith("response too large")
    assert reasons[f"{base}/missing.html"] == "unreachable URL (HTTP 404)"
    assert reasons["http://127.0.0.1:9/nothing-listens-here"].startswith(
        "disallowed by robots.txt (or robots.txt unreachable)"
    )
    assert "## Skipped inputs (4)" in (tmp_path / "o" / "card.md").read_text()


def test_bad_inputs_are_skipped_with_reasons(tmp_path, cfg_for):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "good.md").write_text("# Notes\n\nThe meeting moved to Tuesday because the room was booked.\n")
    (bad / "corrupt.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 20)
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.encrypt("s3cret")
    with open(bad / "locked.pdf", "wb") as f:
        writer.write(f)
    (bad / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200))
    (bad / "latin1.txt").write_bytes(
        "Caf\xe9 cr\xe8me br\xfbl\xe9e, d\xe9j\xe0 vu, na\xefve fa\xe7ade, \xe0 la carte, "
        "the menu was printed in French.\n".encode("latin-1")
    )
    (bad / "oneline.txt").write_text("x" * 2_000_001)
    (bad / "empty.rst").write_text("")
    (bad / "image.png").write_bytes(b"\x89PNG")
    (bad / "empty_sub").mkdir()
    summary = prepare(cfg_for(bad), tmp_path / "o")
    reasons = {Path(s["where"]).name: s["reason"] for s in summary["skipped"]}
    assert reasons["corrupt.pdf"].startswith("corrupt PDF")
    assert reasons["locked.pdf"] == "encrypted PDF (needs a password)"
    assert reasons["binary.txt"].startswith("binary content")
    assert reasons["oneline.txt"].startswith("line too long (2000001 chars")
    assert reasons["empty.rst"] == "empty file" and reasons["image.png"].startswith("unsupported file type")
    chunks = read_jsonl(tmp_path / "o" / "chunks.jsonl")
    assert {Path(c["meta"]["source"].split("#")[0]).name for c in chunks} == {"good.md", "latin1.txt"}
    assert any("Café crème" in c["text"] for c in chunks)  # wrong encoding detected and decoded
    assert any("latin1.txt: decoded as" in n for n in summary["notes"])
    card = (tmp_path / "o" / "card.md").read_text()
    assert "| corrupt PDF | 1 |" in card and "| encrypted PDF | 1 |" in card


def test_nothing_usable_is_a_clear_error(tmp_path, cfg_for):
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.pdf").write_bytes(b"not a pdf")
    with pytest.raises(SlmError, match="nothing usable in the data .*x.pdf: corrupt PDF") as exc:
        prepare(cfg_for(only_bad), tmp_path / "o")
    assert exc.value.hint
    long_line = tmp_path / "long.jsonl"
    long_line.write_text(
        json.dumps({"text": "y" * 1_100_000, "label": "a"})
        + "\n"
        + "\n".join(json.dumps({"text": f"row {i}", "label": "ab"[i % 2]}) for i in range(20))
        + "\n"
    )
    summary = prepare(cfg_for(long_line), tmp_path / "o2")
    assert summary["skipped"][0]["where"] == f"{long_line}#line=1" and sum(summary["rows"].values()) == 20
    gz = tmp_path / "broken.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "a", "label": "b"}\n')[:-6])
    with pytest.raises(SlmError):
        prepare(cfg_for(gz), tmp_path / "o3")
