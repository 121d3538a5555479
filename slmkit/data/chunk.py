"""Token-based chunking with overlap. Chunks never cross a section (heading or PDF page) and prefer to
end at a paragraph, then a sentence, boundary.
"""

from __future__ import annotations

import hashlib
from typing import Any

from slmkit.config.data import ChunkConfig
from .docs import Document, Section


def _break_score(text: str, pos: int) -> int:
    """How good a chunk end is just before `pos`: 2 paragraph, 1 sentence/line, 0 anywhere else."""
    before = text[max(0, pos - 3):pos]
    if "\n\n" in before or before.endswith("\n\n"):
        return 2
    return 1 if before.rstrip(" ").endswith((".", "!", "?", "\n", ":")) else 0


def split_tokens(text: str, tok: Any, max_tokens: int, overlap: int) -> list[tuple[str, int]]:
    """`text` cut into pieces of at most max_tokens tokens with `overlap` tokens repeated; (piece, n_tokens)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [o for o in enc["offset_mapping"] if o[1] > o[0]]
    n = len(offsets)
    if n <= max_tokens:
        return [(text.strip(), n)] if text.strip() else []
    pieces, start = [], 0
    while start < n:
        end = min(start + max_tokens, n)
        if end < n:
            # Prefer the best boundary in the second half of the window.
            best = max(range(start + max_tokens // 2, end + 1),
                       key=lambda j: (_break_score(text, offsets[j][0]), j) if j < n else (-1, j))
            end = best if _break_score(text, offsets[best][0]) > 0 else end
        piece = text[offsets[start][0]:offsets[end - 1][1]].strip()
        if piece:
            pieces.append((piece, end - start))
        if end >= n:
            break
        start = max(end - overlap, start + 1)
    return pieces


def chunk_document(doc: Document, tok: Any, cfg: ChunkConfig) -> list[dict[str, Any]]:
    """Chunk records of one document: {'id', 'text', 'meta': {source, page, heading, chunk, tokens, ...}}."""
    out = []
    for sec_no, sec in enumerate(doc.sections):
        for piece, n in split_tokens(sec.text, tok, cfg.max_tokens, cfg.overlap):
            out.append(_chunk_record(doc, sec, sec_no, len(out), piece, n))
    return out


def _chunk_record(doc: Document, sec: Section, sec_no: int, idx: int, text: str, n: int) -> dict[str, Any]:
    where = doc.source + (f"#page={sec.page}" if sec.page is not None else f"#section={sec_no + 1}")
    return {"id": hashlib.sha1(text.encode("utf-8")).hexdigest(), "text": text,
            "meta": {"source": f"{where}&chunk={idx + 1}", "source_sha256": doc.sha256, "license": None,
                     "kind": doc.kind, "title": doc.title, "page": sec.page, "heading": sec.heading,
                     "chunk": idx + 1, "tokens": n, "transformations": ["chunk"], "pii_redacted": []}}
