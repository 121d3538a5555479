"""`slm build`: run [synth ->] data -> train [-> distill] -> eval -> export in runs/<name>/, skipping unchanged stages.

STAGES is the table of stages: each is a package with `stage.run(cfg, run_dir, *, resume, show_progress) -> dict`.
This module and cli.py are the only ones that import stages; stages talk only through files in the run folder.

Each stage's fingerprint hashes its own config section and the fingerprints of the stages it reads,
so a plan (what would run, what would be skipped) is known before anything runs. With `synth` in the
stages, the teacher's rows join the data stage as one more source (same cleaning as real rows); with
`distill`, the distilled student is the run's model (eval compares it with the teacher, export ships it).
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from slmkit.config import STAGE_ORDER, BuildConfig, redact
from slmkit.data import source_fingerprint
from slmkit.errors import SlmError
from slmkit.io import atomic_write_text
from slmkit.runs import RunDir, fingerprint, is_done, read_manifest, register_model, stage_manifest

log = logging.getLogger("slmkit")

# The stages, in the order data flows through them (`slm build` always runs them in this order).
STAGES: dict[str, str] = {
    "synth": "slmkit.synth.stage",  # teacher-written rows -> synth/rows.jsonl
    "data": "slmkit.data.stage",  # sources (+ synth rows) -> data/{train,val,test}.jsonl
    "train": "slmkit.train.stage",  # SFT -> train/final
    "distill": "slmkit.distill.stage",  # teacher -> student -> distill/final
    "eval": "slmkit.eval.stage",  # test split -> eval/metrics.json
    "export": "slmkit.export.stage",  # the run's model -> export/*
}
assert tuple(STAGES) == STAGE_ORDER


def stage_module(stage: str):
    """The stage's `stage` module (imported on first use: stages pull in torch)."""
    return importlib.import_module(STAGES[stage])


def _source_fp(cfg: BuildConfig) -> str:
    if "synth" in cfg.stages and not (cfg.data.path or cfg.data.sources):
        return "synth-only"  # the teacher's rows are the whole data set; the synth fingerprint covers them
    return source_fingerprint(cfg)


def fingerprints(cfg: BuildConfig) -> dict[str, str]:
    """Expected fingerprint of every stage for this config."""
    dump = cfg.model_dump(mode="json")
    fp: dict[str, str] = {}
    if "synth" in cfg.stages:
        from slmkit.synth.stage import synth_fingerprint

        fp["synth"] = synth_fingerprint(cfg.synth, Path(cfg.config_dir or "."))
    fp["data"] = fingerprint("data", dump["data"], {"source": _source_fp(cfg), **_pick(fp, "synth")})
    fp["train"] = fingerprint("train", {"model": dump["model"], "train": dump["train"]}, {"data": fp["data"]})
    if "distill" in cfg.stages:
        teacher = {"train": fp["train"]} if cfg.distill.teacher == "train" else {}
        fp["distill"] = fingerprint(
            "distill", {"model": dump["model"], "distill": dump["distill"]}, {"data": fp["data"], **teacher}
        )
    fp["eval"] = fingerprint(
        "eval",
        {"model": dump["model"], "eval": dump["eval"]},
        {"data": fp["data"], "train": fp["train"], **_pick(fp, "distill"), **_rag_input(cfg)},
    )
    fp["export"] = fingerprint(
        "export", dump["export"], {"train": fp["train"], "eval": fp["eval"], **_pick(fp, "distill")}
    )
    return fp


def _rag_input(cfg: BuildConfig) -> dict[str, str]:
    """RAG eval reads a collection: re-indexing it must rerun eval even when the config is unchanged."""
    from slmkit.chroma import collection_digest
    from slmkit.eval.rag import settings_from_config

    rag = settings_from_config(cfg, RunDir.of(cfg).root)
    if rag is None:
        return {}

    return {"rag": collection_digest(rag.persist_dir, rag.collection)}


def _pick(fp: dict[str, str], key: str) -> dict[str, str]:
    return {key: fp[key]} if key in fp else {}


@dataclass
class StageOutcome:
    stage: str
    status: str  # ran | skipped
    summary: dict
    seconds: float


def run_stage(
    cfg: BuildConfig,
    run_dir: RunDir,
    stage: str,
    fp: dict[str, str],
    force: bool = False,
    resume: bool = False,
    show_progress: bool = True,
) -> StageOutcome:
    """Run one stage under its manifest unless it is already done with the same fingerprint."""
    run_dir = RunDir.of_config(cfg, run_dir)
    if not force and is_done(run_dir, stage, fp[stage]):
        log.info("%s: inputs unchanged, skipped (use --force to rerun)", stage)
        return StageOutcome(stage, "skipped", read_manifest(run_dir, stage)["summary"], 0.0)
    require_upstream(cfg, run_dir, stage, fp)
    dump = cfg.model_dump(mode="json")
    t0 = time.monotonic()
    with stage_manifest(
        run_dir, stage, fp[stage], dump.get(stage), {k: fp[k] for k in STAGES if k != stage and k in fp}
    ) as summary:
        summary.update(_dispatch(cfg, run_dir, stage, resume, show_progress))
    return StageOutcome(stage, "ran", summary, time.monotonic() - t0)


def upstream(cfg: BuildConfig, stage: str) -> list[str]:
    """Stages whose outputs `stage` reads, for this config."""
    distills = "distill" in cfg.stages
    return {
        "synth": [],
        "data": ["synth"] if "synth" in cfg.stages else [],
        "train": ["data"],
        "distill": ["data"] + (["train"] if cfg.distill.teacher == "train" else []),
        "eval": ["data"] + (["distill"] if distills else []),
        "export": ["distill" if distills else "train"],
    }[stage]


def require_upstream(cfg: BuildConfig, run_dir: RunDir, stage: str, fp: dict[str, str] | None = None) -> None:
    """An SlmError unless every stage `stage` reads is done with this config's fingerprint."""
    fp = fp or fingerprints(cfg)
    for up in upstream(cfg, stage):
        if not is_done(run_dir, up, fp[up]):
            raise SlmError(
                f"stage '{stage}' needs stage '{up}' done for this config, and it is not",
                f"run `slm {up}` with the same config first, or `slm build`",
            )


def _dispatch(cfg: BuildConfig, run_dir: RunDir, stage: str, resume: bool, show_progress: bool) -> dict:
    return stage_module(stage).run(cfg, run_dir, resume=resume, show_progress=show_progress)


def build(
    cfg: BuildConfig, force: bool = False, resume: bool = False, show_progress: bool = True
) -> list[StageOutcome]:
    """Run the configured stages in order; register the finished model."""
    run_dir = RunDir.of(cfg)
    import yaml

    atomic_write_text(run_dir.config_file, yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False))
    fp = fingerprints(cfg)
    outcomes = []
    for stage in cfg.stages:
        # A rerun upstream invalidates downstream via fingerprints; --force applies to every stage.
        outcomes.append(
            run_stage(
                cfg,
                run_dir,
                stage,
                fp,
                force=force,
                resume=resume and stage in ("train", "distill"),
                show_progress=show_progress,
            )
        )
    _register(cfg, run_dir, fp)
    return outcomes


def _register(cfg: BuildConfig, run_dir: RunDir, fp: dict[str, str]) -> None:
    run_dir = RunDir.of_config(cfg, run_dir)
    final_stage = "distill" if "distill" in cfg.stages else "train"
    if not is_done(run_dir, final_stage, fp[final_stage]):
        return
    metrics = (
        (read_manifest(run_dir, "eval") or {}).get("summary", {}).get("models", {})
        if is_done(run_dir, "eval", fp["eval"])
        else {}
    )
    path = run_dir.merged if is_done(run_dir, "export", fp["export"]) else run_dir.final_model
    data = read_manifest(run_dir, "data")["summary"]
    register_model(cfg.name, cfg.model.base_model, data.get("source_sha256", ""), metrics, path)


# ----------------------------------------------------------------------------- dry run


def plan(cfg: BuildConfig) -> dict:
    """What `slm build` would do: stages and skips, row and token counts, a time estimate. Runs nothing."""
    run_dir = RunDir.of(cfg)
    fp = fingerprints(cfg)
    stages = [{"stage": s, "action": "skip (unchanged)" if is_done(run_dir, s, fp[s]) else "run"} for s in cfg.stages]
    out: dict = {"run_dir": str(run_dir), "stages": stages}
    if "synth" in cfg.stages:
        from slmkit.synth.stage import plan as synth_plan

        sp = synth_plan(cfg.synth, run_dir.root, Path(cfg.config_dir or "."))
        out["synth"] = {k: sp[k] for k in ("calls", "cached", "more_at_most")}
        if not (cfg.data.path or cfg.data.sources) and not run_dir.synth_rows.is_file():
            return out  # rows exist only after the teacher has written them
    from slmkit.data import load_records, with_synth_rows

    groups, _chunks, summary, _ = load_records(with_synth_rows(cfg, run_dir))
    records = [r for split in groups.values() for r in split]
    tokens_per_row = _tokens_per_row(cfg, records)
    train_rows = len(groups["train"])
    steps = cfg.train.max_steps or math.ceil(
        cfg.train.epochs * math.ceil(train_rows / cfg.train.batch_size) / cfg.train.grad_accum
    )
    train_tokens = int(steps * cfg.train.batch_size * cfg.train.grad_accum * tokens_per_row)
    tok_s = estimate_train_tokens_per_s(cfg)
    if cfg.train.search.enabled:  # the search plans its trials and caps the final training inside its budget
        sc = cfg.train.search
        final = sc.budget_minutes * (sc.final_share or 0.0)
        out["search"] = {
            "budget_minutes": sc.budget_minutes,
            "search_minutes": round(sc.budget_minutes - final, 1),
            "final_minutes": round(final, 1) if sc.final_share is not None else None,
            "trials_at_most": sc.trials,
        }
    return out | {
        "rows": len(records),
        "task": summary["task"],
        "train_rows_est": train_rows,
        "tokens_per_row": round(tokens_per_row, 1),
        "train_steps": steps,
        "train_tokens": train_tokens,
        "train_tokens_per_s_est": round(tok_s),
        "train_minutes_est": round(train_tokens / tok_s / 60, 1),
    }


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
