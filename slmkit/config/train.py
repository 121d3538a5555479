"""`train:` section: SFT (LoRA or full), batching, checkpoints, speed switches."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from slmkit.config.base import _Strict


class LoraConfig(_Strict):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: Literal["auto"] | list[str] = "auto"
    fused: bool = Field(
        True,
        description="train the adapters through one fused autograd function per layer (same math as peft's, fewer passes over memory); false: peft's own forward",
    )


Balance = Literal["off", "cap", "oversample"]


def _check_range(name: str, v: list | None) -> None:
    if v is not None and (len(v) != 2 or v[0] > v[1] or v[0] <= 0):
        raise ValueError(f"space.{name} must be [low, high] with 0 < low <= high")


class SearchSpace(_Strict):
    """What `slm tune` / `train.search` varies; a null entry is not searched (the train section's value is kept)."""

    lr: list[float] | None = Field([5e-5, 2e-3], description="[low, high], sampled log-uniform")
    epochs: list[int] | None = Field([1, 4], description="[low, high] whole epochs (on the search's row subset)")
    steps: list[int] | None = Field(None, description="[low, high] optimizer steps, log-uniform: instead of epochs")
    lora_r: list[int] | None = Field([8, 16, 32], description="LoRA ranks to try (train.method: lora)")
    alpha_multiplier: list[int] | None = Field([1, 2], description="lora.alpha = r x one of these")
    balance: list[Balance] | None = Field(["off", "cap", "oversample"], description="train.balance modes to try")

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("lr", "epochs", "steps"):
            _check_range(name, getattr(self, name))
        if self.epochs is not None and self.steps is not None:
            raise ValueError("set space.epochs or space.steps, not both (null the other)")
        for name in ("lora_r", "alpha_multiplier", "balance"):
            if getattr(self, name) is not None and not getattr(self, name):
                raise ValueError(f"space.{name} must list at least one value, or be null")
        return self


class SearchConfig(_Strict):
    """Budgeted recipe search (Optuna TPE + median pruning on the val metric), `slm tune` or inside `slm build`."""

    enabled: bool = Field(False, description="`slm build`: search, then train the final model with the best recipe")
    budget_minutes: float = Field(
        30.0, gt=0, description="wall time for the search and the final training of its best recipe together"
    )
    final_share: float | None = Field(
        0.5,
        ge=0,
        lt=1,
        description="share of the budget kept for the final training on all rows (the search gets the rest, the "
        "final gets what the search left; its steps are capped to fit); null: the budget is the search's alone",
    )
    trials: int = Field(20, gt=0, description="at most this many finished trials")
    start_from_config: bool = Field(
        True,
        description="trial 0 trains this train section's own recipe (clamped into the space), so the best recipe "
        "is never one that scored below it on val",
    )
    space: SearchSpace = Field(default_factory=SearchSpace)
    metric: Literal["auto"] = Field("auto", description="the task's headline val metric, as validation scores it")
    rows: Literal["auto"] | PositiveInt = Field(
        "auto", description="train rows a trial trains on; 'auto': as many as let ~10 trials fit in the budget"
    )
    seed: int | None = Field(None, description="sampler and row-subset seed; null: train.seed")


class TrainConfig(_Strict):
    method: Literal["lora", "full"] = "lora"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="overrides epochs when set")
    batch_size: int = Field(8, gt=0)
    micro_batch_size: Literal["auto"] | PositiveInt = Field(
        "auto", description="rows per forward pass; 'auto': ~384 tokens a pass on CPU, the batch on GPU"
    )
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
        "auto",
        description="steps between validations (the task's metric on the val split, decoded greedily); "
        "'auto': at most ~10% of training time; null: no validation (SFT only)",
    )
    eval_max_rows: int = Field(64, gt=0, description="val rows each validation decodes")
    load_best_model_at_end: bool = Field(
        True, description="finish with the weights of the best validation, not the last step"
    )
    early_stopping_patience: int | None = Field(
        3, gt=0, description="stop after this many validations without improvement; null: never"
    )
    seed: int = 0
    balance: Balance = Field(
        "off",
        description="even out the train split's answers: cap the majority at the runner-up, "
        "or oversample the minorities (seeded); recorded in the train summary",
    )
    balance_seed: int | None = Field(None, description="seed of the balance draws; null: train.seed")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    keep_freed_memory: bool = Field(
        True,
        description="CPU: glibc malloc keeps freed activation buffers for reuse instead of page-faulting them in again each pass (+5% tokens/s measured)",
    )
    compile: Literal["auto"] | bool = Field(
        "auto",
        description="torch.compile the decoder layers; 'auto': when the run is long enough to pay back the compile (see `slm doctor`)",
    )
    report_to: list[Literal["wandb", "mlflow", "tensorboard"]] = Field(default_factory=list)
    search: SearchConfig = Field(default_factory=SearchConfig)
