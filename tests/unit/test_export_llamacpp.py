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
