"""RAG mode for eval: put the top-k chunks of a ChromaDB collection (built by `slm index`) before each prompt.

The query is the example's last user message. The retrieved text goes into that same user message between
<context> delimiters, never into the system role: a fine-tuned model keeps the system prompt it was trained
with, and the context reads as material supplied with the question. Retrieval runs once per split and is
shared by every model, so "base+rag" and "trained+rag" see exactly the same context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError

RAG_SUFFIX = "+rag"
CONTEXT_OPEN, CONTEXT_CLOSE = "<context>", "</context>"
_INTRO = "Retrieved context (use it if it helps answer the message after it):"


@dataclass(frozen=True)
class RagSettings:
    """Where to retrieve from and how: one collection, the k nearest chunks, with or without the plain run."""

    collection: str
    persist_dir: Path
    top_k: int = 3
    compare_without: bool = True

    def describe(self) -> dict[str, Any]:
        return {"collection": self.collection, "persist_dir": str(self.persist_dir), "top_k": self.top_k}


@dataclass
class Variant:
    """One way of prompting every model: plain ("") or with retrieval ("+rag", with the chunk ids per example)."""

    suffix: str
    prompts: list[list[dict]]
    conversations: list[list[dict]]  # prompts plus the reference answer, for perplexity
    retrieved: list[list[str]] | None = None


def settings_from_config(cfg, run_dir: Path) -> RagSettings | None:
    """The eval.rag block of a BuildConfig -> RagSettings, or None when RAG mode is off."""
    from slmkit.config import resolve_path
    from slmkit.runs import RunDir

    rag = cfg.eval.rag
    if rag.collection is None:
        return None
    # `slm index --run RUN_DIR` stores its collection in RUN_DIR/index, so that is where to look by default.
    persist_dir = resolve_path(cfg, rag.persist_dir) if rag.persist_dir else RunDir(run_dir).index_dir
    return RagSettings(rag.collection, persist_dir, rag.top_k, rag.compare_without)


def open_collection(settings: RagSettings):
    """The ChromaDB collection, or a one-line SlmError naming the collection and the folder."""
    from slmkit.chroma import collection_names, get_collection

    names = collection_names(settings.persist_dir)
    if settings.collection not in names:
        found = f"it has: {', '.join(names)}" if names else "no ChromaDB collections there"
        raise SlmError(
            f"RAG collection {settings.collection!r} does not exist in {settings.persist_dir} ({found})",
            f"build it: slm index DOCS --collection {settings.collection} --persist-dir {settings.persist_dir}",
        )
    return get_collection(settings.persist_dir, settings.collection)


def last_user_index(messages: list[dict]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    raise SlmError(
        "an eval example has no user message to retrieve context for",
        "RAG mode needs chat rows with a user turn; turn it off for this split",
    )


def retrieve(settings: RagSettings, prompts: list[list[dict]]) -> list[list[dict[str, Any]]]:
    """The top-k chunks [{'id', 'text', 'distance'}] for each prompt's last user message, nearest first."""
    from slmkit.chroma import embedding_model

    col = open_collection(settings)
    k = min(settings.top_k, col.count())
    if k == 0:
        raise SlmError(
            f"RAG collection {settings.collection!r} in {settings.persist_dir} is empty",
            "index some documents into it with `slm index DOCS --collection NAME`",
        )
    queries = [p[last_user_index(p)]["content"] for p in prompts]
    # One model load and one batched query for the whole split; the index embeds with the same
    # normalised MiniLM vectors, so cosine distances are comparable with `slm index` queries.
    emb = embedding_model().encode(queries, normalize_embeddings=True).tolist()
    res = col.query(query_embeddings=emb, n_results=k, include=["documents", "distances"])
    return [
        [{"id": i, "text": d, "distance": float(dist)} for i, d, dist in zip(ids, docs, dists)]
        for ids, docs, dists in zip(res["ids"], res["documents"], res["distances"])
    ]


def context_block(chunks: list[dict[str, Any]]) -> str:
    """The delimited context text; a chunk quoting the closing tag cannot end the block early."""
    body = "\n\n".join(
        f"[{n}] {c['text'].strip().replace(CONTEXT_CLOSE, '</ context>')}" for n, c in enumerate(chunks, 1)
    )
    return f"{_INTRO}\n{CONTEXT_OPEN}\n{body}\n{CONTEXT_CLOSE}"


def with_context(messages: list[dict], chunks: list[dict[str, Any]]) -> list[dict]:
    """A copy of `messages` whose last user message starts with the retrieved context."""
    i = last_user_index(messages)
    out = [dict(m) for m in messages]
    out[i]["content"] = f"{context_block(chunks)}\n\n{messages[i]['content']}"
    return out


def variants(prompts: list[list[dict]], conversations: list[list[dict]], settings: RagSettings | None) -> list[Variant]:
    """The prompt sets every model is scored on: plain, and/or with retrieved context."""
    plain = Variant("", prompts, conversations)
    if settings is None:
        return [plain]
    hits = retrieve(settings, prompts)
    rag = Variant(
        RAG_SUFFIX,
        [with_context(p, h) for p, h in zip(prompts, hits)],
        [with_context(c, h) for c, h in zip(conversations, hits)],
        [[h["id"] for h in hs] for hs in hits],
    )
    return [plain, rag] if settings.compare_without else [rag]


def prediction_rows(
    name: str, variant: Variant, prompts: list[list[dict]], refs: list[str], preds: list[str]
) -> list[dict]:
    """predictions.jsonl rows; "prompt" is the question without context, so rows of all variants line up by index."""
    rows = []
    for i, (p, r, y) in enumerate(zip(prompts, refs, preds)):
        row = {"model": name, "index": i, "prompt": p[-1]["content"], "reference": r, "prediction": y}
        if variant.retrieved is not None:
            row["retrieved"] = variant.retrieved[i]
        rows.append(row)
    return rows
