"""`distill:` section: teacher, student (named or pruned), KD loss and mode, its own training settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slmkit.config.base import _Strict
from slmkit.config.train import TrainConfig

KDLoss = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl"]


class PruneSpec(_Strict):
    layers: int | None = Field(None, description="decoder layers to keep")
    ratio: float | None = Field(None, description="share of decoder layers to drop (0.5 = half)")
    mlp_ratio: float | None = Field(None, description="share of MLP channels to drop in every layer")
    calibration_rows: int = Field(128, gt=0, description="training rows used to measure importance")


class StudentConfig(_Strict):
    model: str | None = Field(None, description="any model with the teacher's tokenizer ('default', folder, hub id)")
    prune: PruneSpec | None = Field(None, description="or: make the student by pruning the teacher")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model is None) == (self.prune is None):
            raise ValueError("set exactly one of student.model or student.prune")
        return self


class DistillTrainConfig(TrainConfig):
    """TrainConfig with distillation defaults: a (pruned) student is trained in full."""

    method: Literal["lora", "full"] = "full"
    lr: float = Field(1e-4, gt=0)


class DistillConfig(_Strict):
    teacher: str = Field(
        "train", description="'train' = this run's fine-tuned model (train/final), or a model name/folder"
    )
    student: StudentConfig = Field(default_factory=lambda: StudentConfig(prune=PruneSpec(ratio=0.5)))
    mode: Literal["online", "offline", "on_policy"] = "online"
    loss: KDLoss = "forward_kl"
    beta: float = Field(0.5, ge=0, le=1, description="jsd: weight of the teacher in the mixture")
    skew: float = Field(0.1, ge=0, lt=1, description="skew_kl: teacher share of the skewed student (DistiLLM: 0.1)")
    temperature: float = Field(1.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the label cross-entropy; 1 - alpha goes to KD")
    kd_positions: Literal["assistant", "all"] = Field(
        "assistant",
        description="tokens the KD loss covers: the assistant reply, or every token (prompt too; "
        "Minitron-style, helps a pruned student recover)",
    )
    top_k: int = Field(64, gt=0, description="offline cache: teacher log-probs kept per token")
    lmbda: float = Field(0.5, ge=0, le=1, description="on_policy: share of batches built from student generations")
    max_new_tokens: int = Field(32, gt=0, description="on_policy / sequence-level: tokens generated per prompt")
    cache_dir: str | None = Field(None, description="offline cache folder (default <run>/distill/cache)")
    cache_shard_rows: int = Field(256, gt=0)
    tokenizer_mismatch: Literal["error", "sequence"] = Field(
        "error", description="'sequence': train on teacher-generated replies when tokenizers differ"
    )
    train: DistillTrainConfig = Field(default_factory=DistillTrainConfig)
