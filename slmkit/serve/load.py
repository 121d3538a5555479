"""Load a serve engine: pick the backend for a target (run, model or ONNX export folder, registry name, model
name), load its Runner and tokenizer, and name the model as /v1/models shows it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from slmkit.config.serve import ServeConfig
from slmkit.runs import RunDir, get_model
from slmkit.serve.engine import Engine

log = logging.getLogger("slmkit")


def load_engine(target: str, cfg: ServeConfig | None = None, trust_remote_code: bool = False) -> Engine:
    """An Engine (not started) for a run folder, model folder, ONNX export folder, registry name or model name.

    The backend is cfg.backend; 'auto' picks the fastest verified export (`pick_backend`). The choice and its
    reason are kept on the engine (`engine.backend_reason`) for the server's first log line.
    """
    cfg = cfg or ServeConfig()
    backend, reason, folder = pick_backend(target, cfg.backend)
    log.info("backend %s: %s", backend, reason)
    if backend == "onnx":
        from slmkit.serve.onnx_runner import load_onnx

        runner, tok = load_onnx(str(folder or target), cfg)
    else:
        from slmkit.serve.torch_runner import load_torch

        runner, tok = load_torch(target, cfg, trust_remote_code)
    return Engine(runner, tok, cfg.served_model_name or served_name(target), cfg, backend_reason=reason)


def pick_backend(target: str, backend: str) -> tuple[str, str, Path | None]:
    """(backend, why, ONNX folder or None) for `target`.

    'auto': an ONNX export folder is served by onnxruntime-genai; a run (or a registered model of one) by its
    verified ONNX export when onnxruntime-genai is installed (int4 decodes ~5x faster than the fp32 torch model on
    2 CPU cores: 109 vs 22 tok/s for one stream, issue 17), else by torch. An export folder exists only if its
    checks passed (written by atomic rename after verification), and its verify.json says so.
    """
    if backend != "auto":
        return backend, f"--backend {backend}", None
    p = Path(target).expanduser()
    if (p / "genai_config.json").is_file():
        return "onnx", "an ONNX export folder", p
    run = _owning_run(target)
    if run is None:
        return "torch", "a model folder or name (no run with exports)", None
    verified = verified_onnx_exports(run)
    if not verified:
        return "torch", f"no verified ONNX export in {run.root} (add one: slm export-model {run.root} -f onnx)", None
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        from slmkit.onnx_runtime import INSTALL_HINT

        return "torch", f"{verified[0].name} is there but onnxruntime-genai is not installed ({INSTALL_HINT})", None
    folder = verified[0]
    return "onnx", f"the run's fastest verified export, {folder.name} ({_verified_line(folder)})", folder


def verified_onnx_exports(run: RunDir) -> list[Path]:
    """The run's ONNX export folders with a verify.json, 4-bit before 8-bit (the faster decoders on CPU)."""
    found = [d.parent for d in run.root.glob("export/onnx-*/verify.json") if (d.parent / "genai_config.json").is_file()]

    def bits(folder: Path) -> int:
        precision = str(_read_json(folder / "verify.json").get("precision", folder.name))
        return 4 if "int4" in precision else 8

    return sorted(found, key=lambda d: (bits(d), d.name))


def _verified_line(folder: Path) -> str:
    verify = _read_json(folder / "verify.json")
    metric = verify.get("metric")
    if not metric:
        return f"{verify.get('precision', '?')}, logits checked"
    return (
        f"{verify.get('precision', '?')}, {metric['metric']} {metric['source']:.3f} -> {metric['export']:.3f} "
        f"on {metric.get('n', '?')} test rows"
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _owning_run(target: str) -> RunDir | None:
    """The run a target belongs to: a run folder, a folder inside one, or a registered model's path."""
    p = Path(target).expanduser()
    if not p.is_dir():
        entry = get_model(target)
        p = Path(entry["path"]) if entry else Path("runs", target)
    if not p.is_dir():
        return None
    p = p.resolve()
    return RunDir(p) if (p / "export").is_dir() else RunDir.owning(p)


def served_name(target: str) -> str:
    """The model id shown in /v1/models: 'default', or the run/model folder name."""
    p = Path(target).expanduser()
    if p.is_dir():
        p = p.resolve()
        run = RunDir.owning(p)
        return run.root.name if run else p.name
    return target
