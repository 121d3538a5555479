"""`export:` section: formats, quantisations and how each export is re-checked."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slmkit.config.base import _Strict


class ExportConfig(_Strict):
    # auto: merged, plus the ONNX export (`onnx_quant`, verified like any) when onnxruntime-genai is installed: the
    # format `slm serve` runs fastest on CPU. An auto ONNX export that misses its margin is skipped with a warning.
    formats: list[Literal["auto", "merged", "gguf", "onnx", "pt2"]] = Field(default_factory=lambda: ["auto"])
    # Recipes are defined in slmkit/export/{gguf,onnx}.py; `auto` tries the 4-bit ones smallest first (then 8-bit)
    # and keeps the first whose metric on train rows stays within metric_margin_4bit.
    # q4_k_m / q5_k_m / iq4_nl and the `_im` ones (importance matrix from the train rows) are quantised by
    # llama.cpp's own code (the llamacpp extra)
    gguf_quant: list[
        Literal[
            "auto",
            "q4_0",
            "q4_0_m",
            "q5_0_m",
            "q4_0_gate_up",
            "q4_k_m",
            "q5_k_m",
            "iq4_nl",
            "iq4_nl_m_im",
            "q4_0_m_im",
            "q5_0_m_im",
            "q4_0_gate_up_im",
            "q8_0",
            "f16",
            "f32",
        ]
    ] = Field(default_factory=lambda: ["q8_0"])
    onnx_quant: list[
        Literal["auto", "int4", "int4_kq", "int4_kq_head8", "int4_kq_mixed", "int4_gate_up", "int4_hqq", "int8"]
    ] = Field(default_factory=lambda: ["auto"])
    verify_tolerance: float = Field(1e-3, gt=0, description="max abs logit diff allowed for the merged export")
    metric_margin: float = Field(2.0, ge=0, description="points of task metric a 16/8-bit export may lose")
    metric_margin_4bit: float = Field(1.0, ge=0, description="points of task metric a 4-bit export may lose")
    # A margin of 1-2 points needs rows: at 64, one changed answer moves accuracy 1.6 points, and on SNIPS slot
    # filling (2026-12-03) int8 ONNX read +0.5 on 64 train rows and -3.0 on 64 test rows.
    verify_examples: int = Field(256, ge=0, description="eval rows used to re-check each export (0 skips)")
