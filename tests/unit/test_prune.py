"""Pruning: measured importance picks the right layers/channels; the result loads anywhere; bad specs refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from slmkit.cli import app
from slmkit.distill.prune import layers_to_keep, prune
from slmkit.errors import SlmError
from tests.conftest import make_tiny_tokenizer


def _teacher(path: Path, layers: int = 4, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


IDS = torch.tensor([[1, 5, 9, 12, 7, 3, 20]])


def test_depth_pruning_drops_the_measured_no_op_layer_and_loads_anywhere(tmp_path):
    src = _teacher(tmp_path / "t")
    model = _load(src)
    with torch.no_grad():  # layer 1 becomes an identity block: attention and MLP write nothing to the residual
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    model.save_pretrained(src)
    summary = prune(str(src), tmp_path / "s", layers=3)
    assert summary["dropped_layers"] == [1]
    assert summary["layer_importance"][1] == pytest.approx(0.0, abs=1e-6)
    pruned = _load(tmp_path / "s")
    assert pruned.config.num_hidden_layers == 3 and len(pruned.model.layers) == 3
    with torch.no_grad():  # dropping an identity block leaves the function unchanged
        assert torch.allclose(pruned(IDS).logits, model(IDS).logits, atol=1e-5)
        # layer_idx renumbered: cached generation matches uncached generation
        cached = pruned.generate(IDS, max_new_tokens=5, do_sample=False, use_cache=True)
        plain = pruned.generate(IDS, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)


def test_width_pruning_removes_dead_channels_without_changing_outputs(tmp_path):
    src = _teacher(tmp_path / "t", layers=2)
    model = _load(src)
    with torch.no_grad():  # silu(0) * up = 0: channels 0..31 never fire
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[:32].zero_()
    model.save_pretrained(src)
    summary = prune(str(src), tmp_path / "s", mlp_ratio=0.5)
    assert summary["intermediate_size_after"] == 32 and summary["params_after"] < summary["params_before"]
    pruned = _load(tmp_path / "s")
    assert pruned.config.intermediate_size == 32 and pruned.model.layers[0].mlp.up_proj.weight.shape == (32, 32)
    with torch.no_grad():
        out = pruned(IDS).logits
    assert torch.isfinite(out).all()
    assert torch.allclose(out, model(IDS).logits, atol=1e-5)


def test_depth_and_width_together_with_ratio(tmp_path):
    src = _teacher(tmp_path / "t", layers=4)
    summary = prune(str(src), tmp_path / "s", ratio=0.5, mlp_ratio=0.25)
    pruned = _load(tmp_path / "s")
    assert (pruned.config.num_hidden_layers, pruned.config.intermediate_size) == (2, 48)
    assert len(summary["dropped_layers"]) == 2
    assert torch.isfinite(pruned(IDS).logits).all()


@pytest.mark.parametrize(
    "layers,ratio,match",
    [
        (0, None, "no layers"),
        (None, 1.0, r"outside \[0, 1\)"),
        (None, 0.9, "no layers"),
        (5, None, "larger than its teacher"),
        (2, 0.5, "either"),
    ],
)
def test_bad_prune_specs(layers, ratio, match):
    with pytest.raises(SlmError, match=match):
        layers_to_keep(4, layers, ratio)


def test_cli_prune_and_its_errors(tmp_path):
    src = _teacher(tmp_path / "t", layers=2)
    calib = tmp_path / "calib.txt"
    calib.write_text("play some music\nset an alarm for six\n")
    runner = CliRunner()
    ok = runner.invoke(app, ["prune", str(src), "--out", str(tmp_path / "s"), "--layers", "1", "--data", str(calib)])
    assert ok.exit_code == 0, ok.output
    assert _load(tmp_path / "s").config.num_hidden_layers == 1
    bad = runner.invoke(app, ["prune", str(src), "--out", str(tmp_path / "x"), "--ratio", "1.0"])
    assert isinstance(bad.exception, SlmError) and not (tmp_path / "x").exists()
    none = runner.invoke(app, ["prune", str(src), "--out", str(tmp_path / "x")])
    assert isinstance(none.exception, SlmError) and "nothing to prune" in str(none.exception)
