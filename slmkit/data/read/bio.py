"""Token-level extraction data read as rows: CoNLL files (a token and its tag a line, a blank line between sentences)
and `seq.in` / `seq.out` folders (a sentence and its space-separated tags a line, optionally a `label` file with one
intent a line), BIO/IOB2, BIOES or BILOU tags. Each sentence becomes a row {input, output[, intent]} whose output is
the canonical extraction answer (`type: span; ...` or JSON, `data.bio.answer_format`).

Refused with the file and line: a tag sequence whose length differs from its sentence's, an I- (or E-/L-) tag that
does not continue an entity of its type, and tag schemes mixed in one source.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError
from slmkit.extraction import render_items

BEGIN, INSIDE, END, SINGLE = "B", "I", "E", "S"
SCHEMES = {"B": "BIO", "I": "BIO", "E": "BIOES", "S": "BIOES", "L": "BILOU", "U": "BILOU"}
# BILOU's L (last) and U (unit) are BIOES's E and S under other names.
CANON = {"B": BEGIN, "I": INSIDE, "E": END, "S": SINGLE, "L": END, "U": SINGLE}


def is_seq_folder(path: Path) -> bool:
    return path.is_dir() and (path / "seq.in").is_file() and (path / "seq.out").is_file()


def _split_tag(tag: str, where: str) -> tuple[str, str] | None:
    """'B-artist' -> ('B', 'artist'); 'O' -> None."""
    if tag == "O":
        return None
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in CANON or not kind:
        raise SlmError(
            f"{where}: tag {tag!r} is not O or a B-/I-/E-/S-/L-/U- tag",
            "use BIO tags (B-type, I-type, O), or BIOES / BILOU",
        )
    return prefix, kind


def tags_to_items(tokens: list[str], tags: list[str], where: str, schemes: set[str]) -> list[tuple[str, str]]:
    """Entities (type, text) of one tagged sentence, in order; `schemes` collects the tag schemes seen so far."""
    if len(tokens) != len(tags):
        raise SlmError(
            f"{where}: {len(tokens)} tokens but {len(tags)} tags",
            "give every token exactly one tag (O outside entities)",
        )
    items: list[tuple[str, str]] = []
    open_kind, span = None, []
    for i, tag in enumerate(tags, 1):
        parsed = _split_tag(tag, f"{where} token {i}")
        if parsed is None:
            if open_kind:
                items.append((open_kind, " ".join(span)))
            open_kind, span = None, []
            continue
        prefix, kind = parsed
        if prefix in ("E", "S", "L", "U"):
            schemes.add(SCHEMES[prefix])
            if len(schemes) > 1:
                raise SlmError(
                    f"{where} token {i}: tag {tag!r} mixes tag schemes ({' and '.join(sorted(schemes))}) in one source",
                    "write every file of a source in one scheme: BIO, BIOES or BILOU",
                )
        role = CANON[prefix]
        if role in (INSIDE, END) and open_kind != kind:
            raise SlmError(
                f"{where} token {i}: tag {tag!r} continues an entity, but no {kind} entity is open",
                f"start the entity with B-{kind} (an I- tag must follow B- or I- of the same type)",
            )
        if role in (BEGIN, SINGLE) and open_kind:
            items.append((open_kind, " ".join(span)))
            open_kind, span = None, []
        if role in (BEGIN, INSIDE):
            open_kind = kind
            span.append(tokens[i - 1])
        else:  # END or SINGLE closes the entity with this token
            items.append((kind, " ".join([*span, tokens[i - 1]])))
            open_kind, span = None, []
    if open_kind:
        items.append((open_kind, " ".join(span)))
    return items


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SlmError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})", "re-save the file as UTF-8") from None


def seq_rows(folder: Path, answer_format: str = "pairs") -> Iterator[tuple[dict[str, Any], str]]:
    """Rows of a seq.in / seq.out [/ label] folder (the ATIS/SNIPS layout), one a line."""
    ins, outs = _lines(folder / "seq.in"), _lines(folder / "seq.out")
    labels = _lines(folder / "label") if (folder / "label").is_file() else None
    if len(ins) != len(outs) or (labels is not None and len(labels) != len(ins)):
        counts = f"seq.in {len(ins)}, seq.out {len(outs)}" + (f", label {len(labels)}" if labels is not None else "")
        raise SlmError(
            f"{folder}: the files have different numbers of lines ({counts})",
            "give one line per sentence in each file, in the same order",
        )
    schemes: set[str] = set()
    for n, (sentence, tagline) in enumerate(zip(ins, outs), 1):
        if not sentence.strip():
            continue
        items = tags_to_items(sentence.split(), tagline.split(), f"{folder / 'seq.out'}:{n}", schemes)
        row = {"input": sentence.strip(), "output": render_items(items, answer_format)}
        if labels is not None:
            row["intent"] = labels[n - 1].strip()
        yield row, f"{folder / 'seq.in'}#line={n}"


def conll_rows(path: Path, answer_format: str = "pairs") -> Iterator[tuple[dict[str, Any], str]]:
    """Rows of a CoNLL file: the first column is the token, the last the tag; -DOCSTART- lines are skipped."""
    schemes: set[str] = set()
    tokens, tags, start = [], [], 1
    for n, line in enumerate([*_lines(path), ""], 1):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if tokens:
                items = tags_to_items(tokens, tags, f"{path}:{start}", schemes)
                yield {"input": " ".join(tokens), "output": render_items(items, answer_format)}, f"{path}#line={start}"
            tokens, tags, start = [], [], n + 1
            continue
        if len(cols) < 2:
            raise SlmError(
                f"{path}:{n}: {line.strip()!r} has no tag column",
                "write a token and its tag on each line, separated by a tab or space",
            )
        tokens.append(cols[0])
        tags.append(cols[-1])
