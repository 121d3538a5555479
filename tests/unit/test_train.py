"""Training pieces on a tiny random llama: masking, the loss, batching, LoRA targets, resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from slmkit.encoding import IGNORE, batch_order, collate, encode_chat, prompt_messages
from slmkit.errors import SlmError
from slmkit.train.losses import assistant_ce_loss
from tests.conftest import make_tiny_tokenizer, read_json, tiny_config

MSGS = [
    {"role": "system", "content": "classify request"},
    {"role": "user", "content": "play some music"},
    {"role": "assistant", "content": "play_music"},
]


def test_only_assistant_tokens_are_labelled():
    tok = make_tiny_tokenizer()
    ex = encode_chat(tok, MSGS, max_len=128)
    labelled = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE]
    assert tok.convert_ids_to_tokens(labelled) == ["play_music", "<|im_end|>"]
    assert len(ex["input_ids"]) == len(ex["labels"])


def test_multi_turn_labels_every_assistant_turn():
    tok = make_tiny_tokenizer()
    msgs = MSGS + [{"role": "user", "content": "book a flight"}, {"role": "assistant", "content": "book_flight"}]
    ex = encode_chat(tok, msgs, max_len=128)
    labelled = tok.convert_ids_to_tokens([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE])
    assert labelled == ["play_music", "<|im_end|>", "book_flight", "<|im_end|>"]
    assert prompt_messages(msgs) == msgs[:-1]


def test_truncation_keeps_ids_and_labels_aligned():
    ex = encode_chat(make_tiny_tokenizer(), MSGS, max_len=5)
    assert len(ex["input_ids"]) == len(ex["labels"]) == 5


def test_batch_order_is_deterministic_covers_all_rows_and_groups_lengths():
    lengths = [int(x) for x in torch.randint(5, 200, (300,), generator=torch.Generator().manual_seed(1))]
    a, b = batch_order(lengths, 8, seed=3, epoch=0), batch_order(lengths, 8, seed=3, epoch=0)
    assert a == b and a != batch_order(lengths, 8, seed=3, epoch=1)
    assert sorted(i for batch in a for i in batch) == list(range(300))
    spread = sum(max(lengths[i] for i in bt) - min(lengths[i] for i in bt) for bt in a) / len(a)
    random_spread = (
        sum(
            max(lengths[i] for i in range(k, k + 8)) - min(lengths[i] for i in range(k, k + 8))
            for k in range(0, 296, 8)
        )
        / 37
    )
    assert spread < random_spread / 3  # length grouping removes most padding


def test_collate_pads_right_and_masks():
    batch = collate(
        [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [5], "labels": [IGNORE]}], pad_id=2
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, IGNORE]]


def test_fast_loss_equals_transformers_loss(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = make_tiny_tokenizer()
    exs = [
        encode_chat(tok, MSGS, 64),
        encode_chat(tok, MSGS[:2] + [{"role": "assistant", "content": "alarm weather"}], 64),
    ]
    batch = collate(exs, tok.pad_token_id)
    ours, n = assistant_ce_loss(model, **batch)
    reference = model(**batch).loss  # HF shifts labels and averages over non-ignored tokens the same way
    assert n == sum(sum(1 for lab in e["labels"][1:] if lab != IGNORE) for e in exs)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_lora_targets_auto_and_bad_name(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from slmkit.train.loop import find_lora_targets

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert find_lora_targets(model, "auto") == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    with pytest.raises(SlmError) as e:
        find_lora_targets(model, ["q_proj", "query_key_value"])
    assert "query_key_value" in e.value.message and "q_proj" in e.value.hint


def _prepared_run(tmp_path, tiny_model_dir, tiny_csv, **train):
    from slmkit.data import prepare
    from slmkit.runs import RunDir

    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv, **train)
    run = RunDir.of(cfg).root
    prepare(cfg, run / "data")
    return cfg, run


@pytest.mark.parametrize("method,lr", [("lora", 5e-2), ("full", 1e-2)])
def test_training_lowers_loss_and_writes_outputs(tmp_path, tiny_model_dir, tiny_csv, method, lr):
    from slmkit.train.stage import run as train

    cfg, run = _prepared_run(tmp_path, tiny_model_dir, tiny_csv, method=method, max_steps=24, lr=lr, warmup_ratio=0.0)
    summary = train(cfg, run, show_progress=False)
    history = [json.loads(line) for line in (run / "train" / "log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(1, 25)) and summary["steps"] == 24
    assert summary["final_loss"] < history[0]["loss"] * 0.7
    final = run / "train" / "final"
    assert (final / ("adapter_model.safetensors" if method == "lora" else "model.safetensors")).is_file()
    assert (run / "train" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert read_json(final / "slmkit.json")["base_model"] == str(tiny_model_dir)


def test_resume_from_checkpoint_matches_uninterrupted(tmp_path, tiny_model_dir, tiny_csv):
    """A run resumed from its step-4 checkpoint ends with exactly the loss of the uninterrupted run."""
    from slmkit.train.loop import latest_checkpoint
    from slmkit.train.stage import run as train

    cfg, run = _prepared_run(tmp_path / "a", tiny_model_dir, tiny_csv, lora={"dropout": 0.1}, keep_checkpoints=5)
    full = train(cfg, run, show_progress=False)
    # Simulate a crash after step 4: only the checkpoints written by then exist, no final model.
    crashed = tmp_path / "b" / "runs" / "tiny"
    shutil.copytree(run / "data", crashed / "data")
    shutil.copytree(run / "train" / "checkpoints" / "step-4", crashed / "train" / "checkpoints" / "step-4")
    shutil.copytree(run / "train" / "checkpoints" / "step-2", crashed / "train" / "checkpoints" / "step-2")
    assert latest_checkpoint(crashed / "train" / "checkpoints").name == "step-4"
    resumed = train(cfg, crashed, resume=True, show_progress=False)
    assert resumed["steps"] == full["steps"] == 6
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], rel=1e-6)
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-6)


def test_checkpoints_are_pruned_to_keep(tmp_path, tiny_model_dir, tiny_csv):
    from slmkit.train.stage import run as train

    cfg, run = _prepared_run(tmp_path, tiny_model_dir, tiny_csv, max_steps=9, save_steps=2, keep_checkpoints=2)
    train(cfg, run, show_progress=False)
    assert sorted(p.name for p in (run / "train" / "checkpoints").iterdir()) == ["step-6", "step-8"]


def test_micro_batches_give_the_full_batch_gradient(tiny_model_dir):
    """Splitting a batch into micro-batches (token-weighted) changes memory, not the gradient."""
    from transformers import AutoModelForCausalLM

    from slmkit.hardware import detect
    from slmkit.train.loop import batch_backward, make_accelerator

    tok = make_tiny_tokenizer()
    replies = ["play_music", "alarm weather", "translate hello into french", "book_flight", "weather"]
    exs = [encode_chat(tok, MSGS[:2] + [{"role": "assistant", "content": r}], 64) for r in replies]
    grads, losses = [], []
    for micro in (5, 2, 1, None):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        # fp32 whatever ran before in this process (`auto` picks bf16 autocast on AMX CPUs; accelerate keeps it)
        accelerator = make_accelerator(detect("cpu", "float32"), [], tiny_model_dir)
        loss, tokens = batch_backward(model, exs, tok.pad_token_id, micro, accelerator)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        losses.append(loss)
        assert tokens == sum(len(e["input_ids"]) for e in exs)  # pad tokens are not counted
    whole = assistant_ce_loss(AutoModelForCausalLM.from_pretrained(tiny_model_dir), **collate(exs, tok.pad_token_id))[0]
    assert losses[0] == pytest.approx(float(whole.detach()), rel=1e-6)
    for g, loss in zip(grads[1:], losses[1:]):
        assert loss == pytest.approx(losses[0], rel=1e-5)
        assert torch.allclose(g, grads[0], atol=1e-6, rtol=1e-4)


def test_auto_micro_batches_follow_the_token_budget():
    from slmkit.train.loop import micro_chunks

    MICRO_TOKENS = 512  # the expected chunks below are worked out for this budget
    exs = [{"input_ids": [0] * n, "labels": [0] * n} for n in (300, 100, 100, 100, 100, 250, 40, 40)]
    chunks = micro_chunks(exs, None, budget=MICRO_TOKENS)
    assert sorted(len(e["input_ids"]) for c in chunks for e in c) == sorted(len(e["input_ids"]) for e in exs)
    for c in chunks:  # padded size within budget, unless a single row is already larger
        assert len(c) == 1 or len(c) * max(len(e["input_ids"]) for e in c) <= MICRO_TOKENS
    assert len(chunks) == 3  # [40, 40, 100, 100, 100] (5 x 100 padded) [100, 250] (2 x 250) [300]
    assert [len(c) for c in micro_chunks(exs, 3)] == [3, 3, 2]


def test_bf16_lora_keeps_frozen_weights_in_bf16_with_the_same_losses(tmp_path, tiny_model_dir, tiny_csv, monkeypatch):
    """The autocast path (bf16 LoRA off CPU): stored once in bf16, the frozen base weights give exactly the matmuls
    autocast's per-call casts gave."""
    import torch

    from slmkit.train import bf16, stage

    seen = {}
    real = bf16.store_frozen_in
    monkeypatch.setattr(stage, "native_bf16", lambda hw, method: False)

    def spy(model, dtype, every=False):
        n = real(model, dtype, every)
        seen["n"] = n
        seen["dtypes"] = {p.dtype for name, p in model.named_parameters() if "base_layer" in name}
        seen["trainable"] = {p.dtype for p in model.parameters() if p.requires_grad}
        return n

    runs = {}
    for name, fn in (("stored", spy), ("cast_per_call", lambda model, dtype, every=False: 0)):
        monkeypatch.setattr(stage, "store_frozen_in", fn)
        cfg, run = _prepared_run(tmp_path / name, tiny_model_dir, tiny_csv, dtype="bfloat16", max_steps=4)
        runs[name] = stage.run(cfg, run, show_progress=False)
    assert seen["n"] > 0 and seen["dtypes"] == {torch.bfloat16} and seen["trainable"] == {torch.float32}
    a, b = runs["stored"], runs["cast_per_call"]
    assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-5)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5) and a["dtype"] == "bfloat16"
    assert a["precision"] == "autocast"
