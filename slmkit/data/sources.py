"""Table readers (CSV, TSV, JSON, JSONL, Parquet, Excel; .gz allowed): rows as dicts, each with a locator.

Locators: `path#row=N`, `path#line=N` for JSONL, `path#sheet=S&row=N` for Excel (N is the sheet's row).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from pathlib import Path
from typing import Any

from slmkit.config import DataConfig
from slmkit.errors import SlmError

from .report import Report

log = logging.getLogger("slmkit.data")

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".xlsx": "excel", ".xlsm": "excel"}
SUPPORTED = ("CSV (.csv), TSV (.tsv), JSON (.json), JSONL (.jsonl), Parquet (.parquet), Excel (.xlsx), "
             "any of these gzipped (.gz)")
DEFAULT_MAX_LINE = 1_000_000
# CLINC150 stores rows as bare [text, label] pairs; these names feed column auto-detection.
PAIR_COLUMNS = ("text", "label")

Rows = list[dict[str, Any]]


def detect_format(path: Path, fmt: str = "auto") -> str:
    """The format named in config, else the one implied by the file extension."""
    if fmt != "auto":
        return fmt
    ext = table_suffix(path)
    if ext not in EXTENSIONS:
        raise SlmError(f"{path}: unsupported file extension {ext or '(none)'!r}; supported: {SUPPORTED}",
                       "rename the file or set data.format to csv, tsv, json or jsonl")
    return EXTENSIONS[ext]


def table_suffix(path: Path) -> str:
    """The extension that names the format ('.jsonl' for data.jsonl.gz)."""
    suffixes = [x.lower() for x in path.suffixes]
    return suffixes[-2] if len(suffixes) >= 2 and suffixes[-1] == ".gz" else path.suffix.lower()


def _open_bytes(path: Path) -> bytes:
    """File bytes, gunzipped when the name ends in .gz."""
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise SlmError(f"{path}: not a valid gzip file ({e})", "re-create it with gzip, or drop the .gz suffix") from None
    return raw


def _check_file(path: Path) -> bytes:
    """The file's bytes, after checking it exists, is a file and is not empty."""
    if path.is_dir():
        raise SlmError(f"data.path {path} is a directory, not a file",
                       "point data.path at one CSV/TSV/JSON/JSONL file inside it")
    if not path.is_file():
        raise SlmError(f"data file not found: {path}",
                       "check data.path; relative paths are resolved from the config file's folder")
    raw = _open_bytes(path)
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


def _read_jsonl(path: Path, report: Report, max_line: int) -> tuple[Rows, list[str]]:
    """Line by line (gzip too); over-long lines are skipped and counted, malformed ones are an error."""
    rows, locators = [], []
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as f:
            _jsonl_lines(path, f, rows, locators, report, max_line)
    except (EOFError, gzip.BadGzipFile) as e:
        raise SlmError(f"{path}: broken gzip file ({e})", "re-create it with gzip, or drop the .gz suffix") from None
    return rows, locators


def _jsonl_lines(path: Path, f, rows: Rows, locators: list[str], report: Report, max_line: int) -> None:
    """Parse JSONL lines from an open binary file into rows/locators."""
    for lineno, raw in enumerate(f, 1):
        if len(raw) > max_line:
            report.skip(f"{path}#line={lineno}", f"line too long ({len(raw)} bytes; data.limits.max_line_chars "
                        f"is {max_line})")
            continue
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise SlmError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x})",
                           "re-save the file as UTF-8 (e.g. `iconv -t UTF-8`)") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SlmError(f"{path}:{lineno}: malformed JSON line ({e.msg})",
                           "fix or remove that line; each line must be one JSON object") from None
        loc = f"{path}#line={lineno}"
        rows.append(_normalize(obj, loc))
        locators.append(loc)


def _read_parquet(path: Path) -> tuple[Rows, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        rows = [r for batch in pf.iter_batches(batch_size=10_000) for r in batch.to_pylist()]
    except (pa.ArrowException, OSError) as e:
        raise SlmError(f"{path}: cannot read Parquet ({str(e)[:200]})", "check the file is a complete Parquet file") from None
    return rows, [f"{path}#row={i}" for i in range(1, len(rows) + 1)]


def _read_excel(path: Path, sheet: str | None) -> tuple[Rows, list[str]]:
    """First non-empty row is the header; locators carry the sheet's own row numbers."""
    import zipfile

    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError) as e:
        raise SlmError(f"{path}: cannot open as Excel ({type(e).__name__})", "save it again as .xlsx") from None
    if sheet is not None and sheet not in wb.sheetnames:
        raise SlmError(f"{path}: no sheet {sheet!r} (sheets: {', '.join(wb.sheetnames)})", "set the source's sheet")
    ws = wb[sheet] if sheet else wb[wb.sheetnames[0]]
    rows, locators, header = [], [], None
    for n, values in enumerate(ws.iter_rows(values_only=True), 1):
        if not any(v is not None and str(v).strip() for v in values):
            continue
        if header is None:
            header = [str(v).strip() if v is not None else f"column{i + 1}" for i, v in enumerate(values)]
            continue
        rows.append({h: v for h, v in zip(header, values)})
        locators.append(f"{path}#sheet={ws.title}&row={n}")
    wb.close()
    return rows, locators


def read_table(path: str | Path, data: DataConfig | None = None, report: Report | None = None,
               max_line: int = DEFAULT_MAX_LINE, sheet: str | None = None) -> tuple[Rows, list[str]]:
    """Rows of a table file and a locator for each; over-long JSONL lines go to `report` as skips."""
    data = data or DataConfig()
    path = Path(path)
    fmt = detect_format(path, data.format) if path.is_file() and path.stat().st_size else None
    if fmt in ("jsonl", "parquet", "excel"):
        if fmt == "jsonl":
            rows, locators = _read_jsonl(path, report or Report(), max_line)
        else:
            rows, locators = _read_parquet(path) if fmt == "parquet" else _read_excel(path, sheet)
    else:
        raw = _check_file(path)
        fmt = detect_format(path, data.format)
        text = _decode(path, raw)
        if fmt in ("csv", "tsv"):
            rows, locators = _read_delimited(path, text, "," if fmt == "csv" else "\t")
        else:
            rows, locators = _read_json(path, text, data.json_field)
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
