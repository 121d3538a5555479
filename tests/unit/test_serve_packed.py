"""oneDNN-packed Linear weights for CPU serving: same outputs as nn.Linear, used by the engine unless turned off."""

from __future__ import annotations

import pytest
import torch

from slmkit.config.serve import ServeConfig
from slmkit.serve.engine import SamplingParams
from slmkit.serve.load import load_engine
from slmkit.serve.packed import PackedLinear, can_pack, pack_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


def test_packed_linear_matches_linear_for_any_row_count():
    torch.manual_seed(0)
    lin = torch.nn.Linear(40, 24)
    packed = PackedLinear(lin, batch_hint=8)
    with torch.inference_mode():
        for shape in [(1, 40), (3, 40), (33, 40), (2, 5, 40)]:  # rows other than the hint, and a 3-D input
            x = torch.randn(*shape)
            assert torch.allclose(packed(x), lin(x), atol=1e-5), shape


def test_packed_model_gives_the_same_logits_and_greedy_reply(tiny_model_dir):
    from slmkit.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    plain = load_model(tiny_model_dir, "float32", "cpu", False).eval()
    packed = load_model(tiny_model_dir, "float32", "cpu", False).eval()
    n_linear = sum(type(m) is torch.nn.Linear for m in packed.modules())
    assert can_pack(packed) and pack_linears(packed, 4) == n_linear > 0
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    ids = torch.tensor([tok("book a table for two tonight")["input_ids"]])
    with torch.inference_mode():
        assert torch.allclose(packed(ids).logits, plain(ids).logits, atol=1e-4)
        kw = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tok.pad_token_id}
        assert torch.equal(packed.generate(ids, **kw), plain.generate(ids, **kw))


def test_half_precision_models_are_left_alone():
    lin = torch.nn.Sequential(torch.nn.Linear(8, 8)).to(torch.bfloat16)
    assert not can_pack(lin) and pack_linears(lin) == 0 and type(lin[0]) is torch.nn.Linear


def test_engine_packs_by_default_and_the_flag_turns_it_off(tiny_model_dir):
    on = load_engine(str(tiny_model_dir), ServeConfig(max_batch_size=2))
    off = load_engine(str(tiny_model_dir), ServeConfig(max_batch_size=2, pack_weights=False))
    assert any(isinstance(m, PackedLinear) for m in on.model.modules())
    assert not any(isinstance(m, PackedLinear) for m in off.model.modules())
    messages = [{"role": "user", "content": "cancel my order"}]
    params = dict(max_tokens=10, ignore_eos=True)
    try:
        a = on.start().generate(messages, SamplingParams(**params))
        b = off.start().generate(messages, SamplingParams(**params))
    finally:
        on.stop()
        off.stop()
    assert a.text == b.text and a.completion_tokens == b.completion_tokens == 10
