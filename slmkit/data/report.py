"""What the data stage did, counted: skipped inputs with reasons, rows in/out per step, PII per type."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("slmkit.data")


@dataclass
class Report:
    skipped: list[dict[str, str]] = field(default_factory=list)
    steps: dict[str, dict[str, int]] = field(default_factory=dict)
    pii: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    seconds: Counter = field(default_factory=Counter)  # time per cleaning step (benchmarks; not in the summary)

    def skip(self, where: str, reason: str) -> None:
        """An input (file, row, URL) left out; logged and listed in the card."""
        log.warning("skipped %s: %s", where, reason)
        self.skipped.append({"where": str(where), "reason": reason})

    def skip_at(self, index: int, where: str, reason: str) -> None:
        """A skip found late (while streaming) listed where it would have been found reading the input."""
        log.warning("skipped %s: %s", where, reason)
        self.skipped.insert(index, {"where": str(where), "reason": reason})

    def step(self, name: str, rows_in: int, rows_out: int, changed: int = 0) -> None:
        self.steps[name] = {"in": rows_in, "out": rows_out, "dropped": rows_in - rows_out, "changed": changed}

    def skip_reasons(self) -> dict[str, int]:
        """Skips grouped by the reason's kind (text before the first ':' or '(')."""
        return dict(Counter(s["reason"].split(":")[0].split(" (")[0] for s in self.skipped))

    def as_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "skip_reasons": self.skip_reasons(),
            "steps": self.steps,
            "pii": dict(sorted(self.pii.items())),
        }
