"""GGUF recipes written by llama.cpp's own quantiser and GGUF checks run by llama.cpp (issue 22) on a tiny random
llama: the files hold llama.cpp's types and nothing half-written, llama.cpp's greedy answers match transformers'
reading of the same f32 file, and without the extra the recipes are left out of `auto` or refused with the hint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from slmkit.errors import SlmError
from tests.unit.test_export_formats import PROMPTS, make_bpe_llama


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory) -> Path:
    return make_bpe_llama(tmp_path_factory.mktemp("bpe_llama_lq"), seed=7)


@pytest.fixture
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="the llamacpp extra (CI builds it)")


def test_llama_cpp_recipes_write_its_types_and_leave_only_the_artifact(tmp_path, bpe_llama, llama_cpp):
    from slmkit.eval.backends import LlamaCppBackend, load_backend
    from slmkit.export.gguf import read_gguf_metadata, write_gguf
    from slmkit.export.verify import compare_logits

    source = load_backend(str(bpe_llama), name="source")
    for quant, want in (("iq4_nl", "IQ4_NL"), ("q4_k_m", "Q5_0")):  # width 64 < 256: Q4_K falls back to Q5_0
        folder = tmp_path / quant
        path = write_gguf(bpe_llama, folder / f"tiny-{quant}.gguf", quant)
        meta = read_gguf_metadata(path)
        assert want in meta["tensor_types"] and "F16" not in meta["tensor_types"], (quant, meta["tensor_types"])
        assert meta["chat_template"] and meta["eot_token_id"] == source.tok.convert_tokens_to_ids("<|im_end|>")
        # the F32 intermediate and the quantiser's temp file are gone; its log is kept
        assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "quantize.log", path.name]
        assert f"FROM ./{path.name}" in (folder / "Modelfile").read_text()
        artifact = load_backend(str(path))
        assert isinstance(artifact, LlamaCppBackend)
        res = compare_logits(source, artifact, PROMPTS)
        assert res["tokenizer_match"] and res["rel_diff"] < 0.5, (quant, res)


def test_llama_cpp_answers_match_transformers_on_the_same_f32_file(tmp_path, bpe_llama, llama_cpp, monkeypatch):
    import slmkit.eval.backends as backends
    from slmkit.export.gguf import write_gguf
    from slmkit.export.verify import compare_logits

    path = write_gguf(bpe_llama, tmp_path / "tiny-f32.gguf", "f32")
    by_llama = backends.load_backend(str(path))
    monkeypatch.setattr(backends, "gguf_reader", lambda: "transformers")
    by_hf = backends.load_backend(str(path))
    assert by_llama.info["reader"] == "llama.cpp" and by_hf.info["reader"] == "transformers"
    assert compare_logits(by_hf, by_llama, PROMPTS)["rel_diff"] < 1e-3
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    want = by_hf.generate(conversations, 8, 4)
    assert by_llama.generate(conversations, 8, 4) == want
    assert any(want)  # something was generated to compare
    assert by_llama.generate(conversations[:1], 1, 1)[0] == by_hf.generate(conversations[:1], 1, 1)[0]


def test_without_the_extra_auto_leaves_llama_cpp_recipes_out_and_naming_one_fails(tmp_path, bpe_llama, monkeypatch):
    import slmkit.llamacpp_runtime as runtime
    from slmkit.export.gguf import FOUR_BIT, LLAMA_RECIPES, write_gguf
    from slmkit.export.stage import recipes_for

    monkeypatch.setattr(runtime, "installed", lambda: False)
    ladder = recipes_for("gguf", "auto")
    assert ladder[-1] == "q8_0" and ladder and not set(ladder) & set(LLAMA_RECIPES)
    monkeypatch.setattr(runtime, "installed", lambda: True)
    assert recipes_for("gguf", "auto") == [*FOUR_BIT, "q8_0"] and set(FOUR_BIT) & set(LLAMA_RECIPES)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # importing it now raises ImportError
    with pytest.raises(SlmError) as e:
        write_gguf(bpe_llama, tmp_path / "out" / "tiny-q4_k_m.gguf", "q4_k_m")
    assert "llama-cpp-python" in e.value.message and "slmkit[llamacpp]" in e.value.hint
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


def test_llama_cpp_row_quantiser_matches_gguf_py_and_the_imatrix_changes_rounding(llama_cpp):
    import gguf
    import numpy as np

    from slmkit.llamacpp_runtime import quantize_rows

    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    for kind in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0):
        # no importance matrix: llama.cpp's reference rounding, which gguf-py reimplements byte for byte
        assert np.array_equal(quantize_rows(w, int(kind), None), gguf.quants.quantize(w, kind))
    q4 = int(gguf.GGMLQuantizationType.Q4_0)
    weights = np.linspace(0.01, 10.0, 64, dtype=np.float32)
    with_im = quantize_rows(w, q4, weights)
    assert with_im.shape == quantize_rows(w, q4, None).shape and not np.array_equal(with_im, quantize_rows(w, q4, None))
    back = gguf.quants.dequantize(with_im, gguf.GGMLQuantizationType.Q4_0)
    plain = gguf.quants.dequantize(quantize_rows(w, q4, None), gguf.GGMLQuantizationType.Q4_0)
    # the weighted error is what the importance matrix asks to keep small
    assert ((back - w) ** 2 * weights).sum() < ((plain - w) ** 2 * weights).sum()


def test_imatrix_recipe_is_calibrated_on_real_tokens_and_runs_in_llama_cpp(tmp_path, bpe_llama, llama_cpp):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmkit.eval.backends import load_backend
    from slmkit.export.gguf import read_gguf_metadata, write_gguf
    from slmkit.export.imatrix import calibration_texts, collect
    from slmkit.export.verify import compare_logits

    model = AutoModelForCausalLM.from_pretrained(bpe_llama, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(bpe_llama)
    convs = [[{"role": "user", "content": p}] for p in PROMPTS]
    texts = calibration_texts(convs, ["weather", "alarm", "play_music"][: len(PROMPTS)], tok)
    assert texts[0].endswith("weather<|im_end|>\n")  # the reference reply is part of the calibration text
    batched = collect(model, tok, texts, batch_size=len(texts))
    one_by_one = collect(model, tok, texts, batch_size=1)
    assert set(batched) == {n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, v in batched.items():  # padding positions are left out: batching does not change the statistic
        assert np.allclose(v, one_by_one[name], rtol=1e-4), name
        assert v.shape == (model.get_submodule(name.removesuffix(".weight")).in_features,) and (v > 0).all()
    path = write_gguf(bpe_llama, tmp_path / "im" / "tiny-q4_0_m_im.gguf", "q4_0_m_im", imatrix=batched)
    plain = write_gguf(bpe_llama, tmp_path / "plain" / "tiny-q4_0_m.gguf", "q4_0_m")
    assert read_gguf_metadata(path)["tensor_types"] == read_gguf_metadata(plain)["tensor_types"]
    assert path.read_bytes() != plain.read_bytes()  # same types, rounded by the importance matrix
    res = compare_logits(load_backend(str(bpe_llama)), load_backend(str(path)), PROMPTS)
    assert res["tokenizer_match"] and res["rel_diff"] < 0.5, res
