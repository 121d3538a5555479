"""RMSNorm and the SwiGLU product as autograd functions that save less for the backward (eager CPU training).

Autograd through transformers' LlamaRMSNorm keeps the fp32 copy of its input (for `pow` and the multiply by
rsqrt): in a bf16 model that is [N, H] x 4 bytes per norm, two norms a layer. `_RMSNorm` keeps the input as it came
(bf16: half the bytes) and the [N, 1] rsqrt, and rebuilds the normalised rows in the backward. `act_fn(gate) * up`
keeps gate (for silu's backward), silu(gate) and up (for the product's): `_SiluMul` keeps gate and up and
recomputes the sigmoid. Measured on SmolLM2-135M (a 768-token LoRA pass over bf16 weights, 2026-12-03): the
tensors saved for the backward fall from 628 to ~500 MB.

Only the classes whose forward is LlamaRMSNorm's / LlamaMLP's exactly are routed (a unit test compares the sources
against transformers' installed ones); torch.compile fuses these ops itself, so compiled runs keep the originals.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

# transformers classes whose forward is token for token LlamaRMSNorm's (fp32 normalise, cast, weight * x) and
# LlamaMLP's (down(act(gate(x)) * up(x))). Olmo2 and Gemma differ (weight before the cast; 1 + weight).
NORM_CLASSES = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm", "SmolLM3RMSNorm"}
MLP_CLASSES = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "SmolLM3MLP"}
SILU_CLASSES = {"SiLU", "SiLUActivation"}  # torch's, and transformers' ACT2FN["silu"] (F.silu either way)


class _RMSNorm(torch.autograd.Function):
    """y = w * (x * rstd).to(x.dtype), rstd = rsqrt(mean(x^2, -1) + eps) in fp32 (LlamaRMSNorm's math).

    x: [N, H] (any float dtype); weight w: [H]; eps: float. Returns y: [N, H] in w * x's promoted dtype. Saves x as
    given and rstd [N, 1] fp32.
    """

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        xhat = xf.mul_(rstd) if xf is not x else xf * rstd  # in place on the fp32 copy, never on x itself
        ctx.save_for_backward(x, weight, rstd)
        return weight * xhat.to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, weight, rstd = ctx.saved_tensors
        xf = x.float()
        xhat = xf.mul_(rstd) if xf is not x else xf * rstd
        d_w = (g * xhat.to(x.dtype)).sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        d_xhat = (g * weight).float()  # the gradient at the cast, as autograd's mul backward gives it
        # d_x = rstd * (d_xhat - xhat * mean(d_xhat * xhat)): the normalisation's backward, in place on fresh buffers
        dot = torch.linalg.vecdot(d_xhat, xhat).unsqueeze(-1).div_(x.shape[-1])
        d_x = d_xhat.sub_(xhat.mul_(dot)).mul_(rstd).to(x.dtype)
        return d_x, d_w, None


class _SiluMul(torch.autograd.Function):
    """silu(gate) * up. gate, up: [N, I], one dtype. Returns [N, I]. Saves gate and up; the backward recomputes
    silu(gate) (one elementwise pass) and runs the same kernels as autograd, so its gradients are autograd's exactly."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, g):
        gate, up = ctx.saved_tensors
        d_gate = torch.ops.aten.silu_backward(g * up, gate) if ctx.needs_input_grad[0] else None
        d_up = g * F.silu(gate) if ctx.needs_input_grad[1] else None
        return d_gate, d_up


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., H] -> [..., H]; LlamaRMSNorm's forward in value, its gradients to rounding (tests check both)."""
    return _RMSNorm.apply(x.reshape(-1, x.shape[-1]), weight, float(eps)).view(x.shape)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up: [..., I] -> silu(gate) * up, [..., I]."""
    shape = gate.shape
    return _SiluMul.apply(gate.reshape(-1, shape[-1]), up.reshape(-1, shape[-1])).view(shape)


def _norm_forward(module, hidden_states: torch.Tensor) -> torch.Tensor:
    if torch.is_autocast_enabled(hidden_states.device.type):
        return type(module).forward(module, hidden_states)
    return rms_norm(hidden_states, module.weight, module.variance_epsilon)


def _mlp_forward(module, x: torch.Tensor) -> torch.Tensor:
    if torch.is_autocast_enabled(x.device.type):
        return type(module).forward(module, x)
    return module.down_proj(silu_mul(module.gate_proj(x), module.up_proj(x)))


def fuse_layers(model) -> int:
    """Route `model`'s RMSNorms and SiLU MLPs (of the classes above) through the functions here; returns how many."""
    count = 0
    for module in model.modules():
        name = type(module).__name__
        if name in NORM_CLASSES:
            module.forward = types.MethodType(_norm_forward, module)
        elif name in MLP_CLASSES and type(getattr(module, "act_fn", None)).__name__ in SILU_CLASSES:
            module.forward = types.MethodType(_mlp_forward, module)
        else:
            continue
        count += 1
    return count


def unfuse_layers(model) -> None:
    """Give every routed module back its class's forward."""
    for module in model.modules():
        if getattr(module.__dict__.get("forward"), "__func__", None) in (_norm_forward, _mlp_forward):
            del module.forward
