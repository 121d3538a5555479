"""Resolve the configured sources and read each one into document chunks and opened tables, with provenance.

Documents are read (read/documents.py) and chunked (chunk.py) here, in memory; tables are opened (scanned,
columns picked: table_stream.py) and their records stream later, batch by batch, from each SourceResult's `tables`.

A source is a file, a folder (documents and tables inside, walked in sorted order), an http(s) URL, a
saved Hugging Face dataset, or a ChromaDB folder (read/stores.py). Without data.sources and data.path, a SageMaker
training job's SM_CHANNEL_TRAIN folder is used. A source's licence is data.license, else a LICENSE file beside it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.config import BuildConfig, resolve_path
from slmkit.config.data import ChunkConfig, SourceConfig
from slmkit.errors import SlmError
from slmkit.io import sha256_file

from ..chunk import chunk_document
from ..report import Report
from ..table_stream import RowsFn, TableStream
from .bio import conll_rows, is_seq_folder, seq_rows
from .documents import DOC_EXTENSIONS, Document, fetch_url, read_document
from .stores import chroma_chunks, hf_rows, is_chroma, is_hf_dataset
from .tables import EXTENSIONS, iter_table, table_suffix

log = logging.getLogger("slmkit.data")
SHAPE_TYPES = {
    "openai": "openai",
    "sharegpt": "sharegpt",
    "alpaca": "alpaca",
    "squad": "squad",
    "preference": "preference",
}


@dataclass
class SourceResult:
    """One source: its document chunks (in memory) and its tables, whose records stream (see table_stream.py)."""

    name: str
    type: str
    sha256: str | None = None
    license: str | None = None
    rows_in: int = 0
    records: int = 0  # records its tables produced (counted as they stream)
    chunks: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    tables: list[TableStream] = field(default_factory=list)
    folder_parts: list[str | TableStream] | None = None  # a folder's sha256 covers the files that were used

    def table_done(self, table: TableStream) -> None:
        """Count a table whose records all went downstream."""
        self.records += table.records
        self.reports.append(table.report)
        self.shapes.append(table.shape)

    def finish(self) -> None:
        """A folder's sha256, over the documents and tables that were not skipped, in file order."""
        if self.folder_parts is None:
            return
        shas = [
            p if isinstance(p, str) else p.meta["source_sha256"]
            for p in self.folder_parts
            if isinstance(p, str) or not p.failed
        ]
        self.sha256 = hashlib.sha256("".join(shas).encode()).hexdigest() if shas else None


def resolve_sources(cfg: BuildConfig) -> list[SourceConfig]:
    """data.sources, else data.path as one source, else $SM_CHANNEL_TRAIN (inside SageMaker); data.test_path first,
    as a source whose records are the test split (read first, so its rows win the exact dedup against training)."""
    d = cfg.data
    test = []
    if d.test_path:
        test = [
            SourceConfig(path=d.test_path, columns=d.columns, json_field=d.json_field, license=d.license, role="test")
        ]
    return test + _main_sources(cfg)


def _main_sources(cfg: BuildConfig) -> list[SourceConfig]:
    sources = cfg.data.sources
    if sources:
        return list(sources)
    d = cfg.data
    if d.path:
        return [
            SourceConfig(
                path=d.path,
                json_field=d.json_field,
                columns=d.columns,
                license=d.license,
                type=d.format if d.format != "auto" else "auto",
            )
        ]
    if os.environ.get("SM_CHANNEL_TRAIN"):
        log.info(
            "data: no data.path; reading the SageMaker channel SM_CHANNEL_TRAIN=%s", os.environ["SM_CHANNEL_TRAIN"]
        )
        return [SourceConfig(path=os.environ["SM_CHANNEL_TRAIN"], type="folder")]
    raise SlmError(
        "data.path is not set",
        "set data.path in the config (or --set data.path=FILE) to a file, folder or URL, or list data.sources",
    )


def is_url(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def source_kind(src: SourceConfig, path: Path) -> str:
    """The reader for a source: its `type`, else what the path looks like."""
    if src.type != "auto" and src.type not in SHAPE_TYPES and src.type not in EXTENSIONS.values():
        return src.type
    if path.is_dir():
        if is_seq_folder(path):
            return "bio"
        if is_chroma(path):
            return "chroma"
        if is_hf_dataset(path):
            return "hf_dataset"
        return "folder"
    if path.suffix.lower() in (".conll", ".bio", ".iob", ".iob2"):
        return "conll"
    return DOC_EXTENSIONS.get(path.suffix.lower(), "table")


def read_source(
    src: SourceConfig, cfg: BuildConfig, tok: Any, report: Report, chunk: ChunkConfig | None = None
) -> SourceResult:
    """Records and chunks of one source; bad parts are skipped into `report`, a bad whole raises SlmError."""
    chunk = chunk or cfg.data.chunk
    if is_url(src.path):
        res = SourceResult(src.path, "url", license=src.license)
        doc = fetch_url(src.path, cfg.data.fetch, cfg.data.limits, report)
        if doc is not None:
            res.sha256 = doc.sha256
            _add_document(res, doc, src.license, tok, chunk)
        return res
    path = resolve_path(cfg, src.path)
    if not path.exists():
        raise SlmError(
            f"data file not found: {path}",
            "check data.path / data.sources[].path (relative paths are resolved from the config file's folder)",
        )
    kind = source_kind(src, path)
    res = SourceResult(str(path), kind)
    if kind == "folder":
        _read_folder(res, path, src, cfg, tok, report, chunk)
    elif kind == "chroma":
        res.chunks = chroma_chunks(path, src)
        res.rows_in = len(res.chunks)
    elif kind == "hf_dataset":
        _add_table(res, path, src, cfg, report, rows=lambda _rep: hf_rows(path, src))
    elif kind in ("bio", "conll"):
        if kind == "bio":  # the folder's sha256: its seq.in, seq.out and label files
            res.sha256 = hashlib.sha256(
                "".join(
                    sha256_file(f) for f in sorted(path.iterdir()) if f.name in ("seq.in", "seq.out", "label")
                ).encode()
            ).hexdigest()
        read = seq_rows if kind == "bio" else conll_rows
        _add_table(res, path, src, cfg, report, rows=lambda _rep: read(path, cfg.data.bio.answer_format))
    elif kind in DOC_EXTENSIONS.values():
        doc = read_document(path, kind, cfg.data.limits, report)
        if doc is not None:
            _add_document(res, doc, src.license or find_license(path), tok, chunk)
    else:
        _add_table(res, path, src, cfg, report)
    if res.sha256 is None and path.is_file():
        res.sha256 = res.tables[0].meta["source_sha256"] if res.tables else sha256_file(path)
    if res.license is None:
        res.license = src.license or find_license(path if path.is_file() else path / "_")
    return res


def _data_cfg(src: SourceConfig, cfg: BuildConfig):
    fmt = src.type if src.type in ("csv", "tsv", "json", "jsonl") else "auto"
    return cfg.data.model_copy(update={"columns": src.columns, "json_field": src.json_field, "format": fmt})


def _add_table(
    res: SourceResult,
    path: Path,
    src: SourceConfig,
    cfg: BuildConfig,
    report: Report,
    rows: RowsFn | None = None,
    skip_as: str | None = None,
) -> TableStream:
    """Open one table of the source (scan pass, column pick); its records stream later from table.batches()."""
    data_cfg = _data_cfg(src, cfg)
    if rows is None:
        limit, sheet = cfg.data.limits.max_line_chars, src.sheet
        rows = lambda rep: iter_table(path, data_cfg, rep, limit, sheet)  # noqa: E731
    meta = {
        "source_sha256": sha256_file(path) if path.is_file() else res.sha256,
        "license": src.license or find_license(path if path.is_file() else path / "_"),
    }
    if src.role == "test":
        meta["split"] = "test"  # SplitFiles keeps a record's given split
    table = TableStream(
        str(path),
        rows,
        SHAPE_TYPES.get(src.type, "auto"),
        data_cfg,
        cfg.data.max_rows or None,
        meta,
        user_steps=bool(cfg.data.clean.steps),
        skip_as=skip_as,
    )
    table.scan(report)
    res.rows_in += table.rows_in
    table.prepare()
    table.skip_index = len(report.skipped)
    res.tables.append(table)
    return table


def _add_document(res: SourceResult, doc: Document, license_: str | None, tok: Any, chunk: ChunkConfig) -> None:
    chunks = chunk_document(doc, tok, chunk)
    for c in chunks:
        c["meta"]["license"] = license_
    res.chunks += chunks
    res.rows_in += 1


def _read_folder(
    res: SourceResult, folder: Path, src: SourceConfig, cfg: BuildConfig, tok: Any, report: Report, chunk: ChunkConfig
) -> None:
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.relative_to(folder).parts)
    )
    limits = cfg.data.limits
    if not files:
        report.skip(str(folder), "empty folder (no files)")
    res.folder_parts = []
    for f in files:
        if f.name.lower().startswith(("license", "licence")):
            continue
        ext = f.suffix.lower()
        if ext in DOC_EXTENSIONS:
            doc = read_document(f, DOC_EXTENSIONS[ext], limits, report)
            if doc is not None:
                res.folder_parts.append(doc.sha256)
                _add_document(res, doc, src.license or find_license(f) or find_license(folder / "_"), tok, chunk)
        elif table_suffix(f) in EXTENSIONS:
            try:
                res.folder_parts.append(_add_table(res, f, src, cfg, report, skip_as=str(f)))
            except SlmError as e:
                report.skip(str(f), e.message)
        else:
            report.skip(str(f), f"unsupported file type {ext or '(none)'!r}")


def source_fingerprint(cfg: BuildConfig) -> str:
    """sha256 over every source's content (files, folders) or its address (URLs, collections)."""
    h = hashlib.sha256()
    for src in resolve_sources(cfg):
        h.update(src.model_dump_json().encode())
        if is_url(src.path):
            continue
        path = resolve_path(cfg, src.path)
        if not path.exists():
            raise SlmError(
                f"data file not found: {path}", "check data.path (relative paths are from the config file's folder)"
            )
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            h.update(str(f.relative_to(path) if f != path else f.name).encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def find_license(path: Path, configured: str | None = None) -> str | None:
    """`data.license`, else the first line of a LICENSE*/LICENCE* file beside the data (with its name), else None."""
    if configured:
        return configured
    candidates = sorted(
        p for p in path.parent.iterdir() if p.is_file() and p.name.lower().startswith(("license", "licence"))
    )
    for cand in candidates:
        text = cand.read_text(encoding="utf-8", errors="replace")
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if first:
            return f"{first} ({cand.name})"
    return None
