"""The training benchmark runs end to end in its 1-step smoke mode (tiny random model, slmkit and TRL)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_train_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [
            sys.executable,
            "bench/train_bench.py",
            "--smoke",
            "--methods",
            "lora",
            "--configs",
            "slmkit_fp32,trl_default",  # both fp32: on a bf16-fast CPU `auto` would train slmkit in bf16
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = {r["name"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"slmkit_fp32", "trl_default"}
    for r in results.values():
        assert r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_gb"] > 0
        # Same tiny model, same rows, same masking: the untrained first-step loss must agree across trainers.
    assert results["slmkit_fp32"]["losses"][0] == pytest.approx(results["trl_default"]["losses"][0], rel=1e-3)
    assert "| lora | slmkit_fp32 |" in res.stdout
