"""peft's LoRA Linear as one autograd function for training: the same math in fewer, larger passes over memory.

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: besides the three matmuls that is a scaling pass
and an add over the full [N, out] output in the forward pass, their two backward passes, and autograd adding the
base and adapter gradients of x: five extra [N, width] elementwise passes per adapted Linear (210 of them in
SmolLM2-135M with every Linear adapted), which on a 2-core CPU cost about as much as the adapters' matmuls. Here
the adapter product is accumulated into the base output by the GEMM itself (`addmm_`, alpha = scaling) and the
backward writes the input gradient the same way, so no [N, width] temporary is made beyond the outputs.

peft keeps owning the adapters: their parameters, names, saving, merging. `fuse_lora(model)` only swaps each
eligible layer's `forward`, and that forward hands back to peft's own whenever the fused path does not apply
(merged or disabled adapters, several active adapters, dropout, DoRA and other variants, autocast, an input whose
dtype is not the base weight's). fp32 adapters on a bf16 base (train/bf16.py) are cast to bf16 per call, which is
what autocast does to peft's own layer; their gradients reach the fp32 parameters through the cast's backward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


class _LoraLinear(torch.autograd.Function):
    """y = x @ W.T + b + s * (x @ A.T) @ B.T, with hand-written gradients for x, W, b, A and B.

    x: [N, in]; weight W: [out, in]; bias b: [out] or None; lora_a A: [r, in]; lora_b B: [out, r]; s: float.
    Returns y: [N, out]. Saves x and x @ A.T ([N, r]) for the backward, as autograd through peft would.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        xa = x @ lora_a.t()
        y = F.linear(x, weight, bias)
        y.addmm_(xa, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(x, xa, weight, lora_a, lora_b)
        ctx.scaling, ctx.has_bias = scaling, bias is not None
        return y

    @staticmethod
    def backward(ctx, g):
        x, xa, weight, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scaling
        need_x, need_w, need_b, need_a, need_lb, _ = ctx.needs_input_grad
        gb = g @ lora_b if (need_x or need_a) else None  # [N, r]: the gradient at the adapter's bottleneck
        grad_x = (g @ weight).addmm_(gb, lora_a, alpha=s) if need_x else None
        grad_w = g.t() @ x if need_w else None
        grad_bias = g.sum(0) if need_b and ctx.has_bias else None
        grad_a = (gb.t() @ x).mul_(s) if need_a else None
        grad_lb = (g.t() @ xa).mul_(s) if need_lb else None
        return grad_x, grad_w, grad_bias, grad_a, grad_lb, None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """x: [..., in] -> [..., out]; equals `F.linear(x, weight, bias) + F.linear(F.linear(x, lora_a), lora_b) * scaling`
    in value and in every gradient (tests check both)."""
    flat = x.reshape(-1, x.shape[-1])
    return _LoraLinear.apply(flat, weight, bias, lora_a, lora_b, float(scaling)).view(*x.shape[:-1], weight.shape[0])


def _fused_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The fused path when it gives exactly peft's result, else peft's own forward."""
    adapters = layer.active_adapters
    name = adapters[0] if len(adapters) == 1 else None
    base = layer.base_layer
    if (
        args
        or kwargs
        or layer.disable_adapters
        or layer.merged
        or name not in layer.lora_A
        or name in getattr(layer, "lora_variant", {})
        or not isinstance(layer.lora_dropout[name], torch.nn.Identity)
        or torch.is_autocast_enabled(x.device.type)
        or type(base) is not torch.nn.Linear
        or not (x.dtype == base.weight.dtype)
    ):
        return type(layer).forward(layer, x, *args, **kwargs)
    return lora_linear(
        x,
        base.weight,
        base.bias,
        layer.lora_A[name].weight.to(x.dtype),
        layer.lora_B[name].weight.to(x.dtype),
        layer.scaling[name],
    )


def fuse_lora(model) -> int:
    """Route every peft LoRA Linear of `model` through `lora_linear`; returns how many layers were routed."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinearLayer
    except ImportError:  # no peft, so no LoRA layers
        return 0
    count = 0
    for module in model.modules():
        if type(module) is LoraLinearLayer:
            module.forward = types.MethodType(_fused_forward, module)  # a bound method: deepcopy rebinds it to the copy
            count += 1
    return count


def unfuse_lora(model) -> None:
    """Give every layer back its class's forward (peft's)."""
    for module in model.modules():
        if getattr(module.__dict__.get("forward"), "__func__", None) is _fused_forward:
            del module.forward
