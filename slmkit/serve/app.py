"""The HTTP app: OpenAI-compatible routes, the SageMaker contract, health and Prometheus metrics.

`create_app(engine)` builds a FastAPI app around a loaded `Engine`; uvicorn serves it (`slm serve`), tests drive
it with an ASGI client. Every error leaves in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmkit.serve.engine import Engine, EngineStopped, Event, PromptTooLong, QueueFull, SamplingParams
from slmkit.serve.schemas import (
    APIError,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ErrorResponse,
    InvocationRequest,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
)

OPEN_ROUTES = ("/ping", "/health")  # reachable without the API key (load balancers, SageMaker)
KNOWN_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/invocations", "/ping", "/health", "/metrics")
ERRORS = {k: {"model": ErrorResponse} for k in (400, 401, 404, 413, 429, 503, 504)}


class Guard:
    """ASGI middleware: request metrics, bearer-key auth, and the request body size limit."""

    def __init__(self, app, engine: Engine, api_key: str | None, max_body: int):
        self.app, self.engine, self.api_key, self.max_body = app, engine, api_key, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, start, status = scope["path"], time.monotonic(), {"code": 500}
        route = path if path in KNOWN_ROUTES else "other"

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if self.api_key and path not in OPEN_ROUTES and not self._authorised(scope):
                err = APIError(
                    401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
                )
                return await _send_error(err, send_status)
            receive = await self._buffer_body(scope, receive)
            if receive is None:
                err = APIError(413, f"request body is larger than {self.max_body} bytes", code="request_too_large")
                return await _send_error(err, send_status)
            await self.app(scope, receive, send_status)
        finally:
            m = self.engine.metrics
            m.inc("requests_total", route=route, status=str(status["code"]))
            if status["code"] >= 400:
                m.inc("errors_total", route=route, status=str(status["code"]))
            m.observe("http_request_duration_seconds", time.monotonic() - start, route=route)

    def _authorised(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.api_key.encode())

    async def _buffer_body(self, scope, receive):
        """Read the whole body (refusing more than max_body bytes); return a receive that replays it, or None."""
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return None
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return None
            more = message.get("more_body", False)
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        return replay


async def _send_error(err: APIError, send) -> None:
    body = json.dumps(err.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(engine: Engine, api_key: str | None = None) -> FastAPI:
    """The FastAPI app around `engine`. api_key None reads the env var named by engine.cfg.api_key_env."""
    cfg = engine.cfg
    api_key = api_key if api_key is not None else os.environ.get(cfg.api_key_env) or None

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        engine.start()
        yield
        # uvicorn has already waited (timeout_graceful_shutdown) for in-flight responses; cancel what is left.
        await asyncio.to_thread(engine.stop, 0.0)

    app = FastAPI(
        title="slmkit server",
        version="1",
        lifespan=lifespan,
        description="OpenAI-compatible and SageMaker-compatible inference for an slmkit model.",
    )
    app.state.engine = engine
    app.add_middleware(Guard, engine=engine, api_key=api_key, max_body=cfg.max_body_bytes)
    engine.metrics.describe("http_request_duration_seconds", "histogram", "HTTP request duration by route")

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        message = f"{'.'.join(loc) + ': ' if loc else ''}{err.get('msg', 'invalid request')}"
        return JSONResponse(APIError(400, message, param=".".join(loc) or None, code="invalid_value").body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, str(exc.detail), type=kind).body(), exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(_request, exc: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}", type="server_error").body(), 500)

    def check_model(name: str) -> None:
        if name != engine.name:
            raise APIError(
                404,
                f"the model '{name}' does not exist; this server serves '{engine.name}'",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )

    def to_params(body, default_max: int) -> SamplingParams:
        wanted = body.wanted_tokens() or default_max
        if wanted > cfg.max_tokens:
            raise APIError(
                400,
                f"max_tokens is {wanted}; this server allows at most {cfg.max_tokens}",
                param="max_tokens",
                code="invalid_value",
            )
        return SamplingParams(
            max_tokens=wanted,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop,
            seed=body.seed,
            ignore_eos=body.ignore_eos,
        )

    def submit(ids: list[int], params: SamplingParams, param: str):
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def sink(ev: Event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:  # the event loop has closed (server stopping): nobody is listening
                pass

        try:
            return engine.submit(ids, params, sink), events
        except QueueFull as e:
            raise APIError(
                429, f"the server is busy ({e}); retry later", type="rate_limit_error", code="rate_limit_exceeded"
            ) from None
        except EngineStopped as e:
            raise APIError(503, str(e), type="server_error", code="shutting_down") from None
        except PromptTooLong as e:
            raise APIError(400, str(e), param=param, code="context_length_exceeded") from None

    async def collect(req, events: asyncio.Queue, request: Request) -> tuple[str, Event]:
        """Wait for the whole reply; a client that goes away cancels the generation."""
        watcher = asyncio.create_task(_cancel_on_disconnect(request, req))
        parts: list[str] = []
        try:
            while (ev := await events.get()).kind == "delta":
                parts.append(ev.text)
        finally:
            watcher.cancel()
            req.cancel()
        if ev.kind == "error":
            raise _generation_error(ev)
        return "".join(parts), ev

    def chat_messages(body: ChatCompletionRequest) -> list[int]:
        try:
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
            ]
            return engine.encode_chat(messages)
        except Exception as e:  # unsupported content parts, or a template that rejects the role order
            raise APIError(
                400, f"cannot render messages with the model's chat template: {e}", param="messages"
            ) from None

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model)
        params = to_params(body, cfg.default_max_tokens)
        req, events = submit(chat_messages(body), params, "messages")
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream_chat(req, events, engine.name, usage), media_type="text/event-stream")
        text, ev = await collect(req, events, request)
        return ChatCompletion(
            model=engine.name,
            usage=_usage(ev),
            choices=[ChatChoice(message=ResponseMessage(content=text), finish_reason=ev.finish_reason)],
        )

    @app.post("/v1/completions", response_model=Completion, responses=ERRORS)
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        params = to_params(body, 16)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "only one prompt per request is supported", param="prompt")
            prompt = prompt[0]
        ids = engine.encode_text(prompt) if isinstance(prompt, str) else list(prompt)
        if any(not 0 <= i < len(engine.tok) for i in ids):
            raise APIError(400, "prompt token ids must be in the vocabulary", param="prompt")
        req, events = submit(ids, params, "prompt")
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _stream_completion(req, events, engine.name, usage), media_type="text/event-stream"
            )
        text, ev = await collect(req, events, request)
        return Completion(
            model=engine.name, usage=_usage(ev), choices=[CompletionChoice(text=text, finish_reason=ev.finish_reason)]
        )

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS)
    async def models():
        return ModelList(data=[ModelCard(id=engine.name, created=engine.created)])

    @app.post("/invocations", responses=ERRORS)
    async def invocations(body: InvocationRequest, request: Request):
        """SageMaker: OpenAI-style `messages` (answered as a chat completion) or HF-style `inputs` + `parameters`."""
        p = body.parameters
        wanted = p.max_new_tokens or cfg.default_max_tokens
        if wanted > cfg.max_tokens:
            raise APIError(
                400,
                f"max_new_tokens is {wanted}; this server allows at most {cfg.max_tokens}",
                param="parameters.max_new_tokens",
            )
        temperature = p.temperature if p.do_sample is not False else 0.0
        params = SamplingParams(max_tokens=wanted, temperature=temperature, top_p=p.top_p, stop=p.stop, seed=p.seed)
        if body.messages:
            ids = chat_messages(ChatCompletionRequest(model=engine.name, messages=body.messages))
        elif body.inputs:
            ids = engine.encode_text(body.inputs)
        else:
            raise APIError(400, "send 'messages' (a chat) or 'inputs' (a prompt)", param="inputs")
        req, events = submit(ids, params, "inputs")
        text, ev = await collect(req, events, request)
        if body.messages:
            return ChatCompletion(
                model=engine.name,
                usage=_usage(ev),
                choices=[ChatChoice(message=ResponseMessage(content=text), finish_reason=ev.finish_reason)],
            )
        return [{"generated_text": text, "details": {"finish_reason": ev.finish_reason, **_usage(ev).model_dump()}}]

    @app.get("/ping")
    async def ping():
        ok = engine._running and engine._accepting
        return Response(status_code=200 if ok else 503)

    @app.get("/health")
    async def health():
        ok = engine._running and engine._accepting
        body = {
            "status": "ok" if ok else "unavailable",
            "model": engine.name,
            "backend": engine.runner.kind,
            "batching": engine.batching,
            "max_batch_size": engine.max_batch,
            "queue_depth": len(engine._waiting),
            "active_sequences": len(engine._active),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def _usage(ev: Event) -> Usage:
    return Usage(
        prompt_tokens=ev.prompt_tokens,
        completion_tokens=ev.completion_tokens,
        total_tokens=ev.prompt_tokens + ev.completion_tokens,
    )


def _generation_error(ev: Event) -> APIError:
    if ev.code == "timeout":
        return APIError(504, "the request timed out", type="server_error", code="timeout")
    if ev.code == "shutdown":
        return APIError(
            503, "the server shut down before the reply was finished", type="server_error", code="shutting_down"
        )
    return APIError(500, "generation failed", type="server_error", code="internal_error")


async def _cancel_on_disconnect(request: Request, req) -> None:
    """Block until the client disconnects (the body is already read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            req.cancel()
            return


async def _events(req, events: asyncio.Queue) -> AsyncIterator[Event]:
    """The request's events until 'done' or 'error'; closing early (client gone) cancels the generation."""
    try:
        while True:
            ev = await events.get()
            yield ev
            if ev.kind != "delta":
                return
    finally:
        req.cancel()


async def _stream_chat(req, events, model: str, include_usage: bool) -> AsyncIterator[str]:
    base = {
        "id": f"chatcmpl-{req.id}-{int(time.time())}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    yield _sse(chunk({"role": "assistant", "content": ""}))
    async for ev in _events(req, events):
        if ev.kind == "delta":
            yield _sse(chunk({"content": ev.text}))
        elif ev.kind == "done":
            yield _sse(chunk({}, ev.finish_reason))
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(ev).model_dump()})
        else:
            yield _sse(_generation_error(ev).body())
    yield _sse("[DONE]")


async def _stream_completion(req, events, model: str, include_usage: bool) -> AsyncIterator[str]:
    base = {
        "id": f"cmpl-{req.id}-{int(time.time())}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(text: str, finish: str | None = None) -> dict:
        return {**base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    async for ev in _events(req, events):
        if ev.kind == "delta":
            yield _sse(chunk(ev.text))
        elif ev.kind == "done":
            yield _sse(chunk("", ev.finish_reason))
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(ev).model_dump()})
        else:
            yield _sse(_generation_error(ev).body())
    yield _sse("[DONE]")
