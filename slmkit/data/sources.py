"""Readers for CSV, TSV, JSON and JSONL files: rows as dicts, each with a locator (`path#row=N`)."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from slmkit.config import DataConfig
from slmkit.errors import SlmError
from slmkit.io import read_jsonl

log = logging.getLogger("slmkit.data")

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
SUPPORTED = "CSV (.csv), TSV (.tsv), JSON (.json), JSONL (.jsonl)"
# CLINC150 stores rows as bare [text, label] pairs; these names feed column auto-detection.
PAIR_COLUMNS = ("text", "label")

Rows = list[dict[str, Any]]


def detect_format(path: Path, fmt: str = "auto") -> str:
    """The format named in config, else the one implied by the file extension."""
    if fmt != "auto":
        return fmt
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise SlmError(f"{path}: unsupported file extension {ext or '(none)'!r}; supported: {SUPPORTED}",
                       "rename the file or set data.format to csv, tsv, json or jsonl")
    return EXTENSIONS[ext]


def _check_file(path: Path) -> bytes:
    """The file's bytes, after checking it exists, is a file and is not empty."""
    if path.is_dir():
        raise SlmError(f"data.path {path} is a directory, not a file",
                       "point data.path at one CSV/TSV/JSON/JSONL file inside it")
    if not path.is_file():
        raise SlmError(f"data file not found: {path}",
                       "check data.path; relative paths are resolved from the config file's folder")
    raw = path.read_bytes()
    if not raw.strip():
        raise SlmError(f"data file is empty: {path}", "the file has no content; check you exported the right file")
    return raw


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 text (a leading BOM is dropped); other encodings are refused with the offending line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise SlmError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})",
                       "re-save the file as UTF-8 (e.g. 'Save as... > CSV UTF-8' or `iconv -t UTF-8`)") from None


def _normalize(obj: Any, locator: str) -> dict[str, Any]:
    """An object row as is; a [text, label] pair becomes {'text': ..., 'label': ...}."""
    if isinstance(obj, dict):
        return {str(k): v for k, v in obj.items()}
    if isinstance(obj, list) and len(obj) == 2:
        return dict(zip(PAIR_COLUMNS, obj))
    raise SlmError(f"{locator}: expected an object or a [text, label] pair, got {type(obj).__name__}",
                   "each row must be a JSON object like {\"text\": ..., \"label\": ...}")


def _read_delimited(path: Path, text: str, delimiter: str) -> tuple[Rows, list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader, [])]
        rows, locators = [], []
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue  # blank line
            n = len(rows) + 1
            if len(record) > len(header):
                raise SlmError(f"{path}: row {n} (line {reader.line_num}) has {len(record)} fields "
                               f"but the header has {len(header)}",
                               "quote fields that contain the delimiter, e.g. \"hello, world\"")
            rows.append(dict(zip(header, record)))
            locators.append(f"{path}#row={n}")
    except csv.Error as e:
        raise SlmError(f"{path}:{reader.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({e})",
                       "check quoting on that line") from None
    return rows, locators


def _pick_json_list(path: Path, data: Any, json_field: str | None) -> list:
    """The list of rows inside a parsed JSON document."""
    if isinstance(data, list):
        if json_field:
            raise SlmError(f"{path}: data.json_field is {json_field!r} but the top level is already a list",
                           "unset data.json_field")
        return data
    if not isinstance(data, dict):
        raise SlmError(f"{path}: top level is a {type(data).__name__}, expected a list of rows or an object",
                       "store rows as a JSON list, or as a list under one key")
    if json_field:
        return _lookup_field(path, data, json_field)
    lists = [k for k, v in data.items() if isinstance(v, list)]
    if len(lists) != 1:
        found = ", ".join(lists) if lists else "none"
        raise SlmError(f"{path}: cannot tell which key holds the rows (keys with a list: {found})",
                       "set data.json_field to the key holding the list of rows")
    log.info("%s: using the list under key %r (the only list at the top level)", path, lists[0])
    return data[lists[0]]


def _lookup_field(path: Path, data: dict, field: str) -> list:
    """`field` as a top-level key, else as a dotted path (`a.b`)."""
    node: Any = data
    if field in data:
        node = data[field]
    else:
        for part in field.split("."):
            if not isinstance(node, dict) or part not in node:
                keys = ", ".join(map(str, node)) if isinstance(node, dict) else "none"
                raise SlmError(f"{path}: data.json_field {field!r} not found (available keys: {keys})",
                               "set data.json_field to the key holding the list of rows")
            node = node[part]
    if not isinstance(node, list):
        raise SlmError(f"{path}: data.json_field {field!r} holds a {type(node).__name__}, not a list of rows",
                       "point data.json_field at the list of rows")
    return node


def _read_json(path: Path, text: str, json_field: str | None) -> tuple[Rows, list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SlmError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})",
                       "fix the JSON syntax there; a file with one object per line should be named .jsonl") from None
    items = _pick_json_list(path, data, json_field)
    locators = [f"{path}#row={i}" for i in range(1, len(items) + 1)]
    return [_normalize(obj, loc) for obj, loc in zip(items, locators)], locators


def _read_jsonl(path: Path) -> tuple[Rows, list[str]]:
    items = read_jsonl(path)
    with open(path, encoding="utf-8") as f:  # same line splitting as read_jsonl, to recover line numbers
        linenos = [n for n, line in enumerate(f, 1) if line.strip()]
    locators = [f"{path}#line={n}" for n in linenos]
    return [_normalize(obj, loc) for obj, loc in zip(items, locators)], locators


def read_table(path: str | Path, data: DataConfig | None = None) -> tuple[Rows, list[str]]:
    """Rows of a CSV/TSV/JSON/JSONL file and a locator for each (`path#row=N`, or `path#line=N` for JSONL)."""
    data = data or DataConfig()
    path = Path(path)
    raw = _check_file(path)
    fmt = detect_format(path, data.format)
    text = _decode(path, raw)
    if fmt == "csv":
        rows, locators = _read_delimited(path, text, ",")
    elif fmt == "tsv":
        rows, locators = _read_delimited(path, text, "\t")
    elif fmt == "json":
        rows, locators = _read_json(path, text, data.json_field)
    else:
        rows, locators = _read_jsonl(path)
    if not rows:
        raise SlmError(f"data file has no rows: {path}", "add data rows below the header / inside the list")
    return rows, locators


def find_license(path: Path, configured: str | None = None) -> str | None:
    """`data.license`, else the first line of a LICENSE*/LICENCE* file beside the data (with its name), else None."""
    if configured:
        return configured
    candidates = sorted(p for p in path.parent.iterdir()
                        if p.is_file() and p.name.lower().startswith(("license", "licence")))
    for cand in candidates:
        text = cand.read_text(encoding="utf-8", errors="replace")
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if first:
            return f"{first} ({cand.name})"
    return None
