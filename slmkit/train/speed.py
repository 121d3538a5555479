"""Speed choices the trainer makes on its own (each with a config override), and what `slm doctor` reports.

torch.compile (inductor) fuses the elementwise work around the matmuls of each decoder layer (RMSNorm, rotary,
SiLU-gating, residual adds) in the forward and the backward pass. Measured with SmolLM2-135M LoRA r=16, ~384-token
passes: before the fused LoRA layers (`lora_fused.py`, which removed the adapters' elementwise passes) +7% tokens/s
on a 2-core AVX2 EPYC for a ~45 s cold compile; after them, on a 2-core AVX-512 Xeon, +2.5% (254 vs 248 tok/s, within
run noise) for a ~67 s cold compile (two graph variants, built before the first step; seconds when inductor's on-disk
cache already has them). It pays only on long runs, which `auto` estimates from the tokens the run will see.

The layers are compiled one by one ("regional compilation"): they share one code object, so one graph serves all
of them, and the cross-layer code (masks, rotary tables, the loss) stays eager.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys

import torch

from slmkit.errors import SlmError
from slmkit.train.losses import _unwrap

# Below this many training tokens a cold compile costs more than it gives back (2-core Xeon, 2026-12-02). LoRA: ~67 s
# at ~250 tok/s for +2.5% (within noise) breaks even near 670k tokens. Full fine-tuning: ~40 s at ~141 tok/s for +13%
# breaks even near 45k. Both are rounded up so `auto` stays on the paying side on slower machines or smaller gains.
COMPILE_MIN_TOKENS = {"lora": 1_000_000, "full": 150_000}


def compile_blocker(device: str) -> str | None:
    """Why torch.compile cannot run here, or None."""
    if device == "mps":
        return "torch.compile training on MPS is not supported well enough to be a default"
    if device == "cuda":
        return None if importlib.util.find_spec("triton") else "triton is not installed (pip install triton)"
    if sys.platform == "win32":
        return "inductor's CPU backend needs MSVC setup on Windows"
    cxx = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    return None if shutil.which(cxx) else f"no C++ compiler ({cxx}) on PATH for inductor's CPU kernels"


def compile_plan(
    setting: bool | str, device: str, planned_tokens: int | None, method: str = "lora"
) -> tuple[bool, str]:
    """(compile or not, why) for `train.compile` = True / False / "auto", the tokens the run will train on, and
    `train.method` (compile pays back much sooner for full fine-tuning)."""
    if setting is False:
        return False, "off (train.compile: false)"
    blocker = compile_blocker(device)
    if setting is True:
        if blocker:
            raise SlmError(f"train.compile: true, but {blocker}", "install it, or set train.compile: auto")
        return True, "on (train.compile: true)"
    if blocker:
        return False, f"off: {blocker}"
    floor = COMPILE_MIN_TOKENS[method]
    if planned_tokens is None:
        return True, (
            f"on for runs of at least {COMPILE_MIN_TOKENS['lora']:,} tokens (LoRA) or "
            f"{COMPILE_MIN_TOKENS['full']:,} (full fine-tuning); compiles once, ~1 min on 2 cores"
        )
    if planned_tokens < floor:
        return False, (
            f"off: ~{planned_tokens:,} tokens to train, under the {floor:,} where the one-time compile "
            f"pays back for {method} training (train.compile: true forces it)"
        )
    return True, f"on: ~{planned_tokens:,} tokens to train"


def decoder_layers(model) -> list[torch.nn.Module]:
    layers = getattr(_unwrap(model).get_decoder(), "layers", None)
    return list(layers) if layers is not None else []


def compile_layers(model) -> int:
    """Compile each decoder layer in place (names and state_dict keys unchanged); returns how many.

    When the input embeddings are frozen (LoRA) the first layer's input needs no gradient and the others' do; that
    difference would cost a second graph for 1/L of the work, so the first layer then stays eager.
    """
    layers = decoder_layers(model)
    first = 0 if model.get_input_embeddings().weight.requires_grad else 1
    for layer in layers[first:]:
        layer.compile(dynamic=True)  # dynamic: every micro-batch has its own (rows, length)
    return len(layers[first:])


def warm_up(model, device, loss_fn, autocast=contextlib.nullcontext) -> None:
    """Build every graph variant before the first step: passes of several rows and of one row (torch specialises
    size 1), so no compile stalls the run later. `autocast`: the training passes' context (a graph is guarded on
    the autocast state, so one built outside it would be built again at step 1). Gradients of the dummy passes are
    dropped and the RNG state is restored (dropout draws), so a compiled run and its resumed copy see the same
    random numbers."""
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        for rows in (2, 1):
            ids = torch.ones(rows, 16, dtype=torch.long, device=dev)
            with autocast():
                loss, _ = loss_fn(model, ids, torch.ones_like(ids), ids)
            loss.backward()
    model.zero_grad(set_to_none=True)


def eager():
    """Context in which compiled layers run eagerly: held-out scoring runs once, under no_grad, and a graph for
    it would be a compile of its own."""
    return torch.compiler.set_stance("force_eager")


def plan_lines(device: str) -> dict[str, str]:
    """What the trainer picks on this machine, for `slm doctor`."""
    _, why = compile_plan("auto", device, None)
    return {
        "train.compile": f"auto: {why}",
        "train.micro_batch_size": "auto: passes of ~384 padded tokens (768 for LoRA over bf16-stored weights)"
        if device == "cpu"
        else "auto: the whole batch",
        "train.lora.fused": "true: peft's LoRA layers train through one fused autograd function each",
        "train.keep_freed_memory": (
            "true: glibc keeps freed buffers (no page faults per pass)"
            if device == "cpu"
            else "true (applies to CPU training only)"
        ),
        "loss": "head on labelled positions only, fused with cross-entropy (fp32) or under autocast",
        "attention": "right-padded rows, no padding mask: the causal kernel (exact for right padding)",
        "grad checkpointing": "off (activations fit; micro-batches bound them)",
    }
