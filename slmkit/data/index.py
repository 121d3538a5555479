"""`slm index`: chunk documents, embed them with the bundled all-MiniLM-L6-v2, store them in ChromaDB.

The collection is persisted in an embedded ChromaDB folder (under the run, or a chosen path) and is a
data source later (`type: chroma`). Chunk ids are content hashes, so re-indexing upserts in place.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from slmkit.chroma import EMBED_MODEL, client, embedding_model, upsert
from slmkit.config.data import ChunkConfig
from slmkit.errors import SlmError

from .report import Report

log = logging.getLogger("slmkit.data")
# MiniLM was trained on sequences of up to 256 word pieces; longer chunks would be truncated when embedded.
DEFAULT_CHUNK = ChunkConfig(max_tokens=256, overlap=32)


def build_index(
    paths: list[str],
    collection: str,
    persist_dir: str | Path,
    chunk: ChunkConfig | None = None,
    clean: bool = True,
    batch_size: int = 64,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Chunk + (normalise, redact PII) + embed + upsert; returns counts and the skip report.

    Chunk ids stay the sha1 of the chunk as read (cleaning does not refresh them here), so re-indexing the same
    documents upserts the same ids; a chunk repeated (same id) is stored once, the first one kept."""
    from slmkit.config import BuildConfig
    from slmkit.config.data import NormalizeConfig, PiiConfig, SourceConfig

    from .clean.dedup import dedup_records
    from .clean.normalize import normalize_batch
    from .clean.pii import pii_batch
    from .read.sources import read_source

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]", collection):
        raise SlmError(
            f"collection name {collection!r} is not allowed by ChromaDB",
            "use 3-512 characters from a-z A-Z 0-9 . _ -, starting and ending with a letter or digit",
        )
    model = embedding_model()
    cfg = BuildConfig(config_dir=str(Path.cwd()))
    report = Report()
    chunks: list[dict[str, Any]] = []
    for p in paths:
        try:
            res = read_source(SourceConfig(path=p), cfg, model.tokenizer, report, chunk or DEFAULT_CHUNK)
        except SlmError as e:
            report.skip(p, e.message)
            continue
        chunks += res.chunks
        if rows := sum(t.rows_in for t in res.tables):  # tables are only scanned, never turned into records here
            report.notes.append(f"{p}: {rows} table rows ignored (index takes documents)")
    if clean:
        report.step("normalize", len(chunks), len(chunks), normalize_batch(chunks, NormalizeConfig()))
        pii = PiiConfig()
        kept, changed = pii_batch(chunks, pii, report.pii)
        report.step(f"pii_{pii.action}", len(chunks), len(kept), changed)
        chunks = kept
    chunks, _ = dedup_records(chunks)
    if not chunks:
        reasons = "; ".join(f"{s['where']}: {s['reason']}" for s in report.skipped[:5]) or "no documents given"
        raise SlmError(f"nothing to index ({reasons})", "pass folders or files of TXT/Markdown/reST/PDF/HTML, or URLs")
    col = client(Path(persist_dir)).get_or_create_collection(
        collection, embedding_function=None, metadata={"hnsw:space": "cosine", "embedding_model": EMBED_MODEL}
    )
    upsert(col, model, chunks, batch_size, show_progress)
    return {
        "collection": collection,
        "persist_dir": str(persist_dir),
        "chunks": len(chunks),
        "count": col.count(),
        **report.as_dict(),
    }
