"""`export:` section: formats, quantisations and how each export is re-checked."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slmkit.config.base import _Strict


class ExportConfig(_Strict):
    formats: list[Literal["merged", "gguf", "onnx", "pt2"]] = Field(default_factory=lambda: ["merged"])
    gguf_quant: list[Literal["f16", "q8_0"]] = Field(default_factory=lambda: ["q8_0"])
    onnx_quant: list[Literal["int4", "int8"]] = Field(default_factory=lambda: ["int4"])
    verify_tolerance: float = Field(1e-3, gt=0, description="max abs logit diff allowed for the merged export")
    metric_margin: float = Field(2.0, ge=0, description="points of task metric a 16/8-bit export may lose")
    metric_margin_4bit: float = Field(5.0, ge=0, description="points of task metric a 4-bit export may lose")
    verify_examples: int = Field(64, ge=0, description="eval rows used to re-check each export (0 skips)")
