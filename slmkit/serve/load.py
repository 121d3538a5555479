"""Load a serve engine: pick the backend for a target (run, model or ONNX export folder, registry name, model
name), load its Runner and tokenizer, and name the model as /v1/models shows it."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
from pathlib import Path

from slmkit.config.serve import ServeConfig
from slmkit.errors import SlmError
from slmkit.runs import RunDir, run_of
from slmkit.serve.engine import Engine

log = logging.getLogger("slmkit")


def load_engine(target: str, cfg: ServeConfig | None = None, trust_remote_code: bool = False) -> Engine:
    """An Engine (not started) for a run folder, model folder, ONNX or GGUF export, registry name or model name.

    The backend is cfg.backend; 'auto' picks the fastest verified export (`pick_backend`). The choice and its
    reason are kept on the engine (`engine.backend_reason`) for the server's first log line.
    """
    cfg = cfg or ServeConfig()
    backend, reason, folder = pick_backend(target, cfg.backend)
    log.info("backend %s: %s", backend, reason)
    if backend == "onnx":
        from slmkit.serve.onnx_runner import load_onnx

        runner, tok = load_onnx(str(folder or target), cfg)
    elif backend == "gguf":
        from slmkit.serve.llamacpp_runner import load_llamacpp

        runner, tok = load_llamacpp(str(folder or _only_export(target, "gguf")), cfg)
    else:
        from slmkit.serve.torch_runner import load_torch

        runner, tok = load_torch(target, cfg, trust_remote_code)
    return Engine(runner, tok, cfg.served_model_name or served_name(target), cfg, backend_reason=reason)


# What `auto` tries, fastest first on CPU: onnxruntime-genai int4 decoded ~5x the fp32 torch model for one stream
# on 2 cores (109 vs 22 tok/s, issue 17); llama.cpp runs the GGUF export when there is no usable ONNX one.
RUNTIMES = (
    ("onnx", "onnxruntime_genai", "slmkit.onnx_runtime"),
    ("gguf", "llama_cpp", "slmkit.serve.llamacpp_runner"),
)


def pick_backend(target: str, backend: str) -> tuple[str, str, Path | None]:
    """(backend, why, export folder or None) for `target`.

    'auto': an ONNX or GGUF export folder is served by its runtime; a run (or a registered model of one) by its
    fastest verified export whose runtime is installed (`RUNTIMES`), else by torch. An export folder exists only
    if its checks passed (it is renamed into place after verification), and its verify.json says so.
    """
    if backend != "auto":
        return backend, f"--backend {backend}", None
    p = Path(target).expanduser()
    if (p / "genai_config.json").is_file():
        return "onnx", "an ONNX export folder", p
    if p.suffix == ".gguf" or (p.is_dir() and any(p.glob("*.gguf"))):
        return "gguf", "a GGUF export", p
    run = run_of(target)
    if run is None:
        return "torch", "a model folder or name (no run with exports)", None
    missing = []
    for kind, module, hint_from in RUNTIMES:
        verified = verified_exports(run, kind)
        if not verified:
            continue
        if importlib.util.find_spec(module) is None:  # found, not imported: loading the runtime is the runner's job
            hint = importlib.import_module(hint_from).INSTALL_HINT
            missing.append(f"{verified[0].name} needs {module.replace('_', '-')} ({hint})")
            continue
        return (
            kind,
            f"the run's fastest verified export, {verified[0].name} ({_verified_line(verified[0])})",
            verified[0],
        )
    if missing:
        return "torch", "; ".join(missing), None
    return (
        "torch",
        f"no verified ONNX or GGUF export in {run.root} (add one: slm export-model {run.root} -f onnx)",
        None,
    )


def verified_exports(run: RunDir, kind: str) -> list[Path]:
    """The run's export/<kind>-* folders with a verify.json and their model file, 4-bit first (then by name)."""
    marker = "genai_config.json" if kind == "onnx" else "*.gguf"
    found = [d.parent for d in run.root.glob(f"export/{kind}-*/verify.json") if any(d.parent.glob(marker))]

    def bits(folder: Path) -> int:
        precision = str(_read_json(folder / "verify.json").get("precision", folder.name))
        return 4 if precision.startswith(("int4", "q4", "q5")) else 8

    return sorted(found, key=lambda d: (bits(d), d.name))


def _only_export(target: str, kind: str) -> Path:
    """`--backend gguf` on a run: its verified GGUF export (4-bit first)."""
    run = run_of(target)
    found = verified_exports(run, kind) if run else []
    if not found:
        raise SlmError(
            f"no verified {kind.upper()} export for '{target}'",
            f"export one: slm export-model RUN -f {kind}, or pass the export folder",
        )
    return found[0]


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


def served_name(target: str) -> str:
    """The model id shown in /v1/models: 'default', or the run/model folder name."""
    p = Path(target).expanduser()
    if p.is_dir():
        p = p.resolve()
        run = RunDir.owning(p)
        return run.root.name if run else p.name
    return target
