"""Chunking with overlap, in tokens (the data stage, `slm index`) or in characters (synth's document chunks).

A window of at most `max` tokens (or characters) prefers to end at a paragraph, then a sentence, boundary in
its second half; the next window starts `overlap` tokens (characters) before its end. Characters are counted
over whole words: a window never cuts a word (unless one word is longer than a window). Document chunks never
cross a section (heading or PDF page).
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import Any

from slmkit.config.data import ChunkConfig

from .read.documents import Document, Section

_WORD = re.compile(r"\S+")
Spans = list[tuple[int, int]]


def _break_score(text: str, pos: int) -> int:
    """How good a chunk end is just before `pos`: 2 paragraph, 1 sentence/line, 0 anywhere else."""
    before = text[max(0, pos - 3) : pos]
    if "\n\n" in before or before.endswith("\n\n"):
        return 2
    return 1 if before.rstrip(" ").endswith((".", "!", "?", "\n", ":")) else 0


def split_tokens(text: str, tok: Any, max_tokens: int, overlap: int) -> list[tuple[str, int]]:
    """`text` cut into pieces of at most max_tokens tokens with `overlap` tokens repeated; (piece, n_tokens)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [o for o in enc["offset_mapping"] if o[1] > o[0]]
    n = len(spans)
    return _split(
        text,
        spans,
        max_tokens,
        overlap,
        size=lambda i, j: j - i,
        reach=lambda i, budget: min(i + budget, n),
        back=lambda j, budget: j - budget,
    )


def split_chars(text: str, max_chars: int, overlap: int) -> list[tuple[str, int]]:
    """`text` cut between words into pieces of at most max_chars characters, each next piece starting with the
    words of the last `overlap` characters of the one before; (piece, n_chars). A word longer than a piece is cut."""
    spans = [
        (m.start() + k, min(m.start() + k + max_chars, m.end()))
        for m in _WORD.finditer(text)
        for k in range(0, m.end() - m.start(), max_chars)
    ]
    starts, ends = [s for s, _ in spans], [e for _, e in spans]

    def size(i: int, j: int) -> int:
        return ends[j - 1] - starts[i] if j > i else 0

    return _split(
        text,
        spans,
        max_chars,
        overlap,
        size=size,
        reach=lambda i, budget: bisect_right(ends, starts[i] + budget),  # words ending within the budget
        back=lambda j, budget: bisect_left(starts, ends[j - 1] - budget),
    )  # words starting within it


def _split(
    text: str,
    spans: Spans,
    max_len: int,
    overlap: int,
    size: Callable[[int, int], int],
    reach: Callable[[int, int], int],
    back: Callable[[int, int], int],
) -> list[tuple[str, int]]:
    """Windows over the units (tokens or words) at `spans` of `text`: size(i, j) measures units i..j-1, reach(i, b)
    is the end of the longest window from unit i of size <= b, back(j, b) the start of the longest one ending at j."""
    n = len(spans)
    if size(0, n) <= max_len:
        return [(text.strip(), size(0, n))] if text.strip() else []
    pieces, start = [], 0
    while start < n:
        end = max(reach(start, max_len), start + 1)
        if end < n:
            # Prefer the best boundary in the second half of the window.
            best = max(
                range(max(reach(start, max_len // 2), start + 1), end + 1),
                key=lambda j: (_break_score(text, spans[j][0]), j) if j < n else (-1, j),
            )
            end = best if _break_score(text, spans[best][0]) > 0 else end
        piece = text[spans[start][0] : spans[end - 1][1]].strip()
        if piece:
            pieces.append((piece, size(start, end)))
        if end >= n:
            break
        start = max(back(end, overlap), start + 1)
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
    return {
        "id": hashlib.sha1(text.encode("utf-8")).hexdigest(),
        "text": text,
        "meta": {
            "source": f"{where}&chunk={idx + 1}",
            "source_sha256": doc.sha256,
            "license": None,
            "kind": doc.kind,
            "title": doc.title,
            "page": sec.page,
            "heading": sec.heading,
            "chunk": idx + 1,
            "tokens": n,
            "transformations": ["chunk"],
            "pii_redacted": [],
        },
    }
