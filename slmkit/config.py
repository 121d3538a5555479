"""Typed configuration for every stage.

Precedence, implemented once in `load_config`: defaults < YAML file < env `SLM_<SECTION>__<KEY>` <
CLI overrides (`--set section.key=value` and the named flags). Unknown keys and bad values are
rejected with the dotted field path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PositiveInt, ValidationError, field_validator, model_validator

from slmkit.errors import SlmError
from slmkit.schema.base import ColumnMap, _Strict  # noqa: F401 (re-exported for stage schemas)
from slmkit.schema.data import ChunkConfig, CleanConfig, FetchConfig, LimitsConfig, SourceConfig
from slmkit.schema.serve import ServeConfig
from slmkit.schema.synth import SynthConfig


class ModelConfig(_Strict):
    base_model: str = Field("default", description="'default' (embedded SmolLM2-135M-Instruct), a local HF folder, or a hub id")
    trust_remote_code: bool = False
    revision: str | None = None


class SplitConfig(_Strict):
    val: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    seed: str = "slmkit"


class DataConfig(_Strict):
    path: str | None = Field(None, description="CSV/TSV/JSON/JSONL file, relative to the config file")
    format: Literal["auto", "csv", "tsv", "json", "jsonl"] = "auto"
    json_field: str | None = Field(None, description="for JSON: the key holding the list of rows")
    columns: ColumnMap = Field(default_factory=ColumnMap)
    system_prompt: str | None = Field(None, description="system message for every row; {labels} expands to the label list")
    task: Literal["auto", "classification", "generation"] = "auto"
    dedup: bool = True
    max_rows: int | None = Field(None, gt=0)
    split: SplitConfig = Field(default_factory=SplitConfig)
    license: str | None = None
    sources: list[SourceConfig] = Field(default_factory=list, description="several sources instead of one data.path")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    chunk: ChunkConfig = Field(default_factory=ChunkConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)


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
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    keep_freed_memory: bool = Field(True, description="CPU: glibc malloc keeps freed activation buffers for reuse instead of page-faulting them in again each pass (+5% tokens/s measured)")
    compile: Literal["auto"] | bool = Field("auto", description="torch.compile the decoder layers; 'auto': when the run is long enough to pay back the compile (see `slm doctor`)")
    report_to: list[Literal["wandb", "mlflow", "tensorboard"]] = Field(default_factory=list)


class EvalRagConfig(_Strict):
    collection: str | None = Field(None, description="ChromaDB collection from `slm index`; setting it turns RAG mode on")
    persist_dir: str | None = Field(None, description="its ChromaDB folder, relative to the config file; default <run>/index")
    top_k: int = Field(3, gt=0, description="retrieved chunks put before each prompt")
    compare_without: bool = Field(True, description="also score each model without retrieval: '<name>' beside '<name>+rag'")


class EvalConfig(_Strict):
    max_new_tokens: int = Field(32, gt=0)
    batch_size: int = Field(16, gt=0)
    max_examples: int | None = Field(None, gt=0)
    compare_base: bool = True
    task: Literal["auto", "classification", "qa", "generation", "math"] = "auto"
    rag: EvalRagConfig = Field(default_factory=EvalRagConfig, description="retrieval-augmented eval (off until collection is set)")


class ExportConfig(_Strict):
    formats: list[Literal["merged", "gguf", "onnx", "pt2"]] = Field(default_factory=lambda: ["merged"])
    gguf_quant: list[Literal["f16", "q8_0"]] = Field(default_factory=lambda: ["q8_0"])
    onnx_quant: list[Literal["int4", "int8"]] = Field(default_factory=lambda: ["int4"])
    verify_tolerance: float = Field(1e-3, gt=0, description="max abs logit diff allowed for the merged export")
    metric_margin: float = Field(2.0, ge=0, description="points of task metric a 16/8-bit export may lose")
    metric_margin_4bit: float = Field(5.0, ge=0, description="points of task metric a 4-bit export may lose")
    verify_examples: int = Field(64, ge=0, description="eval rows used to re-check each export (0 skips)")


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
    teacher: str = Field("train", description="'train' = this run's fine-tuned model (train/final), or a model name/folder")
    student: StudentConfig = Field(default_factory=lambda: StudentConfig(prune=PruneSpec(ratio=0.5)))
    mode: Literal["online", "offline", "on_policy"] = "online"
    loss: KDLoss = "forward_kl"
    beta: float = Field(0.5, ge=0, le=1, description="jsd: weight of the teacher in the mixture")
    skew: float = Field(0.1, ge=0, lt=1, description="skew_kl: teacher share of the skewed student (DistiLLM: 0.1)")
    temperature: float = Field(1.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the label cross-entropy; 1 - alpha goes to KD")
    kd_positions: Literal["assistant", "all"] = Field(
        "assistant", description="tokens the KD loss covers: the assistant reply, or every token (prompt too; "
                                 "Minitron-style, helps a pruned student recover)")
    top_k: int = Field(64, gt=0, description="offline cache: teacher log-probs kept per token")
    lmbda: float = Field(0.5, ge=0, le=1, description="on_policy: share of batches built from student generations")
    max_new_tokens: int = Field(32, gt=0, description="on_policy / sequence-level: tokens generated per prompt")
    cache_dir: str | None = Field(None, description="offline cache folder (default <run>/distill/cache)")
    cache_shard_rows: int = Field(256, gt=0)
    tokenizer_mismatch: Literal["error", "sequence"] = Field(
        "error", description="'sequence': train on teacher-generated replies when tokenizers differ")
    train: DistillTrainConfig = Field(default_factory=DistillTrainConfig)


Stage = Literal["synth", "data", "train", "distill", "eval", "export"]
STAGE_ORDER: tuple[str, ...] = ("synth", "data", "train", "distill", "eval", "export")


class BuildConfig(_Strict):
    name: str = "run"
    output_dir: str = "runs"
    stages: list[Stage] = Field(
        default_factory=lambda: ["data", "train", "eval", "export"],
        description="stages `slm build` runs, always in the order synth, data, train, distill, eval, export")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    config_dir: str | None = Field(None, description="set by the loader: folder of the YAML, for relative paths")

    @field_validator("stages")
    @classmethod
    def _canonical_order(cls, v: list[str]) -> list[str]:
        # Order is fixed by data flow (synth rows feed data; eval and export read the distilled student).
        return [s for s in STAGE_ORDER if s in v]

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or v.startswith("."):
            raise ValueError("must be a plain folder name (no slashes, not starting with '.')")
        return v


SECRET_WORDS = {"key", "token", "secret", "password", "apikey"}


def _is_secret(key: str) -> bool:
    """api_key, hf_token, secret -> True; max_new_tokens, api_key_env (a variable's name) -> False."""
    parts = key.lower().split("_")
    return parts[-1] != "env" and bool(SECRET_WORDS & set(parts))


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _parse_scalar(text: str) -> Any:
    """'3' -> 3, 'true' -> True, '[a, b]' -> list: YAML's own scalar rules, so env and CLI agree."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def env_overrides(environ: dict[str, str] | None = None) -> dict:
    """`SLM_TRAIN__LR=1e-4` -> {"train": {"lr": 1e-4}}. Single-underscore SLM_* vars (SLM_HOME...) are not config."""
    tree: dict = {}
    for key, val in (environ if environ is not None else os.environ).items():
        if key.startswith("SLM_") and "__" in key:
            _set_path(tree, key[4:].lower().replace("__", "."), _parse_scalar(val))
    return tree


def cli_overrides(pairs: list[str]) -> dict:
    """['train.lr=1e-4', 'name=x'] -> nested dict."""
    tree: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise SlmError(f"--set {pair!r} is not KEY=VALUE", "e.g. --set train.lr=1e-4")
        key, val = pair.split("=", 1)
        _set_path(tree, key.strip(), _parse_scalar(val))
    return tree


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"config file not found: {path}", "pass the path of a YAML file, e.g. examples/intent-router/build.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SlmError(f"{path}: invalid YAML ({str(e).splitlines()[0]})", "check indentation and quoting") from None
    if not isinstance(data, dict):
        raise SlmError(f"{path}: top level must be a mapping of sections", "see examples/intent-router/build.yaml")
    return data


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                environ: dict[str, str] | None = None) -> BuildConfig:
    """defaults < YAML < env SLM_* < CLI overrides, validated once."""
    merged: dict = {}
    if path is not None:
        merged = _deep_merge(merged, read_yaml(path))
        merged["config_dir"] = str(Path(path).resolve().parent)
    merged = _deep_merge(merged, env_overrides(environ))
    merged = _deep_merge(merged, overrides or {})
    try:
        return BuildConfig.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        src = f"{path}: " if path else ""
        hint = "remove or rename that key; `slm config show` prints every valid key" if err["type"] == "extra_forbidden" \
            else "fix the value; `slm config show` prints the merged config"
        raise SlmError(f"{src}config field '{where}': {err['msg']}", hint) from None


def redact(obj: Any) -> Any:
    """Copy of a config dict with values of secret-looking keys replaced."""
    if isinstance(obj, dict):
        return {k: ("***" if _is_secret(k) and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def resolve_path(cfg: BuildConfig, p: str | Path) -> Path:
    """Paths in a config are relative to the config file's folder."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else Path(cfg.config_dir or ".") / p
