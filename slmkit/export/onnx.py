"""ONNX export through onnxruntime-genai's model builder: a folder `onnxruntime_genai.Model` runs as is."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from slmkit.errors import SlmError

log = logging.getLogger("slmkit")

QUANTS = ("int4", "int8")


def build_onnx(src: Path, dest: Path, quant: str = "int4") -> Path:
    """Run the builder on an HF folder `src` into `dest` (genai_config.json, model.onnx(.data), tokenizer).

    The builder runs in a child process: it loads the whole model and logs heavily, and a crash there
    must not take the caller down. Its log is kept in dest/builder.log.
    """
    if quant not in QUANTS:
        raise SlmError(f"ONNX quantisation {quant!r} is not supported", f"use one of: {', '.join(QUANTS)} (CPU)")
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        raise SlmError(
            "ONNX export needs onnxruntime-genai, which is not installed", "pip install onnxruntime-genai onnx-ir"
        ) from None
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slm-onnx-cache-") as cache:
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(src),
            "-o",
            str(dest),
            "-p",
            quant,
            "-e",
            "cpu",
            "-c",
            cache,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    (dest / "builder.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not (dest / "genai_config.json").is_file():
        last = next((ln for ln in reversed((proc.stderr or proc.stdout).splitlines()) if ln.strip()), "no output")
        raise SlmError(
            f"onnxruntime-genai's builder failed on {src}: {last}",
            f"see {dest / 'builder.log'}; the builder supports llama, mistral, qwen, phi, gemma families",
        )
    log.info("ONNX %s export in %s", quant, dest)
    return dest
