"""`train:` section: SFT (LoRA or full), batching, checkpoints, speed switches."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from slmkit.config.base import _Strict


class LoraConfig(_Strict):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: Literal["auto"] | list[str] = "auto"
    fused: bool = Field(True, description="train the adapters through one fused autograd function per layer (same math as peft's, fewer passes over memory); false: peft's own forward")


class TrainConfig(_Strict):
    method: Literal["lora", "full"] = "lora"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="overrides epochs when set")
    batch_size: int = Field(8, gt=0)
    micro_batch_size: Literal["auto"] | PositiveInt = Field("auto", description="rows per forward pass; 'auto': ~384 tokens a pass on CPU, the batch on GPU")
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    max_seq_len: int = Field(512, gt=8)
    save_steps: int = Field(50, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    logging_steps: int = Field(5, gt=0)
    eval_steps: Literal["auto"] | PositiveInt | None = Field(
        "auto", description="steps between validations (the task's metric on the val split, decoded greedily); "
                            "'auto': at most ~10% of training time; null: no validation (SFT only)")
    eval_max_rows: int = Field(64, gt=0, description="val rows each validation decodes")
    load_best_model_at_end: bool = Field(True, description="finish with the weights of the best validation, not the last step")
    early_stopping_patience: int | None = Field(
        3, gt=0, description="stop after this many validations without improvement; null: never")
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    keep_freed_memory: bool = Field(True, description="CPU: glibc malloc keeps freed activation buffers for reuse instead of page-faulting them in again each pass (+5% tokens/s measured)")
    compile: Literal["auto"] | bool = Field("auto", description="torch.compile the decoder layers; 'auto': when the run is long enough to pay back the compile (see `slm doctor`)")
    report_to: list[Literal["wandb", "mlflow", "tensorboard"]] = Field(default_factory=list)
