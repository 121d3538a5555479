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
from pydantic import Field, ValidationError, field_validator

from slmkit.config.base import ColumnMap, _Strict
from slmkit.config.data import (
    ChunkConfig,
    CleanConfig,
    DataConfig,
    DecontamConfig,
    DedupConfig,
    FetchConfig,
    LengthConfig,
    LimitsConfig,
    NormalizeConfig,
    PiiConfig,
    SourceConfig,
    SplitConfig,
)
from slmkit.config.distill import DistillConfig, DistillTrainConfig, KDLoss, PruneSpec, StudentConfig
from slmkit.config.eval import EvalConfig, EvalRagConfig
from slmkit.config.export import ExportConfig
from slmkit.config.model import ModelConfig
from slmkit.config.serve import ServeConfig
from slmkit.config.synth import SynthConfig, TeacherConfig
from slmkit.config.train import LoraConfig, TrainConfig
from slmkit.errors import SlmError

__all__ = [
    "BuildConfig",
    "ChunkConfig",
    "CleanConfig",
    "ColumnMap",
    "DataConfig",
    "DecontamConfig",
    "DedupConfig",
    "DistillConfig",
    "DistillTrainConfig",
    "EvalConfig",
    "EvalRagConfig",
    "ExportConfig",
    "FetchConfig",
    "KDLoss",
    "LengthConfig",
    "LimitsConfig",
    "LoraConfig",
    "ModelConfig",
    "NormalizeConfig",
    "PiiConfig",
    "PruneSpec",
    "STAGE_ORDER",
    "ServeConfig",
    "SourceConfig",
    "SplitConfig",
    "StudentConfig",
    "SynthConfig",
    "TeacherConfig",
    "TrainConfig",
    "flag_overrides",
    "load_config",
    "redact",
    "resolve_path",
]


Stage = Literal["synth", "data", "train", "distill", "eval", "export"]
STAGE_ORDER: tuple[str, ...] = ("synth", "data", "train", "distill", "eval", "export")


class BuildConfig(_Strict):
    name: str = "run"
    output_dir: str = "runs"
    stages: list[Stage] = Field(
        default_factory=lambda: ["data", "train", "eval", "export"],
        description="stages `slm build` runs, always in the order synth, data, train, distill, eval, export",
    )
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


def flag_overrides(
    sets: list[str] | None = None,
    *,
    name: str | None = None,
    output_dir: str | None = None,
    base_model: str | None = None,
    max_steps: int | None = None,
) -> dict:
    """CLI flags, the top layer of the precedence chain: named flags, then --set pairs (which win)."""
    named: dict = {k: v for k, v in {"name": name, "output_dir": output_dir}.items() if v is not None}
    if base_model is not None:
        named["model"] = {"base_model": base_model}
    if max_steps is not None:
        named["train"] = {"max_steps": max_steps}
    return _deep_merge(named, cli_overrides(sets or []))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SlmError(
            f"config file not found: {path}", "pass the path of a YAML file, e.g. examples/intent-router/build.yaml"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SlmError(f"{path}: invalid YAML ({str(e).splitlines()[0]})", "check indentation and quoting") from None
    if not isinstance(data, dict):
        raise SlmError(f"{path}: top level must be a mapping of sections", "see examples/intent-router/build.yaml")
    return data


def load_config(
    path: str | Path | None = None, overrides: dict | None = None, environ: dict[str, str] | None = None
) -> BuildConfig:
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
        hint = (
            "remove or rename that key; `slm config show` prints every valid key"
            if err["type"] == "extra_forbidden"
            else "fix the value; `slm config show` prints the merged config"
        )
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
