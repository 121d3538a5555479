"""Device and dtype choice: CUDA > MPS > CPU; bf16 only where the chip runs it fast."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

import torch

# CPU capabilities with native bf16 dot products (AVX512-BF16, AMX). On plain AVX2 CPUs torch's bf16
# matmul falls back to slow paths: measured here 0.3 GFLOP/s bf16 vs 160 GFLOP/s fp32 (2048^2 matmul).
_CPU_BF16_CAPS = ("AVX512_BF16", "AMX")


@dataclass
class Hardware:
    device: str
    dtype: str
    cores: int
    memory_gb: float
    cpu_capability: str
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("nan")


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def detect(device: str = "auto", dtype: str = "auto") -> Hardware:
    """Pick device and dtype; explicit choices win over detection."""
    cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "unknown"
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    reason = "set in config"
    if dtype == "auto":
        if device == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            reason = "CUDA: bf16 if the GPU supports it, else fp16"
        elif device == "mps":
            dtype, reason = "float32", "MPS: fp32 (bf16 autocast support varies by macOS version)"
        elif any(c in cap for c in _CPU_BF16_CAPS):
            dtype, reason = "bfloat16", f"CPU has {cap}: native bf16"
        else:
            dtype, reason = "float32", f"CPU capability {cap} has no native bf16: fp32 is faster"
    return Hardware(device, dtype, cpu_cores(), round(_memory_gb(), 1), cap, reason)


def setup_threads() -> int:
    """Use every core the process may run on for intra-op work (torch's default can be lower)."""
    n = cpu_cores()
    torch.set_num_threads(n)
    return n


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft", "accelerate", "datasets", "slmkit"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:  # not installed: report it rather than fail
            out[name] = "not installed"
    return out
