"""The HTTP app through the ASGI test client on the tiny model: OpenAI routes and errors, SageMaker, limits, auth."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from slmkit.config.serve import ServeConfig
from slmkit.serve.app import create_app
from slmkit.serve.engine import SamplingParams
from slmkit.serve.load import load_engine

MSGS = [{"role": "system", "content": "reply with one intent"}, {"role": "user", "content": "play some music"}]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    cfg = ServeConfig(max_tokens=64, max_prompt_tokens=64, max_body_bytes=20_000, default_max_tokens=8)
    eng = load_engine(str(tiny_model_dir), cfg)
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, api_key="")) as c:
        yield c


def assert_openai_error(resp, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def sse_events(text: str) -> list:
    lines = [ln for ln in text.split("\n\n") if ln.strip()]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln[6:]) for ln in lines[:-1]]


def test_chat_completion_matches_engine_and_counts_usage(client, engine, tiny_model_dir):
    body = {"model": engine.name, "messages": MSGS, "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["model"] == engine.name
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)  # independent count of the prompt tokens
    prompt_ids = tok(
        tok.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True), add_special_tokens=False
    )["input_ids"]
    assert out["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": 10,
        "total_tokens": len(prompt_ids) + 10,
    }
    direct = engine.generate(MSGS, SamplingParams(max_tokens=10, ignore_eos=True)).text
    assert choice["message"]["content"] == direct


def test_chat_streaming_sse(client, engine):
    body = {"model": engine.name, "messages": MSGS, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    whole = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    r = client.post("/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == whole
    finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 12


def test_completions_plain_and_streaming(client, engine):
    body = {
        "model": engine.name,
        "prompt": "what is the weather",
        "max_tokens": 7,
        "temperature": 0,
        "ignore_eos": True,
    }
    out = client.post("/v1/completions", json=body).json()
    assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] == 7
    assert (
        out["choices"][0]["text"]
        == engine.generate(prompt="what is the weather", params=SamplingParams(max_tokens=7, ignore_eos=True)).text
    )
    events = sse_events(client.post("/v1/completions", json={**body, "stream": True}).text)
    assert "".join(e["choices"][0]["text"] for e in events) == out["choices"][0]["text"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    by_ids = client.post("/v1/completions", json={**body, "prompt": engine.encode_text("what is the weather")}).json()
    assert by_ids["choices"][0]["text"] == out["choices"][0]["text"]


def test_stop_sequence_over_http(client, engine):
    body = {"model": engine.name, "messages": MSGS, "max_tokens": 20, "temperature": 0, "ignore_eos": True}
    full = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    stop = full.split()[2]
    out = client.post("/v1/chat/completions", json={**body, "stop": stop}).json()
    assert out["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert out["choices"][0]["finish_reason"] == "stop"


def test_models_and_wrong_model(client, engine):
    data = client.get("/v1/models").json()
    assert data["object"] == "list" and [m["id"] for m in data["data"]] == [engine.name]
    r = client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MSGS})
    assert_openai_error(r, 404, param="model", code="model_not_found")


@pytest.mark.parametrize(
    "patch, param",
    [
        ({"messages": None}, "messages"),
        ({"temperature": 5}, "temperature"),
        ({"n": 2}, "n"),
        ({"max_tokens": 65}, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, None),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ],
)
def test_bad_requests_get_openai_errors(client, engine, patch, param):
    body = {"model": engine.name, "messages": MSGS, **patch}
    body = {k: v for k, v in body.items() if v is not None}
    assert_openai_error(client.post("/v1/chat/completions", json=body), 400, param=param)


def test_malformed_json_unknown_route_and_wrong_method(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_openai_error(r, 400)
    assert_openai_error(client.get("/v1/nothing"), 404)
    assert_openai_error(client.get("/v1/chat/completions"), 405)


def test_prompt_and_body_limits(client, engine):
    long = [{"role": "user", "content": "hello " * 100}]  # > max_prompt_tokens (64), < max_body_bytes
    r = client.post("/v1/chat/completions", json={"model": engine.name, "messages": long})
    assert_openai_error(r, 400, param="messages", code="context_length_exceeded")
    huge = [{"role": "user", "content": "a" * 30_000}]
    r = client.post("/v1/chat/completions", json={"model": engine.name, "messages": huge})
    assert_openai_error(r, 413, code="request_too_large")


def test_sagemaker_ping_and_invocations(client, engine):
    assert client.get("/ping").status_code == 200
    r = client.post("/invocations", json={"messages": MSGS, "parameters": {"max_new_tokens": 5}})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    assert r.json()["choices"][0]["message"]["content"] == engine.generate(MSGS, SamplingParams(max_tokens=5)).text
    r = client.post("/invocations", json={"inputs": "what is the weather", "parameters": {"max_new_tokens": 4}})
    out = r.json()
    assert r.status_code == 200 and isinstance(out, list) and "generated_text" in out[0]
    assert out[0]["details"]["completion_tokens"] <= 4
    assert_openai_error(client.post("/invocations", json={"parameters": {}}), 400, param="inputs")


def test_health_and_metrics(client, engine):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == engine.name
    before = engine.metrics.counter_value("requests_total", route="/v1/models", status="200")
    for _ in range(3):
        client.get("/v1/models")
    text = client.get("/metrics").text
    assert engine.metrics.counter_value("requests_total", route="/v1/models", status="200") == before + 3
    assert f'slm_requests_total{{route="/v1/models",status="200"}} {before + 3:g}' in text
    for name in (
        "slm_queue_depth",
        "slm_tokens_per_second",
        "slm_request_latency_seconds_bucket",
        "slm_time_to_first_token_seconds_count",
        "slm_errors_total",
        "slm_generated_tokens_total",
    ):
        assert name in text
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+Inf-]+$')
    bad = [ln for ln in text.splitlines() if ln and not ln.startswith("#") and not sample.match(ln)]
    assert bad == []


def test_auth(engine):
    with TestClient(create_app(engine, api_key="s3cret")) as c:
        assert_openai_error(c.get("/v1/models"), 401, code="invalid_api_key")
        assert_openai_error(c.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
        assert_openai_error(c.get("/metrics"), 401)
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/ping").status_code == 200 and c.get("/health").status_code == 200
        r = c.post("/invocations", json={"inputs": "hello", "parameters": {"max_new_tokens": 2}})
        assert_openai_error(r, 401)


def test_cli_config_precedence_and_missing_target(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from slmkit.errors import SlmError
    from slmkit.serve import cli

    yml = tmp_path / "build.yaml"
    yml.write_text("serve:\n  port: 9000\n  max_queue: 5\n  max_batch_size: 4\n")
    cfg = cli.serve_config(yml, {"port": 9100, "host": None}, environ={"SLM_SERVE__MAX_QUEUE": "7"})
    assert (cfg.port, cfg.max_queue, cfg.max_batch_size, cfg.host) == (9100, 7, 4, "127.0.0.1")
    yml.write_text("serve:\n  max_queu: 5\n")
    with pytest.raises(SlmError, match="max_queu"):
        cli.serve_config(yml, {})
    monkeypatch.setattr(cli, "SAGEMAKER_MODEL_DIR", tmp_path / "no-such-dir")
    from slmkit.cli import app

    result = CliRunner().invoke(app, ["serve"])
    assert isinstance(result.exception, SlmError) and "no model to serve" in result.exception.message
