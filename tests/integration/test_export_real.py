"""The real default model (SmolLM2-135M-Instruct) exported to GGUF q8_0 and ONNX int8, each verified independently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, read_json

pytestmark = pytest.mark.integration
LABELS = "alarm, balance, book_flight, play_music, recipe, report_lost_card, tell_joke, weather"


def _real_run(tmp_path: Path) -> tuple[object, Path]:
    """A run folder whose 'trained' model is the default model itself, with a 4-row intent test split."""
    from slmkit.config import load_config
    from slmkit.models import resolve_model

    cfg = load_config(
        None,
        {
            "name": "real",
            "output_dir": str(tmp_path),
            "model": {"base_model": "default"},
            "eval": {"max_new_tokens": 8, "batch_size": 4},
        },
        environ={},
    )
    run = tmp_path / "real"
    (run / "train").mkdir(parents=True)
    (run / "train" / "final").symlink_to(resolve_model("default"), target_is_directory=True)
    rows = [json.loads(x) for x in (ROOT / "tests" / "fixtures" / "clinc_10.jsonl").read_text().splitlines()[:4]]
    system = f"Classify the user's request. Reply with exactly one intent from this list: {LABELS}"
    split = [
        {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": r["query"]},
                {"role": "assistant", "content": r["intent"]},
            ],
            "label": r["intent"],
        }
        for r in rows
    ]
    (run / "data").mkdir()
    (run / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split))
    return cfg, run


def test_default_model_exports_to_gguf_and_onnx_and_verifies(tmp_path):
    from slmkit.export.gguf import read_gguf_metadata
    from slmkit.export.stage import ExportOptions, export_formats
    from slmkit.export.verify import REL_TOLERANCE
    from slmkit.models import load_tokenizer

    cfg, run = _real_run(tmp_path)
    opts = ExportOptions(formats=["gguf", "onnx"], gguf_quant=["q8_0"], onnx_quant=["int8"], verify_examples=4)
    summary = export_formats(cfg, run, opts)

    assert summary["verify"]["max_abs_diff"] < 1e-3  # merged folder == source model
    assert set(summary["formats"]) == {"gguf-q8_0", "onnx-int8"}
    for name, entry in summary["formats"].items():
        v = entry["verify"]
        assert v["logits"]["rel_diff"] < REL_TOLERANCE[v["precision"]], name
        assert v["logits"]["top5_overlap"] >= 0.6, name  # int8 flips near-tied argmaxes; the top-5 set stays
        assert v["metric"]["n"] == 4 and v["metric"]["drop_points"] <= 2.0, name
        assert (run / "export" / name / "README.md").read_text().count("apache-2.0") >= 1
    assert summary["formats"]["gguf-q8_0"]["verify"]["logits"]["top1_agreement"] >= 2 / 3
    gguf_path = Path(summary["formats"]["gguf-q8_0"]["path"])
    meta = read_gguf_metadata(gguf_path)
    tok = load_tokenizer(run / "export" / "merged")
    assert meta["chat_template"] == tok.chat_template
    assert meta["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert "Q8_0" in meta["tensor_types"]
    # q8_0 stores ~1.06 bytes per weight against fp32's 4 (one f16 scale per 32 int8 weights)
    assert gguf_path.stat().st_size < 0.4 * (run / "export" / "merged" / "model.safetensors").stat().st_size
    assert read_json(run / "export" / "onnx-int8" / "genai_config.json")["model"]["eos_token_id"] is not None
