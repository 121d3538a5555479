"""`model:` section: the base model."""

from __future__ import annotations

from pydantic import Field

from slmkit.config.base import _Strict


class ModelConfig(_Strict):
    base_model: str = Field(
        "default", description="'default' (embedded SmolLM2-135M-Instruct), a local HF folder, or a hub id"
    )
    trust_remote_code: bool = False
    revision: str | None = None
