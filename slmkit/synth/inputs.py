"""Recipe inputs: seed/prompt tables, document chunks and stored collections, all read by the data stage.

Tables go through slmkit.data's table readers; documents through its document reader (TXT/Markdown/reST/PDF/HTML)
and its chunker, here in characters: `chunk_chars` long, `chunk_overlap` repeated, cut between words.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.config import DataConfig
from slmkit.errors import SlmError


def resolve(config_dir: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else config_dir / path


def field(row: dict, dotted: str) -> Any:
    """`row['a']['0']['b']` for 'a.0.b' (list indexes allowed); None when absent."""
    cur: Any = row
    for part in dotted.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def read_rows(path: Path, what: str) -> tuple[list[dict], list[str]]:
    """Rows and their locators from a CSV/TSV/JSON/JSONL file (TXT: one row per non-empty line)."""
    from slmkit.data import read_table

    if not path.is_file():
        raise SlmError(f"{what}: file not found: {path}", "paths are relative to the config file's folder")
    if path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        kept = [(i, ln) for i, ln in enumerate(lines, 1) if ln]
        return [{"input": ln} for _, ln in kept], [f"{path}#line={i}" for i, _ in kept]
    return read_table(path, DataConfig())


def pairs(
    path: Path, what: str, input_field: str, output_field: str, instruction_field: str | None = None
) -> list[dict[str, str]]:
    """`{input, output, source}` seeds; rows missing either field are refused with their locator."""
    rows, locators = read_rows(path, what)
    out = []
    for row, loc in zip(rows, locators):
        inp, outp = field(row, input_field), field(row, output_field)
        if instruction_field:
            instr = field(row, instruction_field) or ""
            inp = f"{instr}\n\n{inp}".strip() if inp else instr
        if inp in (None, "") or outp in (None, ""):
            missing = input_field if inp in (None, "") else output_field
            raise SlmError(
                f"{loc}: seed has no {missing!r} value",
                f"fix the row or set {what.rsplit('.', 1)[0]}.input_field / output_field",
            )
        out.append({"input": str(inp).strip(), "output": str(outp).strip(), "source": loc})
    if not out:
        raise SlmError(f"{what}: {path} has no rows", "give at least one seed row")
    return out


def prompts(path: Path, what: str, input_field: str) -> list[dict[str, str]]:
    rows, locators = read_rows(path, what)
    out = [
        {"input": str(v).strip(), "source": loc}
        for row, loc in zip(rows, locators)
        if (v := field(row, input_field)) not in (None, "")
    ]
    if not out:
        raise SlmError(
            f"{what}: no prompts with a {input_field!r} value in {path}", "set input_field to the prompt column"
        )
    return out


@dataclass
class Chunk:
    id: str
    source: str
    text: str


def doc_suffixes() -> tuple[str, ...]:
    """The document files the data stage reads (.txt .md .markdown .rst .pdf .html ...)."""
    from slmkit.data import DOC_EXTENSIONS

    return tuple(DOC_EXTENSIONS)


def doc_files(config_dir: Path, specs: list[str], what: str) -> list[Path]:
    suffixes = doc_suffixes()
    files: list[Path] = []
    for spec in specs:
        p = resolve(config_dir, spec)
        if p.is_dir():
            files += sorted(
                f
                for f in p.rglob("*")
                if f.suffix.lower() in suffixes and f.is_file() and not f.name.upper().startswith(("LICENSE", "README"))
            )
        elif p.is_file():
            if p.suffix.lower() not in suffixes:
                raise SlmError(
                    f"{what}: {p} is not a supported document ({', '.join(suffixes)})",
                    "convert it to text or markdown first",
                )
            files.append(p)
        else:
            raise SlmError(f"{what}: {p} does not exist", "paths are relative to the config file's folder")
    if not files:
        raise SlmError(
            f"{what}: no documents found in {', '.join(specs)}", f"add files ending in {', '.join(suffixes)}"
        )
    return files


def read_doc(path: Path) -> str:
    """The document's text as the data stage reads it (sections joined by a blank line); '' when it has none
    (empty, binary, encrypted or image-only PDF: the reason is logged as a skip)."""
    from slmkit.data import read_document

    doc = read_document(path)
    return doc.text if doc is not None else ""


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """`text` in chunks of at most `size` characters, cut between words, preferably at a paragraph or sentence end;
    each chunk starts with the words of the last `overlap` characters of the one before (the data chunker)."""
    from slmkit.data import split_chars

    return [piece for piece, _ in split_chars(text, size, overlap)]


def chunks(config_dir: Path, specs: list[str], size: int, overlap: int, limit: int | None, what: str) -> list[Chunk]:
    """Chunks of every document, each with a stable id `<file>#chunk=<n>:<sha1[:8]>`."""
    out: list[Chunk] = []
    for f in doc_files(config_dir, specs, what):
        for i, text in enumerate(chunk_text(read_doc(f), size, overlap)):
            digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
            out.append(Chunk(f"{f.name}#chunk={i}:{digest}", str(f), text))
    return out[:limit] if limit else out


def collection_chunks(config_dir: Path, path: str, name: str, what: str) -> list[Chunk]:
    """Stored chunks of a ChromaDB collection (from `slm index`), keeping their ids for provenance."""
    from slmkit.chroma import read_collection

    folder = resolve(config_dir, path)
    if not folder.is_dir():
        raise SlmError(
            f"{what}: ChromaDB folder {folder} does not exist", f"build it with `slm index DOCS --collection {name}`"
        )
    return [
        Chunk(f"{name}#{c['id']}", c["meta"].get("source") or str(folder), c["text"])
        for c in read_collection(folder, name)
        if c["text"] and c["text"].strip()
    ]
