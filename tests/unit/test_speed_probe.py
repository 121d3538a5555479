"""The CPU dtype chosen by measurement (speed_probe): each branch with a stubbed measurement, the cache (reused,
stale, unreadable), a failing probe, and an explicit dtype winning. No test depends on this machine's real speed."""

from __future__ import annotations

import json

import pytest

from slmkit import hardware, speed_probe

FAST_BF16 = {
    "train": {"float32": 100.0, "bf16_autocast": 195.0},
    "decode": {"float32": 50.0, "bf16_weights": 52.0},
    "attention": {"float32": 38.0, "bfloat16": 14.6},  # AMX Xeon, 2026-12-03: bf16 attention slower
}
SLOW_BF16 = {
    "train": {"float32": 160.0, "bf16_autocast": 0.3},
    "decode": {"float32": 60.0, "bf16_weights": 0.2},
    "attention": {"float32": 30.0, "bfloat16": 0.1},
}


@pytest.fixture()
def cpu_only(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setenv("SLM_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def stub(result):
        monkeypatch.setattr(speed_probe, "measure", lambda: calls.append(1) or result)

    return stub, calls


def test_bf16_is_chosen_only_where_it_measured_faster(cpu_only):
    stub, calls = cpu_only
    stub(FAST_BF16)
    hw = hardware.detect()
    assert (hw.device, hw.dtype) == ("cpu", "bfloat16") and "1.95x" in hw.reason and calls == [1]
    assert hw.attention == "float32"  # bf16 training computes attention in fp32 where that measured faster
    assert speed_probe.choose(FAST_BF16) == {"train": "bfloat16", "decode": "float32", "attention": "float32"}
    speed_probe.cache_path().unlink()
    stub(SLOW_BF16)  # an AVX2 CPU: bf16 is a slow fallback
    hw = hardware.detect()
    assert hw.dtype == "float32" and "-> float32" in hw.reason and hw.attention is None
    edge = {
        "train": {"float32": 100.0, "bf16_autocast": 100.0 * speed_probe.MARGIN},
        "decode": SLOW_BF16["decode"],
        "attention": {"float32": 20.0, "bfloat16": 20.0},
    }
    assert speed_probe.choose(edge)["train"] == "bfloat16" and speed_probe.choose(edge)["attention"] == "bfloat16"


def test_an_explicit_dtype_wins_and_only_bf16_measures_its_attention(cpu_only):
    stub, calls = cpu_only
    stub(SLOW_BF16)
    assert hardware.detect("cpu", "float32").dtype == "float32" and calls == []
    hw = hardware.detect("cpu", "bfloat16")  # set by the user on a CPU where bf16 measured slow: still bf16
    assert hw.dtype == "bfloat16" and hw.attention == "float32" and calls == [1]


def test_the_cache_is_reused_and_remeasured_when_stale_or_unreadable(cpu_only, monkeypatch):
    stub, calls = cpu_only
    stub(FAST_BF16)
    first = speed_probe.probe()
    assert not first["cached"] and json.loads(speed_probe.cache_path().read_text())["gflops"] == FAST_BF16
    again = speed_probe.probe()
    assert again["cached"] and again["choice"] == first["choice"] and calls == [1]
    key = speed_probe.machine_key()
    monkeypatch.setattr(speed_probe, "machine_key", lambda: key | {"torch": "9.9"})  # a torch upgrade: stale
    assert not speed_probe.probe()["cached"] and calls == [1, 1]
    speed_probe.cache_path().write_text("{not json")
    assert not speed_probe.probe()["cached"] and len(calls) == 3
    speed_probe.cache_path().write_text(json.dumps({"key": key | {"torch": "9.9"}, "gflops": {"train": 1}}))
    assert not speed_probe.probe()["cached"] and len(calls) == 4  # malformed numbers are not trusted
    assert speed_probe.probe(reprobe=True)["cached"] is False and len(calls) == 5


def test_a_failing_probe_falls_back_to_fp32_with_one_warning(cpu_only, monkeypatch, caplog):
    def broken():
        raise RuntimeError("no bf16 kernel")

    monkeypatch.setattr(speed_probe, "measure", broken)
    with caplog.at_level("WARNING", logger="slmkit"):
        hw = hardware.detect()
    assert hw.dtype == "float32" and "speed probe failed" in hw.reason
    assert [r.levelname for r in caplog.records] == ["WARNING"] and not speed_probe.cache_path().exists()


def test_the_real_measurement_has_the_shape_choose_needs(monkeypatch):
    import torch

    monkeypatch.setattr(speed_probe, "SECONDS_PER_CASE", 0.01)
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    g = speed_probe.measure()
    # a seeded run must train the same whether or not the probe measured in its process (LoRA init after it)
    assert torch.equal(torch.rand(3), expected)
    assert set(g) == {"train", "decode", "attention"} and all(v > 0 for phase in g.values() for v in phase.values())
    assert set(speed_probe.choose(g).values()) <= {"float32", "bfloat16"}
