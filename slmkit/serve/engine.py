"""The serving engine: a scheduler thread doing continuous batching over one shared KV cache.

Requests wait in a bounded queue. Each scheduler iteration admits waiting requests while batch slots and the
prefill budget allow (their prompts are prefilled together and join the running batch), then decodes every live
sequence by one token. Finished, cancelled and timed-out sequences leave the batch at once, so a slot frees up
without waiting for the rest of the batch. Consumers get `Event`s through a callback: a queue for threads
(`generate_stream`), `loop.call_soon_threadsafe` for asyncio (the HTTP app).

The model work is behind a `Runner` (prefill new rows, decode one token for every row, drop rows): `TorchRunner`
in torch_runner.py (one batched forward pass per step), `OnnxRunner` in onnx_runner.py (onnxruntime-genai, one
generator per sequence). The scheduler, limits, stops and events are the same for both; load.py picks and loads one.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from slmkit.config.serve import ServeConfig
from slmkit.serve.metrics import Metrics
from slmkit.serve.text import TextTracker

log = logging.getLogger("slmkit")


# Below this, sampling picks the argmax anyway (float32 softmax is one-hot), and logits / temperature overflow to inf.
MIN_SAMPLING_TEMPERATURE = 1e-5


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_SAMPLING_TEMPERATURE


@dataclass
class Event:
    """'delta' (text), 'done' (finish_reason, usage) or 'error' (code: timeout | shutdown | internal)."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    code: str | None = None


@dataclass
class Result:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class QueueFull(Exception):
    """The wait queue is at max_queue."""


class EngineStopped(Exception):
    """The engine is draining or stopped and takes no new requests."""


class PromptTooLong(ValueError):
    """The prompt exceeds max_prompt_tokens or leaves no room in the model's context."""


_ids = itertools.count(1)


class Request:
    """One generation in flight. `cancel()` is safe from any thread; the slot is freed at the next step."""

    def __init__(
        self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Event], None], tokenizer, timeout_s: float
    ):
        self.id = next(_ids)
        self.prompt_ids, self.params, self.sink = prompt_ids, params, sink
        self.tracker = TextTracker(tokenizer, params.stop)
        self.created = time.monotonic()
        self.deadline = self.created + timeout_s
        self.first_token_at: float | None = None
        self.next_token: int | None = None
        self.generated = 0
        self.cancelled = False
        self.finished = False
        self.seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.generator = None if params.greedy else torch.Generator().manual_seed(self.seed)

    def cancel(self) -> None:
        self.cancelled = True


class Runner(Protocol):
    """The model side of the engine. Rows are in the order of the engine's active requests."""

    model: Any
    kind: str  # backend name: torch | onnx
    batching: bool  # one forward pass serves all rows (else rows are stepped one after another)
    max_sequences: int  # rows it can hold at once
    eos_ids: set[int]
    context: int | None  # positions the model can attend to, None if unknown

    def prefill(self, requests: list[Request]) -> list[int]:
        """Add `requests` as new rows after the current ones; return each one's first token."""

    def decode(self, requests: list[Request]) -> list[int]:
        """Feed every row its last token (`r.next_token`); return the next token of each row."""

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows, in this order."""

    def reset(self) -> None:
        """Drop every row (after a failed step)."""


class Engine:
    """Runner + tokenizer + scheduler thread. Create with `serve.load.load_engine(target, cfg)`; `start()` before use."""

    def __init__(self, runner: Runner, tokenizer, name: str, cfg: ServeConfig | None = None, backend_reason: str = ""):
        self.runner, self.tok, self.name = runner, tokenizer, name
        self.backend_reason = backend_reason  # why this backend serves the target (serve.load.pick_backend)
        self.model = runner.model
        self.cfg = cfg or ServeConfig()
        self.metrics = Metrics()
        self.created = int(time.time())
        self.eos_ids = runner.eos_ids | ({tokenizer.eos_token_id} - {None})
        self.context = runner.context
        self.batching = runner.batching
        self.max_batch = min(self.cfg.max_batch_size, runner.max_sequences)
        self._waiting: deque[Request] = deque()
        self._active: list[Request] = []
        self._admitting: list[Request] = []  # popped from the queue, being prefilled
        self._cond = threading.Condition()
        self._accepting = True
        self._running = False
        self._thread: threading.Thread | None = None
        self.metrics.gauge("queue_depth", lambda: len(self._waiting))
        self.metrics.gauge("active_sequences", lambda: len(self._active))
        self.metrics.gauge("tokens_per_second", self.metrics.tokens_per_second)
        for name_, kind, text in [
            ("requests_total", "counter", "HTTP requests by route and status"),
            ("errors_total", "counter", "HTTP responses with status >= 400"),
            ("queue_depth", "gauge", "requests waiting for a batch slot"),
            ("active_sequences", "gauge", "sequences in the running batch"),
            ("tokens_per_second", "gauge", "generated tokens per second, last 10 s"),
            ("generated_tokens_total", "counter", "completion tokens generated"),
            ("prompt_tokens_total", "counter", "prompt tokens prefilled"),
            ("time_to_first_token_seconds", "histogram", "queue + prefill time"),
            ("request_latency_seconds", "histogram", "submit to last token"),
            ("finished_total", "counter", "finished generations by reason"),
        ]:
            self.metrics.describe(name_, kind, text)

    # ---- requests -------------------------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict]) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        return self.tok(text)["input_ids"]

    def check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> SamplingParams:
        """Reject prompts over the limits; shrink max_tokens to what fits in the model's context."""
        n = len(prompt_ids)
        if n == 0:
            raise PromptTooLong("the prompt is empty")
        if n > self.cfg.max_prompt_tokens:
            raise PromptTooLong(f"the prompt has {n} tokens; this server accepts at most {self.cfg.max_prompt_tokens}")
        if self.context is not None:
            if n >= self.context:
                raise PromptTooLong(f"the prompt has {n} tokens; the model's context is {self.context}")
            params.max_tokens = min(params.max_tokens, self.context - n)
        return params

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Event], None]) -> Request:
        """Queue a generation; events go to `sink` from the scheduler thread. Raises QueueFull, EngineStopped."""
        params = self.check_prompt(prompt_ids, params)
        req = Request(prompt_ids, params, sink, self.tok, self.cfg.request_timeout_s)
        with self._cond:
            if not self._accepting or not self._running:
                raise EngineStopped("the server is shutting down")
            free_slots = max(0, self.max_batch - len(self._active) - len(self._admitting))
            if len(self._waiting) >= self.cfg.max_queue + free_slots:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(req)
            self._cond.notify()
        return req

    def generate_stream(self, messages: list[dict], params: SamplingParams | None = None) -> Iterator[str]:
        """Yield reply text pieces for a chat (for `slm chat` and scripts). Closing the iterator cancels it."""
        yield from self._stream(self.encode_chat(messages), params or SamplingParams())

    def _stream(self, prompt_ids: list[int], params: SamplingParams, out: dict | None = None) -> Iterator[str]:
        self.start()
        events: queue.Queue[Event] = queue.Queue()
        req = self.submit(prompt_ids, params, events.put)
        try:
            while True:
                ev = events.get()
                if ev.kind == "delta":
                    yield ev.text
                elif ev.kind == "error":
                    raise RuntimeError(f"generation failed: {ev.code}")
                else:
                    if out is not None:
                        out["event"] = ev
                    return
        finally:
            req.cancel()

    def generate(
        self, messages: list[dict] | None = None, params: SamplingParams | None = None, prompt: str | None = None
    ) -> Result:
        """Blocking generation for a chat (`messages`) or raw text (`prompt`)."""
        ids = self.encode_chat(messages) if messages is not None else self.encode_text(prompt or "")
        out: dict = {}
        text = "".join(self._stream(ids, params or SamplingParams(), out))
        ev = out["event"]
        return Result(text, ev.finish_reason, ev.prompt_tokens, ev.completion_tokens)

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        with self._cond:
            if self._running:
                return self
            self._running, self._accepting = True, True
        self._thread = threading.Thread(target=self._loop, name="slm-scheduler", daemon=True)
        self._thread.start()
        return self

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._active and not self._admitting

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop taking requests, let in-flight ones finish for up to `drain_s`, then cancel the rest and join."""
        with self._cond:
            self._accepting = False
        end = time.monotonic() + drain_s
        while not self.idle and time.monotonic() < end:
            time.sleep(0.05)
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # ---- scheduler thread -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while self._running and self.idle:
                    self._cond.wait()
                if not self._running:
                    break
                admit = self._admitting = self._admissions()
            try:
                if admit:
                    self._prefill(admit)
                self._drop_finished()
                if self._active:
                    self._decode()
                    self._drop_finished()
            except Exception:  # a bug or OOM must not leave clients hanging: fail this batch, keep serving
                log.exception("generation step failed")
                for r in {id(r): r for r in [*self._active, *admit]}.values():
                    self._emit_error(r, "internal")
                self._active, self._admitting = [], []
                self.runner.reset()
        with self._cond:
            for r in [*self._waiting, *self._active]:
                self._emit_error(r, "shutdown")
            self._waiting.clear()
            self._active = []

    def _admissions(self) -> list[Request]:
        """Pop waiting requests that fit the free slots and the prefill budget (at least one when a slot is free)."""
        now, admit, budget = time.monotonic(), [], self.cfg.max_prefill_tokens
        while self._waiting and len(self._active) + len(admit) < self.max_batch:
            r = self._waiting[0]
            if r.cancelled or now > r.deadline:
                self._waiting.popleft()
                if r.cancelled:
                    self._finish(r, None)
                else:
                    self._emit_error(r, "timeout")
                continue
            if admit and len(r.prompt_ids) > budget:
                break
            budget -= len(self._waiting.popleft().prompt_ids)
            admit.append(r)
        return admit

    def _prefill(self, admit: list[Request]) -> None:
        tokens = self.runner.prefill(admit)
        with self._cond:
            self._active.extend(admit)
            self._admitting = []
        self.metrics.inc("prompt_tokens_total", sum(len(r.prompt_ids) for r in admit))
        now = time.monotonic()
        for r, tok in zip(admit, tokens):
            r.first_token_at = now
            self.metrics.observe("time_to_first_token_seconds", now - r.created)
            self._advance(r, tok)

    def _decode(self) -> None:
        for r, tok in zip(self._active, self.runner.decode(self._active)):
            self._advance(r, tok)

    def _advance(self, r: Request, tok: int) -> None:
        """Account one new token of `r`: emit its text, or finish on EOS / stop sequence / max_tokens."""
        r.next_token = tok
        r.generated += 1
        self.metrics.tokens_generated(1)
        if tok in self.eos_ids and not r.params.ignore_eos:
            r.generated -= 1  # the end-of-turn token is not part of the reply (OpenAI counts none)
            return self._finish(r, "stop")
        text = r.tracker.add(tok)
        if r.tracker.stopped:
            return self._finish(r, "stop", text)
        if r.generated >= r.params.max_tokens:
            return self._finish(r, "length", text + r.tracker.flush())
        if text:
            r.sink(Event("delta", text))

    def _finish(self, r: Request, reason: str | None, text: str = "") -> None:
        """Emit the last text and 'done' (reason None = cancelled: nothing is sent)."""
        r.finished = True
        if reason is None:
            self.metrics.inc("finished_total", reason="cancelled")
            return
        if text:
            r.sink(Event("delta", text))
        r.sink(Event("done", finish_reason=reason, prompt_tokens=len(r.prompt_ids), completion_tokens=r.generated))
        self.metrics.inc("finished_total", reason=reason)
        self.metrics.inc("generated_tokens_total", r.generated)
        self.metrics.observe("request_latency_seconds", time.monotonic() - r.created)

    def _emit_error(self, r: Request, code: str) -> None:
        r.finished = True
        self.metrics.inc("finished_total", reason=code)
        r.sink(Event("error", code=code))

    def _drop_finished(self) -> None:
        now = time.monotonic()
        for r in self._active:
            if not r.finished and r.cancelled:
                self._finish(r, None)
            elif not r.finished and now > r.deadline:
                self._emit_error(r, "timeout")
        keep = [i for i, r in enumerate(self._active) if not r.finished]
        if len(keep) != len(self._active):
            self.runner.keep(keep)
            self._active = [self._active[i] for i in keep]
