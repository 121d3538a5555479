"""OpenAI-compatible fixture servers on 127.0.0.1 for the synth tests (FastAPI + uvicorn in a thread).

- `canned_app`: request-dependent answers in the chat.completions shape for every recipe prompt.
- `fault_app`: the same answers behind a scripted fault list (429, 500, slow, bad JSON, empty, dropped
  connection, dead) and an optional hold that parks request N until released (to kill the client mid-call).
- `model_app`: a real (tiny) HF model answering with greedy `generate`.
Every server counts its hits by a hash of the request body.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

WORDS = (
    "river lantern copper orchid glacier violin pepper harbor meadow falcon canyon marble quartz ember "
    "tundra saffron willow comet basalt nectar prairie cobalt thistle lagoon"
).split()


@dataclass
class State:
    hits: Counter = field(default_factory=Counter)  # body hash -> times seen
    order: list[str] = field(default_factory=list)  # body hashes in arrival order
    wrong: dict[str, int] = field(default_factory=dict)  # cot: problem substring -> wrong answers to give first
    faults: list[str] = field(default_factory=list)  # fault_app: consumed one per request
    hold_at: int | None = None  # fault_app: park this hit number (1-based)
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def total(self) -> int:
        return sum(self.hits.values())


def _tag(text: str, tag: str) -> str | None:
    m = re.search(rf"<{tag}\b[^>]*>\n(.*?)\n</{tag}>", text, re.DOTALL)
    return m.group(1) if m else None


def answer(body: dict, state: State) -> str:
    """What a cooperative teacher would say to one of the recipe prompts."""
    msgs = body["messages"]
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
    user = msgs[-1]["content"]
    if system.startswith("You write worked solutions"):
        problem, known = _tag(user, "problem") or "", (_tag(user, "known_answer") or "").strip()
        for needle, n_wrong in state.wrong.items():
            if needle in problem and (n_wrong < 0 or (body.get("seed") or 0) < n_wrong):
                return f"Let me think.\nAnswer: {known}0"  # a wrong final answer
        return f"First, read the problem.\nThen compute step by step.\nAnswer: {known}"
    if system.startswith("You study example rows"):
        return "Policy: short instructions with one-line answers that start with 'Answer:'."
    if system.startswith("You write new training examples"):
        k = int(re.search(r"Write (\d+) new examples", user).group(1))
        batch = int(re.search(r"\(batch (\d+)\)", user).group(1))
        shown = json.loads(_tag(user, "examples"))
        rng = random.Random(batch)
        exs = [
            {
                "input": f"Describe {' and '.join(rng.sample(WORDS, 3))} ({batch}.{i})",
                "output": f"Answer: {rng.choice(WORDS)}",
            }
            for i in range(k - 2)
        ]
        exs.append({"input": shown[0]["input"], "output": "Answer: copy"})  # near-duplicate of a seed
        exs.append({"input": f"Name {rng.choice(WORDS)} {batch}", "output": "no prefix"})  # fails the format
        return json.dumps({"examples": exs})
    if system.startswith("You write question-answer pairs"):
        doc = _tag(user, "document") or ""
        k = int(re.search(r"Write (\d+) question-answer pairs", user).group(1))
        sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n", doc) if len(s.split()) >= 5]
        pairs = [
            {"question": f"What does the text say about '{' '.join(s.split()[:4])}'?", "answer": s}
            for s in sents[: k - 1]
        ]
        pairs.append({"question": "What is the moon made of?", "answer": "The moon is made of green cheese."})
        return json.dumps({"pairs": pairs})
    if system.startswith("You grade training data"):
        conv = json.loads(_tag(user, "conversation"))
        reply = conv[-1]["content"]
        doc = _tag(user, "document")
        if doc is not None:
            score = 5 if reply in doc else 1
        else:
            score = 5 if len(reply) >= 8 else 2
        return json.dumps({"score": score, "reason": "fixture rule"})
    return f"Echo: {user}"


def completion(text: str, body: dict) -> dict:
    words_in = sum(len(m["content"].split()) for m in body["messages"])
    return {
        "id": "chatcmpl-fixture",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {
            "prompt_tokens": words_in,
            "completion_tokens": len(text.split()),
            "total_tokens": words_in + len(text.split()),
        },
    }


def body_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def _base_app(state: State) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "fixture", "object": "model"}]}

    return app


def canned_app(state: State) -> FastAPI:
    app = _base_app(state)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        h = body_hash(raw)
        state.hits[h] += 1
        state.order.append(h)
        body = json.loads(raw)
        return completion(answer(body, state), body)

    return app


async def _broken_stream():
    yield b'{"id": "chatcmpl-fixture", "choices": ['
    raise ConnectionAbortedError("fixture: connection dropped mid-reply")


def fault_app(state: State) -> FastAPI:
    app = _base_app(state)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        h = body_hash(raw)
        state.hits[h] += 1
        state.order.append(h)
        if state.hold_at is not None and state.total == state.hold_at:
            state.held.set()
            while not state.release.is_set():
                await asyncio.sleep(0.05)
        fault = (
            state.faults.pop(0) if state.faults and state.faults[0] != "dead" else ("drop" if state.faults else None)
        )
        body = json.loads(raw)
        if fault == "429":
            return JSONResponse({"error": {"message": "rate limited"}}, status_code=429, headers={"retry-after": "0"})
        if fault == "500":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if fault == "slow":
            await asyncio.sleep(3.0)
        if fault == "badjson":
            return Response(b'{"id": "x", "choices": [', media_type="application/json")
        if fault == "drop":
            return StreamingResponse(_broken_stream(), media_type="application/json")
        if fault == "empty":
            return completion("", body)
        return completion(answer(body, state), body)

    return app


def model_app(model_dir, state: State) -> FastAPI:
    """A real tiny causal LM behind /v1/chat/completions (greedy; special tokens never generated)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    suppress = [tok.convert_tokens_to_ids(t) for t in ("<unk>", "<|im_start|>", "<|im_end|>")]
    app = _base_app(state)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        state.hits[body_hash(raw)] += 1
        body = json.loads(raw)
        ids = tok.apply_chat_template(
            body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(
                **ids,
                max_new_tokens=min(body.get("max_tokens") or 8, 8),
                do_sample=False,
                suppress_tokens=suppress,
                pad_token_id=tok.pad_token_id,
            )
        text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        return completion(text, body)

    return app


class Server:
    """uvicorn on a free 127.0.0.1 port in a daemon thread; `url` ends in /v1."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
