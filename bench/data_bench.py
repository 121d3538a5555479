"""Data-stage throughput: ingest + clean (normalise, PII, exact dedup, MinHash near dedup) of N real-shaped rows.

Rows are real Alpaca / GSM8K / CLINC150 rows (from ../shared/data, else the test fixtures) recycled with a
row number, plus planted exact duplicates (2%), near duplicates (2%) and PII (1%). Prints rows/s per
phase and the peak RSS of the process.

    python bench/data_bench.py --rows 100000
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
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
        out += [{"input": json.loads(line)["question"], "output": json.loads(line)["answer"]}
                for line in gsm.open().readlines()[:3000]]
    clinc = SHARED / "clinc150" / "data_full.json"
    if clinc.is_file():
        out += [{"input": t, "output": label} for t, label in json.loads(clinc.read_text())["train"][:5000]]
    return out


def make_file(n: int, path: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    base = real_rows()
    pii = ["write to ana.lopez@example.org", "card 4111 1111 1111 1111", "call +1 415-555-0132",
           "key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx"]
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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from slmkit.config import DataConfig
    from slmkit.data.clean import exact_dedup, near_dedup, normalize, pii_step
    from slmkit.data.config import CleanConfig
    from slmkit.data.records import to_records
    from slmkit.data.report import Report
    from slmkit.data.sources import read_table

    cfg = CleanConfig()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        make_file(args.rows, path, args.seed)
        size_mb = path.stat().st_size / 1e6
        rss_before = peak_rss_mb()
        timings: dict[str, float] = {}
        report = Report()
        t = time.perf_counter()
        rows, locs = read_table(path, DataConfig())
        records, _ = to_records(rows, DataConfig(dedup=False), locs)
        del rows, locs
        timings["ingest"] = time.perf_counter() - t
        for name, fn in (("normalize", lambda r: normalize(r, cfg.normalize, report)),
                         ("pii", lambda r: pii_step(r, cfg.pii, report)),
                         ("exact_dedup", lambda r: exact_dedup(r, report)),
                         ("near_dedup", lambda r: near_dedup(r, cfg.dedup, report))):
            t = time.perf_counter()
            records = fn(records)
            timings[name] = time.perf_counter() - t
    total = sum(timings.values())
    print(f"rows: {args.rows} ({size_mb:.1f} MB JSONL) -> kept {len(records)}; "
          f"exact dups {report.steps['exact_dedup']['dropped']}, near dups {report.steps['near_dedup']['dropped']}, "
          f"PII {dict(report.pii)}")
    for name, secs in timings.items():
        print(f"  {name:<12} {secs:7.2f} s  {args.rows / secs:10.0f} rows/s")
    print(f"  {'total':<12} {total:7.2f} s  {args.rows / total:10.0f} rows/s")
    print(f"peak RSS: {peak_rss_mb():.0f} MB (before ingest {rss_before:.0f} MB)")


if __name__ == "__main__":
    main()
