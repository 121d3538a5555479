"""Streaming data stage: readers are lazy, batch boundaries change nothing, the compact dedup state agrees with
datasketch's LSH, and peak memory does not grow with the number of rows."""

from __future__ import annotations

import inspect as pyinspect
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from slmkit.config import BuildConfig
from slmkit.data import iter_table, prepare, read_table
from slmkit.data.clean.dedup import ExactDedup, HashIndex, HeldNgrams, NearDedup
from slmkit.errors import SlmError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "intent-router" / "data" / "clinc150_subset.csv"
ALPACA = ROOT / "tests" / "fixtures" / "data" / "alpaca" / "alpaca_40.json"


@pytest.mark.parametrize(
    "name,good,bad", [("d.jsonl", '{"text": "hi", "label": "a"}', "{oops"), ("d.csv", "hi,a", "one,two,three")]
)
def test_readers_yield_rows_before_reading_the_whole_file(tmp_path, name, good, bad):
    path = tmp_path / name
    header = "" if name.endswith(".jsonl") else "text,label\n"
    path.write_text(header + "\n".join([good] * 5000 + [bad]) + "\n")
    rows = iter_table(path)
    assert pyinspect.isgenerator(rows)
    assert next(rows)[0] == {"text": "hi", "label": "a"}  # the broken last line is not reached yet
    with pytest.raises(SlmError):
        read_table(path)


def test_hash_index_is_a_multimap_that_grows():
    index = HashIndex(values=True, capacity=8)
    keys = np.array([5, 7, 5, 0, 2**64 - 1, 9] * 50, dtype=np.uint64)
    index.insert(keys, np.arange(keys.size))
    assert index.count == keys.size and index.keys.size >= keys.size / 0.7
    q, v = index.lookup(np.array([5, 3, 0], dtype=np.uint64))
    assert sorted(v[q == 0].tolist()) == [i for i in range(keys.size) if keys[i] == 5]
    assert not (q == 1).any() and (q == 2).sum() == 50  # key 0 is stored (as 1), never "empty"
    assert index.contains(np.array([7, 8], dtype=np.uint64)).tolist() == [True, False]


def test_exact_dedup_keeps_first_across_batches():
    seen = ExactDedup()
    assert seen.keep([1, 2, 1, 3]) == [True, True, False, True]
    assert seen.keep([3, 4, 4, 2**63]) == [False, True, False, True]


def _texts(n: int, seed: int = 0) -> list[str]:
    """Alpaca answers plus word-level variants: some near duplicates, some merely similar."""
    rng = random.Random(seed)
    base = [r["output"] for r in json.loads(ALPACA.read_text()) if len(r["output"].split()) > 25]
    out = []
    for i in range(n):
        words = rng.choice(base).split()
        for _ in range(rng.choice([0, 1, 3, 12])):
            words[rng.randrange(len(words))] = f"w{rng.randrange(1000)}"
        out.append(" ".join(words))
    return out


def _reference_kept(texts: list[str], threshold: float, num_perm: int) -> list[int]:
    """The previous in-memory algorithm: datasketch MinHashLSH plus a check on the full signature."""
    from datasketch import MinHash, MinHashLSH

    from slmkit.data.clean.dedup import shingles

    lsh = MinHashLSH(threshold=min(threshold, 0.95), num_perm=num_perm)
    sigs, kept = {}, []
    for i, mh in enumerate(MinHash.bulk([list(shingles(t, 5)) for t in texts], num_perm=num_perm, seed=1)):
        sig = mh.hashvalues.astype(np.uint32)
        if any(np.mean(sigs[k] == sig) >= threshold for k in lsh.query(mh)):
            continue
        lsh.insert(i, mh)
        sigs[i] = sig
        kept.append(i)
    return kept


@pytest.mark.parametrize("threshold,num_perm", [(0.8, 128), (0.5, 64)])
def test_near_dedup_matches_datasketch_lsh(tmp_path, threshold, num_perm):
    texts = _texts(400)
    near = NearDedup(threshold, num_perm, 5, 1, spill_dir=tmp_path)
    records = [{"id": f"{i:040x}", "meta": {}} for i in range(len(texts))]
    kept = []
    for start in range(0, len(texts), 37):  # many batches: candidates come from the index and the spill file
        kept += near.filter(records[start : start + 37], texts[start : start + 37])
    near.close()
    expected = _reference_kept(texts, threshold, num_perm)
    assert [int(r["id"], 16) for r in kept] == expected and 0 < len(expected) < len(texts)
    dropped = [r for r in records if "near_duplicate_of" in r["meta"]]
    assert all(int(r["meta"]["near_duplicate_of"], 16) in expected for r in dropped)


def test_held_ngrams_match_set_disjointness():
    held = HeldNgrams(3)
    for t in ["the quick brown fox jumps", "short one"]:
        held.add(t)
    assert held.clean(["a quick brown fox indeed", "nothing shared here at all", "short one", "short", ""]) == [
        False,
        True,
        False,
        True,
        True,
    ]


def test_small_batches_give_the_same_files(tmp_path, tiny_model_dir, monkeypatch):
    """Cross-batch state (dedup indexes, task detection, labels, decontamination) is exact: 7-row batches
    write byte-identical files to one-batch runs."""
    from slmkit.data import split, table_stream

    rows = [r for r in EXAMPLE.read_text().splitlines()]
    csv = tmp_path / "d.csv"
    csv.write_text("\n".join(rows + rows[1:40] + [r.upper() for r in rows[40:60]]) + "\n")  # exact + near dups
    cfg = BuildConfig(
        model={"base_model": str(tiny_model_dir)},
        data={"path": str(csv), "system_prompt": "One of: {labels}", "clean": {"decontaminate": {"ngram": 4}}},
    )
    big = prepare(cfg, tmp_path / "big")
    monkeypatch.setattr(table_stream, "BATCH", 7)
    monkeypatch.setattr(split, "BATCH", 3)
    small = prepare(cfg, tmp_path / "small")
    assert small == big and big["dropped"]["duplicate"] >= 39 and big["dropped"]["near_duplicate"] >= 20
    assert big["dropped"]["contaminated"] > 0 and big["task"] == "classification"
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "card.md"):
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "big" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "small").iterdir()) == [
        "card.md",
        "lengths.png",
        "test.jsonl",
        "train.jsonl",
        "val.jsonl",
    ]


def test_failed_run_leaves_previous_outputs(tmp_path, tiny_model_dir):
    from slmkit.config import DataConfig
    from slmkit.data import to_records
    from slmkit.data.split import bucket

    cfg = BuildConfig(model={"base_model": str(tiny_model_dir)}, data={"path": str(EXAMPLE)})
    prepare(cfg, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    one = tmp_path / "one.csv"
    one.write_text("text,intent\nhello,greeting\n")
    rec_id = to_records([{"text": "hello", "intent": "greeting"}], DataConfig())[0][0]["id"]
    seed = next(s for s in map(str, range(100)) if bucket(s, rec_id) < 0.5)  # the only row lands in test
    bad = BuildConfig(
        model={"base_model": str(tiny_model_dir)},
        data={"path": str(one), "split": {"val": 0.0, "test": 0.5, "seed": seed}},
    )
    with pytest.raises(SlmError, match="no training rows"):
        prepare(bad, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # no temp files left either


_MEASURE = textwrap.dedent("""
    import json, random, resource, sys
    from pathlib import Path
    from slmkit.config import BuildConfig
    from slmkit.data import prepare
    n, tok, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    words = "alarm weather music flight paris booking tomorrow please set play the a of to in".split()
    rng = random.Random(0)
    with open(out / "rows.jsonl", "w") as f:
        for i in range(n):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
            f.write(json.dumps({"text": f"{text} {i}", "label": f"answer {rng.randrange(200)} {i % 7}"}) + "\\n")
    cfg = BuildConfig(model={"base_model": tok}, data={"path": str(out / "rows.jsonl"),
                      "clean": {"pii": {"enabled": False}, "dedup": {"num_perm": 32}}})
    summary = prepare(cfg, out / "data")
    # VmHWM is this process image's own peak; ru_maxrss would also count the parent's RSS at fork time.
    hwm = [int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:")]
    peak = hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": sum(summary["rows"].values()), "peak_mb": peak / 1024}))
""")


def _peak_rss(n: int, tok: Path, tmp: Path) -> dict:
    out = tmp / str(n)
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(n), str(tok), str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_rows(tmp_path, tiny_model_dir):
    """10x the rows in a fresh process: peak RSS grows by far less than holding the rows would cost
    (~1.5 KB a record as Python dicts); the compact per-row state is ~0.2-0.4 KB."""
    small, large = _peak_rss(10_000, tiny_model_dir, tmp_path), _peak_rss(100_000, tiny_model_dir, tmp_path)
    assert small["rows"] > 9_000 and large["rows"] > 90_000
    growth = large["peak_mb"] - small["peak_mb"]
    print(f"peak RSS 10k rows {small['peak_mb']:.0f} MB, 100k rows {large['peak_mb']:.0f} MB (+{growth:.0f} MB)")
    assert growth < 60 and large["peak_mb"] < 1.5 * small["peak_mb"]
