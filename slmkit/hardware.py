"""Device and dtype choice: CUDA > MPS > CPU; on CPU, bf16 only where this machine measured it faster (speed_probe)."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

import torch

from slmkit import speed_probe
from slmkit.speed_probe import cpu_cores


def cpu_bf16() -> str | None:
    """The CPU's bf16 instructions: 'AMX', 'AVX512_BF16', or None. (torch's get_cpu_capability() says only
    'AVX512' on all of these, so it cannot tell them apart.)"""
    cpu = getattr(torch, "cpu", None)
    if cpu is None or not hasattr(cpu, "_is_avx512_bf16_supported"):
        return None
    if cpu._is_amx_tile_supported():
        return "AMX"
    return "AVX512_BF16" if cpu._is_avx512_bf16_supported() else None


@dataclass
class Hardware:
    device: str
    dtype: str
    cores: int
    memory_gb: float
    cpu_capability: str
    cpu_bf16: str | None
    reason: str
    attention: str | None = None  # bf16 on CPU: the dtype attention measured faster in (speed_probe)

    def as_dict(self) -> dict:
        return asdict(self)


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("nan")


def detect(device: str = "auto", dtype: str = "auto") -> Hardware:
    """Pick device and dtype; explicit choices win over detection."""
    cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "unknown"
    bf16 = cpu_bf16()
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    reason, result = "set in config", None
    if dtype == "auto":
        if device == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            reason = "CUDA: bf16 if the GPU supports it, else fp16"
        elif device == "mps":
            dtype, reason = "float32", "MPS: fp32 (bf16 autocast support varies by macOS version)"
        else:  # the flags do not say which is faster (speed_probe's docstring): measured once per machine
            result = speed_probe.probe()
            dtype, reason = result["choice"]["train"], speed_probe.reason(result, "train")
    attention = None
    if device == "cpu" and dtype == "bfloat16":  # measured (once per machine) even when the dtype was set
        attention = (result or speed_probe.probe())["choice"]["attention"]  # one probe (one cache read) per call
    return Hardware(device, dtype, cpu_cores(), round(_memory_gb(), 1), cap, bf16, reason, attention)


def setup_threads() -> int:
    """Use every core the process may run on for intra-op work (torch's default can be lower)."""
    n = cpu_cores()
    torch.set_num_threads(n)
    return n


# oneDNN (bf16 matmuls on CPU) caches a primitive per GEMM shape, 1024 by default, each holding its own buffers.
# Training passes differ in shape, so the cache grows pass after pass: measured on a 2-core AMX Xeon (2026-12-03,
# LoRA over bf16 weights, 8 steps) 1024 -> 1.87 GB peak RSS, 128 -> 1.81, 64 -> 1.71, 32 -> 1.69, 0 -> 1.63 but
# 135 instead of 459 tok/s (a pass reuses ~30 shapes across its layers). 64 keeps a pass's shapes twice over.
ONEDNN_PRIMITIVE_CACHE = 64


def bound_onednn_cache() -> bool:
    """Cap oneDNN's primitive cache (ONEDNN_PRIMITIVE_CACHE_CAPACITY) unless the user set it. oneDNN reads the
    variable when it makes its first primitive, so this must run before any bf16 matmul of the process; returns
    whether it set it."""
    if "ONEDNN_PRIMITIVE_CACHE_CAPACITY" in os.environ or "DNNL_PRIMITIVE_CACHE_CAPACITY" in os.environ:
        return False
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(ONEDNN_PRIMITIVE_CACHE)
    return True


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed blocks for reuse instead of handing them back to the kernel.

    A training pass allocates and frees thousands of 0.1-30 MB activation and gradient buffers. By default glibc
    serves blocks over its (adaptive) mmap threshold with fresh mmap'd pages and trims the heap top on free, so each
    pass page-faults its buffers in again: ~30-70k minor faults and 70-160 ms of kernel time per 384-token pass of
    SmolLM2-135M here. With blocks up to 32 MiB (glibc's largest mmap threshold on 64-bit) served from the heap and
    trimming deferred to 1 GiB, a pass faults almost nothing: LoRA training measured +5% tokens/s, same peak RSS.
    A no-op (False) off glibc or where the user set glibc's own MALLOC_* variables.
    """
    if any(k.startswith("MALLOC_") for k in os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the user tuned malloc already
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
            return False  # musl, macOS, Windows
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20) and libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
        return bool(ok and libc.mallopt(_M_TOP_PAD, 64 * 2**20))
    except (OSError, AttributeError):
        return False


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft", "accelerate", "datasets", "slmkit"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:  # not installed: report it rather than fail
            out[name] = "not installed"
    return out
