"""Prometheus text exposition (format 0.0.4) for the server, without a client library dependency."""

from __future__ import annotations

import threading
import time
from collections import deque

# Latency buckets in seconds: from one fast token to a long CPU generation.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + body + "}"


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
        self.total += 1
        self.sum += value


class Metrics:
    """Thread-safe counters, gauges and histograms; `render()` gives the /metrics body."""

    def __init__(self, prefix: str = "slm"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple], float] = {}
        self._hists: dict[tuple[str, tuple], Histogram] = {}
        self._gauges: dict[str, callable] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._tokens: deque[tuple[float, int]] = deque()

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._hists.setdefault(key, Histogram()).observe(value)

    def gauge(self, name: str, read) -> None:
        """Register a gauge read at render time (`read()` -> float)."""
        self._gauges[name] = read

    def tokens_generated(self, n: int, window_s: float = 10.0) -> None:
        now = time.monotonic()
        with self._lock:
            self._tokens.append((now, n))
            while self._tokens and self._tokens[0][0] < now - window_s:
                self._tokens.popleft()

    def tokens_per_second(self, window_s: float = 10.0) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [(t, n) for t, n in self._tokens if t >= now - window_s]
        return sum(n for _, n in recent) / window_s if recent else 0.0

    def counter_value(self, name: str, **labels: str) -> float:
        """Sum of a counter over label sets that contain `labels` (for tests and the bench)."""
        with self._lock:
            return sum(v for (n, lab), v in self._counters.items() if n == name and set(labels.items()) <= set(lab))

    def render(self) -> str:
        p, lines = self.prefix, []
        with self._lock:
            counters, hists = (
                dict(self._counters),
                {k: (h.buckets, list(h.counts), h.total, h.sum) for k, h in self._hists.items()},
            )
        names = sorted({n for n, _ in counters} | {n for n, _ in hists} | set(self._gauges))
        for name in names:
            kind, text = self._help.get(name, ("gauge" if name in self._gauges else "counter", name))
            lines += [f"# HELP {p}_{name} {text}", f"# TYPE {p}_{name} {kind}"]
            for (n, lab), v in sorted(counters.items()):
                if n == name:
                    lines.append(f"{p}_{name}{_labels(dict(lab))} {v:g}")
            for (n, lab), (buckets, counts, total, total_sum) in sorted(hists.items()):
                if n != name:
                    continue
                for b, c in zip(buckets, counts):
                    lines.append(f"{p}_{name}_bucket{_labels({**dict(lab), 'le': f'{b:g}'})} {c}")
                lines.append(f"{p}_{name}_bucket{_labels({**dict(lab), 'le': '+Inf'})} {total}")
                lines += [
                    f"{p}_{name}_sum{_labels(dict(lab))} {total_sum:.6f}",
                    f"{p}_{name}_count{_labels(dict(lab))} {total}",
                ]
            if name in self._gauges:
                lines.append(f"{p}_{name} {float(self._gauges[name]()):g}")
        return "\n".join(lines) + "\n"
