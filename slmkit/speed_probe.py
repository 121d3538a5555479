"""The CPU dtype, chosen by timing this machine, not by reading its CPU flags.

Which dtype is faster depends on more than the flags say: AMX makes bf16 matmuls several times faster than fp32, but
on an AMD EPYC with AVX512_BF16 and no AMX bf16 autocast trained 1.95x faster (issue 16), while on a 2-core Xeon with
the same flags a bf16 matmul ran at fp32's speed, and without bf16 instructions it is a slow fallback. So the first
use on a machine times the matmuls that matter, for about two seconds:

    train:  x[384, 576] @ W[576, 1536]^T and x[384, 1536] @ W[1536, 576]^T (SmolLM2-135M's MLP, one ~384-token
            micro-batch), fp32 against bf16 autocast (what training runs: fp32 master weights cast per call)
    decode: the same weights at 16 rows (a decode step of a batch), fp32 against bf16 weights
    attention: causal SDPA forward + backward of 4 rows x 96 tokens, 9 query / 3 key-value heads of 64 (SmolLM2's),
            fp32 against bf16 inputs: on a 2-core AMX Xeon bf16 attention ran 2.5x slower than fp32 (its flash
            backward kernel) while bf16 matmuls ran 4x faster (2026-12-03), so bf16 training computes attention
            in fp32 where this says so

on one thread: with the machine's other cores busy (a build, another training), two threads measured bf16 at 0.43x
fp32 on an AMX Xeon where one thread measured 4.1x, and an idle machine 3.4-4x on two (2026-12-02): the kernels'
ratio decides, and one core shows it under load too. The numbers are kept in `cache_dir()/speed_probe.json` under a
key of CPU model, flags, cores, torch version and probe version, so a new machine, a torch upgrade or a changed probe
measures again; an unreadable cache is measured again, never trusted. bf16 is chosen only when it is at least MARGIN
faster (a training step does more than matmuls, so a near tie is no gain). A probe that fails falls back
to fp32 with one warning line. `slm doctor` shows the numbers and the choice, `slm doctor --reprobe` measures again,
and an explicit dtype always wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("slmkit")
PROBE_VERSION = 2
MARGIN = 1.15  # bf16 must be this much faster than fp32 to be chosen
TRAIN_ROWS, DECODE_ROWS = 384, 16
HIDDEN, INTERMEDIATE = 576, 1536  # SmolLM2-135M, the embedded default
ATTN_SHAPE = (4, 9, 3, 96, 64)  # rows, query heads, key-value heads, tokens, head dim (SmolLM2-135M)
SECONDS_PER_CASE = 0.4  # per dtype and phase: the probe takes ~2 s
ROUNDS = 5


def cache_path() -> Path:
    from slmkit.paths import cache_dir

    return cache_dir() / "speed_probe.json"


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_key() -> dict:
    """What the measurement depends on: a different value of any of these measures again."""
    import torch

    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    model = model or platform.processor() or "unknown"
    return {
        "cpu": model,
        "flags_sha": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "cores": cpu_cores(),
        "torch": torch.__version__,
        "probe": PROBE_VERSION,
    }


def _rates(fns: dict, flops: float) -> dict[str, float]:
    """GFLOP/s of each fn, the best of ROUNDS interleaved bursts of ~SECONDS_PER_CASE / ROUNDS each after two
    warm-up calls (oneDNN picks and caches kernels on the first): a burst of load from elsewhere lowers some bursts of
    every dtype alike, and the best burst of each is what the dtype can do."""
    for fn in fns.values():
        fn()
        fn()
    best = dict.fromkeys(fns, 0.0)
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            n, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < SECONDS_PER_CASE / ROUNDS or n < 2:
                fn()
                n += 1
            best[name] = max(best[name], n * flops / elapsed / 1e9)
    return {name: round(v, 1) for name, v in best.items()}


def measure() -> dict:
    """{"train": {"float32", "bf16_autocast"}, "decode": {"float32", "bf16_weights"}, "attention": {"float32",
    "bfloat16"}} in GFLOP/s (matmul shapes summed by time; attention counts its nominal causal FLOPs), measured now."""
    import torch
    import torch.nn.functional as F

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: other load on the machine skews a multi-threaded ratio (below)
    try:
        with torch.random.fork_rng(devices=[]):  # a seeded run must not depend on whether the probe was cached
            return _measure(torch, F)
    finally:
        torch.set_num_threads(threads)


def _measure(torch, F) -> dict:
    torch.manual_seed(0)
    shapes = [(HIDDEN, INTERMEDIATE), (INTERMEDIATE, HIDDEN)]
    weights = [torch.randn(n, k) * 0.02 for k, n in shapes]
    out: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for phase, rows in (("train", TRAIN_ROWS), ("decode", DECODE_ROWS)):
            xs = [torch.randn(rows, k) for k, _ in shapes]
            flops = sum(2 * rows * k * n for k, n in shapes)

            def fp32():
                for x, w in zip(xs, weights):
                    F.linear(x, w)

            if phase == "train":

                def bf16():
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        for x, w in zip(xs, weights):
                            F.linear(x, w)

                name = "bf16_autocast"
            else:
                xs16 = [x.bfloat16() for x in xs]
                ws16 = [w.bfloat16() for w in weights]

                def bf16():
                    for x, w in zip(xs16, ws16):
                        F.linear(x, w)

                name = "bf16_weights"
            out[phase] = _rates({"float32": fp32, name: bf16}, flops)
    out["attention"] = _attention_rates(torch, F)
    return out


def _attention_rates(torch, F) -> dict[str, float]:
    """Causal SDPA forward + backward at ATTN_SHAPE, fp32 against bf16 (GFLOP/s of the nominal causal FLOPs)."""
    rows, heads, kv, tokens, dim = ATTN_SHAPE
    flops = 3 * 2 * rows * heads * tokens * tokens * dim  # QK^T and PV (2 x 2 T^2 D per head), halved by the
    # causal mask, times ~3 for forward + backward

    def case(dtype):
        q = torch.randn(rows, heads, tokens, dim, dtype=dtype, requires_grad=True)
        k, v = (torch.randn(rows, kv, tokens, dim, dtype=dtype, requires_grad=True) for _ in range(2))
        g = torch.randn(rows, heads, tokens, dim, dtype=dtype)

        def fn():
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).backward(g)

        return fn

    return _rates({"float32": case(torch.float32), "bfloat16": case(torch.bfloat16)}, flops)


def choose(gflops: dict) -> dict[str, str]:
    """{"train": dtype, "decode": dtype, "attention": dtype}: bf16 where it measured at least MARGIN x fp32's speed;
    attention (used only when the run is in bf16) in bf16 unless fp32 measured faster, as it then saves casts."""
    train, decode, attn = gflops["train"], gflops["decode"], gflops["attention"]
    return {
        "train": "bfloat16" if train["bf16_autocast"] >= MARGIN * train["float32"] else "float32",
        "decode": "bfloat16" if decode["bf16_weights"] >= MARGIN * decode["float32"] else "float32",
        "attention": "bfloat16" if attn["bfloat16"] >= attn["float32"] else "float32",
    }


def _read_cache(path: Path, key: dict) -> dict | None:
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") != key:
            return None  # another machine, torch or probe: stale
        choose(cached["gflops"])  # malformed numbers raise here
        return cached
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.info("speed probe cache %s is unreadable: measuring again", path)
        return None


def probe(reprobe: bool = False) -> dict:
    """This machine's measured speeds and choice ({"key", "measured_at", "gflops", "choice"}), from the cache when it
    holds this machine's; measured (and cached) otherwise. On failure: fp32, one warning, nothing cached."""
    from slmkit.io import atomic_write_json

    path, key = cache_path(), machine_key()
    if not reprobe and (cached := _read_cache(path, key)):
        return cached | {"cached": True}
    try:
        gflops = measure()
        result = {
            "key": key,
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "gflops": gflops,
            "choice": choose(gflops),
        }
    except Exception as e:  # a broken bf16 path on some build: fp32 is always correct
        log.warning("speed probe failed (%s: %s): using float32", type(e).__name__, e)
        choice = {"train": "float32", "decode": "float32", "attention": "float32"}
        return {"key": key, "gflops": None, "choice": choice, "failed": str(e)}
    try:
        atomic_write_json(path, result)
    except OSError as e:  # a read-only cache folder: measured again next time
        log.info("speed probe result not cached (%s)", e)
    return result | {"cached": False}


def reason(result: dict, phase: str) -> str:
    """One line for logs and `slm doctor`: the choice and the numbers behind it."""
    if not result.get("gflops"):
        return f"speed probe failed ({result.get('failed')}): float32"
    g = result["gflops"][phase]
    bf16 = g.get("bf16_autocast", g.get("bf16_weights", g.get("bfloat16")))
    dtype = result["choice"][phase]
    return (
        f"measured on this CPU: bf16 {bf16:.0f} vs fp32 {g['float32']:.0f} GFLOP/s ({bf16 / g['float32']:.2f}x) "
        f"-> {dtype}" + ("" if dtype == "float32" or phase == "attention" else f" (>= {MARGIN}x)")
    )
