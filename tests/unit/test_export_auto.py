"""4-bit export recipes and `quant: auto` (issue 22) on a tiny random llama: the recipes write what they say,
`auto` keeps the smallest recipe within the margin, judged on train rows, and a rejected recipe leaves nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmkit.errors import SlmError
from tests.conftest import read_json, tiny_config, write_tiny_csv
from tests.unit.test_export_formats import PROMPTS, make_bpe_llama


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory) -> Path:
    return make_bpe_llama(tmp_path_factory.mktemp("bpe_llama_auto"), seed=3)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, bpe_llama):
    """data + 4 LoRA steps + merged export of the tiny model."""
    from slmkit.export.stage import ExportOptions, export_formats
    from slmkit.pipeline import fingerprints, run_stage
    from slmkit.runs import RunDir

    tmp = tmp_path_factory.mktemp("auto_run")
    csv = write_tiny_csv(tmp, ("", " please", " today", " now"))
    cfg = tiny_config(tmp, bpe_llama, csv, max_steps=4)
    run = RunDir.of(cfg).root
    fp = fingerprints(cfg)
    for stage in ("data", "train"):
        run_stage(cfg, run, stage, fp, show_progress=False)
    export_formats(cfg, run, ExportOptions(formats=["merged"]))
    return cfg, run


def test_gguf_4bit_recipes_write_their_tensor_types_and_read_back(tmp_path, bpe_llama):
    from slmkit.eval.backends import load_backend
    from slmkit.export.gguf import read_gguf_metadata, tensor_type, write_gguf
    from slmkit.export.verify import compare_logits

    source = load_backend(str(bpe_llama), name="source")
    sizes = {}
    for quant, types in (("q4_0", {"Q4_0"}), ("q4_0_m", {"Q4_0", "Q8_0"}), ("q5_0_m", {"Q5_0", "Q8_0"})):
        path = write_gguf(bpe_llama, tmp_path / f"{quant}.gguf", quant)
        meta = read_gguf_metadata(path)
        assert set(meta["tensor_types"]) - {"F32"} == types, (quant, meta["tensor_types"])
        res = compare_logits(source, load_backend(str(path)), PROMPTS)
        assert res["tokenizer_match"] and res["rel_diff"] < 0.5, (quant, res)
        sizes[quant] = path.stat().st_size
    assert sizes["q4_0"] < sizes["q4_0_m"] < sizes["q5_0_m"]
    # the _m mixes keep the embedding (the tied head) and llama.cpp's use_more_bits layers at 8 bits
    assert tensor_type("token_embd.weight", "q4_0_m", 2) == "Q8_0" == tensor_type("blk.0.ffn_down.weight", "q4_0_m", 30)
    assert (
        tensor_type("blk.3.ffn_down.weight", "q4_0_m", 30) == "Q4_0" == tensor_type("blk.0.attn_q.weight", "q4_0_m", 30)
    )


def test_onnx_mixed_recipe_keeps_the_head_at_8_bits(tmp_path, bpe_llama):
    import onnx

    from slmkit.export.onnx import build_onnx

    folder = build_onnx(bpe_llama, tmp_path / "onnx", "int4_kq_head8")
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    bits = {
        n.name: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node if n.op_type == "MatMulNBits"
    }
    head = [b for name, b in bits.items() if "lm_head" in name]
    assert head == [8], bits
    assert {b for name, b in bits.items() if "lm_head" not in name} == {4}


def test_onnx_hqq_recipe_puts_the_layers_at_4_bits_and_runs(tmp_path, bpe_llama):
    import onnx

    from slmkit.eval.backends import load_backend
    from slmkit.export.onnx import build_onnx
    from slmkit.export.verify import compare_logits

    folder = build_onnx(bpe_llama, tmp_path / "onnx", "int4_hqq")
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    bits = {  # GatherBlockQuantized's bits attribute defaults to 4 (onnxruntime's contrib op schema)
        n.name: next((a.i for a in n.attribute if a.name == "bits"), 4)
        for n in graph.node
        if n.op_type in ("MatMulNBits", "GatherBlockQuantized")
    }
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and "layers" in n.name]  # every layer quantised
    assert [b for name, b in bits.items() if "lm_head" in name] == [8], bits
    assert {b for name, b in bits.items() if "lm_head" not in name} == {4}
    assert any("embed_tokens" in name for name in bits)  # the embedding lookup too
    assert not (folder / ".hqq").exists()
    res = compare_logits(load_backend(str(bpe_llama)), load_backend(str(folder)), PROMPTS)
    assert res["tokenizer_match"] and res["rel_diff"] < 0.5, res


def _stub_metric(monkeypatch, drops: dict[str, float], test_drops: dict[str, float] | None = None):
    """compare_metric reports `drops[recipe]` for the recipe built last (real builds, made-up accuracy); on the test
    rows `test_drops[recipe]` when given."""
    import slmkit.export.stage as stage
    import slmkit.export.verify as verify

    built, calls = [], []
    real_build = stage._build

    def build(fmt, recipe, *a):
        built.append(recipe)
        return real_build(fmt, recipe, *a)

    def metric(source, artifact, conversations, refs, task, *a, **k):
        on_test = any(r == built[-1] for r, _ in calls)  # auto checks train rows first, then the test rows
        calls.append((built[-1], tuple(refs)))
        drop = (test_drops or {}).get(built[-1], drops[built[-1]]) if on_test else drops[built[-1]]
        return {"metric": "accuracy", "source": 1.0, "export": 1 - drop / 100, "drop_points": drop, "n": len(refs)}

    monkeypatch.setattr(stage, "_build", build)
    monkeypatch.setattr(verify, "compare_metric", metric)
    return built, calls


def test_auto_keeps_the_smallest_recipe_within_the_margin_judged_on_train_rows(tiny_run, monkeypatch):
    import slmkit.export.gguf as gguf
    from slmkit.export.stage import ExportOptions, export_formats, is_4bit, recipes_for
    from slmkit.io import read_jsonl

    cfg, run = tiny_run
    # the ladder is ordered by size on SmolLM2-135M; llama.cpp's recipes fall back to 8-bit heads on this tiny width,
    # so the writer's own recipes (smallest first on any llama) keep "smallest first" true here
    monkeypatch.setattr(gguf, "FOUR_BIT", ("q4_0", "q4_0_m", "q5_0_m", "q4_0_gate_up"))
    ladder = recipes_for("gguf", "auto")
    first, second, third = ladder[:3]
    assert ladder[-1] == "q8_0" and all(is_4bit(q) for q in ladder[:-1])
    drops = dict.fromkeys(ladder, 0.0) | {first: 6.0, second: 1.5, third: 0.5}
    built, calls = _stub_metric(monkeypatch, drops)
    opts = ExportOptions(formats=["gguf"], gguf_quant=["auto"], verify_examples=8, metric_margin_4bit=1.0)
    summary = export_formats(cfg, run, opts)
    assert built == [first, second, third]  # stops at the first that passes
    entry = summary["formats"]["gguf-auto"]
    assert entry["recipe"] == third
    folder = run / "export" / "gguf-auto"
    assert [p.name for p in folder.glob("*.gguf")] == [f"{cfg.name}-{third}.gguf"]  # rejected files never land
    verify = read_json(folder / "verify.json")
    auto = verify["auto"]
    assert auto["chosen"] == third and [t["recipe"] for t in auto["tried"]] == built
    assert [t["calibration"]["drop_points"] for t in auto["tried"]] == [6.0, 1.5, 0.5]
    sizes = [t["bytes"] for t in auto["tried"]]
    assert sizes == sorted(sizes)  # smallest first
    train_refs = tuple(r["label"] for r in read_jsonl(run / "data" / "train.jsonl"))
    test_refs = tuple(r["label"] for r in read_jsonl(run / "data" / "test.jsonl"))
    train_refs = tuple(train_refs[i * len(train_refs) // 8] for i in range(8))  # spread over the split
    test_refs = test_refs if len(test_refs) <= 8 else tuple(test_refs[i * len(test_refs) // 8] for i in range(8))
    assert len(set(train_refs)) > 2  # the split is written label by label: its first rows would be one or two labels
    # each recipe judged on train rows; only the kept one then checked on the test rows
    assert [refs for _, refs in calls] == [train_refs] * 3 + [test_refs]
    assert auto["calibration_split"] == "train" and auto["calibration_rows"] == len(train_refs)
    assert len(auto["calibration_sha256"]) == 64
    assert read_json(folder / "slmkit.json")["precision"] == third
    card = (folder / "README.md").read_text()
    assert f"recipe `{third}`, chosen by `quant: auto`" in card and f"{first} (" in card
    assert "-6.0 points, rejected" in card and "-0.5 points, kept" in card


def test_auto_with_no_passing_recipe_fails_and_writes_nothing(tiny_run, monkeypatch):
    from slmkit.export.stage import ExportOptions, export_formats, recipes_for

    cfg, run = tiny_run
    ladder = recipes_for("onnx", "auto")
    _stub_metric(monkeypatch, dict.fromkeys(ladder, 9.0))
    opts = ExportOptions(formats=["onnx"], onnx_quant=["auto"], verify_examples=8, metric_margin=2.0)
    dest = run / "export" / "onnx-auto"
    dest.mkdir(parents=True)
    (dest / "model.onnx").write_text("an earlier, verified export")
    with pytest.raises(
        SlmError,
        match=rf"no recipe kept accuracy within its margin \({ladder[0]} -9.0 on train rows; .* int8 -9.0 on train rows\)",
    ):
        export_formats(cfg, run, opts)
    assert [p.name for p in dest.iterdir()] == ["model.onnx"]  # the earlier export is left as it was
    assert (dest / "model.onnx").read_text() == "an earlier, verified export"
    assert not list((run / "export").glob(".*.tmp"))


def test_an_explicit_4bit_recipe_that_misses_the_margin_is_refused(tiny_run, monkeypatch):
    from slmkit.export.stage import ExportOptions, export_formats

    cfg, run = tiny_run
    built, calls = _stub_metric(monkeypatch, {"q4_0": 3.0})
    opts = ExportOptions(formats=["gguf"], gguf_quant=["q4_0"], verify_examples=8)  # default 4-bit margin: 1 point
    with pytest.raises(SlmError, match="drops from 1.0000 to 0.9700"):
        export_formats(cfg, run, opts)
    assert built == ["q4_0"] and not (run / "export" / "gguf-q4_0").exists()


def test_auto_without_rows_to_judge_on_writes_the_most_conservative_4bit_recipe_and_says_so(tiny_run):
    from slmkit.export.stage import ExportOptions, export_formats, recipes_for

    cfg, run = tiny_run
    opts = ExportOptions(formats=["gguf"], gguf_quant=["auto"], verify_examples=0)
    summary = export_formats(cfg, run, opts)
    conservative = recipes_for("gguf", "auto")[-2]  # the last 4-bit rung (the one after it is 8-bit)
    assert summary["formats"]["gguf-auto"]["recipe"] == conservative
    folder = run / "export" / "gguf-auto"
    auto = read_json(folder / "verify.json")["auto"]
    assert (
        auto["chosen"] == conservative and auto["calibration_rows"] == 0 and "no train or test rows" in auto["warning"]
    )
    assert "warning: no train or test rows" in (folder / "README.md").read_text()


def test_a_recipe_that_passes_on_train_rows_but_fails_the_test_check_is_passed_over(tiny_run, monkeypatch):
    from slmkit.export.stage import ExportOptions, export_formats, recipes_for

    cfg, run = tiny_run
    first, second = recipes_for("gguf", "auto")[:2]
    built, calls = _stub_metric(monkeypatch, {first: 0.0, second: 0.0}, test_drops={first: 3.0})
    opts = ExportOptions(formats=["gguf"], gguf_quant=["auto"], verify_examples=8)
    assert export_formats(cfg, run, opts)["formats"]["gguf-auto"]["recipe"] == second
    assert [r for r, _ in calls] == [first, first, second, second]  # train rows, then test rows, per recipe
    auto = read_json(run / "export" / "gguf-auto" / "verify.json")["auto"]
    assert "drops from 1.0000 to 0.9700" in auto["tried"][0]["rejected"]
    assert f"{first} (" in (card := (run / "export" / "gguf-auto" / "README.md").read_text())
    assert "failed the test check" in card


def test_an_imatrix_recipe_records_its_calibration_rows_in_verify_and_card(tiny_run, monkeypatch):
    pytest.importorskip("llama_cpp", reason="the llamacpp extra (CI builds it)")
    import slmkit.export.imatrix as imatrix
    from slmkit.export.stage import ExportOptions, export_formats

    cfg, run = tiny_run
    seen = []
    real = imatrix.collect
    monkeypatch.setattr(imatrix, "collect", lambda *a, **k: seen.append(len(a[2])) or real(*a, **k))
    opts = ExportOptions(formats=["gguf"], gguf_quant=["q4_0_m_im"], verify_examples=8, metric_margin_4bit=100.0)
    entry = export_formats(cfg, run, opts)["formats"]["gguf-q4_0_m_im"]
    im = entry["verify"]["imatrix"]
    assert seen == [8] and im["split"] == "train" and im["rows"] == 8 and len(im["sha256"]) == 64
    card = (run / "export" / "gguf-q4_0_m_im" / "README.md").read_text()
    assert f"importance matrix from 8 train-split rows (sha256 `{im['sha256'][:16]}`)" in card
    # no rows to calibrate on (verify_examples 0): uncalibrated, with the warning in the card
    opts = ExportOptions(formats=["gguf"], gguf_quant=["q4_0_m_im"], verify_examples=0)
    entry = export_formats(cfg, run, opts)["formats"]["gguf-q4_0_m_im"]
    assert "warning" in entry["verify"]["imatrix"] and seen == [8]
    assert "warning: no train rows: quantised without an importance matrix" in card_of(run, "gguf-q4_0_m_im")


def card_of(run, name: str) -> str:
    return (run / "export" / name / "README.md").read_text()
