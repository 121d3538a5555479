"""The serving benchmark runs end to end in its smoke mode: tiny random llama, torch and onnx servers, baselines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_serve_bench_smoke(tmp_path):
    pytest.importorskip("onnxruntime_genai")
    out = tmp_path / "serve.json"
    res = subprocess.run(
        [sys.executable, "bench/serve_bench.py", "--smoke", "--work-dir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["server"]) == {"torch", "onnx"}
    for rows in result["server"].values():
        assert [r["concurrency"] for r in rows] == [1, 2]
        assert all(r["failed"] == 0 and r["tok_s"] > 0 and r["ttft_p50"] <= r["lat_p95"] for r in rows)
    assert set(result["baselines"]) == {"generate_1", "generate_batch_2", "ort_genai_1", "ort_genai_batch_2"}
    # the int4 export the bench built for the target is what the onnx server and the ORT baseline both ran
    assert result["onnx_folder"].endswith("onnx-int4")
    assert set(result["goal_ratios"]) == {"onnx_conc1_vs_ort_genai_1", "torch_conc_max_vs_generate_batch"}
    assert "| onnx | 1 |" in res.stdout and "goal onnx_conc1_vs_ort_genai_1" in res.stdout
