"""The torch serve backend's dtype (issue 17): the speed probe's measured decode choice on CPU, each branch proven
with a stubbed probe result (never this machine's real speed), and an explicit dtype wins."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from slmkit.config.serve import ServeConfig
from slmkit.serve import torch_runner
from slmkit.serve.engine import SamplingParams
from slmkit.serve.load import load_engine
from slmkit.serve.packed import PackedLinear

MEASURED = torch_runner.measured_decode_dtype  # the real one: conftest pins the torch backend to fp32 per test


def _stub_probe(monkeypatch, bf16: float, fp32: float):
    from slmkit import speed_probe

    gflops = {
        "train": {"float32": 40.0, "bf16_autocast": 40.0},
        "decode": {"float32": fp32, "bf16_weights": bf16},
        "attention": {"float32": 10.0, "bfloat16": 10.0},
    }
    monkeypatch.setattr(
        speed_probe, "probe", lambda reprobe=False: {"gflops": gflops, "choice": speed_probe.choose(gflops)}
    )


def test_auto_on_cpu_follows_the_measured_decode_speed(monkeypatch):
    cpu = SimpleNamespace(device="cpu", dtype="float32")  # decode_dtype reads these two fields of Hardware
    monkeypatch.setattr(torch_runner, "measured_decode_dtype", MEASURED)
    _stub_probe(monkeypatch, bf16=90.0, fp32=40.0)
    dtype, why = torch_runner.decode_dtype("auto", cpu)
    assert dtype == "bfloat16" and "bf16 90 vs fp32 40" in why
    _stub_probe(monkeypatch, bf16=42.0, fp32=40.0)  # within the margin: no gain worth the rounding
    assert torch_runner.decode_dtype("auto", cpu)[0] == "float32"
    _stub_probe(monkeypatch, bf16=6.0, fp32=40.0)
    assert torch_runner.decode_dtype("auto", cpu)[0] == "float32"
    assert torch_runner.decode_dtype("float32", cpu)[0] == "float32"  # explicit wins over a bf16-fast probe
    _stub_probe(monkeypatch, bf16=90.0, fp32=40.0)
    assert torch_runner.decode_dtype("float32", cpu) == ("float32", "asked for (--dtype / serve.dtype)")


def test_a_bf16_choice_serves_bf16_weights_unpacked_and_answers(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch_runner, "measured_decode_dtype", lambda: ("bfloat16", "stubbed: bf16 measured faster"))
    engine = load_engine(str(tiny_model_dir), ServeConfig(max_batch_size=2, backend="torch"))
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    assert not any(isinstance(m, PackedLinear) for m in engine.model.modules())  # oneDNN packing is fp32 only
    try:
        out = engine.start().generate(
            [{"role": "user", "content": "cancel my order"}], SamplingParams(max_tokens=6, ignore_eos=True)
        )
    finally:
        engine.stop()
    assert out.completion_tokens == 6 and out.text
