"""The train stage: supervised fine-tuning (LoRA or full) on canonical chat records, resumable from checkpoints.

    slm train CONFIG [--resume]        (or inside `slm build`)

With `train.search.enabled`, a budgeted recipe search (`search.py`, the same as `slm tune`) runs first and the
final model is trained with the best train section it found.

Reads <run>/data/{train,val}.jsonl, writes <run>/train/: checkpoints/step-N/ (atomic), final/,
log.jsonl, loss.png. Goes through accelerate, so `accelerate launch` / torchrun (DDP, FSDP,
DeepSpeed configs) run the same code on many devices.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from slmkit.config import BuildConfig
from slmkit.encoding import batch_order, steps_for
from slmkit.errors import SlmError
from slmkit.io import atomic_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from slmkit.models import load_model, load_tokenizer, resolve_model
from slmkit.runs import RunDir
from slmkit.train.balance import balance_records
from slmkit.train.bf16 import MICRO_TOKENS_BF16, native_bf16, store_frozen_in, use_fp32_attention
from slmkit.train.fused_layers import fuse_layers
from slmkit.train.loop import (
    MICRO_TOKENS,
    add_lora,
    batch_backward,
    checkpoint_if_due,
    encode_records,
    encode_split,
    evaluate_loss,
    latest_checkpoint,
    load_checkpoint,
    load_weights_from,
    make_accelerator,
    make_optimizer,
    micro_batch_size,
    optimizer_step,
    save_weights_to,
    setup_runtime,
)
from slmkit.train.losses import assistant_ce_loss
from slmkit.train.speed import compile_layers, compile_plan, warm_up
from slmkit.train.validate import carve_val, has_rows, make_validator

log = logging.getLogger("slmkit")


def _progress():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=False,
    )


def run(
    cfg: BuildConfig,
    run_dir: RunDir,
    *,
    resume: bool = False,
    show_progress: bool = True,
    on_validation: Callable[[int, float], bool] | None = None,
) -> dict:
    """Fine-tune cfg.model.base_model on the run's data (after the recipe search when `train.search.enabled`);
    return a summary for the manifest. `on_validation(step, value)` is called after each validation; True stops
    the run there (the search's pruner)."""
    from slmkit.train import search

    if cfg.train.search.enabled:
        best_cfg, found = search.tuned_config(cfg, run_dir, fine_tune)
        return fine_tune(best_cfg, run_dir, resume=resume, show_progress=show_progress) | {"search": found}
    summary = fine_tune(cfg, run_dir, resume=resume, show_progress=show_progress, on_validation=on_validation)
    return summary | search.recorded_search(cfg, run_dir)


def fine_tune(
    cfg: BuildConfig,
    run_dir: RunDir,
    *,
    resume: bool = False,
    show_progress: bool = True,
    on_validation: Callable[[int, float], bool] | None = None,
) -> dict:
    """One training run with cfg.train as it is (no search)."""
    t_cfg, run = cfg.train, RunDir(run_dir)
    out = run.stage_dir("train")
    if not run.split("train").is_file():
        raise SlmError(f"no training data at {run.split('train')}", "run `slm data CONFIG` (or `slm build`) first")
    hw = setup_runtime(t_cfg)
    lora, native = t_cfg.method == "lora", native_bf16(hw, t_cfg.method)
    accelerator = make_accelerator(hw, t_cfg.report_to, out, autocast=not native)
    torch.manual_seed(t_cfg.seed)
    resolved = resolve_model(cfg.model.base_model)
    tok = load_tokenizer(resolved, cfg.model.trust_remote_code)
    # Trained weights stay fp32; bf16/fp16 come from autocast (accelerate's mixed_precision), or for LoRA in bf16
    # on CPU from the frozen model stored in bf16 (train/bf16.py).
    model = load_model(resolved, "float32", "cpu", cfg.model.trust_remote_code)
    fp32_attention = native and hw.attention == "float32" and use_fp32_attention(model)
    if lora:
        model = add_lora(model, t_cfg.lora)
        if hw.dtype in ("bfloat16", "float16"):
            store_frozen_in(model, hw.dtype, every=native)  # autocast's matmuls without its per-call copies
    model.train()

    records, val_path = read_jsonl(run.split("train")), run.split("val")
    if t_cfg.eval_steps is not None and not has_rows(val_path):
        records, val_path = _carved_val(records, t_cfg, out)
    seed = t_cfg.seed if t_cfg.balance_seed is None else t_cfg.balance_seed
    records, balanced = balance_records(records, t_cfg.balance, seed)
    if t_cfg.balance != "off":
        log.info(
            "balance %s: %d -> %d train rows over %d answers",
            t_cfg.balance,
            balanced["rows_before"],
            balanced["rows_after"],
            balanced["answers"],
        )
    train_ex, cut = encode_records(tok, records, t_cfg.max_seq_len)
    del records
    val_ex, _ = encode_split(tok, val_path, t_cfg.max_seq_len) if has_rows(val_path) else ([], 0)
    if not train_ex:
        raise SlmError("every training row lost its answer to train.max_seq_len truncation", "raise train.max_seq_len")
    lengths = [len(e["input_ids"]) for e in train_ex]
    n_batches = math.ceil(len(train_ex) / t_cfg.batch_size)
    total_steps = steps_for(n_batches, t_cfg.grad_accum, t_cfg.epochs, t_cfg.max_steps)
    planned_tokens = total_steps * t_cfg.batch_size * t_cfg.grad_accum * sum(lengths) // len(lengths)
    use_compile, compile_why = compile_plan(t_cfg.compile, hw.device, planned_tokens, t_cfg.method)
    if use_compile:
        compile_layers(model)
    else:  # eager: norms and MLP products that keep less for the backward (the compiler fuses these itself)
        fuse_layers(model)

    params, optimizer, scheduler = make_optimizer(model, t_cfg, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    pad_id = tok.pad_token_id

    ckpt_root = run.checkpoints("train")
    validator = make_validator(cfg, run, tok, val_path)
    state = {"step": 0, "tokens": 0, "seconds": 0.0, "history": []}
    if resume and (ckpt := latest_checkpoint(ckpt_root)):
        state = load_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, scheduler, lora)
        log.info("resumed from %s (step %d of %d)", ckpt, state["step"], total_steps)
    elif not resume:
        for stale in (ckpt_root, run.train_best):  # a fresh run must not resume from someone else's checkpoints later
            if stale.exists():
                shutil.rmtree(stale)
    if validator is not None:
        validator.load(state.get("val"))
    accelerator.init_trackers("slmkit", config={"run": cfg.name, **t_cfg.model_dump()})

    log.info(
        "training %s on %d rows (%d cut by max_seq_len): %d steps, %s, %s; torch.compile %s",
        cfg.model.base_model,
        len(train_ex),
        cut,
        total_steps,
        t_cfg.method,
        hw.reason,
        compile_why,
    )
    window, t_start = [], time.monotonic()
    if use_compile and state["step"] < total_steps:  # compile time counts as training time (and shows in step 1)
        warm_up(model, accelerator.device, assistant_ce_loss, accelerator.autocast)
    micro_size = micro_batch_size(t_cfg, hw.device)
    per_epoch = math.ceil(n_batches / t_cfg.grad_accum) * t_cfg.grad_accum
    order_cache: dict[int, list[list[int]]] = {}
    rank, world = accelerator.process_index, accelerator.num_processes
    prog = _progress() if show_progress and accelerator.is_main_process else None
    task = prog.add_task("train", total=total_steps, completed=state["step"], loss="-") if prog else None
    if prog:
        prog.start()
    try:
        for step in range(state["step"], total_steps):
            for micro in range(t_cfg.grad_accum):
                epoch, pos = divmod(step * t_cfg.grad_accum + micro, per_epoch)
                order = order_cache.setdefault(epoch, batch_order(lengths, t_cfg.batch_size, t_cfg.seed, epoch))
                rows = order[pos % len(order)][rank::world] or order[pos % len(order)]
                loss, n_tok = batch_backward(
                    model,
                    [train_ex[i] for i in rows],
                    pad_id,
                    micro_size,
                    accelerator,
                    scale=1.0 / t_cfg.grad_accum,
                    budget=MICRO_TOKENS_BF16 if native else MICRO_TOKENS,
                )
                window.append(loss)
                state["tokens"] += n_tok
            optimizer_step(accelerator, params, optimizer, scheduler)
            state["step"] = step + 1
            if state["step"] % t_cfg.logging_steps == 0 or state["step"] == total_steps:
                entry = {
                    "step": state["step"],
                    "loss": sum(window) / len(window),
                    "lr": scheduler.get_last_lr()[0],
                    "tokens": state["tokens"],
                    "seconds": round(state["seconds"] + time.monotonic() - t_start, 2),
                }
                state["history"].append(entry)
                accelerator.log({"train/loss": entry["loss"], "train/lr": entry["lr"]}, step=state["step"])
                log.info("step %d/%d loss %.4f", state["step"], total_steps, entry["loss"])
                window = []
                if prog:
                    prog.update(task, loss=f"{entry['loss']:.4f}")
            if prog:
                prog.update(task, completed=state["step"])
            if validator is not None and validator.due(state["step"], total_steps):
                t_val = time.monotonic()
                value = validator.score(accelerator.unwrap_model(model), tok, accelerator.autocast)
                t_val = time.monotonic() - t_val
                t_start += t_val  # validation time is not training time (tokens/s); it is reported on its own
                step_s = (state["seconds"] + time.monotonic() - t_start) / max(state["step"], 1)
                if validator.record(state["step"], value, t_val, total_steps, step_s) and accelerator.is_main_process:
                    save_weights_to(run.train_best, accelerator.unwrap_model(model), lora)
                log.info(
                    "step %d val %s %.4f (best %.4f at step %d)",
                    state["step"],
                    validator.metric,
                    value,
                    validator.best["value"],
                    validator.best["step"],
                )
                accelerator.log({f"val/{validator.metric}": value}, step=state["step"])
                state["val"] = validator.state()
                if on_validation is not None and on_validation(state["step"], value) and state["step"] < total_steps:
                    log.info("stopped at step %d by the recipe search's pruner", state["step"])
                    state["pruned"] = state["step"]
                    break
                if validator.should_stop and state["step"] < total_steps:
                    log.info(
                        "early stop at step %d: no val %s gain in %d validations",
                        state["step"],
                        validator.metric,
                        validator.since_best,
                    )
                    state["early_stopped"] = state["step"]
                    break
            t_start = checkpoint_if_due(
                ckpt_root, state, t_start, total_steps, t_cfg, accelerator, model, optimizer, scheduler, lora
            )
    finally:
        if prog:
            prog.stop()
    state["seconds"] += time.monotonic() - t_start
    if window:  # an early stop between logging steps: the last losses still count
        state["history"].append(
            {
                "step": state["step"],
                "loss": sum(window) / len(window),
                "lr": scheduler.get_last_lr()[0],
                "tokens": state["tokens"],
                "seconds": round(state["seconds"], 2),
            }
        )
    best = validator.best if validator is not None else None
    if best is not None and t_cfg.load_best_model_at_end and best["step"] != state["step"]:
        if run.train_best.is_dir():
            load_weights_from(run.train_best, accelerator.unwrap_model(model), lora)
            log.info("kept the weights of step %d (val %s %.4f)", best["step"], validator.metric, best["value"])
        else:  # a resumed run whose train/best/ is gone: the last weights are what there is
            log.warning("train/best/ is missing: keeping the last step's weights, not step %d's", best["step"])
            best = {"step": state["step"], "value": validator.history[-1]["value"]}

    val_loss = evaluate_loss(model, val_ex, pad_id, t_cfg.batch_size, accelerator.autocast)
    accelerator.log({"val/loss": val_loss} if val_loss is not None else {}, step=state["step"])
    accelerator.end_training()
    summary = {
        "steps": state["step"],
        "final_loss": state["history"][-1]["loss"],
        "val_loss": val_loss,
        "train_rows": len(train_ex),
        "rows_cut": cut,
        "tokens": state["tokens"],
        "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "seconds": round(state["seconds"], 2),
        "tokens_per_s": round(state["tokens"] / max(state["seconds"], 1e-9), 1),
        "method": t_cfg.method,
        "device": hw.device,
        "dtype": hw.dtype,
        "precision": "bf16 weights" if native else ("autocast" if hw.dtype != "float32" else "fp32"),
        "attention_dtype": "float32" if fp32_attention else None,
        "compiled": use_compile,
        "planned_steps": total_steps,
        "early_stopped_at": state.get("early_stopped"),
        "balance": balanced,
    }
    if "pruned" in state:
        summary["pruned_at"] = state["pruned"]
    if validator is not None:
        summary |= {
            "val_metric": validator.metric,
            "val_task": validator.task,
            "val_rows": len(validator.refs),
            "val_source": "data" if val_path == run.split("val") else str(val_path),  # else: rows held out of train
            "val_history": validator.history,
            "best_step": best["step"],
            "best_val": best["value"],
            "kept": "best" if t_cfg.load_best_model_at_end else "last",
            "val_seconds": round(sum(h["seconds"] for h in validator.history), 2),
        }
    if accelerator.is_main_process:
        write_final(run.train_final, accelerator.unwrap_model(model), tok, cfg, summary)
        atomic_write_text(run.train_log("train"), "".join(json.dumps(h) + "\n" for h in state["history"]))
        _plot_loss(state["history"], val_loss, run.loss_plot("train"))
        if validator is not None and validator.history:
            _plot_val(validator, run.val_plot)
    return summary


def write_final(dest: Path, model, tok, cfg: BuildConfig, summary: dict) -> None:
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)  # adapter only for LoRA, full weights otherwise
        tok.save_pretrained(tmp)
        atomic_write_json(
            tmp / "slmkit.json",
            {
                "base_model": cfg.model.base_model,
                "method": cfg.train.method,
                "trust_remote_code": cfg.model.trust_remote_code,
                "train": summary,
            },
        )


def _plot_val(validator, path) -> None:
    try:
        from slmkit.plots import loss_curve
    except ImportError:
        return
    points = [(h["step"], h["value"]) for h in validator.history]
    loss_curve(
        {f"val {validator.metric}": points}, path, title=f"Validation {validator.metric}", ylabel=validator.metric
    )


def _plot_loss(history: list[dict], val_loss: float | None, path: Path) -> None:
    try:
        from slmkit.plots import loss_curve
    except ImportError:  # matplotlib missing: the loss log is still written
        return
    series = {"train": [(h["step"], h["loss"]) for h in history]}
    if val_loss is not None and history:
        series["val (final)"] = [(history[-1]["step"], val_loss)]
    loss_curve(series, path)


def _carved_val(records: list[dict], t_cfg, out: Path) -> tuple[list[dict], Path]:
    """No val split, validation on: hold some train rows out (validate.carve_val) into train/val.jsonl, and say so."""
    records, val = carve_val(records, t_cfg, t_cfg.seed)
    path = out / "val.jsonl"
    path.unlink(missing_ok=True)  # an earlier run's
    if not val:
        log.warning("no val split and only %d train rows: training without validation", len(records))
        return records, path
    atomic_write_jsonl(path, val)
    log.warning(
        "no val split in the data: validating on %d train rows held out into %s (not trained on); set "
        "data.split.val to choose the share, or train.eval_steps: null to train on every row",
        len(val),
        path,
    )
    return records, path
