"""The fused LoRA Linear gives peft's values and gradients, hands back to peft where it does not apply, and leaves the
adapter's names and saved files as peft makes them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from slmkit.train.lora_fused import fuse_lora, lora_linear, unfuse_lora
from tests.conftest import tiny_config
from tests.unit.test_train_speed import _batch, _grads, peft_model


def _reference(x, w, b, a, lb, s):
    return F.linear(x, w, b) + F.linear(F.linear(x, a), lb) * s


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("trainable_weight", [False, True])
def test_lora_linear_equals_the_unfused_math_values_and_every_gradient(with_bias, trainable_weight):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 12, requires_grad=True)  # 3-D like a decoder's [B, T, H]
    w = torch.randn(20, 12, requires_grad=trainable_weight)
    b = torch.randn(20, requires_grad=True) if with_bias else None
    a = torch.randn(4, 12, requires_grad=True)
    lb = torch.randn(20, 4, requires_grad=True)
    g = torch.randn(3, 5, 20)  # a non-uniform upstream gradient
    leaves = [t for t in (x, w, b, a, lb) if t is not None and t.requires_grad]
    out = lora_linear(x, w, b, a, lb, 0.7)
    (out * g).sum().backward()
    ours = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    ref = _reference(x, w, b, a, lb, 0.7)
    (ref * g).sum().backward()
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
    for mine, t in zip(ours, leaves):
        assert torch.allclose(mine, t.grad, atol=1e-5)
    if not trainable_weight:
        assert w.grad is None


def test_fused_model_gives_peft_loss_and_gradients(tiny_model_dir):
    from slmkit.train.losses import assistant_ce_loss

    batch = _batch()
    model = peft_model(tiny_model_dir)
    results = []
    for fused in (False, True):
        if fused:
            assert fuse_lora(model) == 14  # 2 layers x 7 Linear
        loss, _ = assistant_ce_loss(model, **batch)
        loss.backward()
        results.append((float(loss.detach()), _grads(model)))
        model.zero_grad(set_to_none=True)
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-6)
    assert torch.allclose(results[1][1], results[0][1], atol=1e-6, rtol=1e-4)


def test_fused_layers_hand_back_to_peft_where_the_fused_math_does_not_apply(tiny_model_dir, monkeypatch):
    import slmkit.train.lora_fused as lf

    calls = []
    real = lf.lora_linear
    monkeypatch.setattr(lf, "lora_linear", lambda *a: calls.append(1) or real(*a))
    ids = torch.tensor([[3, 4, 5, 6]])
    model = peft_model(tiny_model_dir)
    fuse_lora(model)
    model(input_ids=ids)
    assert len(calls) == 14
    calls.clear()
    with model.disable_adapter():  # adapters off: peft's base-only path, and the base model's logits
        off = model(input_ids=ids).logits
    assert not calls
    unfuse_lora(model)
    with model.disable_adapter():
        assert torch.allclose(off, model(input_ids=ids).logits)
    fuse_lora(model)
    model.merge_adapter()  # merged weights: peft runs the base layer alone
    merged = model(input_ids=ids).logits
    assert not calls
    model.unmerge_adapter()
    assert torch.allclose(merged, model(input_ids=ids).logits, atol=1e-5)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids)
    assert not calls  # under autocast peft's forward keeps the autocast dtypes

    drop = peft_model(tiny_model_dir, dropout=0.5)
    fuse_lora(drop)
    drop.train()
    drop(input_ids=ids)
    assert not calls  # dropout on the adapter input: peft's path


def test_unfuse_restores_peft_forward_and_saved_adapter_is_unchanged(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    model = peft_model(tiny_model_dir)
    model.save_pretrained(tmp_path / "plain")
    fuse_lora(model)
    model.save_pretrained(tmp_path / "fused")
    plain = load_file(str(tmp_path / "plain" / "adapter_model.safetensors"))
    fused = load_file(str(tmp_path / "fused" / "adapter_model.safetensors"))
    assert plain.keys() == fused.keys() and all(torch.equal(plain[k], fused[k]) for k in plain)
    twin = copy.deepcopy(model)  # a copy's fused layers compute with the copy's weights, not the original's
    ids = torch.tensor([[3, 4, 5, 6]])
    for name, p in twin.named_parameters():
        if "lora_B" in name:
            p.data.zero_()
    unfused_twin = copy.deepcopy(twin)
    unfuse_lora(unfused_twin)
    assert torch.allclose(twin(input_ids=ids).logits, unfused_twin(input_ids=ids).logits)
    assert not torch.allclose(twin(input_ids=ids).logits, model(input_ids=ids).logits)
    unfuse_lora(model)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_training_with_and_without_fused_lora_ends_at_the_same_loss(tmp_path, tiny_model_dir, tiny_csv):
    """`train.lora.fused` changes how the adapters are computed, not what is learned."""
    import json

    from slmkit.data import prepare
    from slmkit.runs import RunDir
    from slmkit.train.stage import run as train

    finals = []
    for fused in (True, False):
        cfg = tiny_config(
            tmp_path / str(fused),
            tiny_model_dir,
            tiny_csv,
            max_steps=6,
            lr=5e-2,
            warmup_ratio=0.0,
            lora={"r": 4, "alpha": 8, "fused": fused},
        )
        run = RunDir.of(cfg).root
        prepare(cfg, run / "data")
        summary = train(cfg, run, show_progress=False)
        history = [json.loads(line) for line in (run / "train" / "log.jsonl").read_text().splitlines()]
        finals.append(summary["final_loss"])
    assert finals[0] == pytest.approx(finals[1], rel=1e-4)
    assert finals[0] < history[0]["loss"]  # and it learned


def test_fp32_adapters_on_a_bf16_base_are_cast_per_call_and_get_fp32_gradients(tiny_model_dir, monkeypatch):
    """train/bf16.py's layout: frozen weights and activations in bf16, adapters fp32. The fused path runs (no peft
    fallback), matches an fp32 computation on the same bf16 values, and the gradients land in the fp32 adapters."""
    from slmkit.train.bf16 import store_frozen_in

    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10]])
    ref = peft_model(tiny_model_dir)
    model = peft_model(tiny_model_dir)
    store_frozen_in(model, "bfloat16", every=True)
    for p_ref, p in zip(ref.parameters(), model.parameters()):
        p_ref.data = p.data.float()  # the same (bf16-rounded) values in fp32
    import slmkit.train.lora_fused as lf

    calls, real = [], lf.lora_linear
    monkeypatch.setattr(lf, "lora_linear", lambda *a: calls.append(1) or real(*a))
    fuse_lora(model)
    model(input_ids=ids).logits.float().sum().backward()
    ref(input_ids=ids).logits.sum().backward()
    assert len(calls) == 14  # every adapted layer took the fused path
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
        if p.requires_grad:
            assert p.dtype == p.grad.dtype == torch.float32, name
            assert torch.nn.functional.cosine_similarity(p.grad.flatten(), p_ref.grad.flatten(), 0) > 0.99, name
