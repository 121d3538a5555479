"""`eval:` section: generation settings, task, RAG mode."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slmkit.config.base import _Strict


class EvalRagConfig(_Strict):
    collection: str | None = Field(
        None, description="ChromaDB collection from `slm index`; setting it turns RAG mode on"
    )
    persist_dir: str | None = Field(
        None, description="its ChromaDB folder, relative to the config file; default <run>/index"
    )
    top_k: int = Field(3, gt=0, description="retrieved chunks put before each prompt")
    compare_without: bool = Field(
        True, description="also score each model without retrieval: '<name>' beside '<name>+rag'"
    )


class EvalConfig(_Strict):
    max_new_tokens: int = Field(32, gt=0)
    batch_size: int = Field(16, gt=0)
    max_examples: int | None = Field(None, gt=0)
    compare_base: bool = True
    task: Literal["auto", "classification", "extraction", "qa", "generation", "math"] = "auto"
    rag: EvalRagConfig = Field(
        default_factory=EvalRagConfig, description="retrieval-augmented eval (off until collection is set)"
    )
