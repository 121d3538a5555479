"""Data-stage throughput and memory: ingest + clean (normalise, PII, exact dedup, MinHash near dedup, token
length) + split of N real-shaped JSONL rows, through the streaming data stage (slmkit.data.build.build).

Rows are real Alpaca / GSM8K / CLINC150 rows (from ../shared/data, else the test fixtures) recycled with a
row number, plus planted exact duplicates (2%), near duplicates (2%) and PII (1%). Each size runs in a fresh
process, so its peak RSS (VmHWM, as getrusage's ru_maxrss but without the parent's share) is its own; RSS is
also sampled while rows stream, and the RSS after imports and tokenizer loading is printed, so growth with N
can be read off.

    python bench/data_bench.py --rows 100000
    python bench/data_bench.py --rows 100000,1000000      # does memory grow with rows?
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def real_rows() -> list[dict[str, str]]:
    """Instruction/answer pairs of several real shapes and lengths."""
    out: list[dict[str, str]] = []
    alpaca = SHARED / "alpaca_instructions" / "alpaca_5000.json"
    alpaca = alpaca if alpaca.is_file() else ROOT / "tests" / "fixtures" / "data" / "alpaca" / "alpaca_40.json"
    for r in json.loads(alpaca.read_text()):
        out.append({"input": (r["instruction"] + "\n\n" + r["input"]).strip(), "output": r["output"]})
    gsm = SHARED / "gsm8k" / "train.jsonl"
    if gsm.is_file():
        out += [
            {"input": json.loads(line)["question"], "output": json.loads(line)["answer"]}
            for line in gsm.open().readlines()[:3000]
        ]
    clinc = SHARED / "clinc150" / "data_full.json"
    if clinc.is_file():
        out += [{"input": t, "output": label} for t, label in json.loads(clinc.read_text())["train"][:5000]]
    return out


def make_file(n: int, path: Path, seed: int = 0) -> None:
    """n rows of JSONL, written as they are made (at most 50,000 kept to copy duplicates from)."""
    rng = random.Random(seed)
    base = real_rows()
    pii = [
        "write to ana.lopez@example.org",
        "card 4111 1111 1111 1111",
        "call +1 415-555-0132",
        "key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx",
    ]
    with path.open("w") as f:
        written: list[dict[str, str]] = []
        for i in range(n):
            roll = rng.random()
            if written and roll < 0.02:
                row = rng.choice(written)  # exact duplicate
            elif written and roll < 0.04:
                src = rng.choice(written)
                words = src["output"].split()
                if len(words) > 20:
                    words[rng.randrange(len(words))] = "changed"
                row = {"input": src["input"], "output": " ".join(words)}  # near duplicate
            else:
                b = base[i % len(base)]
                row = {"input": f"{b['input']} (#{i})", "output": b["output"]}
                if roll > 0.99:
                    row["input"] += " " + rng.choice(pii)
            written.append(row) if len(written) < 50_000 else None
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (Linux) in MB."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.is_file() else []:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def rss_mb() -> float:
    return _status_mb("VmRSS") or 0.0


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss of a child also counts its parent's RSS at fork time)."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class RssSampler(threading.Thread):
    """Highest current RSS seen every 50 ms while the build runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.high, self._done = 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.high = max(self.high, rss_mb())
            time.sleep(0.05)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.high, rss_mb())


def child(path: Path, out: Path, tokenizer: str) -> dict:
    """One build in this process: timings, counts, RSS (run through `--child`)."""
    from slmkit.config import BuildConfig
    from slmkit.data.build import build
    from slmkit.data.tokens import get_tokenizer

    cfg = BuildConfig(data={"path": str(path), "clean": {"tokenizer": tokenizer}})
    get_tokenizer(tokenizer)
    base = rss_mb()
    sampler = RssSampler()
    sampler.start()
    t = time.perf_counter()
    built = build(cfg, out)
    total = time.perf_counter() - t
    steps = built.report.steps
    return {
        "seconds": total,
        "step_seconds": dict(built.report.seconds),
        "rows_out": dict(built.rows),
        "exact_dups": steps.get("exact_dedup", {}).get("dropped", 0)
        + sum(rep["dropped"]["duplicate"] for r in built.results for rep in r.reports),
        "near_dups": steps.get("near_dedup", {}).get("dropped", 0),
        "contaminated": steps.get("decontaminate", {}).get("dropped", 0),
        "pii": dict(built.report.pii),
        "rss_base_mb": base,
        "rss_high_mb": sampler.stop(),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_size(n: int, work: Path, seed: int, tokenizer: str) -> dict:
    path = work / f"rows_{n}.jsonl"
    t = time.perf_counter()
    make_file(n, path, seed)
    made = time.perf_counter() - t
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(path),
        str(work / f"out_{n}"),
        "--tokenizer",
        tokenizer,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"bench child failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(rows=n, mb=path.stat().st_size / 1e6, make_seconds=made)
    path.unlink()
    return res


def show(res: dict) -> None:
    n, total = res["rows"], res["seconds"]
    print(
        f"rows: {n} ({res['mb']:.1f} MB JSONL, written in {res['make_seconds']:.1f} s) -> "
        f"train/val/test {'/'.join(str(v) for v in res['rows_out'].values())}; exact dups {res['exact_dups']}, "
        f"near dups {res['near_dups']}, contaminated {res['contaminated']}, PII {res['pii']}"
    )
    cleaning = sum(res["step_seconds"].values())
    for name, secs in [*res["step_seconds"].items(), ("read+records+split", total - cleaning)]:
        print(f"  {name:<20} {secs:7.2f} s  {n / max(secs, 1e-9):10.0f} rows/s")
    print(f"  {'total':<20} {total:7.2f} s  {n / total:10.0f} rows/s")
    print(
        f"  RSS: {res['rss_base_mb']:.0f} MB after imports + tokenizer; {res['rss_high_mb']:.0f} MB highest while "
        f"streaming (+{res['rss_high_mb'] - res['rss_base_mb']:.0f} MB); peak {res['peak_rss_mb']:.0f} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="100000", help="rows per run; several sizes comma-separated, e.g. 100000,1000000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default="default", help="model whose tokenizer counts lengths (default: SmolLM2)")
    ap.add_argument("--workdir", type=Path, help="where the JSONL and outputs go (default: a temp folder)")
    ap.add_argument("--child", nargs=2, type=Path, metavar=("JSONL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.tokenizer)))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        results = [run_size(int(n), Path(tmp), args.seed, args.tokenizer) for n in args.rows.split(",")]
    for res in results:
        show(res)
    if len(results) > 1:
        lo, hi = results[0], results[-1]
        print(
            f"{hi['rows'] / lo['rows']:.0f}x the rows: peak RSS {hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f}x "
            f"({lo['peak_rss_mb']:.0f} -> {hi['peak_rss_mb']:.0f} MB), growth while streaming "
            f"+{lo['rss_high_mb'] - lo['rss_base_mb']:.0f} -> +{hi['rss_high_mb'] - hi['rss_base_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
