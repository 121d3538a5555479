"""ONNX Runtime GenAI: find an ONNX export folder and load it (model, genai config, HF tokenizer), once for
everything that runs one (eval's ONNX backend, the serve engine's OnnxRunner)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError
from slmkit.runs import RunDir, target_folder

INSTALL_HINT = (
    "pip install 'slmkit[export]' (onnxruntime-genai); `slm serve` can run the merged export with --backend torch"
)


def installed() -> bool:
    """Whether onnxruntime-genai is importable (found, not imported: importing it loads the runtime)."""
    return importlib.util.find_spec("onnxruntime_genai") is not None


def import_og():
    """onnxruntime_genai, or a one-line SlmError saying how to install it."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise SlmError("running an ONNX export needs onnxruntime-genai, which is not installed", INSTALL_HINT) from None
    return og


def find_onnx_folder(target: str) -> Path:
    """The ONNX export to serve: the target folder itself, or a run's export/onnx-* (auto, then int4 first).

    The target may also be a registered model name or runs/<name>, as for the torch backend.
    """
    p = target_folder(target)
    if p is None:
        raise SlmError(
            f"'{target}' is not a folder, a registered model or a run in runs/",
            "pass an ONNX export folder (with genai_config.json) or a run folder that has export/onnx-*",
        )
    if (p / "genai_config.json").is_file():
        return p
    # registered paths point at export/merged (or train/final): the exports sit next to it in the run
    run = (RunDir.owning(p) or RunDir(p)).root
    found = sorted(
        (f.parent for f in run.glob("export/onnx-*/genai_config.json")),
        key=lambda d: (d.name not in ("onnx-auto", "onnx-int4"), d.name),
    )
    if not found:
        raise SlmError(
            f"no ONNX export found for '{target}' (a folder with genai_config.json, or a run with export/onnx-*)",
            f"export one with `slm export-model {run} --format onnx`, or pass the folder",
        )
    return found[0]


def genai_model_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "genai_config.json").read_text())["model"]
    except (OSError, ValueError, KeyError) as e:
        raise SlmError(
            f"{folder / 'genai_config.json'} is not a valid onnxruntime-genai config: {e}",
            "re-export the model with `slm export-model RUN --format onnx`",
        ) from None


def load_onnx_folder(folder: Path) -> tuple[Any, dict, Any]:
    """(onnxruntime-genai Model, genai_config.json's `model` block, HF tokenizer) of an export folder."""
    from slmkit.models import load_tokenizer

    og = import_og()
    config = genai_model_config(folder)
    tok = load_tokenizer(folder)
    try:
        model = og.Model(str(folder))
    except Exception as e:  # onnxruntime-genai raises RuntimeError with the ORT message on a bad folder
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SlmError(
            f"onnxruntime-genai cannot load {folder}: {first}",
            "re-export the model with `slm export-model RUN --format onnx`",
        ) from None
    return model, config, tok
