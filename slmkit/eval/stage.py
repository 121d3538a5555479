"""The eval stage: generate on the test split and score base, trained (and distilled) models side by side.

    slm eval CONFIG        (or inside `slm build`)

Writes <run>/eval/: predictions.jsonl (one row per example and model), metrics.json, metrics.md
(the table), metrics.png (bar chart) and report.html (self-contained comparison page).
"""

from __future__ import annotations

import logging
from pathlib import Path

from slmkit.config import BuildConfig
from slmkit.errors import SlmError
from slmkit.eval.decode import generate_with_progress, load_test_split, max_new_tokens_for
from slmkit.eval.metrics import compute_metrics, confusion_matrix
from slmkit.eval.quality import assess, warnings_for
from slmkit.eval.rag import prediction_rows, settings_from_config, variants
from slmkit.eval.tables import metrics_table_md
from slmkit.hardware import detect, setup_threads
from slmkit.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from slmkit.models import load_model, load_tokenizer, resolve_model
from slmkit.runs import RunDir, read_manifest

log = logging.getLogger("slmkit")


def _models_to_compare(cfg: BuildConfig, run: RunDir) -> dict[str, tuple[Path | str, Path | None]]:
    """name -> (model folder or hub id, optional adapter folder)."""
    base = resolve_model(cfg.model.base_model)
    final = run.train_final
    models: dict[str, tuple[Path | str, Path | None]] = {}
    if cfg.eval.compare_base or not final.is_dir():
        models["base"] = (base, None)
    if (final / "adapter_config.json").is_file():
        models["trained"] = (base, final)
    elif (final / "config.json").is_file():
        models["trained"] = (final, None)
    student = run.distill_final
    if "distill" in cfg.stages and (student / "config.json").is_file():
        models["student"] = (student, None)  # the distilled student beside its teacher
    return models


def run(
    cfg: BuildConfig, run_dir: RunDir, *, resume: bool = False, show_progress: bool = True, task: str | None = None
) -> dict:
    """Score every model of the run on the test split; return {"task", "n", "models": {name: metrics}}.

    `task`: the data stage's (read from its manifest when not given); `resume` has nothing to resume here.
    """
    run = RunDir(run_dir)
    if task is None:
        task = ((read_manifest(run.root, "data") or {}).get("summary") or {}).get("task")
    prompts, refs = load_test_split(run.split("test"), cfg.eval.max_examples)
    task = _task_for(cfg, task, refs)
    rag = settings_from_config(cfg, run.root)
    # Retrieval (and its missing-collection error) happens before any model is loaded.
    prompt_sets = variants(prompts, prompts, rag)  # this stage reports no perplexity: conversations go unused
    hw = detect(cfg.train.device, "float32")
    setup_threads()
    results: dict[str, dict] = {}
    predictions: list[dict] = []
    confusion: dict[str, dict] = {}
    quality: dict[str, dict] = {}
    for name, (model_path, adapter) in _models_to_compare(cfg, run).items():
        tok = load_tokenizer(adapter or model_path, cfg.model.trust_remote_code)
        model = load_model(model_path, hw.dtype, hw.device, cfg.model.trust_remote_code, adapter=adapter)
        new_tokens = max_new_tokens_for(tok, refs, task, cfg.eval.max_new_tokens)
        for variant in prompt_sets:
            vname = name + variant.suffix
            preds = generate_with_progress(
                model, tok, variant.prompts, new_tokens, cfg.eval.batch_size, vname, show_progress
            )
            results[vname] = compute_metrics(preds, refs, task)
            quality[vname] = assess(preds, refs, task)
            if task == "classification":
                confusion[vname] = confusion_matrix(preds, refs)
            predictions += prediction_rows(vname, variant, prompts, refs, preds)
            log.info("eval %s: %s", vname, {k: round(v, 4) for k, v in results[vname].items()})
        del model
    out = run.eval_dir
    summary = {"task": task, "n": len(refs), "models": results, "quality": quality} | (
        {"rag": rag.describe()} if rag else {}
    )
    summary["warnings"] = warnings_for(summary, skip=("base",))
    for w in summary["warnings"]:
        log.warning("eval: %s", w)
    atomic_write_jsonl(out / "predictions.jsonl", predictions)
    atomic_write_json(run.eval_metrics, summary)
    atomic_write_text(out / "metrics.md", metrics_table_md(summary))
    try:
        from slmkit.plots import metric_bars

        metric_bars(results, out / "metrics.png", title=f"{cfg.name}: test split ({len(refs)} examples)")
    except (ImportError, SlmError) as e:  # a chart is a nicety; the numbers are written already
        log.warning("metrics chart skipped: %s", e)
    from slmkit.eval.report import read_loss_series, read_search, read_val_series, write_report

    write_report(
        out / "report.html",
        summary,
        predictions,
        confusion,
        read_loss_series({cfg.name: run.root}),
        title=f"{cfg.name}: evaluation",
        val_series=read_val_series({cfg.name: run.root}),
        search=read_search({cfg.name: run.root}),
    )
    return summary


def _task_for(cfg: BuildConfig, task: str, refs: list[str]) -> str:
    """eval.task when set, else the data stage's (generation refined to math or qa by the answers: metrics.task_of)."""
    from slmkit.eval.metrics import task_of

    return cfg.eval.task if cfg.eval.task != "auto" else task_of(task, refs)
