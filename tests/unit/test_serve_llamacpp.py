"""The llama.cpp serve backend (issue 17) on a tiny random llama written as GGUF: llama.cpp's logits through the
runner match the torch model's, rows are independent and reused, and `auto` serves a GGUF export folder with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slmkit.config.serve import ServeConfig
from slmkit.serve.engine import SamplingParams
from slmkit.serve.load import load_engine, pick_backend
from tests.unit.test_export_formats import PROMPTS, make_bpe_llama

llama_cpp = pytest.importorskip("llama_cpp", reason="the llamacpp extra (CI builds it)")


@pytest.fixture(scope="module")
def gguf_export(tmp_path_factory) -> tuple[Path, Path]:
    from slmkit.export.gguf import write_gguf

    src = make_bpe_llama(tmp_path_factory.mktemp("bpe_llama_cpp"), seed=5)
    folder = tmp_path_factory.mktemp("gguf-f16")
    write_gguf(src, folder / "tiny-f16.gguf", "f16")
    return src, folder


def test_runner_logits_match_torch_and_rows_are_independent(gguf_export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmkit.serve.engine import Request
    from slmkit.serve.llamacpp_runner import LlamaCppRunner

    src, folder = gguf_export
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    tok = AutoTokenizer.from_pretrained(src)
    runner = LlamaCppRunner(folder / "tiny-f16.gguf", max_sequences=2)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    with torch.no_grad():
        want = [model(torch.tensor([i])).logits[0, -1] for i in ids]

    def request(i):
        return Request(ids[i], SamplingParams(), lambda ev: None, tok, timeout_s=30)

    def check(row, i):
        got = runner._logits(runner._rows[row])[0]
        assert (got - want[i]).abs().max() < 2e-2 * want[i].abs().max(), PROMPTS[i]  # f16 weights
        assert got.argmax() == want[i].argmax()

    first = runner.prefill([request(0), request(1)])
    assert first == [int(want[0].argmax()), int(want[1].argmax())]  # greedy
    check(0, 0), check(1, 1)
    runner.keep([1])  # row 0 finished: its context is kept for reuse, row 1 moves up
    runner.prefill([request(2)])
    assert len(runner._rows) == 2 and not runner._free  # the freed context was reused, no third one made
    check(0, 1), check(1, 2)  # a reused context starts from an empty cache


def test_auto_serves_a_gguf_folder_and_decodes_greedily(gguf_export):
    from transformers import AutoModelForCausalLM

    from slmkit.serve.engine import Request

    src, folder = gguf_export
    assert pick_backend(str(folder), "auto")[0] == "gguf"
    engine = load_engine(str(folder), ServeConfig(max_batch_size=2)).start()
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    try:
        assert engine.runner.kind == "gguf" and engine.backend_reason == "a GGUF export"
        res = engine.generate(msgs, SamplingParams(max_tokens=6, ignore_eos=True))
        assert res.completion_tokens == 6 and res.finish_reason == "length"
    finally:
        engine.stop()
    # greedy through prefill/decode, checked token by token against the torch model fed the same prefix: a random
    # model's top two logits can tie to 1e-4, so each pick must be torch's best to within f16 rounding
    runner, ids = engine.runner, engine.encode_chat(msgs)
    req = Request(ids, SamplingParams(), lambda ev: None, engine.tok, timeout_s=30)
    picks = runner.prefill([req])
    for _ in range(5):
        req.next_token = picks[-1]
        picks += runner.decode([req])
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids + picks])).logits[0, len(ids) - 1 : -1]
    assert (logits.max(-1).values - logits[torch.arange(6), picks]).max() < 1e-2


def test_a_folder_without_one_gguf_is_one_clear_error(tmp_path):
    from slmkit.errors import SlmError
    from slmkit.serve.llamacpp_runner import find_gguf

    with pytest.raises(SlmError, match="exactly one"):
        find_gguf(str(tmp_path))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(SlmError):
        load_engine(str(bad), ServeConfig(backend="gguf"))
