"""`slm serve RUN` picks the fastest verified export (issue 17): a run's verified ONNX export when onnxruntime-genai
is installed, else torch, with the reason; `export.formats: [auto]` adds the ONNX export, and skips it (not the
build) when it misses its margin."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from slmkit.errors import SlmError
from slmkit.serve.load import load_engine, pick_backend, verified_exports
from tests.unit.test_export_auto import bpe_llama, tiny_run  # noqa: F401  (module fixtures)


def _fake_onnx(folder: Path, precision: str | None, metric: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "genai_config.json").write_text("{}")
    if precision:
        (folder / "verify.json").write_text(
            json.dumps({"precision": precision, **({"metric": metric} if metric else {})})
        )
    return folder


def test_auto_prefers_a_verified_4bit_onnx_export_and_says_why(tmp_path):
    run = tmp_path / "run"
    (run / "export" / "merged").mkdir(parents=True)
    _fake_onnx(run / "export" / "onnx-int8", "int8")
    _fake_onnx(run / "export" / "onnx-unchecked", None)  # no verify.json: never picked by auto
    metric = {"metric": "accuracy", "source": 0.95, "export": 0.94, "n": 64}
    best = _fake_onnx(run / "export" / "onnx-auto", "int4_gate_up", metric)
    assert verified_exports(type("R", (), {"root": run})(), "onnx") == [best, run / "export" / "onnx-int8"]
    for target in (run, run / "export" / "merged"):  # the run, or the merged folder a registry entry points at
        backend, why, folder = pick_backend(str(target), "auto")
        assert (backend, folder) == ("onnx", best)
        assert "onnx-auto" in why and "accuracy 0.950 -> 0.940 on 64 test rows" in why
    assert pick_backend(str(run), "torch") == ("torch", "--backend torch", None)
    assert pick_backend(str(best), "auto")[:2] == ("onnx", "an ONNX export folder")


def test_auto_falls_back_to_torch_with_the_reason(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "export" / "merged").mkdir(parents=True)
    backend, why, _ = pick_backend(str(run), "auto")
    assert backend == "torch" and "no verified ONNX or GGUF export" in why and "slm export-model" in why
    _fake_onnx(run / "export" / "onnx-auto", "int4")
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # import fails as if not installed
    backend, why, _ = pick_backend(str(run), "auto")
    assert backend == "torch" and "onnx-auto needs onnxruntime-genai" in why and "pip install" in why
    model = tmp_path / "model"
    model.mkdir()
    assert pick_backend(str(model), "auto")[0] == "torch"


def test_default_build_exports_onnx_and_serve_runs_it(tiny_run):  # noqa: F811
    pytest.importorskip("onnxruntime_genai")
    from slmkit.export.stage import ExportOptions, export_formats
    from slmkit.serve.engine import SamplingParams

    cfg, run = tiny_run
    summary = export_formats(cfg, run, ExportOptions(formats=["auto"]))
    assert set(summary["formats"]) == {"onnx-auto"} and "verify" in summary["formats"]["onnx-auto"]
    engine = load_engine(str(run)).start()
    try:
        assert engine.runner.kind == "onnx" and "onnx-auto" in engine.backend_reason
        reply = engine.generate([{"role": "user", "content": "hello"}], SamplingParams(max_tokens=4))
        assert reply.completion_tokens >= 1
    finally:
        engine.stop()


def test_an_auto_onnx_export_that_misses_its_margin_is_skipped_not_fatal(tiny_run, monkeypatch):  # noqa: F811
    import slmkit.export.stage as stage

    def fail(ctx, fmt, quant, dest, name, run_dir):
        raise SlmError(f"export {name}: no recipe kept accuracy within its margin", "raise export.metric_margin_4bit")

    monkeypatch.setattr(stage, "onnx_available", lambda: True)
    monkeypatch.setattr(stage, "_export_artifact", fail)
    cfg, run = tiny_run
    summary = stage.export_formats(cfg, run, stage.ExportOptions(formats=["auto"]))
    assert summary["formats"] == {
        "onnx-auto": {"skipped": "export onnx-auto: no recipe kept accuracy within its margin"}
    }
    with pytest.raises(SlmError, match="no recipe kept"):  # asked for by name, it stays an error
        stage.export_formats(cfg, run, stage.ExportOptions(formats=["merged", "onnx"]))
    monkeypatch.setattr(stage, "onnx_available", lambda: False)
    assert stage.expand_formats(["auto", "gguf"]) == ["merged", "gguf"]
