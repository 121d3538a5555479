"""ONNX export through onnxruntime-genai's model builder: a folder `onnxruntime_genai.Model` runs as is."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from slmkit.errors import SlmError

log = logging.getLogger("slmkit")

# quant -> (builder precision, builder --extra_options, MatMuls of every layer kept at int8). The int4 recipes
# differ in the weight-only quantiser (MatMulNBits): `default` is round-to-nearest per block of 32; `k_quant`
# searches each block's scale the way llama.cpp's k-quants do; `matmul_mixed_precision` keeps the output head
# (tied to the embeddings in SmolLM2, so both) and llama.cpp's "use_more_bits" layers at int8. int4_gate_up
# puts only the MLP's gate/up projections (half of a llama layer's weights) at 4 bits. Measured on the intent
# router demo (docs/benchmarks.md): accuracy drops 9.8 / 9.0 / 6.6 / 3.3 / 0.0 points in this order, at
# 86-130 MB against 542 MB in fp32. Listed smallest first: the order `auto` tries them in.
RECIPES: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
    "int4": ("int4", {}, ()),
    "int4_kq": ("int4", {"algo_config": "k_quant"}, ()),
    "int4_kq_head8": ("int4", {"algo_config": "k_quant", "matmul_mixed_precision": "last_matmul:int8"}, ()),
    "int4_kq_mixed": (
        "int4",
        {"algo_config": "k_quant", "matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8"},
        (),
    ),
    "int4_gate_up": ("int4", {}, ("attn/qkv_proj", "attn/o_proj", "mlp/down_proj")),
    "int8": ("int8", {}, ()),
}
# Recipes whose body is quantised after the builder by onnxruntime's own MatMulNBitsQuantizer: the builder writes the
# head at int8 and leaves every layer MatMul fp32 (`nodes_to_exclude`), then HQQ (half-quadratic scale/zero search,
# Badri & Shaji 2023; data-free, so no calibration rows) puts those at 4 bits, block 32, and the (untied) embedding
# lookup at 4 bits (onnxruntime's quantiser writes Gather at 4 bits only).
HQQ = {"int4_hqq": 32}
QUANTS = (*RECIPES, *HQQ)
LAYER_MATMULS = ("attn/qkv_proj", "attn/o_proj", "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")
# What `auto` tries, smallest first: k-quant dominates round-to-nearest at +2% size, and an 8-bit head pays for
# its 15 MB on small models, whose tied embedding is a fifth of the weights.
FOUR_BIT = ("int4_kq_head8", "int4_kq_mixed", "int4_gate_up")


def build_onnx(
    src: Path, dest: Path, quant: str = "int4", extra: dict[str, str] | None = None, target: dict | None = None
) -> Path:
    """Run the builder on an HF folder `src` into `dest` (genai_config.json, model.onnx(.data), tokenizer).

    `quant` names a recipe in RECIPES; `extra` adds or overrides builder options. The builder runs in a child
    process: it loads the whole model and logs heavily, and a crash there must not take the caller down.
    Its log is kept in dest/builder.log.
    """
    if quant not in QUANTS:
        raise SlmError(f"ONNX quantisation {quant!r} is not supported", f"use one of: {', '.join(QUANTS)} (CPU)")
    if quant in HQQ:
        layers = json.loads((Path(src) / "config.json").read_text())["num_hidden_layers"]
        body = ",".join(f"/model/layers.{i}/{m}/MatMul" for i in range(layers) for m in LAYER_MATMULS)
        build_onnx(
            src, dest, "int8", {"nodes_to_exclude": body, "op_types_to_quantize": "MatMul/Gather"} | (extra or {})
        )
        return _hqq_body(Path(dest), HQQ[quant])
    precision, options, int8_matmuls = RECIPES[quant]
    options = options | (extra or {})
    if int8_matmuls and target is None:
        target = _int8_overrides(src, int8_matmuls)
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
            precision,
            "-e",
            "cpu",
            "-c",
            cache,
        ]
        if options:
            cmd += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
        if target:
            cmd += ["--target_options", json.dumps(target)]
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


def _int8_overrides(src: Path, matmuls: tuple[str, ...]) -> dict:
    """Builder --target_options: k-quant int4 with the head (and the tied embedding) and `matmuls` of every layer
    at int8. Node names are the builder's (/model/layers.<i>/attn/qkv_proj/MatMul, ...)."""
    layers = json.loads((Path(src) / "config.json").read_text())["num_hidden_layers"]
    overrides = [{"match": {"preset": "last_matmul"}, "type": "int8"}] + [
        {"match": {"name": f"/model/layers.{i}/{m}/MatMul"}, "type": "int8"} for i in range(layers) for m in matmuls
    ]
    weights = {"type": "int4", "method": "k_quant", "block_size": 32, "op_types": ["MatMul", "Gather"]}
    return {"quant_config": {"weights": weights | {"overrides": overrides}}}


def _hqq_body(folder: Path, block: int) -> Path:
    """HQQ int4 for every MatMul the builder left fp32, RTN int4 for the embedding Gather, in place in `folder`."""
    import os

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(folder / "model.onnx"))
    body = MatMulNBitsQuantizer(model, algo_config=HQQWeightOnlyQuantConfig(block_size=block, bits=4))
    body.process()  # MatMuls only: HQQ's float zero points do not fit GatherBlockQuantized
    embed = DefaultWeightOnlyQuantConfig(
        block_size=block, bits=4, is_symmetric=True, op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),)
    )
    gather = MatMulNBitsQuantizer(body.model.model, algo_config=embed)
    gather.process()
    staged = folder / ".hqq"
    staged.mkdir()
    onnx.save_model(
        gather.model.model,
        str(staged / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
    )
    for name in ("model.onnx.data", "model.onnx"):
        os.replace(staged / name, folder / name)
    staged.rmdir()
    log.info("ONNX: layer MatMuls quantised to int4 by HQQ (block %d) in %s", block, folder)
    return folder
