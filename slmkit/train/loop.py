"""The training library SFT and distillation share: LoRA setup, split encoding, optimizer and schedule,
accelerate set-up, token-weighted micro-batches, held-out loss, and atomic, resumable checkpoints."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import torch

from slmkit.encoding import collate, encode_chat
from slmkit.errors import SlmError
from slmkit.hardware import bound_onednn_cache, detect, keep_freed_memory, setup_threads
from slmkit.io import atomic_dir, atomic_write_json, read_jsonl
from slmkit.train.losses import assistant_ce_loss
from slmkit.train.speed import eager


def find_lora_targets(model, requested: str | list[str]) -> list[str]:
    """Names of the Linear layers LoRA can wrap (all of them for 'auto'), excluding the output head."""
    head = model.get_output_embeddings()
    names = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    )
    if requested == "auto":
        return names
    bad = [t for t in requested if t not in names]
    if bad:
        raise SlmError(
            f"train.lora.target_modules: {', '.join(bad)} not in this model",
            f"valid names for {model.config.model_type}: {', '.join(names)} (or 'auto')",
        )
    return list(requested)


def add_lora(model, lora_cfg):
    """Wrap `model` in peft LoRA adapters per `train.lora`; with `fused` (the default) their layers train through
    `lora_fused.lora_linear` (same math, fewer memory passes)."""
    from peft import LoraConfig, get_peft_model

    from slmkit.train.lora_fused import fuse_lora

    model = get_peft_model(
        model,
        LoraConfig(
            r=lora_cfg.r,
            lora_alpha=lora_cfg.alpha,
            lora_dropout=lora_cfg.dropout,
            target_modules=find_lora_targets(model, lora_cfg.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    if lora_cfg.fused:
        fuse_lora(model)
    return model


def encode_split(tok, path: Path, max_len: int) -> tuple[list[dict], int]:
    """Encode a JSONL split; drop rows whose assistant tokens were all cut by max_len (returns count)."""
    return encode_records(tok, read_jsonl(path), max_len)


def encode_records(tok, records, max_len: int) -> tuple[list[dict], int]:
    """`encode_split` on records already read: (examples, rows dropped because max_len cut every answer token)."""
    out, dropped = [], 0
    for rec in records:
        ex = encode_chat(tok, rec["messages"], max_len)
        if any(t != -100 for t in ex["labels"][1:]):
            out.append(ex)
        else:
            dropped += 1
    return out, dropped


def make_optimizer(model, t_cfg, total_steps: int):
    """AdamW over the trainable parameters only (LoRA weights for LoRA) and the configured LR schedule."""
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t_cfg.lr, weight_decay=t_cfg.weight_decay)
    scheduler = get_scheduler(
        t_cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=int(t_cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return params, optimizer, scheduler


def optimizer_step(accelerator, params, optimizer, scheduler, max_grad_norm: float = 1.0) -> None:
    """Clip, step, advance the schedule, clear gradients: the end of every training step."""
    accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def setup_runtime(t_cfg):
    """Device and dtype for a training run (`hardware.detect`), every core for intra-op work, and on CPU glibc's
    buffer reuse unless `train.keep_freed_memory: false`, and a bounded oneDNN primitive cache (before the speed
    probe's matmuls). Returns the Hardware."""
    bound_onednn_cache()
    hw = detect(t_cfg.device, t_cfg.dtype)
    setup_threads()
    if t_cfg.keep_freed_memory and hw.device == "cpu":
        keep_freed_memory()
    return hw


def make_accelerator(hw, report_to: list[str], project_dir: Path, autocast: bool = True):
    """An Accelerator for this run's device and dtype (bf16/fp16 as autocast over fp32 master weights, unless
    `autocast=False`: the model then holds its low-precision weights itself, `bf16.native_bf16`).

    accelerate keeps one process-wide state and refuses a second Accelerator with another mixed precision, so a
    Python session that trains twice (fp32, then bf16) would fail. Outside a distributed launch nothing else
    shares that state, so a finished run's is cleared; under torchrun/accelerate launch it is kept as launched.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(hw.dtype, "no") if autocast else "no"
    return Accelerator(
        cpu=hw.device == "cpu", mixed_precision=mixed, log_with=report_to or None, project_dir=str(project_dir)
    )


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """Newest complete checkpoint. Checkpoints appear by atomic rename, so any step-N folder is whole."""
    found = [(int(m.group(1)), p) for p in ckpt_root.glob("step-*") if (m := re.fullmatch(r"step-(\d+)", p.name))]
    return max(found)[1] if found else None


def _save_weights(model, folder: Path, lora: bool) -> None:
    if lora:
        model.save_pretrained(folder, safe_serialization=True)
    else:
        from safetensors.torch import save_model

        save_model(model, str(folder / "model.safetensors"))  # handles tied embeddings


def _load_weights(model, folder: Path, lora: bool) -> None:
    if lora:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    else:
        from safetensors.torch import load_model as st_load_model

        st_load_model(model, str(folder / "model.safetensors"))


def save_weights_to(dest: Path, model, lora: bool) -> None:
    """The trainable weights alone (adapter, or the full model), by atomic folder swap: train/best/."""
    with atomic_dir(dest) as tmp:
        _save_weights(model, tmp, lora)


def load_weights_from(folder: Path, model, lora: bool) -> None:
    _load_weights(model, folder, lora)


def checkpoint_if_due(
    ckpt_root: Path,
    state: dict,
    t_start: float,
    total_steps: int,
    t_cfg,
    accelerator,
    model,
    optimizer,
    scheduler,
    lora: bool,
) -> float:
    """Every `save_steps` (not at the end: the final model is written instead), on the main process: bank the
    training time so far into state["seconds"] and save a checkpoint. Returns the clock's new start."""
    if state["step"] % t_cfg.save_steps or state["step"] >= total_steps or not accelerator.is_main_process:
        return t_start
    state["seconds"] += time.monotonic() - t_start
    save_checkpoint(
        ckpt_root,
        state["step"],
        accelerator.unwrap_model(model),
        optimizer,
        scheduler,
        state,
        lora,
        t_cfg.keep_checkpoints,
    )
    return time.monotonic()


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, state: dict, lora: bool, keep: int) -> Path:
    dest = root / f"step-{step}"
    with atomic_dir(dest) as tmp:
        _save_weights(model, tmp, lora)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()},
            tmp / "trainer_state.pt",
        )
        atomic_write_json(tmp / "state.json", state)
    for old in sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def load_checkpoint(folder: Path, model, optimizer, scheduler, lora: bool) -> dict:
    _load_weights(model, folder, lora)
    blob = torch.load(folder / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"])
    return json.loads((folder / "state.json").read_text())


# Auto micro-batches on CPU hold about this many (padded) tokens: activation memory scales with tokens per pass,
# and passes much smaller than this pay per-op overhead (measured here: 2-row passes of ~76-token rows trained 16%
# slower than 8-row ones). LoRA on the default model, 8-step bench: 512 tokens a pass 200 tok/s at 2.67 GB peak,
# 384 190-197 tok/s at 2.23 GB, 256 194 tok/s at 2.21 GB, 768 198 tok/s at 3.15 GB: 384 keeps the speed within
# noise and sits at the memory floor.
MICRO_TOKENS = 384


def micro_batch_size(t_cfg, device: str) -> int | None:
    """Rows per forward pass; None means 'by token budget' (the CPU default), the whole batch on accelerators."""
    if t_cfg.micro_batch_size != "auto":
        return min(t_cfg.micro_batch_size, t_cfg.batch_size)
    return None if device == "cpu" else t_cfg.batch_size


def micro_chunks(examples: list[dict], micro: int | None, budget: int = MICRO_TOKENS) -> list[list[dict]]:
    """Split a batch into passes: `micro` rows each, or (None) as many rows as fit in `budget` padded tokens."""
    if micro is not None:
        return [examples[i : i + micro] for i in range(0, len(examples), micro)]
    chunks: list[list[dict]] = []
    for ex in sorted(examples, key=lambda e: len(e["input_ids"])):
        if chunks and (len(chunks[-1]) + 1) * len(ex["input_ids"]) <= budget:
            chunks[-1].append(ex)
        else:
            chunks.append([ex])
    return chunks


def batch_backward(
    model,
    examples: list[dict],
    pad_id: int,
    micro: int | None,
    accelerator,
    scale: float = 1.0,
    budget: int = MICRO_TOKENS,
) -> tuple[float, int]:
    """Forward + backward of one batch in micro-batches, each weighted by its share of the batch's labelled tokens,
    so the accumulated gradient equals the whole batch's mean-loss gradient. Returns (batch loss, non-pad tokens)."""
    total = sum(sum(1 for t in e["labels"][1:] if t != -100) for e in examples)
    loss_sum, tokens = 0.0, 0
    for chunk in micro_chunks(examples, micro, budget):
        batch = {k: v.to(accelerator.device) for k, v in collate(chunk, pad_id).items()}
        with accelerator.autocast():
            loss, n = assistant_ce_loss(model, **batch)
        if n:
            accelerator.backward(loss * (n / total) * scale)
            loss_sum += loss.detach().item() * n
        tokens += int(batch["attention_mask"].sum())
    return loss_sum / max(total, 1), tokens


@torch.no_grad()
def evaluate_loss(model, examples: list[dict], pad_id: int, batch_size: int, autocast) -> float | None:
    """Token-weighted mean assistant loss on held-out examples."""
    if not examples:
        return None
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    for i in range(0, len(order), batch_size):
        batch = collate([examples[j] for j in order[i : i + batch_size]], pad_id)
        with autocast(), eager():
            loss, n = assistant_ce_loss(model, **{k: v.to(model.device) for k, v in batch.items()})
        total, count = total + float(loss) * n, count + n
    model.train()
    return total / max(count, 1)
