"""Generate on the test split and score: base model and trained model side by side.

Writes <run>/eval/: predictions.jsonl (one row per example and model), metrics.json, metrics.md
(the table), metrics.png (bar chart) and report.html (self-contained comparison page).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from slmkit.config import BuildConfig
from slmkit.errors import SlmError
from slmkit.eval.metrics import compute_metrics, confusion_matrix
from slmkit.eval.rag import prediction_rows, settings_from_config, variants
from slmkit.hardware import detect, setup_threads
from slmkit.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from slmkit.models import load_model, load_tokenizer, resolve_model
from slmkit.train.collate import prompt_messages

log = logging.getLogger("slmkit")


@torch.no_grad()
def generate(model, tok, conversations: list[list[dict]], max_new_tokens: int, batch_size: int,
             on_batch=None) -> list[str]:
    """Greedy replies for each conversation (left-padded batches, longest-first to waste less)."""
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        for i, row in zip(idx, gen[:, enc["input_ids"].shape[1]:]):
            out[i] = tok.decode(row, skip_special_tokens=True).strip()
        if on_batch:
            on_batch(len(idx))
    return out


def load_test_split(path: Path, max_examples: int | None) -> tuple[list[list[dict]], list[str]]:
    if not path.is_file():
        raise SlmError(f"no test split at {path}", "run the data stage first (`slm data CONFIG`)")
    rows = read_jsonl(path)[:max_examples]
    if not rows:
        raise SlmError(f"test split {path} is empty", "raise data.split.test or add rows so some land in the test split")
    prompts = [prompt_messages(r["messages"]) for r in rows]
    refs = [r["label"] if r.get("label") is not None else r["messages"][-1]["content"] for r in rows]
    return prompts, refs


def _models_to_compare(cfg: BuildConfig, run_dir: Path) -> dict[str, tuple[Path | str, Path | None]]:
    """name -> (model folder or hub id, optional adapter folder)."""
    base = resolve_model(cfg.model.base_model)
    final = run_dir / "train" / "final"
    models: dict[str, tuple[Path | str, Path | None]] = {}
    if cfg.eval.compare_base or not final.is_dir():
        models["base"] = (base, None)
    if (final / "adapter_config.json").is_file():
        models["trained"] = (base, final)
    elif (final / "config.json").is_file():
        models["trained"] = (final, None)
    student = run_dir / "distill" / "final"
    if "distill" in cfg.stages and (student / "config.json").is_file():
        models["student"] = (student, None)  # the distilled student beside its teacher
    return models


def _max_new_tokens(tok, refs: list[str], task: str, cap: int) -> int:
    if task != "classification":
        return cap
    # Labels are short: a few tokens past the longest one is enough to read the answer.
    return min(cap, max(len(tok(r, add_special_tokens=False)["input_ids"]) for r in refs) + 8)


def evaluate(cfg: BuildConfig, run_dir: Path, task: str, show_progress: bool = True) -> dict:
    """Score every model of the run on the test split; return {"task", "n", "models": {name: metrics}}."""
    run_dir = Path(run_dir)
    prompts, refs = load_test_split(run_dir / "data" / "test.jsonl", cfg.eval.max_examples)
    task = _task_for(cfg, task, refs)
    rag = settings_from_config(cfg, run_dir)
    # Retrieval (and its missing-collection error) happens before any model is loaded.
    prompt_sets = variants(prompts, prompts, rag)  # this stage reports no perplexity: conversations go unused
    hw = detect(cfg.train.device, "float32")
    setup_threads()
    results: dict[str, dict] = {}
    predictions: list[dict] = []
    confusion: dict[str, dict] = {}
    for name, (model_path, adapter) in _models_to_compare(cfg, run_dir).items():
        tok = load_tokenizer(adapter or model_path, cfg.model.trust_remote_code)
        model = load_model(model_path, hw.dtype, hw.device, cfg.model.trust_remote_code, adapter=adapter)
        new_tokens = _max_new_tokens(tok, refs, task, cfg.eval.max_new_tokens)
        for variant in prompt_sets:
            vname = name + variant.suffix
            preds = _generate_with_progress(model, tok, variant.prompts, new_tokens, cfg.eval.batch_size, vname,
                                            show_progress)
            results[vname] = compute_metrics(preds, refs, task)
            if task == "classification":
                confusion[vname] = confusion_matrix(preds, refs)
            predictions += prediction_rows(vname, variant, prompts, refs, preds)
            log.info("eval %s: %s", vname, {k: round(v, 4) for k, v in results[vname].items()})
        del model
    out = run_dir / "eval"
    summary = {"task": task, "n": len(refs), "models": results} | ({"rag": rag.describe()} if rag else {})
    atomic_write_jsonl(out / "predictions.jsonl", predictions)
    atomic_write_json(out / "metrics.json", summary)
    atomic_write_text(out / "metrics.md", metrics_table_md(summary))
    try:
        from slmkit.plots import metric_bars

        metric_bars(results, out / "metrics.png", title=f"{cfg.name}: test split ({len(refs)} examples)")
    except (ImportError, SlmError) as e:  # a chart is a nicety; the numbers are written already
        log.warning("metrics chart skipped: %s", e)
    from slmkit.eval.report import read_loss_series, write_report

    write_report(out / "report.html", summary, predictions, confusion, read_loss_series({cfg.name: run_dir}),
                 title=f"{cfg.name}: evaluation")
    return summary


def _task_for(cfg: BuildConfig, task: str, refs: list[str]) -> str:
    """eval.task when set (a proposed EvalConfig field), else the data stage's; GSM8K-style answers score as math."""
    from slmkit.eval.metrics import infer_task

    configured = cfg.eval.task
    if configured != "auto":
        return configured
    if task in (None, "auto"):
        return infer_task(refs)
    return "math" if task == "generation" and infer_task(refs) == "math" else task


def _generate_with_progress(model, tok, prompts, new_tokens, batch_size, name, show_progress) -> list[str]:
    if not show_progress:
        return generate(model, tok, prompts, new_tokens, batch_size)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"[bold]eval {name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn()) as prog:
        task = prog.add_task(name, total=len(prompts))
        return generate(model, tok, prompts, new_tokens, batch_size, on_batch=lambda n: prog.advance(task, n))


def _generate_backend_with_progress(backend, prompts, new_tokens, batch_size, name, show_progress) -> list[str]:
    """Like _generate_with_progress, for any eval backend (torch, GGUF, ONNX, pt2)."""
    if not show_progress:
        return backend.generate(prompts, new_tokens, batch_size)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"[bold]eval {name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn()) as prog:
        task = prog.add_task(name, total=len(prompts))
        return backend.generate(prompts, new_tokens, batch_size, on_batch=lambda n: prog.advance(task, n))


def metric_keys(summary: dict) -> list[str]:
    """Metric names in first-seen order over all models (models may differ: perplexity needs a torch model)."""
    keys: dict[str, None] = {}
    for m in summary["models"].values():
        keys.update((k, None) for k in m if k != "n")
    return list(keys)


def _fmt(m: dict, k: str, digits: int) -> str:
    return f"{m[k]:.{digits}f}" if isinstance(m.get(k), (int, float)) else "-"


def metrics_table_md(summary: dict) -> str:
    keys = metric_keys(summary)
    lines = [f"Task: {summary['task']}, {summary['n']} test examples", "",
             "| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in summary["models"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m, k, 4) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def print_table(summary: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = metric_keys(summary)
    table = Table(title=f"{summary['task']} · {summary['n']} test examples")
    table.add_column("model")
    for k in keys:
        table.add_column(k, justify="right")
    for name, m in summary["models"].items():
        table.add_row(name, *(_fmt(m, k, 3) for k in keys))
    (console or Console()).print(table)
