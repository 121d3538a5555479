"""Table readers (CSV, TSV, JSON, JSONL, Parquet, Excel; .gz allowed): rows as dicts, each with a locator.

`iter_table` yields rows as the file is read (CSV/TSV/JSONL line by line, Parquet by row group, Excel in
read-only mode); only a JSON document is parsed whole. `read_table` is the same as two lists.

Locators: `path#row=N`, `path#line=N` for JSONL, `path#sheet=S&row=N` for Excel (N is the sheet's row).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slmkit.config import DataConfig
from slmkit.errors import SlmError

from ..report import Report

log = logging.getLogger("slmkit.data")

EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".xlsx": "excel",
    ".xlsm": "excel",
}
SUPPORTED = (
    "CSV (.csv), TSV (.tsv), JSON (.json), JSONL (.jsonl), Parquet (.parquet), Excel (.xlsx), "
    "any of these gzipped (.gz)"
)
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
        raise SlmError(
            f"{path}: unsupported file extension {ext or '(none)'!r}; supported: {SUPPORTED}",
            "rename the file or set data.format to csv, tsv, json or jsonl",
        )
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
            raise SlmError(
                f"{path}: not a valid gzip file ({e})", "re-create it with gzip, or drop the .gz suffix"
            ) from None
    return raw


def _check_path(path: Path) -> None:
    """Refuse a folder or a missing file."""
    if path.is_dir():
        raise SlmError(
            f"data.path {path} is a directory, not a file", "point data.path at one CSV/TSV/JSON/JSONL file inside it"
        )
    if not path.is_file():
        raise SlmError(
            f"data file not found: {path}", "check data.path; relative paths are resolved from the config file's folder"
        )


def _check_file(path: Path) -> bytes:
    """The file's bytes, after checking it exists, is a file and is not empty."""
    _check_path(path)
    raw = _open_bytes(path)
    if not raw.strip():
        raise SlmError(f"data file is empty: {path}", "the file has no content; check you exported the right file")
    return raw


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 text (a leading BOM is dropped); other encodings are refused with the offending line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SlmError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})",
            "re-save the file as UTF-8 (e.g. 'Save as... > CSV UTF-8' or `iconv -t UTF-8`)",
        ) from None


def _normalize(obj: Any, locator: str) -> dict[str, Any]:
    """An object row as is; a [text, label] pair becomes {'text': ..., 'label': ...}."""
    if isinstance(obj, dict):
        return {str(k): v for k, v in obj.items()}
    if isinstance(obj, list) and len(obj) == 2:
        return dict(zip(PAIR_COLUMNS, obj))
    raise SlmError(
        f"{locator}: expected an object or a [text, label] pair, got {type(obj).__name__}",
        'each row must be a JSON object like {"text": ..., "label": ...}',
    )


def _iter_delimited(path: Path, delimiter: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Rows of a CSV/TSV file, decoded and parsed as they are read (gzip too)."""
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = [h.strip() for h in next(reader, [])]
            n = 0
            for record in reader:
                if not any(cell.strip() for cell in record):
                    continue  # blank line
                n += 1
                if len(record) > len(header):
                    raise SlmError(
                        f"{path}: row {n} (line {reader.line_num}) has {len(record)} fields "
                        f"but the header has {len(header)}",
                        'quote fields that contain the delimiter, e.g. "hello, world"',
                    )
                yield dict(zip(header, record)), f"{path}#row={n}"
        except csv.Error as e:
            raise SlmError(
                f"{path}:{reader.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({e})",
                "check quoting on that line",
            ) from None
        except UnicodeDecodeError:
            _decode(path, _open_bytes(path))  # raises the error with its line and offset
            raise
        except (EOFError, gzip.BadGzipFile, zlib.error):
            _open_bytes(path)  # raises "not a valid gzip file"
            raise


@contextmanager
def _open_text(path: Path):
    """UTF-8 text (BOM dropped), universal newlines kept for the csv module; gunzipped for .gz."""
    raw = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        yield f


def _has_content(path: Path) -> bool:
    """Whether the file (gunzipped for .gz) has anything but whitespace, read a block at a time."""
    try:
        with gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb") as f:
            while block := f.read(1 << 16):
                if block.strip():
                    return True
    except (OSError, EOFError, zlib.error):
        _open_bytes(path)  # raises "not a valid gzip file"
        raise
    return False


def _pick_json_list(path: Path, data: Any, json_field: str | None) -> list:
    """The list of rows inside a parsed JSON document."""
    if isinstance(data, list):
        if json_field:
            raise SlmError(
                f"{path}: data.json_field is {json_field!r} but the top level is already a list",
                "unset data.json_field",
            )
        return data
    if not isinstance(data, dict):
        raise SlmError(
            f"{path}: top level is a {type(data).__name__}, expected a list of rows or an object",
            "store rows as a JSON list, or as a list under one key",
        )
    if json_field:
        return _lookup_field(path, data, json_field)
    lists = [k for k, v in data.items() if isinstance(v, list)]
    if len(lists) != 1:
        found = ", ".join(lists) if lists else "none"
        raise SlmError(
            f"{path}: cannot tell which key holds the rows (keys with a list: {found})",
            "set data.json_field to the key holding the list of rows",
        )
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
                raise SlmError(
                    f"{path}: data.json_field {field!r} not found (available keys: {keys})",
                    "set data.json_field to the key holding the list of rows",
                )
            node = node[part]
    if not isinstance(node, list):
        raise SlmError(
            f"{path}: data.json_field {field!r} holds a {type(node).__name__}, not a list of rows",
            "point data.json_field at the list of rows",
        )
    return node


def _iter_json(path: Path, json_field: str | None) -> Iterator[tuple[dict[str, Any], str]]:
    """Rows of a JSON document (parsed whole: a single JSON value cannot be read in pieces)."""
    text = _decode(path, _check_file(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SlmError(
            f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})",
            "fix the JSON syntax there; a file with one object per line should be named .jsonl",
        ) from None
    del text
    for i, obj in enumerate(_pick_json_list(path, data, json_field), 1):
        loc = f"{path}#row={i}"
        yield _normalize(obj, loc), loc


def _iter_jsonl(path: Path, report: Report, max_line: int) -> Iterator[tuple[dict[str, Any], str]]:
    """Line by line (gzip too); over-long lines are skipped and counted, malformed ones are an error."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as f:
            yield from _jsonl_lines(path, f, report, max_line)
    except (EOFError, gzip.BadGzipFile) as e:
        raise SlmError(f"{path}: broken gzip file ({e})", "re-create it with gzip, or drop the .gz suffix") from None


def _jsonl_lines(path: Path, f, report: Report, max_line: int) -> Iterator[tuple[dict[str, Any], str]]:
    """Parse JSONL lines from an open binary file."""
    for lineno, raw in enumerate(f, 1):
        if len(raw) > max_line:
            report.skip(
                f"{path}#line={lineno}", f"line too long ({len(raw)} bytes; data.limits.max_line_chars is {max_line})"
            )
            continue
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise SlmError(
                f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x})",
                "re-save the file as UTF-8 (e.g. `iconv -t UTF-8`)",
            ) from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SlmError(
                f"{path}:{lineno}: malformed JSON line ({e.msg})",
                "fix or remove that line; each line must be one JSON object",
            ) from None
        loc = f"{path}#line={lineno}"
        yield _normalize(obj, loc), loc


def _iter_parquet(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """Row groups of 10,000 rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                n += 1
                yield row, f"{path}#row={n}"
    except (pa.ArrowException, OSError) as e:
        raise SlmError(
            f"{path}: cannot read Parquet ({str(e)[:200]})", "check the file is a complete Parquet file"
        ) from None


def _iter_excel(path: Path, sheet: str | None) -> Iterator[tuple[dict[str, Any], str]]:
    """First non-empty row is the header; locators carry the sheet's own row numbers."""
    import zipfile

    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError) as e:
        raise SlmError(f"{path}: cannot open as Excel ({type(e).__name__})", "save it again as .xlsx") from None
    try:
        if sheet is not None and sheet not in wb.sheetnames:
            raise SlmError(f"{path}: no sheet {sheet!r} (sheets: {', '.join(wb.sheetnames)})", "set the source's sheet")
        ws = wb[sheet] if sheet else wb[wb.sheetnames[0]]
        header = None
        for n, values in enumerate(ws.iter_rows(values_only=True), 1):
            if not any(v is not None and str(v).strip() for v in values):
                continue
            if header is None:
                header = [str(v).strip() if v is not None else f"column{i + 1}" for i, v in enumerate(values)]
                continue
            yield {h: v for h, v in zip(header, values)}, f"{path}#sheet={ws.title}&row={n}"
    finally:
        wb.close()


def iter_table(
    path: str | Path,
    data: DataConfig | None = None,
    report: Report | None = None,
    max_line: int = DEFAULT_MAX_LINE,
    sheet: str | None = None,
) -> Iterator[tuple[dict[str, Any], str]]:
    """(row, locator) pairs of a table file, read as they are needed; JSON documents are parsed whole.

    Over-long JSONL lines go to `report` as skips; a file without rows raises SlmError once read to the end.
    """
    data = data or DataConfig()
    path = Path(path)
    fmt = detect_format(path, data.format) if path.is_file() and path.stat().st_size else None
    if fmt == "jsonl":
        rows = _iter_jsonl(path, report or Report(), max_line)
    elif fmt in ("parquet", "excel"):
        rows = _iter_parquet(path) if fmt == "parquet" else _iter_excel(path, sheet)
    else:
        _check_path(path)
        if not _has_content(path):
            raise SlmError(f"data file is empty: {path}", "the file has no content; check you exported the right file")
        fmt = detect_format(path, data.format)
        if fmt in ("csv", "tsv"):
            rows = _iter_delimited(path, "," if fmt == "csv" else "\t")
        else:
            rows = _iter_json(path, data.json_field)
    n = 0
    for n, pair in enumerate(rows, 1):  # noqa: B007 - n counts the rows
        yield pair
    if not n:
        raise SlmError(f"data file has no rows: {path}", "add data rows below the header / inside the list")


def read_table(
    path: str | Path,
    data: DataConfig | None = None,
    report: Report | None = None,
    max_line: int = DEFAULT_MAX_LINE,
    sheet: str | None = None,
) -> tuple[Rows, list[str]]:
    """Rows of a table file and a locator for each; over-long JSONL lines go to `report` as skips."""
    pairs = list(iter_table(path, data, report, max_line, sheet))
    return [row for row, _ in pairs], [loc for _, loc in pairs]
