"""LoRA training in bf16 on CPU: frozen weights stored in bf16, activations in bf16, adapters and their optimizer
state in fp32, no autocast; attention in fp32 where the speed probe measured it faster.

Autocast over fp32 weights casts every Linear input to bf16 and every gradient back (a `copy_` pass each way per
layer), keeps the residual stream in fp32, and peft's adapter path casts its input once more. With the frozen model
stored in bf16 once, those passes are gone: the base matmuls see the same bf16 weights autocast would give them, the
adapters are cast to bf16 per call (what autocast does to peft's layers; `lora_fused` does it inside its fused
function) and their gradients reach the fp32 parameters through the cast's backward. The residual stream is bf16,
as in any model loaded in bf16 (TRL's bf16 setting); RMSNorm still normalises in fp32 (the model's own code).

Measured on a 2-core AMX Xeon, one ~380-token LoRA pass of SmolLM2-135M (2026-12-03): bf16 autocast 0.87 s, this
0.75 s, with fp32 attention 0.67 s (fp32 1.05 s). The CPU's bf16 flash-attention backward ran 2.5x slower than its
fp32 one there, hence the probe's attention case.
"""

from __future__ import annotations

import torch

FP32_ATTENTION = "slmkit_sdpa_fp32"


def store_frozen_in(model, dtype: str, every: bool = False) -> int:
    """Keep frozen weights in `dtype` (bfloat16 / float16 training); returns how many were converted.

    every=False: only the base weights of the LoRA-adapted Linears (the autocast path: each call casts an fp32
    frozen weight to bf16 again, autocast caches casts only of weights that require grad, and autograd keeps that
    copy for the backward; stored in bf16 once, the matmuls get the very same values without the copies).
    every=True: every frozen floating-point parameter (embeddings, norms, head too), for training without autocast.
    Trainable parameters (the adapters) and buffers (rotary frequencies) stay as they are.
    """
    target, n = getattr(torch, dtype), 0
    if every:
        for p in model.parameters():  # tied weights are one Parameter, converted once
            if not p.requires_grad and p.is_floating_point() and p.dtype != target:
                p.data = p.data.to(target)
                n += 1
        return n
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return 0
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if not isinstance(module, LoraLinear) or type(base) is not torch.nn.Linear or base.weight.requires_grad:
            continue
        base.weight = torch.nn.Parameter(base.weight.detach().to(target), requires_grad=False)
        if base.bias is not None and not base.bias.requires_grad:
            base.bias = torch.nn.Parameter(base.bias.detach().to(target), requires_grad=False)
        n += 1
    return n


def native_bf16(hw, method: str) -> bool:
    """Train this run in stored bf16 without autocast: LoRA in bf16 on CPU (GPUs keep accelerate's autocast)."""
    return method == "lora" and hw.device == "cpu" and hw.dtype == "bfloat16"


def _fp32_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention with query/key/value in fp32; the output back in the query's dtype."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(query.dtype), weights


def use_fp32_attention(model) -> bool:
    """Route `model`'s attention through fp32 SDPA (a registered transformers attention function, with SDPA's
    masks); False where the model does not run SDPA attention, which is then left as it is."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(FP32_ATTENTION, _fp32_sdpa)
    AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)
    base.set_attn_implementation(FP32_ATTENTION)
    return True


# Auto micro-batch token budget when the frozen weights are stored in bf16: activations are half the bytes of fp32
# ones, so twice loop.MICRO_TOKENS holds about the same activation memory. Measured on a 2-core AMX Xeon
# (2026-12-03, bench/train_bench.py LoRA, 8 steps): 384 tokens a pass 437-440 tok/s at 1.69 GB, 768 566.8 tok/s at
# 1.85 GB, 1536 570.2 tok/s at 2.29 GB, held-out loss 1.9786-1.9789 throughout: bf16 GEMMs need larger passes to
# reach their rate, and 768 takes most of the gain for little memory.
MICRO_TOKENS_BF16 = 768
