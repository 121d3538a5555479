"""Teacher models: OpenAI-compatible endpoints, LiteLLM (optional), or a local HF model.

`Teacher.complete(requests)` answers a list of chat requests in order: cached replies come from the
SQLite cache, the rest go to the backend under a concurrency limit, with retries (exponential backoff,
full jitter) on 429 / 5xx / timeouts / dropped connections / unreadable replies, a per-call timeout, token
and cost accounting, and a budget. Each reply is cached the moment it returns. When the budget is spent,
or the endpoint keeps failing, `stopped` says why and later requests get an error reply instead of a call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slmkit.errors import SlmError
from slmkit.synth.cache import CachedReply, SynthCache, cache_key
from slmkit.synth.config import BudgetConfig, TeacherConfig

log = logging.getLogger("slmkit.synth")

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


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
    calls: int = 0            # uncached calls started (what the budget counts)
    cached: int = 0
    retries: int = 0
    failed: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict:
        return {"calls": self.calls, "cached": self.cached, "retries": self.retries, "failed": dict(self.failed),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": round(self.cost_usd, 6)}


class TransientError(Exception):
    """A failure worth retrying; `kind` names it in the stats ('http_429', 'timeout', 'bad_reply'...)."""

    def __init__(self, kind: str, retry_after: float | None = None):
        super().__init__(kind)
        self.kind, self.retry_after = kind, retry_after


class FatalCallError(Exception):
    """A failure retrying cannot fix (400, 404...): the call fails at once."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


# ----------------------------------------------------------------------------- backends

def _api_key(cfg: TeacherConfig) -> str | None:
    return os.environ.get(cfg.api_key_env) if cfg.api_key_env else None


def _check_key(cfg: TeacherConfig) -> None:
    if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        raise SlmError(f"synth.teacher.api_key_env: environment variable {cfg.api_key_env} is not set",
                       f"export {cfg.api_key_env}=<your key>, or set synth.teacher.api_key_env: null for a local "
                       "server that needs no key")


def _classify(exc: BaseException) -> Exception:
    """Map client exceptions (openai's, which LiteLLM also raises) to Transient/Fatal errors."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return TransientError("timeout")
    if isinstance(exc, openai.APIConnectionError):
        return TransientError("connection")
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code == 429 or code >= 500:
            after = exc.response.headers.get("retry-after") if exc.response is not None else None
            try:
                wait = float(after) if after else None
            except ValueError:
                wait = None
            return TransientError(f"http_{code}", wait)
        if code in (401, 403):
            return SlmError(f"the teacher endpoint refused the credentials (HTTP {code})",
                            "check the key in the variable named by synth.teacher.api_key_env")
        return FatalCallError(f"http_{code}", str(exc)[:200])
    if isinstance(exc, (openai.APIResponseValidationError, ValueError)):  # unparsable body (bad JSON)
        return TransientError("bad_reply")
    if isinstance(exc, asyncio.TimeoutError):
        return TransientError("timeout")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


class OpenAIBackend:
    """Any OpenAI-compatible /v1/chat/completions endpoint, through the official client (its own retries off)."""

    name = "openai"

    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg
        self.base_url = (cfg.base_url or OPENAI_DEFAULT_URL).rstrip("/")
        self._client = None

    def preflight(self) -> None:
        """Key variable set and endpoint answering, before any work starts."""
        import httpx

        _check_key(self.cfg)
        key = _api_key(self.cfg)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            r = httpx.get(f"{self.base_url}/models", headers=headers, timeout=min(self.cfg.timeout_s, 10.0))
        except httpx.HTTPError as e:
            raise SlmError(f"cannot reach the teacher endpoint {self.base_url} ({type(e).__name__}: {e})",
                           "start the server or fix synth.teacher.base_url") from None
        if r.status_code in (401, 403):
            var = self.cfg.api_key_env or "(none: synth.teacher.api_key_env is null)"
            raise SlmError(f"the teacher endpoint {self.base_url} refused the key (HTTP {r.status_code})",
                           f"check the key in {var}")

    async def call(self, messages: list[dict], sampling: dict, schema: Any) -> tuple[str, int, int]:
        import openai

        if self._client is None:
            self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=_api_key(self.cfg) or "not-needed",
                                              timeout=self.cfg.timeout_s, max_retries=0)
        extra = {"response_format": {"type": "json_object"}} if schema is not None and self.cfg.json_mode else {}
        try:
            resp = await self._client.chat.completions.create(model=self.cfg.model, messages=messages, **sampling, **extra)
        except Exception as e:  # noqa: BLE001 - classified below
            raise _classify(e) from None
        return _unpack(resp)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class LiteLLMBackend(OpenAIBackend):
    """Anthropic, Gemini, Bedrock... through LiteLLM (optional extra), which raises openai-style errors."""

    name = "litellm"

    def preflight(self) -> None:
        self._litellm()
        _check_key(self.cfg)

    @staticmethod
    def _litellm():
        try:
            import litellm
        except ImportError:
            raise SlmError("synth.teacher.backend is 'litellm' but LiteLLM is not installed",
                           "pip install 'slmkit[litellm]'  (or: pip install litellm)") from None
        return litellm

    async def call(self, messages: list[dict], sampling: dict, schema: Any) -> tuple[str, int, int]:
        litellm = self._litellm()
        extra = {"response_format": {"type": "json_object"}} if schema is not None and self.cfg.json_mode else {}
        try:
            resp = await litellm.acompletion(model=self.cfg.model, messages=messages, api_base=self.cfg.base_url,
                                             api_key=_api_key(self.cfg), timeout=self.cfg.timeout_s, num_retries=0,
                                             **sampling, **extra)
        except Exception as e:  # noqa: BLE001
            raise _classify(e) from None
        return _unpack(resp)


def _unpack(resp) -> tuple[str, int, int]:
    try:
        text = resp.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        raise TransientError("bad_reply") from None
    if not isinstance(text, str) or not text.strip():
        raise TransientError("empty")
    usage = getattr(resp, "usage", None)
    return text, int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)


class LocalBackend:
    """A local HF model ('default' or a folder) with batched `generate`; runs offline."""

    name = "local"

    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg
        self.model = self.tok = None

    def preflight(self) -> None:
        from slmkit.models import load_model, load_tokenizer, resolve_model

        resolved = resolve_model(self.cfg.model)
        self.tok = load_tokenizer(resolved)
        self.model = load_model(resolved)

    def generate(self, batch: list[tuple[list[dict], dict]]) -> list[tuple[str, int, int]]:
        """Replies for one batch of (messages, sampling); sampled when temperature > 0, seeded from the first seed."""
        import torch

        if self.model is None:
            self.preflight()
        tok, model = self.tok, self.model
        tok.padding_side = "left"
        sampling = batch[0][1]
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m, _ in batch]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        do_sample = sampling["temperature"] > 0
        if sampling.get("seed") is not None:
            torch.manual_seed(sampling["seed"])
        kw = {"temperature": sampling["temperature"], "top_p": sampling["top_p"]} if do_sample else {}
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=sampling["max_tokens"], do_sample=do_sample,
                                 pad_token_id=tok.pad_token_id, **kw)
        new = out[:, enc["input_ids"].shape[1]:]
        results = []
        for row_in, row_new in zip(enc["attention_mask"], new):
            n_out = int((row_new != tok.pad_token_id).sum())
            results.append((tok.decode(row_new, skip_special_tokens=True).strip(), int(row_in.sum()), n_out))
        return results


def make_backend(cfg: TeacherConfig):
    return {"openai": OpenAIBackend, "litellm": LiteLLMBackend, "local": LocalBackend}[cfg.backend](cfg)


# ----------------------------------------------------------------------------- the teacher

class Teacher:
    """Cache first, then the backend under the concurrency limit, retries and budget."""

    def __init__(self, cfg: TeacherConfig, budget: BudgetConfig, cache: SynthCache, backend=None,
                 on_reply: Callable[[Reply], None] | None = None):
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
        return {"temperature": self.cfg.temperature, "top_p": self.cfg.top_p, "max_tokens": self.cfg.max_tokens,
                "seed": seed}

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
        self.cache.put(key, self.cfg.backend, self.cfg.model, {"messages": req.messages, "schema": req.schema,
                                                               **self.sampling(req)}, CachedReply(text, pt, ct))
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
        d = self._rng.uniform(0, min(self.cfg.retry_max_s, self.cfg.retry_base_s * 2 ** attempt))
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
                    self.backend.call(req.messages, self.sampling(req), req.schema), self.cfg.timeout_s * 1.5)
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
            chunk = pending[start:start + self.cfg.concurrency]
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
