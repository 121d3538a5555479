"""Load a serve engine: pick the backend for a target (run, model or ONNX export folder, registry name, model
name), load its Runner and tokenizer, and name the model as /v1/models shows it."""

from __future__ import annotations

from pathlib import Path

from slmkit.config.serve import ServeConfig
from slmkit.runs import RunDir
from slmkit.serve.engine import Engine


def load_engine(target: str, cfg: ServeConfig | None = None, trust_remote_code: bool = False) -> Engine:
    """An Engine (not started) for a run folder, model folder, ONNX export folder, registry name or model name.

    The backend is cfg.backend; 'auto' picks onnx for an ONNX export folder (genai_config.json), else torch.
    """
    cfg = cfg or ServeConfig()
    if pick_backend(target, cfg.backend) == "onnx":
        from slmkit.serve.onnx_runner import load_onnx

        runner, tok = load_onnx(target, cfg)
    else:
        from slmkit.serve.torch_runner import load_torch

        runner, tok = load_torch(target, cfg, trust_remote_code)
    return Engine(runner, tok, cfg.served_model_name or served_name(target), cfg)


def pick_backend(target: str, backend: str) -> str:
    """'auto' -> 'onnx' for an ONNX export folder (it has onnxruntime-genai's genai_config.json), else 'torch'."""
    if backend != "auto":
        return backend
    p = Path(target).expanduser()
    return "onnx" if (p / "genai_config.json").is_file() else "torch"


def served_name(target: str) -> str:
    """The model id shown in /v1/models: 'default', or the run/model folder name."""
    p = Path(target).expanduser()
    if p.is_dir():
        p = p.resolve()
        run = RunDir.owning(p)
        return run.root.name if run else p.name
    return target
