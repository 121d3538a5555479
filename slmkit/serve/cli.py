"""`slm serve RUN_OR_MODEL`: run the OpenAI/SageMaker-compatible server with uvicorn.

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

from slmkit.errors import SlmError
from slmkit.schema.serve import ServeConfig

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
log = logging.getLogger("slmkit")


def sagemaker_layout(model_dir: Path | None = None) -> bool:
    return (model_dir or SAGEMAKER_MODEL_DIR).is_dir()


def serve_config(config: Path | None, flags: dict, environ: dict[str, str] | None = None) -> ServeConfig:
    """The `serve` section: defaults < YAML file's `serve:` < env SLM_SERVE__* < CLI flags."""
    from pydantic import ValidationError

    from slmkit.config import _deep_merge, env_overrides, read_yaml

    merged = read_yaml(config).get("serve", {}) if config is not None else {}
    merged = _deep_merge(merged, env_overrides(environ).get("serve", {}))
    merged = _deep_merge(merged, {k: v for k, v in flags.items() if v is not None})
    try:
        return ServeConfig.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise SlmError(f"{config or 'serve options'}: serve.{where}: {err['msg']}", "fix the value or the flag") from None


def run_server(target: str, cfg: ServeConfig) -> None:
    """Load the model, build the app and serve until SIGTERM/SIGINT (in-flight requests drain first)."""
    import uvicorn

    from slmkit.serve.app import create_app
    from slmkit.serve.engine import load_engine

    engine = load_engine(target, cfg)
    key = os.environ.get(cfg.api_key_env) or None
    app = create_app(engine, api_key=key)
    log.info("serving '%s' on http://%s:%d (backend: %s, batching: %s, max batch %d, auth: %s)", engine.name, cfg.host,
             cfg.port, engine.runner.kind, engine.batching, engine.max_batch, f"${cfg.api_key_env}" if key else "off")
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                           timeout_graceful_shutdown=cfg.drain_timeout_s, timeout_keep_alive=5))
    server.run()


def register(app: typer.Typer) -> None:
    """Add `slm serve` to the CLI."""

    @app.command()
    def serve(target: Optional[str] = typer.Argument(None, metavar="RUN_OR_MODEL",
                                                     help="run folder, model or ONNX export folder, registered name "
                                                          "or model name; omitted inside a SageMaker container: "
                                                          "/opt/ml/model"),
              host: Optional[str] = typer.Option(None, "--host", help="interface to bind (default 127.0.0.1)"),
              port: Optional[int] = typer.Option(None, "--port", help="port (default 8000; SageMaker: 8080)"),
              backend: Optional[str] = typer.Option(None, "--backend",
                                                    help="auto (default: onnx for an ONNX export folder, else "
                                                         "torch), torch, or onnx (a run's export/onnx-*)"),
              api_key_env: Optional[str] = typer.Option(None, "--api-key-env",
                                                        help="env var with the bearer key (default SLM_API_KEY)"),
              served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="id in /v1/models"),
              max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size"),
              pack_weights: Optional[bool] = typer.Option(None, "--pack-weights/--no-pack-weights",
                                                          help="torch on CPU: oneDNN-packed Linear weights (default on)"),
              max_queue: Optional[int] = typer.Option(None, "--max-queue", help="waiting requests before HTTP 429"),
              max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="cap on a request's max_tokens"),
              max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens"),
              request_timeout_s: Optional[float] = typer.Option(None, "--timeout", help="seconds per request"),
              drain_timeout_s: Optional[float] = typer.Option(None, "--drain-timeout",
                                                              help="seconds in-flight requests get after SIGTERM"),
              config: Optional[Path] = typer.Option(None, "--config", help="YAML file with a `serve:` section")) -> None:
        """Serve a model over HTTP: OpenAI-compatible /v1/* routes and SageMaker /ping + /invocations."""
        from slmkit.cli import setup_logging

        setup_logging("text")
        flags = dict(host=host, port=port, backend=backend, api_key_env=api_key_env,
                     served_model_name=served_model_name, max_batch_size=max_batch_size, pack_weights=pack_weights,
                     max_queue=max_queue,
                     max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens, request_timeout_s=request_timeout_s,
                     drain_timeout_s=drain_timeout_s)
        if target is None:
            if not sagemaker_layout():
                raise SlmError("no model to serve", "pass RUN_OR_MODEL, e.g. `slm serve runs/my-run` or `slm serve default`")
            target = str(SAGEMAKER_MODEL_DIR)
            flags["host"] = flags["host"] or "0.0.0.0"
            flags["port"] = flags["port"] or int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
        run_server(target, serve_config(config, flags))


def main(argv: list[str] | None = None) -> None:
    """`python -m slmkit.serve.cli ...` (and a `serve` entry point for containers): same options as `slm serve`."""
    from slmkit.cli import console

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)

    @app.callback()
    def _root() -> None:  # keeps `serve` a named sub-command, as in `slm serve`
        pass

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "serve":
        args = ["serve", *args]
    try:
        app(args, standalone_mode=False)
    except SlmError as e:
        console.print(f"[bold red]error:[/] {e.message}" + (f"  [dim]hint: {e.hint}[/]" if e.hint else ""), highlight=False)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
