"""A real uvicorn server (`python -m slmkit.serve.cli`) on 127.0.0.1, driven by the official `openai` client.

Most tests use a tiny random llama (fast); one uses the real default model. Covered: chat, completions,
streaming, /invocations, auth on/off, 429 on a full queue, a client leaving mid-stream, SIGTERM drain, 64
concurrent streams, and the onnx backend (onnxruntime-genai) on an int4 export of a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration
LONG = {"ignore_eos": True}  # vLLM-style extension: keep going past EOS so requests last long enough to observe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(target: str, *args: str, env: dict | None = None, startup_s: float = 180):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "slmkit.serve.cli", target, "--port", str(port), *args],
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited during startup:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{base}/ping", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("server did not start")
        time.sleep(0.3)
    try:
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def long_tiny(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a 4096-token context (rotary positions need no new weights), served as 'tiny'."""
    dest = tmp_path_factory.mktemp("serve") / "tiny"
    shutil.copytree(tiny_model_dir, dest)
    cfg = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 4096}))
    return dest


@pytest.fixture(scope="module")
def tiny(long_tiny):
    with server(str(long_tiny), "--max-tokens", "4000", "--max-batch-size", "16") as (base, _):
        yield base


def metric(base: str, name: str, headers: dict | None = None) -> float:
    text = httpx.get(f"{base}/metrics", headers=headers).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(f"slm_{name}"))


def wait_for(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


MSGS = [{"role": "user", "content": "what is the weather today"}]


def test_openai_client_chat_completions_and_streaming(tiny):
    client = openai.OpenAI(base_url=f"{tiny}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    chat = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=9, temperature=0, extra_body=LONG)
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 9
    stream = client.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=9, temperature=0, stream=True, extra_body=LONG
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    comp = client.completions.create(
        model="tiny", prompt="play some music", max_tokens=5, temperature=0, extra_body=LONG
    )
    streamed = client.completions.create(
        model="tiny", prompt="play some music", max_tokens=5, temperature=0, stream=True, extra_body=LONG
    )
    assert "".join(c.choices[0].text for c in streamed) == comp.choices[0].text and comp.usage.completion_tokens == 5
    seeded = [
        client.chat.completions.create(
            model="tiny", messages=MSGS, max_tokens=12, temperature=1.0, seed=5, extra_body=LONG
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


def test_sagemaker_invocations(tiny):
    r = httpx.post(f"{tiny}/invocations", json={"inputs": "book a flight", "parameters": {"max_new_tokens": 4}})
    assert r.status_code == 200 and r.json()[0]["details"]["completion_tokens"] <= 4
    r = httpx.post(f"{tiny}/invocations", json={"messages": MSGS, "parameters": {"max_new_tokens": 3}})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None


def test_client_disconnect_frees_the_slot(tiny):
    cancelled = metric(tiny, 'finished_total{reason="cancelled"}')
    with httpx.stream(
        "POST",
        f"{tiny}/v1/chat/completions",
        timeout=30,
        json={"model": "tiny", "messages": MSGS, "max_tokens": 3900, "stream": True, **LONG},
    ) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any(ln.startswith("data: {") for ln in got)
    # 3900 tokens would take many seconds: the slot must be freed long before that
    assert wait_for(lambda: metric(tiny, 'finished_total{reason="cancelled"}') == cancelled + 1)
    assert wait_for(lambda: metric(tiny, "active_sequences") == 0)


def test_64_concurrent_streams_all_complete(tiny):
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, int]:
        stream = await client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": f"set an alarm for {i}"}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=LONG,
        )
        finish, tokens = None, 0
        async for c in stream:
            if c.choices and c.choices[0].finish_reason:
                finish = c.choices[0].finish_reason
            if c.usage:
                tokens = c.usage.completion_tokens
        return finish, tokens

    async def main():
        async with openai.AsyncOpenAI(base_url=f"{tiny}/v1", api_key="x", max_retries=0, timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    results = asyncio.run(main())
    assert results == [("length", 16)] * 64


def test_auth_and_429_when_the_queue_is_full(long_tiny):
    env = {"SLM_API_KEY": "k-123"}
    with server(str(long_tiny), "--max-batch-size", "1", "--max-queue", "1", "--max-tokens", "4000", env=env) as (
        base,
        _,
    ):
        good = openai.OpenAI(base_url=f"{base}/v1", api_key="k-123", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
        assert httpx.get(f"{base}/v1/models").status_code == 401
        assert httpx.get(f"{base}/ping").status_code == 200 and httpx.get(f"{base}/health").status_code == 200
        auth = {"Authorization": "Bearer k-123"}
        stream = good.chat.completions.create(
            model="tiny", messages=MSGS, max_tokens=3900, stream=True, extra_body=LONG
        )
        next(iter(stream))  # the only slot is busy
        queued = threading.Thread(
            target=lambda: good.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2, extra_body=LONG)
        )
        queued.start()
        assert wait_for(lambda: metric(base, "queue_depth", auth) == 1)
        with pytest.raises(openai.RateLimitError) as exc:
            good.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2)
        assert exc.value.body["code"] == "rate_limit_exceeded"
        stream.close()  # leaving frees the slot: the queued request runs
        queued.join(timeout=30)
        assert not queued.is_alive()


def test_sigterm_drains_in_flight_streams(long_tiny):
    with server(str(long_tiny), "--max-tokens", "4000") as (base, proc):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        stream = iter(
            client.chat.completions.create(
                model="tiny",
                messages=MSGS,
                max_tokens=400,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=LONG,
            )
        )
        next(stream)
        proc.send_signal(signal.SIGTERM)
        rest = list(stream)
        assert rest[-1].usage.completion_tokens == 400  # the stream in flight finished after SIGTERM
        # uvicorn re-raises the captured SIGTERM once drained, so the exit status says how it stopped
        assert proc.wait(timeout=40) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/ping", timeout=2)


def test_onnx_backend_serves_a_runs_export(tmp_path_factory, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from tests.unit.test_serve_onnx import tiny_onnx_export

    run = tmp_path / "onnx-run"
    shutil.copytree(tiny_onnx_export(tmp_path_factory), run / "export" / "onnx-int4")
    with server(str(run), "--backend", "onnx", "--max-batch-size", "4") as (base, _):
        assert httpx.get(f"{base}/health").json()["backend"] == "onnx"
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["onnx-run"]
        chat = client.chat.completions.create(
            model="onnx-run", messages=MSGS, max_tokens=9, temperature=0, extra_body=LONG
        )
        assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 9
        stream = client.chat.completions.create(
            model="onnx-run", messages=MSGS, max_tokens=9, temperature=0, stream=True, extra_body=LONG
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == chat.choices[0].message.content

        async def many():  # more streams than slots: they queue, interleave, and all finish
            async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60) as aclient:
                replies = await asyncio.gather(
                    *(
                        aclient.chat.completions.create(
                            model="onnx-run",
                            messages=[{"role": "user", "content": f"set an alarm for {i}"}],
                            max_tokens=6,
                            extra_body=LONG,
                        )
                        for i in range(10)
                    )
                )
            return [(r.choices[0].finish_reason, r.usage.completion_tokens) for r in replies]

        assert asyncio.run(many()) == [("length", 6)] * 10


def test_real_default_model(tmp_path):
    from slmkit.models import resolve_model

    folder = resolve_model("default")
    with server(str(folder), "--served-model-name", "smollm2") as (base, _):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        chat = client.chat.completions.create(
            model="smollm2",
            max_tokens=24,
            temperature=0,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        assert "Paris" in chat.choices[0].message.content
        stream = client.chat.completions.create(
            model="smollm2",
            max_tokens=24,
            temperature=0,
            stream=True,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == chat.choices[0].message.content
