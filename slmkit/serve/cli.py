"""The serve commands: `slm serve RUN_OR_MODEL` (the OpenAI/SageMaker-compatible server, with uvicorn) and
`slm chat RUN_OR_MODEL` (the same engine in the terminal).

Inside a SageMaker container (`docker run IMAGE serve`, model files in /opt/ml/model) `slm serve` with no target
serves /opt/ml/model on 0.0.0.0:8080 (or $SAGEMAKER_BIND_TO_PORT), as the SageMaker hosting contract requires.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from slmkit.config.serve import ServeConfig
from slmkit.errors import SlmError
from slmkit.log import setup_logging
from slmkit.options import run_app

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
log = logging.getLogger("slmkit")


def sagemaker_layout(model_dir: Path | None = None) -> bool:
    return (model_dir or SAGEMAKER_MODEL_DIR).is_dir()


def serve_config(config: Path | None, flags: dict, environ: dict[str, str] | None = None) -> ServeConfig:
    """The `serve` section through the one precedence: defaults < YAML < env SLM_SERVE__* < these flags."""
    from slmkit.config import load_config

    return load_config(config, {"serve": {k: v for k, v in flags.items() if v is not None}}, environ).serve


def run_server(target: str, cfg: ServeConfig) -> None:
    """Load the model, build the app and serve until SIGTERM/SIGINT (in-flight requests drain first)."""
    import uvicorn

    from slmkit.serve.app import create_app
    from slmkit.serve.load import load_engine

    engine = load_engine(target, cfg)
    key = os.environ.get(cfg.api_key_env) or None
    app = create_app(engine, api_key=key)
    log.info(
        "serving '%s' on http://%s:%d (backend: %s, %s; batching: %s, max batch %d, auth: %s)",
        engine.name,
        cfg.host,
        cfg.port,
        engine.runner.kind,
        engine.backend_reason,
        engine.batching,
        engine.max_batch,
        f"${cfg.api_key_env}" if key else "off",
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            log_level="warning",
            timeout_graceful_shutdown=cfg.drain_timeout_s,
            timeout_keep_alive=5,
        )
    )
    server.run()


def serve(
    target: Optional[str] = typer.Argument(
        None,
        metavar="RUN_OR_MODEL",
        help="run folder, model or ONNX export folder, registered name "
        "or model name; omitted inside a SageMaker container: "
        "/opt/ml/model",
    ),
    host: Optional[str] = typer.Option(None, "--host", help="interface to bind (default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, "--port", help="port (default 8000; SageMaker: 8080)"),
    backend: Optional[str] = typer.Option(
        None,
        "--backend",
        help="auto (default: the run's fastest verified export whose runtime is installed: onnx, then gguf via "
        "llama-cpp-python; else torch), torch, onnx or gguf (an export folder, or a run's export)",
    ),
    api_key_env: Optional[str] = typer.Option(
        None, "--api-key-env", help="env var with the bearer key (default SLM_API_KEY)"
    ),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="id in /v1/models"),
    max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size"),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", help="torch backend: auto (default: measured on this CPU), float32 or bfloat16"
    ),
    pack_weights: Optional[bool] = typer.Option(
        None, "--pack-weights/--no-pack-weights", help="torch on CPU: oneDNN-packed Linear weights (default on)"
    ),
    max_queue: Optional[int] = typer.Option(None, "--max-queue", help="waiting requests before HTTP 429"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="cap on a request's max_tokens"),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens"),
    request_timeout_s: Optional[float] = typer.Option(None, "--timeout", help="seconds per request"),
    drain_timeout_s: Optional[float] = typer.Option(
        None, "--drain-timeout", help="seconds in-flight requests get after SIGTERM"
    ),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with a `serve:` section"),
) -> None:
    """Serve a model over HTTP: OpenAI-compatible /v1/* routes and SageMaker /ping + /invocations."""
    setup_logging("text")
    flags = dict(
        host=host,
        port=port,
        backend=backend,
        api_key_env=api_key_env,
        served_model_name=served_model_name,
        max_batch_size=max_batch_size,
        dtype=dtype,
        pack_weights=pack_weights,
        max_queue=max_queue,
        max_tokens=max_tokens,
        max_prompt_tokens=max_prompt_tokens,
        request_timeout_s=request_timeout_s,
        drain_timeout_s=drain_timeout_s,
    )
    if target is None:
        if not sagemaker_layout():
            raise SlmError(
                "no model to serve", "pass RUN_OR_MODEL, e.g. `slm serve runs/my-run` or `slm serve default`"
            )
        target = str(SAGEMAKER_MODEL_DIR)
        flags["host"] = flags["host"] or "0.0.0.0"
        flags["port"] = flags["port"] or int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    run_server(target, serve_config(config, flags))


def chat(
    target: str = typer.Argument(..., metavar="RUN_OR_MODEL"),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Answer one message and exit"),
    system: Optional[str] = typer.Option(None, "--system", help="System message"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    temperature: float = typer.Option(0.0, "--temperature"),
) -> None:
    """Streaming terminal chat with a run folder, export, registered name, or model."""
    from slmkit.serve.chat import chat_loop, load_engine_for_chat, stream_reply

    setup_logging("text")
    engine = load_engine_for_chat(target)
    try:
        if prompt is not None:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            stream_reply(engine, messages, max_new_tokens, temperature)
        else:
            chat_loop(engine, system, max_new_tokens, temperature)
    finally:
        engine.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m slmkit.serve.cli ...` (and a `serve` entry point for containers): same options as `slm serve`."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(serve)

    @app.callback()
    def _root() -> None:  # keeps `serve` a named sub-command, as in `slm serve`
        pass

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "serve":
        args = ["serve", *args]
    run_app(app, args, "serve")


if __name__ == "__main__":
    main()
