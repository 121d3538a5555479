"""`serve` config section: network, limits and batching of `slm serve`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slmkit.config.base import _Strict


class ServeConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port")
    backend: Literal["auto", "torch", "onnx", "gguf"] = Field(
        "auto",
        description="auto: an ONNX/GGUF export folder by its runtime; a run by its verified export/onnx-* "
        "(onnxruntime-genai) or else export/gguf-* (llama-cpp-python) when installed; else torch. onnx / gguf: that "
        "runtime on the export folder or a run's export",
    )
    served_model_name: str | None = Field(None, description="name in /v1/models; default: the folder or model name")
    api_key_env: str = Field("SLM_API_KEY", description="env var holding the bearer key; unset or empty = no auth")
    max_batch_size: int = Field(32, gt=0, description="sequences decoded together in one step")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="torch backend: auto = on CPU the speed probe's decode choice (bf16 weights where measured "
        ">= 1.15x fp32 on this machine, else fp32), on a GPU the accelerator's dtype",
    )
    pack_weights: bool = Field(
        True,
        description="torch backend on CPU: reorder Linear weights once into oneDNN's "
        "layout (same fp32 math, faster batched decode); false keeps nn.Linear",
    )
    max_queue: int = Field(128, ge=0, description="requests waiting for a batch slot; more get HTTP 429")
    max_prefill_tokens: int = Field(4096, gt=0, description="prompt tokens admitted into the batch per step")
    max_prompt_tokens: int = Field(4096, gt=0)
    max_tokens: int = Field(1024, gt=0, description="cap on a request's max_tokens")
    default_max_tokens: int = Field(256, gt=0, description="max_tokens when a chat request sets none")
    max_body_bytes: int = Field(1_000_000, gt=0)
    request_timeout_s: float = Field(300.0, gt=0)
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, in-flight requests get this long to finish")
