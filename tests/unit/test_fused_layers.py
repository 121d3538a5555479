"""The fused RMSNorm / SwiGLU product give transformers' values and gradients, keep less for the backward, and are
routed only into the classes whose forward is exactly Llama's."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch
import torch.nn.functional as F

from slmkit.train.fused_layers import MLP_CLASSES, NORM_CLASSES, fuse_layers, rms_norm, silu_mul, unfuse_layers
from tests.unit.test_train_speed import _batch, _grads, peft_model


def _llama_norm(x, w, eps):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(x.shape[-1], eps=eps)
    norm.weight = torch.nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)
    return norm(x), norm.weight


def _saved_bytes(fn) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("train_weight", [False, True])
def test_rms_norm_equals_llama_rmsnorm_value_and_gradients(dtype, train_weight):
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 48) * 2).to(dtype).requires_grad_()
    w = (torch.rand(48) + 0.5).to(dtype).requires_grad_(train_weight)
    g = torch.randn(3, 5, 48).to(dtype)
    out = rms_norm(x, w, 1e-5)
    (out.float() * g.float()).sum().backward()
    mine = (x.grad.clone(), w.grad.clone() if train_weight else None)
    x.grad = None
    w.grad = None
    ref, ref_w = _llama_norm(x, w, 1e-5)
    (ref.float() * g.float()).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert out.dtype == ref.dtype and torch.equal(out, ref)  # the forward is the same ops, so the same bits
    assert torch.allclose(mine[0].float(), x.grad.float(), atol=tol, rtol=tol)
    if train_weight:
        assert torch.allclose(mine[1].float(), ref_w.grad.float(), atol=tol * 10, rtol=tol)
    else:
        assert w.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_equals_autograd_exactly(dtype):
    torch.manual_seed(0)
    gate = torch.randn(4, 6, 32).to(dtype).requires_grad_()
    up = torch.randn(4, 6, 32).to(dtype).requires_grad_()
    g = torch.randn(4, 6, 32).to(dtype)
    out = silu_mul(gate, up)
    out.backward(g)
    mine = gate.grad.clone(), up.grad.clone()
    gate.grad = up.grad = None
    ref = F.silu(gate) * up
    ref.backward(g)
    assert torch.equal(out, ref)
    assert torch.equal(mine[0], gate.grad) and torch.equal(mine[1], up.grad)


def test_bf16_norm_and_product_save_fewer_bytes_than_autograd():
    x = torch.randn(64, 96, dtype=torch.bfloat16, requires_grad=True)
    w = torch.ones(96, dtype=torch.bfloat16)
    gate, up = (torch.randn(64, 256, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    # autograd keeps the fp32 copy of x (4 bytes a value); ours keeps x (2) and one fp32 per row
    assert _saved_bytes(lambda: rms_norm(x, w, 1e-5)) < _saved_bytes(lambda: _llama_norm(x, w, 1e-5)[0]) * 0.6
    # autograd keeps gate, silu(gate) and up; ours gate and up
    assert _saved_bytes(lambda: silu_mul(gate, up)) == 2 * 64 * 256 * 2
    assert _saved_bytes(lambda: F.silu(gate) * up) == 3 * 64 * 256 * 2


def test_routed_classes_run_llamas_forward_exactly():
    """A whitelisted class whose forward upstream changed would be trained through the wrong math: fail instead."""
    llama = importlib.import_module("transformers.models.llama.modeling_llama")
    refs = {"RMSNorm": inspect.getsource(llama.LlamaRMSNorm.forward), "MLP": inspect.getsource(llama.LlamaMLP.forward)}
    checked = 0
    for name in NORM_CLASSES | MLP_CLASSES:
        kind = "RMSNorm" if name.endswith("RMSNorm") else "MLP"
        family = name[: -len(kind)].lower()
        try:
            mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        except ImportError:
            continue  # not in this transformers version: never instantiated, never routed
        assert inspect.getsource(getattr(mod, name).forward) == refs[kind], name
        checked += 1
    assert checked >= 8


def test_fused_model_gives_the_same_loss_and_gradients_and_unfuses(tiny_model_dir):
    from slmkit.train.losses import assistant_ce_loss

    batch = _batch()
    model = peft_model(tiny_model_dir)
    results = []
    for fused in (False, True):
        if fused:
            assert fuse_layers(model) == 2 * 2 + 1 + 2  # 2 layers x 2 norms, the final norm, 2 MLPs
        loss, _ = assistant_ce_loss(model, **batch)
        loss.backward()
        results.append((float(loss.detach()), _grads(model)))
        model.zero_grad(set_to_none=True)
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-6)
    assert torch.allclose(results[1][1], results[0][1], atol=1e-6, rtol=1e-4)
    unfuse_layers(model)
    assert not any("forward" in m.__dict__ for m in model.modules() if type(m).__name__ in NORM_CLASSES | MLP_CLASSES)


def test_autocast_hands_back_to_transformers_forward(tiny_model_dir):
    model = peft_model(tiny_model_dir)
    fuse_layers(model)
    norm = model.get_base_model().model.norm
    x = torch.randn(2, 3, norm.weight.shape[0], requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.grad_fn is not None and "RMSNorm" not in type(out.grad_fn).__name__
    fused = norm(x).grad_fn  # outside autocast: the fused function (under the reshape back to [B, T, H])
    assert type(fused).__name__ == "ViewBackward0" and "RMSNorm" in type(fused.next_functions[0][0]).__name__
