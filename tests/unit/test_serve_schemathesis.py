"""Schemathesis fuzzing of the server's OpenAPI schema, in process over ASGI on the tiny random model: no 5xx.

Every operation gets schema-valid (positive) requests, and the POST routes also schema-violating (negative)
ones. Generated bodies carry the served model name, so that they reach generation instead of a 404 (a wrong
name is tested in test_serve_app).
Hypothesis runs derandomized with a bounded number of examples, so the test is repeatable and takes seconds.
The requests that found real 5xx bugs are kept below as plain regression cases.
"""

from __future__ import annotations

import pytest

from slmkit.config.serve import ServeConfig
from slmkit.serve.app import create_app
from slmkit.serve.load import load_engine

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis brings hypothesis)
from schemathesis.checks import not_a_server_error  # noqa: E402

EXAMPLES = 50  # per operation and mode (fewer miss known bugs); up to ~0.2 s each on the tiny model
POST = ["POST /v1/chat/completions", "POST /v1/completions", "POST /invocations"]
GET = ["GET /v1/models", "GET /ping", "GET /health", "GET /metrics"]


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    cfg = ServeConfig(max_tokens=16, default_max_tokens=4, max_prompt_tokens=64, max_body_bytes=20_000, max_queue=8)
    engine = load_engine(str(tiny_model_dir), cfg)
    app = create_app(engine, api_key="")
    # schemathesis' pytest plugin ends the app's lifespan (engine.stop) after each test and starts it again
    # (engine.start) on the next request, so every test begins with a running engine
    yield engine, app, schemathesis.openapi.from_asgi("/openapi.json", app)
    engine.stop()


@pytest.mark.parametrize(
    "label, mode", [(op, m) for op in POST for m in ("positive", "negative")] + [(op, "positive") for op in GET]
)
def test_fuzzed_requests_never_get_a_server_error(served, label, mode):
    engine, _, schema = served
    operation = schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is missing from the OpenAPI schema"
    strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    failed_before = engine.metrics.counter_value("finished_total", reason="internal")

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(case=strategy)
    def fuzz(case) -> None:
        if isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = engine.name
        case.call_and_validate(checks=[not_a_server_error])

    fuzz()
    assert engine.metrics.counter_value("finished_total", reason="internal") == failed_before  # no step failed


@pytest.mark.parametrize(
    "path, body, status",
    [
        # seeds beyond 64 bits overflowed torch.Generator.manual_seed
        ("/v1/chat/completions", {"seed": 2**70, "temperature": 1}, 400),
        (
            "/invocations",
            {"inputs": "hello", "parameters": {"seed": -(2**70), "do_sample": True, "temperature": 1}},
            400,
        ),
        # logits / 1e-38 overflowed to inf and softmax gave NaN; a top_p that rounds to 0 in float32 dropped every token
        ("/v1/chat/completions", {"temperature": 1.1754943508222875e-38}, 200),
        ("/v1/chat/completions", {"temperature": 2, "top_p": 5e-324, "stream": True}, 200),
        # lone surrogate escapes are valid JSON but not text: the tokenizer (and JSON error replies) failed on them
        ("/v1/completions", {"prompt": "a\udaaa b", "max_tokens": 3}, 400),
        ("/invocations", {"inputs": "a\udaaa b"}, 400),
        ("/v1/chat/completions", {"model": "\udaaa"}, 400),
    ],
)
def test_requests_that_once_got_a_500(served, path, body, status):
    import json

    from fastapi.testclient import TestClient

    engine, app, _ = served
    if path != "/invocations":
        body = {"model": engine.name, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, **body}
    raw = json.dumps(body).encode()  # ensure_ascii keeps lone surrogates as \\u escapes, as a client would send them
    with TestClient(app, raise_server_exceptions=False) as client:  # runs the lifespan: the engine is started
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
