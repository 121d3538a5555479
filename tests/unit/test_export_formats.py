"""GGUF, ONNX and torch.export on a tiny random llama with a byte-level BPE tokenizer, each read back independently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmkit.errors import SlmError
from tests.conftest import CHATML, WORDS, read_json, save_onnx_ready_llama, tiny_config, write_tiny_csv

PROMPTS = ["what is the weather today", "Hello! What can you do? 1,234 + 56", "book a flight to paris"]


def make_bpe_llama(path: Path, seed: int = 0) -> Path:
    """2-layer llama (hidden 64: the int4/q8_0 block size of 32 divides every matrix) + a 400-token byte-level BPE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator([" ".join(WORDS), " ".join(PROMPTS), "classify request reply with one intent"] * 5, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML
    return save_onnx_ready_llama(path, tok, seed=seed, initializer_range=0.1)


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory) -> Path:
    return make_bpe_llama(tmp_path_factory.mktemp("bpe_llama"))


@pytest.fixture(scope="module")
def source(bpe_llama):
    from slmkit.eval.backends import load_backend

    return load_backend(str(bpe_llama), name="source")


def test_gguf_f16_reads_back_with_same_logits_q8_close(tmp_path, bpe_llama, source):
    from slmkit.eval.backends import load_backend
    from slmkit.export.gguf import read_gguf_metadata, write_gguf
    from slmkit.export.verify import compare_logits

    results = {}
    for quant in ("f16", "q8_0"):
        path = write_gguf(bpe_llama, tmp_path / quant / f"tiny-{quant}.gguf", quant)
        meta = read_gguf_metadata(path)
        assert meta["architecture"] == "llama" and meta["tokenizer_model"] == "gpt2"
        assert meta["chat_template"] == CHATML
        assert meta["eos_token_id"] == source.tok.convert_tokens_to_ids("<|im_end|>") == meta["eot_token_id"]
        assert ("Q8_0" in meta["tensor_types"]) == (quant == "q8_0")
        artifact = load_backend(str(path))
        assert artifact.kind == "gguf"
        assert artifact.tok.chat_template == CHATML  # the template travels in the file's metadata
        results[quant] = compare_logits(source, artifact, PROMPTS)
        assert results[quant]["tokenizer_match"]
    assert results["f16"]["rel_diff"] < 2e-3
    assert results["f16"]["top1_agreement"] == 1.0
    assert (
        results["f16"]["max_abs_diff"]
        < results["q8_0"]["max_abs_diff"]
        < 0.05 * results["f16"]["max_abs_diff"] / results["f16"]["rel_diff"]
    )


def test_gguf_without_qk_permutation_would_be_wrong(tmp_path, bpe_llama, source, monkeypatch):
    """The Q/K row permutation is what makes the file right: skip it and the logits diverge."""
    import slmkit.export.gguf as g
    from slmkit.eval.backends import load_backend
    from slmkit.export.verify import compare_logits

    monkeypatch.setattr(g, "permute_qk", lambda w, n: w)
    path = g.write_gguf(bpe_llama, tmp_path / "bad.gguf", "f16")
    assert compare_logits(source, load_backend(str(path)), PROMPTS)["rel_diff"] > 1e-2


def test_gguf_refuses_other_architectures_and_tokenizers(tmp_path, bpe_llama, tiny_model_dir):
    from slmkit.export.gguf import write_gguf

    other = tmp_path / "gpt2ish"
    other.mkdir()
    cfg = read_json(bpe_llama / "config.json") | {"architectures": ["Qwen3ForCausalLM"]}
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SlmError, match="Qwen3ForCausalLM") as err:
        write_gguf(other, tmp_path / "x.gguf")
    assert "onnx" in err.value.hint
    with pytest.raises(SlmError, match="WordLevel"):  # the shared tiny fixture has a word-level vocabulary
        write_gguf(tiny_model_dir, tmp_path / "y.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def test_onnx_int8_export_runs_in_onnxruntime_genai(tmp_path, bpe_llama, source):
    from slmkit.eval.backends import load_backend
    from slmkit.export.onnx import build_onnx
    from slmkit.export.verify import compare_logits

    folder = build_onnx(bpe_llama, tmp_path / "onnx-int8", "int8")
    artifact = load_backend(str(folder))
    assert artifact.kind == "onnx"
    res = compare_logits(source, artifact, PROMPTS)
    assert res["tokenizer_match"]  # onnxruntime-genai's own tokenizer gives the same ids
    assert res["rel_diff"] < 0.15
    conv = [[{"role": "user", "content": p}] for p in PROMPTS]
    # Greedy decoding in onnxruntime-genai follows the source model while their top tokens agree.
    ours, theirs = artifact.generate(conv, 3, 1), source.generate(conv, 3, 1)
    assert sum(a == b for a, b in zip(ours, theirs)) >= 2


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, bpe_llama):
    """A tiny run (data + 6 LoRA steps) exported to merged, gguf q8_0, onnx int4 and pt2, all verified."""
    from slmkit.export.stage import ExportOptions, export_formats
    from slmkit.pipeline import fingerprints, run_stage
    from slmkit.runs import RunDir

    tmp = tmp_path_factory.mktemp("exported_run")
    csv = write_tiny_csv(tmp)
    cfg = tiny_config(tmp, bpe_llama, csv)
    cfg.data.license = "CC-BY-NC-4.0"
    run = RunDir.of(cfg).root
    fp = fingerprints(cfg)
    for stage in ("data", "train"):
        run_stage(cfg, run, stage, fp, show_progress=False)
    opts = ExportOptions(
        formats=["merged", "gguf", "onnx", "pt2"],
        gguf_quant=["q8_0"],
        onnx_quant=["int4"],
        verify_examples=8,
        metric_margin=100.0,
        metric_margin_4bit=100.0,
    )
    return run, export_formats(cfg, run, opts)


def test_export_stage_all_formats_verified_with_cards(exported_run):
    run, summary = exported_run
    assert set(summary["formats"]) == {"gguf-q8_0", "onnx-int4", "pt2"}
    n_test = len((run / "data" / "test.jsonl").read_text().splitlines())
    for name, entry in summary["formats"].items():
        folder = run / "export" / name
        verify = read_json(folder / "verify.json")
        assert verify["metric"]["n"] == min(8, n_test) and verify["metric"]["metric"] == "accuracy"
        card = (folder / "README.md").read_text()
        assert f"Export check ({name})" in card and "non-commercial" in card and "sha256" in card
        assert entry["bytes"] > 0 and Path(entry["path"]).exists()
    assert (run / "export" / "onnx-int4" / "genai_config.json").is_file()
    assert summary["licence"]["warnings"] and not summary["licence"]["commercial_ok"]
    warnings = summary["licence"]["warnings"]  # each names the file it is about, in plain English
    assert any(
        w.startswith(f"data source {run.parent.parent / 'rows.csv'} has a non-commercial licence") for w in warnings
    ), warnings
    assert any(w.startswith("base model ") and " has an unknown licence" in w for w in warnings), warnings
    assert summary["formats"]["pt2"]["verify"]["metric"]["drop_points"] == 0.0  # same fp32 graph, same answers
    assert not list((run / "export").glob(".*.tmp"))


def test_pt2_program_matches_merged_model(exported_run):
    from slmkit.eval.backends import load_backend
    from slmkit.export.verify import compare_logits

    run, _ = exported_run
    merged = load_backend(str(run / "export" / "merged"))
    artifact = load_backend(str(run / "export" / "pt2"))
    assert artifact.kind == "pt2" and merged.kind == "torch"
    assert compare_logits(merged, artifact, PROMPTS)["max_abs_diff"] < 1e-4
    conv = [[{"role": "user", "content": PROMPTS[0]}]]
    assert artifact.generate(conv, 4, 1) == merged.generate(conv, 4, 1)


def test_metric_drop_beyond_margin_fails_and_leaves_nothing(tmp_path, bpe_llama, source):
    from slmkit.export.verify import verify_export

    class Broken:
        """An 'export' that always answers the same wrong thing but has the source's logits."""

        name, kind, tok = "broken", "torch", source.tok

        def prompt_ids(self, m):
            return source.prompt_ids(m)

        def next_token_logits(self, ids):
            return source.next_token_logits(ids)

        def generate(self, conversations, *a, **k):
            return ["nonsense"] * len(conversations)

    conv = [[{"role": "user", "content": p}] for p in PROMPTS]
    refs = ["weather", "hello", "book_flight"]
    with pytest.raises(SlmError, match="drops from 1.0000 to 0.0000"):
        verify_export(source, Broken(), "q8_0", 2.0, (conv, refs, "classification"), 4, 2, source_preds=refs)
    ok = verify_export(source, Broken(), "q8_0", 2.0, None)
    assert ok["logits"]["max_abs_diff"] == 0.0 and "metric" not in ok


def test_export_model_cli_shows_no_library_progress_bars(exported_run):
    """`slm export-model`: transformers' own tqdm bars (its GGUF reader's "Converting and de-quantizing GGUF
    tensors...") stay out of the output; the command's result lines are what it prints."""
    import subprocess
    import sys

    import yaml

    from slmkit.config import load_config

    run, _summary = exported_run
    cfg = load_config(
        None,
        {
            "name": run.name,
            "output_dir": str(run.parent),
            "model": {
                "base_model": str(json.loads((run / "train" / "final" / "slmkit.json").read_text())["base_model"])
            },
        },
        environ={},
    )
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "slmkit.cli",
            "export-model",
            str(run),
            "-f",
            "gguf",
            "-q",
            "f16",
            "--verify-examples",
            "2",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "gguf-f16" in res.stdout and "max |logit diff|" in res.stdout
    assert "de-quantizing" not in res.stdout + res.stderr and "\r" not in res.stdout + res.stderr
