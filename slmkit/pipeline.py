"""`slm build`: run [synth ->] data -> train [-> distill] -> eval -> export in runs/<name>/, skipping unchanged stages.

Each stage's fingerprint hashes its own config section and the fingerprints of the stages it reads,
so a plan (what would run, what would be skipped) is known before anything runs. With `synth` in the
stages, the teacher's rows join the data stage as one more source (same cleaning as real rows); with
`distill`, the distilled student is the run's model (eval compares it with the teacher, export ships it).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from slmkit.config import STAGE_ORDER, BuildConfig, redact
from slmkit.errors import SlmError
from slmkit.io import atomic_write_text
from slmkit.paths import check_writable_output
from slmkit.runs import fingerprint, is_done, read_manifest, register_model, stage_manifest

log = logging.getLogger("slmkit")

STAGES = STAGE_ORDER


def run_dir_of(cfg: BuildConfig) -> Path:
    out = Path(cfg.output_dir).expanduser()
    out = out if out.is_absolute() else Path.cwd() / out
    return check_writable_output(out) / cfg.name


def final_model_dir(cfg: BuildConfig, run_dir: Path) -> Path:
    """The run's model: the distilled student when the build distills, else the fine-tuned model."""
    return Path(run_dir) / ("distill" if "distill" in cfg.stages else "train") / "final"


def synth_rows_path(run_dir: Path) -> Path:
    return Path(run_dir) / "synth" / "rows.jsonl"


def _source_fp(cfg: BuildConfig) -> str:
    from slmkit.data import source_fingerprint

    if "synth" in cfg.stages and not (cfg.data.path or cfg.data.sources):
        return "synth-only"  # the teacher's rows are the whole data set; the synth fingerprint covers them
    return source_fingerprint(cfg)


def fingerprints(cfg: BuildConfig) -> dict[str, str]:
    """Expected fingerprint of every stage for this config."""
    dump = cfg.model_dump(mode="json")
    fp: dict[str, str] = {}
    if "synth" in cfg.stages:
        from slmkit.synth.run import synth_fingerprint

        fp["synth"] = synth_fingerprint(cfg.synth, Path(cfg.config_dir or "."))
    fp["data"] = fingerprint("data", dump["data"], {"source": _source_fp(cfg), **_pick(fp, "synth")})
    fp["train"] = fingerprint("train", {"model": dump["model"], "train": dump["train"]}, {"data": fp["data"]})
    if "distill" in cfg.stages:
        teacher = {"train": fp["train"]} if cfg.distill.teacher == "train" else {}
        fp["distill"] = fingerprint("distill", {"model": dump["model"], "distill": dump["distill"]}, {"data": fp["data"], **teacher})
    fp["eval"] = fingerprint("eval", {"model": dump["model"], "eval": dump["eval"]},
                             {"data": fp["data"], "train": fp["train"], **_pick(fp, "distill"), **_rag_input(cfg)})
    fp["export"] = fingerprint("export", dump["export"], {"train": fp["train"], "eval": fp["eval"], **_pick(fp, "distill")})
    return fp


def _rag_input(cfg: BuildConfig) -> dict[str, str]:
    """RAG eval reads a collection: re-indexing it must rerun eval even when the config is unchanged."""
    from slmkit.eval.rag import settings_from_config

    rag = settings_from_config(cfg, run_dir_of(cfg))
    if rag is None:
        return {}
    from slmkit.data.index import collection_digest

    return {"rag": collection_digest(rag.persist_dir, rag.collection)}


def _pick(fp: dict[str, str], key: str) -> dict[str, str]:
    return {key: fp[key]} if key in fp else {}


@dataclass
class StageOutcome:
    stage: str
    status: str  # ran | skipped
    summary: dict
    seconds: float


def run_stage(cfg: BuildConfig, run_dir: Path, stage: str, fp: dict[str, str], force: bool = False,
              resume: bool = False, show_progress: bool = True) -> StageOutcome:
    """Run one stage under its manifest unless it is already done with the same fingerprint."""
    if not force and is_done(run_dir, stage, fp[stage]):
        log.info("%s: inputs unchanged, skipped (use --force to rerun)", stage)
        return StageOutcome(stage, "skipped", read_manifest(run_dir, stage)["summary"], 0.0)
    _require_upstream(cfg, run_dir, stage, fp)
    dump = cfg.model_dump(mode="json")
    t0 = time.monotonic()
    with stage_manifest(run_dir, stage, fp[stage], dump.get(stage), {k: fp[k] for k in STAGES if k != stage and k in fp}) as summary:
        summary.update(_dispatch(cfg, run_dir, stage, resume, show_progress))
    return StageOutcome(stage, "ran", summary, time.monotonic() - t0)


def upstream(cfg: BuildConfig, stage: str) -> list[str]:
    """Stages whose outputs `stage` reads, for this config."""
    distills = "distill" in cfg.stages
    return {"synth": [],
            "data": ["synth"] if "synth" in cfg.stages else [],
            "train": ["data"],
            "distill": ["data"] + (["train"] if cfg.distill.teacher == "train" else []),
            "eval": ["data"] + (["distill"] if distills else []),
            "export": ["distill" if distills else "train"]}[stage]


def _require_upstream(cfg: BuildConfig, run_dir: Path, stage: str, fp: dict[str, str]) -> None:
    for up in upstream(cfg, stage):
        if not is_done(run_dir, up, fp[up]):
            raise SlmError(f"stage '{stage}' needs stage '{up}' done for this config, and it is not",
                           f"run `slm {up}` with the same config first, or `slm build`")


def data_config(cfg: BuildConfig, run_dir: Path) -> BuildConfig:
    """The config the data stage reads: with `synth` in the stages, the teacher's rows are one more source."""
    rows = synth_rows_path(run_dir)
    if "synth" not in cfg.stages or not rows.is_file():
        return cfg
    from slmkit.data.ingest import resolve_sources
    from slmkit.schema.data import SourceConfig

    sources = resolve_sources(cfg) if (cfg.data.path or cfg.data.sources) else []
    # Rows are canonical chat records; meta.synthetic (teacher, recipe, cache key) rides through cleaning.
    sources.append(SourceConfig(path=str(rows), type="jsonl", license=cfg.synth.license))
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"sources": sources, "path": None})})


def _dispatch(cfg: BuildConfig, run_dir: Path, stage: str, resume: bool, show_progress: bool) -> dict:
    if stage == "synth":
        from slmkit.synth.run import synthesize

        return synthesize(cfg.synth, run_dir, Path(cfg.config_dir or "."), show_progress=show_progress)
    if stage == "data":
        from slmkit.data import prepare

        return prepare(data_config(cfg, run_dir), run_dir / "data")
    if stage == "train":
        from slmkit.train.sft import train

        return train(cfg, run_dir, resume=resume, show_progress=show_progress)
    if stage == "distill":
        from slmkit.train.distill import distill

        return distill(cfg, run_dir, cfg.distill, resume=resume, show_progress=show_progress)
    if stage == "eval":
        from slmkit.eval.evaluate import evaluate

        task = read_manifest(run_dir, "data")["summary"]["task"]
        return evaluate(cfg, run_dir, task, show_progress=show_progress)
    from slmkit.export.formats import export_formats

    return export_formats(cfg, run_dir)


def build(cfg: BuildConfig, force: bool = False, resume: bool = False, show_progress: bool = True) -> list[StageOutcome]:
    """Run the configured stages in order; register the finished model."""
    run_dir = run_dir_of(cfg)
    import yaml

    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False))
    fp = fingerprints(cfg)
    outcomes = []
    for stage in cfg.stages:
        # A rerun upstream invalidates downstream via fingerprints; --force applies to every stage.
        outcomes.append(run_stage(cfg, run_dir, stage, fp, force=force, resume=resume and stage in ("train", "distill"),
                                  show_progress=show_progress))
    _register(cfg, run_dir, fp)
    return outcomes


def _register(cfg: BuildConfig, run_dir: Path, fp: dict[str, str]) -> None:
    final_stage = "distill" if "distill" in cfg.stages else "train"
    if not is_done(run_dir, final_stage, fp[final_stage]):
        return
    metrics = (read_manifest(run_dir, "eval") or {}).get("summary", {}).get("models", {}) if is_done(run_dir, "eval", fp["eval"]) else {}
    path = run_dir / "export" / "merged" if is_done(run_dir, "export", fp["export"]) else final_model_dir(cfg, run_dir)
    data = read_manifest(run_dir, "data")["summary"]
    register_model(cfg.name, cfg.model.base_model, data.get("source_sha256", ""), metrics, path)


# ----------------------------------------------------------------------------- dry run

def plan(cfg: BuildConfig) -> dict:
    """What `slm build` would do: stages and skips, row and token counts, a time estimate. Runs nothing."""
    run_dir = run_dir_of(cfg)
    fp = fingerprints(cfg)
    stages = [{"stage": s, "action": "skip (unchanged)" if is_done(run_dir, s, fp[s]) else "run"} for s in cfg.stages]
    out: dict = {"run_dir": str(run_dir), "stages": stages}
    if "synth" in cfg.stages:
        from slmkit.synth.run import plan as synth_plan

        sp = synth_plan(cfg.synth, run_dir, Path(cfg.config_dir or "."))
        out["synth"] = {k: sp[k] for k in ("calls", "cached", "more_at_most")}
        if not (cfg.data.path or cfg.data.sources) and not synth_rows_path(run_dir).is_file():
            return out  # rows exist only after the teacher has written them
    from slmkit.data import run as read_data

    dcfg = data_config(cfg, run_dir)
    groups, _chunks, summary, _ = read_data(dcfg)
    records = [r for split in groups.values() for r in split]
    tokens_per_row = _tokens_per_row(cfg, records)
    train_rows = len(groups["train"])
    steps = cfg.train.max_steps or math.ceil(cfg.train.epochs * math.ceil(train_rows / cfg.train.batch_size) / cfg.train.grad_accum)
    train_tokens = int(steps * cfg.train.batch_size * cfg.train.grad_accum * tokens_per_row)
    tok_s = estimate_train_tokens_per_s(cfg)
    return out | {"rows": len(records), "task": summary["task"],
                  "train_rows_est": train_rows, "tokens_per_row": round(tokens_per_row, 1), "train_steps": steps,
                  "train_tokens": train_tokens, "train_tokens_per_s_est": round(tok_s),
                  "train_minutes_est": round(train_tokens / tok_s / 60, 1)}


def _tokens_per_row(cfg: BuildConfig, records: list[dict]) -> float:
    from slmkit.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(cfg.model.base_model), cfg.model.trust_remote_code)
    sample = records[:200]
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in sample]
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) / max(len(texts), 1)


def estimate_train_tokens_per_s(cfg: BuildConfig) -> float:
    """Rough: measured fp32 matmul speed x an efficiency factor / (FLOPs per token).

    A LoRA step costs about 4 x params FLOPs per token (forward 2N, input-gradient backward 2N, no
    weight gradients); full fine-tuning about 6N (Kaplan et al. 2020). Efficiency 0.6 was measured on
    SmolLM2-135M here (LoRA: 240 tok/s against 160 GFLOP/s peak).
    """
    import torch

    from slmkit.hardware import setup_threads
    from slmkit.models import resolve_model

    setup_threads()
    a = torch.randn(1024, 1024)
    a @ a
    t0, n = time.perf_counter(), 8
    for _ in range(n):
        a @ a
    gflops = 2 * 1024**3 * n / (time.perf_counter() - t0)
    resolved = resolve_model(cfg.model.base_model)
    files = list(Path(resolved).glob("*.safetensors")) if isinstance(resolved, Path) else []
    params = sum(f.stat().st_size for f in files) / 4 if files else 135e6
    per_token = (4 if cfg.train.method == "lora" else 6) * params
    return 0.6 * gflops / per_token
