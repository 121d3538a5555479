"""One table (a file or a saved HF dataset) turned into a stream of record batches, in two or three passes.

1. scan: every row is read once for the row count, the columns (first-seen order, within data.max_rows)
   and the checks that can fail (parse errors, ShareGPT roles, malformed `messages`), so a bad table is
   refused before any of its rows goes downstream.
2. drafts, only when needed: the distinct answers for a `{labels}` system prompt, and the table's task when
   user steps run (they may read `label`, which a classification table sets).
3. records: batches of BATCH rows become records, as `records.to_records` makes them.

Between passes only column names, counters and (for `{labels}`) the distinct answers are held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from typing import Any

from slmkit.config import DataConfig
from slmkit.errors import SlmError

from .read.chatlogs import convert_pairs, resolve_shape
from .records import RecordMaker, drafts_of, expand_labels, log_auto, no_usable_rows, parse_messages, pick_from
from .report import Report

BATCH = 2000
Pairs = Iterable[tuple[dict[str, Any], str]]
RowsFn = Callable[[Report], Pairs]


class _Quiet(Report):
    """Later passes read the same rows again: their skips were already reported by the scan."""

    def skip(self, where: str, reason: str) -> None:
        pass


class TableStream:
    """Record batches of one table; `scan()` and `prepare()` raise SlmError for a bad table, `batches()` streams."""

    def __init__(
        self,
        name: str,
        rows: RowsFn,
        shape: str,
        data: DataConfig,
        max_rows: int | None,
        meta: dict[str, Any],
        user_steps: bool = False,
        skip_as: str | None = None,
    ):
        self.name, self._rows, self.shape, self.data, self.max_rows = name, rows, shape, data, max_rows
        self.meta = meta  # source_sha256 and license for every record
        self.user_steps = user_steps
        self.skip_as = skip_as  # inside a folder: a failure skips this file only
        self.rows_in = 0  # rows after shape conversion, before data.max_rows
        self.records = 0
        self.report: dict[str, Any] | None = None
        self.failed = False
        self.skip_index = 0  # where a late failure goes in report.skipped
        self._source = "data"  # file name for messages, from the first row's locator
        self._columns: list[str] = []
        self._bad: dict[str, SlmError] = {}  # column -> its first malformed `messages` value

    def _pairs(self, report: Report) -> Iterator[tuple[dict[str, Any], str]]:
        return iter(convert_pairs(self._rows(report), self.shape))

    def _limited(self) -> Iterator[tuple[dict[str, Any], str]]:
        return islice(self._pairs(_Quiet()), self.max_rows)

    def _batches_of_rows(self) -> Iterator[list[tuple[dict[str, Any], str]]]:
        pairs = self._limited()
        while batch := list(islice(pairs, BATCH)):
            yield batch

    def scan(self, report: Report) -> None:
        """Pass 1: shape, row count, columns; malformed `messages` values are kept per column for prepare()."""
        raw = iter(self._rows(report))
        first = next(raw, None)
        self.shape = resolve_shape(first[0] if first else None, self.shape, self.name)
        pairs = convert_pairs(chain([first], raw) if first else raw, self.shape)
        seen: dict[str, None] = {}
        n = 0
        for n, (row, loc) in enumerate(pairs, 1):
            if n == 1 and "#" in loc:
                self._source = loc.split("#")[0]
            if self.max_rows is None or n <= self.max_rows:
                for key in row:
                    if key not in seen and not key.startswith("_"):
                        seen[key] = None
                self._check_messages(row, loc)
        self.rows_in = n
        self._columns = list(seen)

    def _check_messages(self, row: dict[str, Any], loc: str) -> None:
        """The first bad value of each column that may turn out to be the messages column."""
        wanted = self.data.columns.messages
        for key, value in row.items():
            if (key == wanted or key.lower() == "messages") and key not in self._bad:
                try:
                    parse_messages(value, loc)
                except SlmError as e:
                    self._bad[key] = e

    def prepare(self) -> None:
        """Pick the columns (and pass 2 when needed); raises what to_records would raise before any record."""
        self.picked, self.auto = pick_from(self._columns, self.data, self._source)
        log_auto(self.picked, self.auto)
        if self.picked["messages"] in self._bad:
            raise self._bad[self.picked["messages"]]
        self.prompt, self.label_task = self.data.system_prompt, None
        need_labels = bool(self.prompt and "{labels}" in self.prompt)
        need_task = self.user_steps and self.data.task == "auto"
        if need_labels or need_task:
            self._drafts_pass(need_labels, need_task)

    def _drafts_pass(self, need_labels: bool, need_task: bool) -> None:
        outputs: set[str] = set()
        maker = RecordMaker(self.data, self.prompt) if need_task else None
        rows = usable = 0
        for batch in self._batches_of_rows():
            drafts, _ = drafts_of(batch, self.picked)
            rows, usable = rows + len(batch), usable + len(drafts)
            if need_labels:
                outputs.update(d.output for d in drafts)
            if maker is not None:
                maker.add(drafts)
        if not usable:
            raise no_usable_rows(self._source, rows, self.picked)
        self.prompt = expand_labels(self.prompt, list(outputs)) if need_labels else self.prompt
        self.label_task = maker.task() if maker is not None else None

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        """Pass 3: non-empty batches of records; report set at the end (SlmError when no row was usable)."""
        maker = RecordMaker(self.data, self.prompt, self.label_task)
        rows = empty = 0
        tag = [] if self.shape == "table" else [f"shape:{self.shape}"]
        for batch in self._batches_of_rows():
            drafts, n_empty = drafts_of(batch, self.picked)
            rows, empty = rows + len(batch), empty + n_empty
            records, _ = maker.add(drafts)
            for rec in records:
                rec["meta"].update(self.meta)
                rec["meta"].setdefault("transformations", []).extend(tag)
            self.records += len(records)
            if records:
                yield records
        if rows == empty:
            raise no_usable_rows(self._source, rows, self.picked)
        self.report = maker.report(self.picked, self.auto, rows, empty)
