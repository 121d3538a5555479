"""The teacher: cache first, then a backend (see `backends.py`) under limits.

`Teacher.complete(requests)` answers a list of chat requests in order: cached replies come from the
SQLite cache, the rest go to the backend under a concurrency limit, with retries (exponential backoff,
full jitter) on 429 / 5xx / timeouts / dropped connections / unreadable replies, a per-call timeout, token
and cost accounting, and a budget. Each reply is cached the moment it returns. When the budget is spent,
or the endpoint keeps failing, `stopped` says why and later requests get an error reply instead of a call.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slmkit.config.synth import BudgetConfig, TeacherConfig
from slmkit.synth.backends import FatalCallError, LocalBackend, TransientError, make_backend
from slmkit.synth.cache import CachedReply, SynthCache, cache_key

__all__ = ["Request", "Reply", "Stats", "Teacher", "TransientError", "FatalCallError", "LocalBackend"]

log = logging.getLogger("slmkit.synth")


@dataclass
class Request:
    """One chat call. `schema` ('json' or a JSON Schema dict) is part of the cache key; `attempt` shifts the seed."""

    messages: list[dict[str, str]]
    schema: Any = None
    attempt: int = 0


@dataclass
class Reply:
    key: str
    text: str | None
    cached: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None


@dataclass
class Stats:
    calls: int = 0  # uncached calls started (what the budget counts)
    cached: int = 0
    retries: int = 0
    failed: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict:
        return {
            "calls": self.calls,
            "cached": self.cached,
            "retries": self.retries,
            "failed": dict(self.failed),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


# ----------------------------------------------------------------------------- the teacher


class Teacher:
    """Cache first, then the backend under the concurrency limit, retries and budget."""

    def __init__(
        self,
        cfg: TeacherConfig,
        budget: BudgetConfig,
        cache: SynthCache,
        backend=None,
        on_reply: Callable[[Reply], None] | None = None,
    ):
        self.cfg, self.budget, self.cache = cfg, budget, cache
        self.backend = backend or make_backend(cfg)
        self.stats = Stats()
        self.stopped: str | None = None
        self.on_reply = on_reply
        self._consecutive_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rng = random.Random(0)

    @property
    def label(self) -> str:
        return f"{self.cfg.backend}:{self.cfg.model}"

    def sampling(self, req: Request) -> dict:
        seed = None if self.cfg.seed is None else self.cfg.seed + req.attempt
        return {
            "temperature": self.cfg.temperature,
            "top_p": self.cfg.top_p,
            "max_tokens": self.cfg.max_tokens,
            "seed": seed,
        }

    def key(self, req: Request) -> str:
        return cache_key(self.cfg.backend, self.cfg.model, self.sampling(req), req.messages, req.schema)

    def preflight(self) -> None:
        self.backend.preflight()

    def complete(self, requests: list[Request]) -> list[Reply]:
        """Replies in request order; uncached ones are called (and cached as each returns)."""
        replies: list[Reply | None] = [None] * len(requests)
        pending = []
        for i, req in enumerate(requests):
            key = self.key(req)
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cached += 1
                replies[i] = self._emit(Reply(key, hit.text, cached=True))
            else:
                pending.append((i, req, key))
        if pending:
            if isinstance(self.backend, LocalBackend):
                self._run_local(pending, replies)
            else:
                self._loop = self._loop or asyncio.new_event_loop()
                self._loop.run_until_complete(self._run_remote(pending, replies))
        return replies  # type: ignore[return-value]

    def close(self) -> None:
        if self._loop is not None:
            if hasattr(self.backend, "aclose"):
                self._loop.run_until_complete(self.backend.aclose())
            self._loop.close()
            self._loop = None

    # -- budget and bookkeeping

    def _budget_left(self) -> bool:
        b = self.budget
        if self.stopped:
            return False
        if b.max_calls is not None and self.stats.calls >= b.max_calls:
            self.stopped = f"budget: max_calls={b.max_calls} reached"
        elif b.max_cost_usd is not None and self.stats.cost_usd >= b.max_cost_usd:
            self.stopped = f"budget: max_cost_usd={b.max_cost_usd} reached (spent {self.stats.cost_usd:.4f})"
        return self.stopped is None

    def _record_ok(self, req: Request, key: str, text: str, pt: int, ct: int) -> Reply:
        self.cache.put(
            key,
            self.cfg.backend,
            self.cfg.model,
            {"messages": req.messages, "schema": req.schema, **self.sampling(req)},
            CachedReply(text, pt, ct),
        )
        self.stats.prompt_tokens += pt
        self.stats.completion_tokens += ct
        self.stats.cost_usd += pt / 1000 * self.budget.price_in_per_1k + ct / 1000 * self.budget.price_out_per_1k
        self._consecutive_failures = 0
        return self._emit(Reply(key, text))

    def _record_fail(self, key: str, kind: str) -> Reply:
        self.stats.failed[kind] += 1
        self._consecutive_failures += 1
        if self._consecutive_failures >= self.cfg.max_consecutive_failures and not self.stopped:
            self.stopped = f"teacher failing: {self._consecutive_failures} calls in a row failed (last: {kind})"
            log.warning("synth: %s; stopping with what was made so far", self.stopped)
        return self._emit(Reply(key, None, error=kind))

    def _emit(self, reply: Reply) -> Reply:
        if self.on_reply:
            self.on_reply(reply)
        return reply

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: uniform(0, min(cap, base * 2^attempt)) (AWS Architecture Blog, 'Exponential Backoff And Jitter')."""
        d = self._rng.uniform(0, min(self.cfg.retry_max_s, self.cfg.retry_base_s * 2**attempt))
        return min(self.cfg.retry_max_s, max(d, retry_after or 0.0))

    # -- remote

    async def _run_remote(self, pending, replies) -> None:
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def one(i: int, req: Request, key: str) -> None:
            async with sem:
                if not self._budget_left():
                    replies[i] = Reply(key, None, error="stopped")
                    return
                self.stats.calls += 1
                replies[i] = await self._call_with_retries(req, key)

        await asyncio.gather(*(one(i, r, k) for i, r, k in pending))

    async def _call_with_retries(self, req: Request, key: str) -> Reply:
        last = "unknown"
        for attempt in range(self.cfg.max_retries + 1):
            try:
                text, pt, ct = await asyncio.wait_for(
                    self.backend.call(req.messages, self.sampling(req), req.schema), self.cfg.timeout_s * 1.5
                )
                return self._record_ok(req, key, text, pt, ct)
            except asyncio.TimeoutError:
                last, wait = "timeout", None
            except TransientError as e:
                last, wait = e.kind, e.retry_after
            except FatalCallError as e:
                return self._record_fail(key, e.kind)
            if attempt < self.cfg.max_retries:
                self.stats.retries += 1
                log.debug("synth: %s, retry %d", last, attempt + 1)
                await asyncio.sleep(self._delay(attempt, wait))
        return self._record_fail(key, last)

    # -- local

    def _run_local(self, pending, replies) -> None:
        for start in range(0, len(pending), self.cfg.concurrency):
            chunk = pending[start : start + self.cfg.concurrency]
            room = len(chunk) if self._budget_left() else 0
            if self.budget.max_calls is not None:
                room = min(room, self.budget.max_calls - self.stats.calls)
            batch = chunk[:room]
            for i, _, key in chunk[room:]:
                replies[i] = Reply(key, None, error="stopped")
            if batch:
                self.stats.calls += len(batch)
                outs = self.backend.generate([(req.messages, self.sampling(req)) for _, req, _ in batch])
                for (i, req, key), (text, pt, ct) in zip(batch, outs):
                    replies[i] = self._record_ok(req, key, text, pt, ct) if text else self._record_fail(key, "empty")
            self._budget_left()  # sets `stopped` once the budget is spent
