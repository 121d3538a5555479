"""The distill stage: distill a teacher into a student, online, from an offline top-k cache, or on-policy (GKD).

    slm distill CONFIG [--resume]        (or inside `slm build` when `stages` lists distill)

Reads <run>/data/{train,val}.jsonl, writes <run>/distill/: student_init/ (when the student is pruned from
the teacher), cache/ (offline mode), checkpoints/step-N/, final/ (full student weights + tokenizer +
slmkit.json), log.jsonl, loss.png. The loop uses the train stage's library (train/loop.py): accelerate, AdamW,
the same micro-batches and checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from slmkit.config import BuildConfig, DistillConfig, DistillTrainConfig, PruneSpec, StudentConfig  # noqa: F401 (re-exported)
from slmkit.distill.kd_head import topk_forward_kl_head
from slmkit.distill.kd_losses import (
    assistant_mask,
    divergence,
    kd_mask,
    labelled_logits,
    log_probs,
    masked_mean,
    mix_with_ce,
    topk_student_log_probs,
    topk_teacher_log_probs,
)
from slmkit.distill.setup import _config, _setup, build_teacher_cache, cache_folder  # noqa: F401 (re-exported)
from slmkit.encoding import IGNORE, batch_order, collate, steps_for
from slmkit.errors import SlmError
from slmkit.io import atomic_dir, atomic_write_json, atomic_write_text
from slmkit.runs import RunDir
from slmkit.train import (
    add_lora,
    bias_free_linear,
    checkpoint_if_due,
    labelled_hidden,
    latest_checkpoint,
    load_checkpoint,
    make_accelerator,
    make_optimizer,
    optimizer_step,
    setup_runtime,
)

log = logging.getLogger("slmkit")


# ----------------------------------------------------------------------------- per-step pieces


def on_policy_batch(
    student, rows: list[dict], pad_id: int, eos_id: int, max_new_tokens: int
) -> dict[str, torch.Tensor]:
    """GKD (Agarwal et al. 2024): replace each reply by a sampled student continuation of its prompt; labels on it."""
    prompts = [e["input_ids"][: next(i for i, t in enumerate(e["labels"]) if t != IGNORE)] for e in rows]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):  # left padding, so generation continues every row at the same column
        ids[r, width - len(p) :], mask[r, width - len(p) :] = torch.tensor(p), 1
    was_training = student.training
    student.eval()
    with torch.no_grad():
        out = student.generate(
            input_ids=ids.to(student.device),
            attention_mask=mask.to(student.device),
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        ).cpu()
    student.train(was_training)
    new = []
    for p, row in zip(prompts, out[:, width:].tolist()):
        cut = row.index(eos_id) + 1 if eos_id in row else len(row)
        new.append({"input_ids": p + row[:cut], "labels": [IGNORE] * len(p) + row[:cut]})
    return collate(new, pad_id)


def _fusable(found, dcfg: DistillConfig) -> bool:
    """The fused head + top-k forward KL applies: forward KL (or JSD at beta 0) and a plain bias-free Linear head."""
    if found is None or not (dcfg.loss == "forward_kl" or (dcfg.loss == "jsd" and dcfg.beta == 0.0)):
        return False
    return bias_free_linear(found[1])  # a LoRA-wrapped head takes the generic path


def step_loss(
    student, batch: dict, dcfg: DistillConfig, teacher=None, cached=None, use_ce: bool = True
) -> tuple[torch.Tensor, float]:
    """(loss to backprop, KD value) for one batch. `teacher` (online) or `cached` = (ids, logprobs, missing)."""
    keep = kd_mask(batch["labels"], batch["attention_mask"], dcfg.kd_positions)
    lab = assistant_mask(batch["labels"])
    T = dcfg.temperature
    found = labelled_hidden(student, batch["input_ids"], batch["attention_mask"], keep)
    if cached is not None and _fusable(found, dcfg):  # offline, the common case: no [N, V] autograd graph
        hidden, head = found
        ids, vals, miss = (x.to(hidden.device) for x in cached)
        kd = masked_mean(topk_forward_kl_head(hidden, head.weight, ids, topk_teacher_log_probs(vals, miss), T))
        s_logits_ce = head(hidden[lab[keep]]) if use_ce and dcfg.alpha > 0 else None  # the few assistant positions
    else:
        s_logits = (
            found[1](found[0])
            if found is not None
            else labelled_logits(student, batch["input_ids"], batch["attention_mask"], keep)
        )  # not a plain head: full logits
        if cached is not None:
            ids, vals, miss = (x.to(s_logits.device) for x in cached)
            s_logp, t_logp = topk_student_log_probs(s_logits, ids, T), topk_teacher_log_probs(vals, miss)
        else:
            with torch.no_grad():
                t_logp = log_probs(labelled_logits(teacher, batch["input_ids"], batch["attention_mask"], keep), T)
            s_logp = log_probs(s_logits, T)
        kd = masked_mean(divergence(dcfg.loss, s_logp, t_logp, dcfg.beta, dcfg.skew))
        del t_logp  # free the teacher's [N, V] before backward
        s_logits_ce = s_logits[lab[keep]] if use_ce and dcfg.alpha > 0 else None
    ce = None
    if s_logits_ce is not None:  # CE on the assistant positions among the KD positions (all of them by default)
        ce = F.cross_entropy(s_logits_ce.float(), batch["labels"][:, 1:][lab])
    return mix_with_ce(kd, ce, dcfg.alpha if ce is not None else 0.0, T), float(kd.detach())


# ----------------------------------------------------------------------------- the stage


def _progress(total: int, done: int):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    p = Progress(
        TextColumn("[bold]distill"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("kd {task.fields[kd]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return p, p.add_task("distill", total=total, completed=done, kd="-")


def run(cfg: BuildConfig, run_dir: RunDir, *, resume: bool = False, show_progress: bool = True) -> dict:
    """The build config's distill section: the student trained against the teacher into distill/final."""
    return distill(cfg, RunDir(run_dir).root, cfg.distill, resume=resume, show_progress=show_progress)


def distill(
    cfg: BuildConfig, run_dir: Path, dcfg: DistillConfig | None = None, resume: bool = False, show_progress: bool = True
) -> dict:
    """Train the student against the teacher on <run_dir>/data; return a summary for the manifest."""
    from slmkit.distill.prune import load_full_model

    dcfg = _config(cfg, dcfg)
    t_cfg = dcfg.train
    hw = setup_runtime(t_cfg)
    s = _setup(cfg, run_dir, dcfg)
    out, tok, train_ex = s["out"], s["tok"], s["train"]
    trc = cfg.model.trust_remote_code
    teacher = cache = None
    cache_info: dict = {}
    if s["sequence_level"]:
        pass  # plain CE on teacher-written replies
    elif dcfg.mode == "offline":
        from slmkit.distill.kd_cache import TopKCache

        cache_info = build_teacher_cache(
            cfg, run_dir, dcfg, show_progress=show_progress, setup=s
        )  # no-op when complete
        cache = TopKCache(cache_folder(dcfg, run_dir, cfg), cache_info["key"])
    else:
        teacher, _ = load_full_model(s["teacher"], trc)
        teacher.requires_grad_(False)
    accelerator = make_accelerator(hw, t_cfg.report_to, out)
    torch.manual_seed(t_cfg.seed)
    model, _ = load_full_model(s["student"], trc)
    if t_cfg.method == "lora":
        model = add_lora(model, t_cfg.lora)
    model.train()
    lengths = [len(e["input_ids"]) for e in train_ex]
    n_batches = math.ceil(len(train_ex) / t_cfg.batch_size)
    total_steps = steps_for(n_batches, t_cfg.grad_accum, t_cfg.epochs, t_cfg.max_steps)
    params, optimizer, scheduler = make_optimizer(model, t_cfg, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if teacher is not None:
        teacher = teacher.to(accelerator.device)
    lora, pad_id = t_cfg.method == "lora", tok.pad_token_id
    eos_id = tok.convert_tokens_to_ids(tok.eos_token)
    ckpt_root = RunDir(run_dir).checkpoints("distill")
    state = {"step": 0, "tokens": 0, "seconds": 0.0, "history": []}
    if resume and (ckpt := latest_checkpoint(ckpt_root)):
        state = load_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, scheduler, lora)
    elif not resume and ckpt_root.exists():
        shutil.rmtree(ckpt_root)
    log.info(
        "distilling %s -> %s (%s, %s, %d rows): %d steps",
        s["teacher"],
        s["student"],
        dcfg.mode,
        dcfg.loss,
        len(train_ex),
        total_steps,
    )
    per_epoch = math.ceil(n_batches / t_cfg.grad_accum) * t_cfg.grad_accum
    orders: dict[int, list[list[int]]] = {}
    win: dict[str, list[float]] = {"loss": [], "kd": []}
    t_start, on_policy_steps = time.monotonic(), 0
    prog = _progress(total_steps, state["step"]) if show_progress else None
    if prog:
        prog[0].start()
    try:
        for step in range(state["step"], total_steps):
            generated = (
                dcfg.mode == "on_policy"
                and teacher is not None
                and random.Random(t_cfg.seed * 1_000_003 + step).random() < dcfg.lmbda
            )
            on_policy_steps += generated
            for micro in range(t_cfg.grad_accum):
                epoch, pos = divmod(step * t_cfg.grad_accum + micro, per_epoch)
                rows = orders.setdefault(epoch, batch_order(lengths, t_cfg.batch_size, t_cfg.seed, epoch))[
                    pos % n_batches
                ]
                examples = [train_ex[i] for i in rows]
                batch = (
                    on_policy_batch(accelerator.unwrap_model(model), examples, pad_id, eos_id, dcfg.max_new_tokens)
                    if generated
                    else collate(examples, pad_id)
                )
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                cached = None
                if cache is not None:
                    cached = cache.lookup(rows)
                    if cached[0].shape[0] != int(
                        kd_mask(batch["labels"], batch["attention_mask"], dcfg.kd_positions).sum()
                    ):
                        raise SlmError(
                            f"teacher cache {cache.folder} does not match the encoded training rows",
                            "rebuild it: `slm distill-cache CONFIG --overwrite`",
                        )
                with accelerator.autocast():
                    if s["sequence_level"]:
                        from slmkit.train import assistant_ce_loss

                        loss, kd = assistant_ce_loss(model, **batch)[0], float("nan")
                    else:
                        loss, kd = step_loss(model, batch, dcfg, teacher, cached, use_ce=not generated)
                accelerator.backward(loss / t_cfg.grad_accum)
                win["loss"].append(float(loss.detach()))
                win["kd"].append(kd)
                state["tokens"] += int(batch["attention_mask"].sum())
            optimizer_step(accelerator, params, optimizer, scheduler)
            state["step"] = step + 1
            if state["step"] % t_cfg.logging_steps == 0 or state["step"] == total_steps:
                entry = {
                    "step": state["step"],
                    "loss": sum(win["loss"]) / len(win["loss"]),
                    "kd": sum(win["kd"]) / len(win["kd"]),
                    "on_policy": generated,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens": state["tokens"],
                    "seconds": round(state["seconds"] + time.monotonic() - t_start, 2),
                }
                state["history"].append(entry)
                accelerator.log({"distill/loss": entry["loss"], "distill/kd": entry["kd"]}, step=state["step"])
                win = {"loss": [], "kd": []}
                if prog:
                    prog[0].update(prog[1], kd=f"{entry['kd']:.4f}")
            if prog:
                prog[0].update(prog[1], completed=state["step"])
            t_start = checkpoint_if_due(
                ckpt_root, state, t_start, total_steps, t_cfg, accelerator, model, optimizer, scheduler, lora
            )
    finally:
        if prog:
            prog[0].stop()
    state["seconds"] += time.monotonic() - t_start
    del teacher
    hist = state["history"]
    summary = {
        "mode": dcfg.mode,
        "loss_fn": dcfg.loss,
        "teacher": s["teacher"],
        "student": s["student"],
        "sequence_level": s["sequence_level"],
        "steps": state["step"],
        "on_policy_steps": on_policy_steps,
        "kd_first": hist[0]["kd"] if hist else None,
        "kd_last": hist[-1]["kd"] if hist else None,
        "final_loss": hist[-1]["loss"] if hist else None,
        "train_rows": len(train_ex),
        "rows_cut": s["cut"],
        "tokens": state["tokens"],
        "seconds": round(state["seconds"], 2),
        "cache_bytes_per_token": cache_info.get("bytes_per_token"),
        "device": hw.device,
        "dtype": hw.dtype,
    }
    accelerator.end_training()
    if accelerator.is_main_process:
        _write_final(RunDir(run_dir).distill_final, accelerator.unwrap_model(model), tok, summary, lora)
        atomic_write_text(RunDir(run_dir).train_log("distill"), "".join(json.dumps(h) + "\n" for h in hist))
        _plot(hist, RunDir(run_dir).loss_plot("distill"))
    return summary


def _write_final(dest: Path, model, tok, summary: dict, lora: bool) -> None:
    with atomic_dir(dest) as tmp:
        (model.merge_and_unload() if lora else model).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "slmkit.json", {"base_model": summary["student"], "method": "full", "distill": summary})


def _plot(history: list[dict], path: Path) -> None:
    if not history:
        return
    from slmkit.plots import loss_curve

    series = {"loss": [(h["step"], h["loss"]) for h in history]}
    if not math.isnan(history[0]["kd"]):
        series["kd"] = [(h["step"], h["kd"]) for h in history]
    loss_curve(series, path, title="Distillation loss")
