"""The trainer's speed paths give the same numbers as the plain ones: fused head + cross-entropy, no padding mask on
right-padded rows, compiled decoder layers; the bf16 path trains; `auto` compile decides by run size."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import slmkit.train.losses as losses
import slmkit.train.speed as speed
from slmkit.encoding import IGNORE, collate, encode_chat
from slmkit.errors import SlmError
from slmkit.train.losses import assistant_ce_loss, linear_cross_entropy
from tests.conftest import make_tiny_tokenizer, tiny_config

MSGS = [{"role": "user", "content": "play some music"}, {"role": "assistant", "content": "play_music"}]
REPLIES = ["play_music", "alarm weather", "translate hello into french", "book_flight", "weather"]


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def peft_model(tiny_model_dir, dropout: float = 0.0, target_modules="all-linear"):
    """The tiny llama with r=4 LoRA adapters whose B matrices are random (peft starts them at zero), seed 0."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=target_modules),
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # make the adapters matter
    return model


def _batch():
    tok = make_tiny_tokenizer()
    exs = [encode_chat(tok, MSGS[:1] + [{"role": "assistant", "content": r}], 64) for r in REPLIES]
    batch = collate(exs, tok.pad_token_id)
    assert (batch["attention_mask"] == 0).any()  # rows of different lengths: there is padding to get right
    return batch


@pytest.mark.parametrize("chunk", [1024, 7])
def test_linear_cross_entropy_equals_plain_cross_entropy_values_and_gradients(monkeypatch, chunk):
    monkeypatch.setattr(losses, "CE_CHUNK_ROWS", chunk)  # 7: several chunks, the last one short
    torch.manual_seed(0)
    h = (torch.randn(23, 16) * 3).requires_grad_()
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (23,))
    g = torch.randn(23)  # a non-uniform upstream gradient, so row scaling is checked too
    (linear_cross_entropy(h, w, t) * g).sum().backward()
    ours = (h.grad.clone(), w.grad.clone(), linear_cross_entropy(h, w, t).detach())
    h.grad, w.grad = None, None
    ref = F.cross_entropy(h @ w.t(), t, reduction="none")
    (ref * g).sum().backward()
    assert torch.allclose(ours[2], ref.detach(), atol=1e-5)
    assert torch.allclose(ours[0], h.grad, atol=1e-5) and torch.allclose(ours[1], w.grad, atol=1e-5)


def test_linear_cross_entropy_leaves_a_frozen_head_alone():
    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(10, 8)
    linear_cross_entropy(h, w, torch.tensor([1, 2, 3, 9])).mean().backward()
    assert h.grad is not None and w.grad is None


def test_unmasked_fused_loss_equals_masked_reference_loss_and_gradients(tiny_model_dir):
    """Dropping the padding mask for right-padded rows (causal attention never sees a later pad) and the fused head
    change neither the loss nor any gradient, against HF's own masked forward and loss."""
    from transformers import AutoModelForCausalLM

    batch = _batch()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ours, n = assistant_ce_loss(model, **batch)
    ours.backward()
    g_ours = _grads(model)
    model.zero_grad()
    reference = model(**batch).loss  # masked attention, full logits, HF's shifted mean CE
    reference.backward()
    assert n == int((batch["labels"][:, 1:] != IGNORE).sum())
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(g_ours, _grads(model), atol=1e-6, rtol=1e-4)


def test_left_padded_rows_keep_their_mask(tiny_model_dir):
    """Left padding puts pads before real tokens, so there the mask is needed and kept."""
    from transformers import AutoModelForCausalLM

    right = _batch()
    shift = (right["attention_mask"] == 0).sum(-1).tolist()
    left = {k: torch.stack([torch.roll(row, s) for row, s in zip(v, shift)]) for k, v in right.items()}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ours, _ = assistant_ce_loss(model, **left)
    assert torch.allclose(ours, model(**left).loss, atol=1e-5)
    unmasked, _ = assistant_ce_loss(model, **{**left, "attention_mask": torch.ones_like(left["attention_mask"])})
    assert not torch.allclose(ours, unmasked, atol=1e-4)  # the mask does matter here


def test_compiled_layers_give_the_eager_loss_and_gradients(tiny_model_dir):
    batch = _batch()
    results = []
    for compiled in (False, True):
        model = peft_model(tiny_model_dir, target_modules=["q_proj", "v_proj", "up_proj"])
        if compiled:
            assert speed.compile_layers(model) == 1  # frozen embeddings: layer 0 stays eager, layer 1 compiles
        loss, _ = assistant_ce_loss(model, **batch)
        loss.backward()
        results.append((float(loss.detach()), _grads(model)))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    assert torch.allclose(results[1][1], results[0][1], atol=1e-6, rtol=1e-4)
    assert "lora_A" in " ".join(n for n, _ in model.named_parameters())  # state-dict names unchanged by compiling


def test_compile_plan_auto_decides_by_run_size_and_explains(monkeypatch):
    monkeypatch.setattr(speed, "compile_blocker", lambda device: None)
    assert speed.compile_plan("auto", "cpu", speed.COMPILE_MIN_TOKENS["lora"])[0] is True
    off, why = speed.compile_plan("auto", "cpu", 5_000)
    assert off is False and "5,000 tokens" in why and "train.compile: true" in why
    mid = (speed.COMPILE_MIN_TOKENS["full"] + speed.COMPILE_MIN_TOKENS["lora"]) // 2  # pays for full FT only
    assert speed.compile_plan("auto", "cpu", mid, "lora")[0] is False
    assert speed.compile_plan("auto", "cpu", mid, "full")[0] is True
    assert speed.compile_plan(False, "cpu", 10**9)[0] is False
    assert speed.compile_plan(True, "cpu", 10)[0] is True
    monkeypatch.setattr(speed, "compile_blocker", lambda device: "no C++ compiler (g++) on PATH")
    assert speed.compile_plan("auto", "cpu", 10**9) == (False, "off: no C++ compiler (g++) on PATH")
    with pytest.raises(SlmError, match="train.compile: true, but no C\\+\\+ compiler"):
        speed.compile_plan(True, "cpu", 10**9)
    assert speed.compile_blocker("mps") is not None


@pytest.mark.parametrize("attention", ["float32", "bfloat16"])
def test_bf16_lora_on_cpu_trains_in_stored_bf16(tmp_path, tiny_model_dir, tiny_csv, monkeypatch, attention):
    """dtype bfloat16, LoRA, CPU: the frozen model stored in bf16, fp32 adapters, no autocast, attention in the dtype
    the probe chose (stubbed here); runs on any CPU, if slowly where bf16 is not native."""
    from safetensors.torch import load_file

    from slmkit import speed_probe
    from slmkit.data import prepare
    from slmkit.hardware import detect
    from slmkit.runs import RunDir
    from slmkit.train import bf16, loop, stage
    from slmkit.train.loop import make_accelerator
    from slmkit.train.stage import run as train

    choice = {"train": "bfloat16", "decode": "bfloat16", "attention": attention}
    monkeypatch.setattr(speed_probe, "probe", lambda reprobe=False: {"choice": choice, "gflops": None})
    seen = {}
    real = bf16.store_frozen_in

    def spy(model, dtype, every=False):
        n = real(model, dtype, every)
        seen["frozen"] = {p.dtype for p in model.parameters() if not p.requires_grad}
        seen["trainable"] = {p.dtype for p in model.parameters() if p.requires_grad}
        seen["attn"] = model.get_base_model().config._attn_implementation
        return n

    monkeypatch.setattr(stage, "store_frozen_in", spy)
    real_backward, budgets = stage.batch_backward, set()

    def backward_spy(*a, budget, **k):
        budgets.add(budget)
        return real_backward(*a, budget=budget, **k)

    monkeypatch.setattr(stage, "batch_backward", backward_spy)
    make_accelerator(detect("cpu", "float32"), [], tmp_path)  # an fp32 run earlier in this process must not block bf16
    # 32 steps: at 16, bf16 on an AMX CPU had only reached 0.75x its first loss (fp32 0.59x); at 32 it is at 0.50x
    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv, dtype="bfloat16", max_steps=32, lr=5e-2, warmup_ratio=0.0)
    run = RunDir.of(cfg).root
    prepare(cfg, run / "data")
    summary = train(cfg, run, show_progress=False)
    history = [json.loads(line) for line in (run / "train" / "log.jsonl").read_text().splitlines()]
    assert summary["dtype"] == "bfloat16" and summary["compiled"] is False  # a tiny run: auto does not compile
    assert summary["final_loss"] < history[0]["loss"] * 0.7
    assert summary["precision"] == "bf16 weights" and seen["frozen"] == {torch.bfloat16}
    assert budgets == {bf16.MICRO_TOKENS_BF16} == {2 * loop.MICRO_TOKENS}  # bf16 activations: twice the tokens a pass
    assert seen["trainable"] == {torch.float32}
    fp32_attn = attention == "float32"
    assert seen["attn"] == (bf16.FP32_ATTENTION if fp32_attn else "sdpa")
    assert summary["attention_dtype"] == ("float32" if fp32_attn else None)
    saved = load_file(str(run / "train" / "final" / "adapter_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}  # the adapters as trained, not bf16 copies


def test_compiled_training_builds_its_graphs_up_front_and_trains(tmp_path, tiny_model_dir, tiny_csv):
    """train.compile: true compiles before step 1 (one-row and many-row passes) and trains like the eager run."""
    from torch._dynamo.utils import counters

    from slmkit.data import prepare
    from slmkit.runs import RunDir
    from slmkit.train.stage import run as train

    results = []
    for compiled in (False, True):
        # fp32: eager and compiled runs then agree to 1e-4 (under bf16 autocast, e.g. `auto` on an AMX CPU, the
        # compiled kernels round differently and 6 steps at this lr drift apart by a few percent)
        cfg = tiny_config(
            tmp_path / str(compiled),
            tiny_model_dir,
            tiny_csv,
            compile=compiled,
            max_steps=6,
            lr=5e-2,
            warmup_ratio=0.0,
            dtype="float32",
        )
        run = RunDir.of(cfg).root
        prepare(cfg, run / "data")
        torch._dynamo.reset()
        counters.clear()
        results.append(train(cfg, run, show_progress=False))
        graphs = counters["stats"]["unique_graphs"]
        history = [json.loads(line) for line in (run / "train" / "log.jsonl").read_text().splitlines()]
        if compiled:
            assert graphs == 2  # built by the warm-up; 6 steps of varied (rows, length) passes added none
    assert results[1]["compiled"] is True and results[0]["compiled"] is False
    assert results[1]["final_loss"] == pytest.approx(results[0]["final_loss"], rel=1e-4)
    assert results[1]["final_loss"] < history[0]["loss"]


def test_full_fine_tuning_in_bf16_keeps_autocast_over_fp32_weights(tmp_path, tiny_model_dir, tiny_csv):
    from slmkit.data import prepare
    from slmkit.runs import RunDir
    from slmkit.train.stage import run as train

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv, method="full", dtype="bfloat16", max_steps=2)
    run = RunDir.of(cfg).root
    prepare(cfg, run / "data")
    summary = train(cfg, run, show_progress=False)
    assert summary["precision"] == "autocast" and summary["attention_dtype"] is None


def test_bf16_head_cross_entropy_is_close_to_fp32_and_keeps_gradient_dtypes():
    """hidden and head in bf16 (a model stored in bf16): the matmuls in bf16, the softmax in fp32."""
    torch.manual_seed(0)
    h32, w32, t = torch.randn(23, 16) * 3, torch.randn(50, 16), torch.randint(0, 50, (23,))
    h = h32.bfloat16().requires_grad_()
    w = w32.bfloat16().requires_grad_()
    loss = linear_cross_entropy(h, w, t)
    loss.sum().backward()
    hr, wr = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    ref = F.cross_entropy(hr @ wr.t(), t, reduction="none")
    ref.sum().backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == w.grad.dtype == torch.bfloat16
    assert torch.allclose(loss, ref.detach(), rtol=2e-2, atol=5e-2)
    for ours, want in ((h.grad, hr.grad), (w.grad, wr.grad)):
        assert F.cosine_similarity(ours.float().flatten(), want.flatten(), 0) > 0.999


def test_fp32_attention_matches_an_fp32_model_with_padding_masks(tiny_model_dir):
    """The registered fp32 SDPA attention on a bf16 model: left-padded rows masked as sdpa masks them, outputs close
    to the fp32 model's, generation runs; a model not on SDPA is left alone."""
    from transformers import AutoModelForCausalLM

    from slmkit.train.bf16 import FP32_ATTENTION, use_fp32_attention

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits[:, 2:]
        low = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
        assert use_fp32_attention(low) and low.config._attn_implementation == FP32_ATTENTION
        got = low(input_ids=ids, attention_mask=mask).logits[:, 2:].float()
        assert F.cosine_similarity(got.flatten(), want.flatten(), 0) > 0.999
        out = low.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 9)
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert not use_fp32_attention(eager) and eager.config._attn_implementation == "eager"
