"""Cross-row state of the data stage, kept compact so that rows can stream through in batches.

What grows with the number of rows N, per row (see docs/architecture.md, "Data stage memory"):

- ExactDedup: one 64-bit key per distinct record in a HashIndex set: 11-23 bytes.
- NearDedup: b LSH band keys per kept record (b = 9 at the default threshold 0.8 and 128 permutations) in a
  HashIndex with row numbers: 150-300 bytes. The signatures themselves (num_perm x 4 bytes + the id) go to
  an unnamed temp file and are read back only for LSH candidates, so they cost disk, not memory.
- HeldNgrams: one 64-bit hash per word n-gram of the val/test records (decontamination): 8 bytes each.
"""

from __future__ import annotations

import os
import re
import tempfile
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from .hashindex import HashIndex

Record = dict[str, Any]
_WORD = re.compile(r"\w+")
ID_BYTES = 40  # sha1 hex ids


def id_key(record_id: str) -> int:
    """The first 64 bits of a hex record id (sha1): the exact-dedup key."""
    return int(record_id[:16], 16)


class ExactDedup:
    """First occurrence of each key wins, across all batches seen so far."""

    def __init__(self) -> None:
        self.index = HashIndex(values=False)

    def keep(self, keys: list[int]) -> list[bool]:
        """Which of `keys` (in order) are new: not seen in earlier batches nor earlier in this one."""
        if not keys:
            return []
        arr = np.array(keys, dtype=np.uint64)
        first = np.zeros(arr.size, dtype=bool)
        first[np.unique(arr, return_index=True)[1]] = True
        new = first & ~self.index.contains(arr)
        self.index.insert(arr[new])
        return new.tolist()


def shingles(text: str, n: int) -> set[bytes]:
    """Lower-cased word n-grams; a text shorter than n words is one shingle."""
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


class NearDedup:
    """MinHash (datasketch) + banded LSH: drop a record whose estimated Jaccard with a kept one is >= threshold.

    The bands are datasketch's (MinHashLSH picks b and r for the threshold); LSH candidates are checked
    against the full signature, so banding false positives are not dropped. Records are handled in
    order, so the first of a group of near duplicates is the one kept.
    """

    def __init__(self, threshold: float, num_perm: int, ngram: int, seed: int, spill_dir: str | Path | None = None):
        from datasketch import MinHashLSH

        # datasketch needs >= 2 bands, i.e. a threshold below 1; candidates are re-checked at `threshold` anyway.
        lsh = MinHashLSH(threshold=min(threshold, 0.95), num_perm=num_perm)
        self.b, self.r = lsh.b, lsh.r
        self.threshold, self.num_perm, self.ngram, self.seed = threshold, num_perm, ngram, seed
        self.bands = HashIndex(values=True)
        self.kept = 0
        self._row_bytes = num_perm * 4 + ID_BYTES
        self._spill = tempfile.TemporaryFile(dir=spill_dir)
        rng = np.random.default_rng(0)
        self._band_seeds = rng.integers(1, 2**63, size=self.b, dtype=np.uint64)

    def close(self) -> None:
        self._spill.close()

    def signatures(self, texts: list[str]) -> np.ndarray:
        """[len(texts), num_perm] uint32 MinHash values (datasketch's values fit in 32 bits)."""
        from datasketch import MinHash

        sets = [list(shingles(t, self.ngram)) for t in texts]
        mhs = MinHash.bulk(sets, num_perm=self.num_perm, seed=self.seed)
        return np.stack([m.hashvalues for m in mhs]).astype(np.uint32)

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """[rows, b] 64-bit hashes of each band of r values (band number mixed in)."""
        m = sigs.shape[0]
        vals = sigs[:, :self.b * self.r].reshape(m, self.b, self.r).astype(np.uint64)
        h = np.broadcast_to(self._band_seeds, (m, self.b)).copy()
        for j in range(self.r):
            h = (h ^ vals[:, :, j]) * np.uint64(0x100000001B3)
            h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        return h ^ (h >> np.uint64(31))

    def filter(self, records: list[Record], texts: list[str]) -> list[Record]:
        """The records of this batch that are not near duplicates of an earlier kept record."""
        if not records:
            return []
        sigs = self.signatures(texts)
        keys = self.band_keys(sigs)
        earlier = self._earlier_candidates(keys)
        local: dict[int, list[int]] = {}  # band key -> rows kept in this batch
        local_sigs: dict[int, np.ndarray] = {}
        kept, kept_rows = [], []
        for i, rec in enumerate(records):
            cands = sorted(earlier.get(i, set()).union(*(local.get(k, ()) for k in keys[i].tolist())))
            dupe = next((g for g in cands if self._similar(local_sigs.get(g), g, sigs[i])), None)
            if dupe is not None:
                rec["meta"]["near_duplicate_of"] = self._id(dupe, records, kept_rows)
                continue
            g = self.kept + len(kept_rows)
            for k in keys[i].tolist():
                local.setdefault(k, []).append(g)
            local_sigs[g] = sigs[i]
            kept_rows.append(i)
            kept.append(rec)
        self._commit(sigs, keys, records, kept_rows)
        return kept

    def _earlier_candidates(self, keys: np.ndarray) -> dict[int, set[int]]:
        q, v = self.bands.lookup(keys.ravel())
        out: dict[int, set[int]] = {}
        for row, g in zip((q // self.b).tolist(), v.tolist()):
            out.setdefault(row, set()).add(g)
        return out

    def _similar(self, sig: np.ndarray | None, g: int, new: np.ndarray) -> bool:
        if sig is None:
            sig = np.frombuffer(os.pread(self._spill.fileno(), self.num_perm * 4, g * self._row_bytes), np.uint32)
        return bool(np.mean(sig == new) >= self.threshold)

    def _id(self, g: int, records: list[Record], kept_rows: list[int]) -> str:
        if g >= self.kept:
            return records[kept_rows[g - self.kept]]["id"]
        raw = os.pread(self._spill.fileno(), ID_BYTES, g * self._row_bytes + self.num_perm * 4)
        return raw.decode("ascii").rstrip()

    def _commit(self, sigs: np.ndarray, keys: np.ndarray, records: list[Record], kept_rows: list[int]) -> None:
        """Spill the kept rows' signatures and ids to the temp file and add their bands to the index."""
        if not kept_rows:
            return
        rows = np.asarray(kept_rows)
        ids = b"".join(records[i]["id"].encode("ascii")[:ID_BYTES].ljust(ID_BYTES) for i in kept_rows)
        blob = np.concatenate([sigs[rows].view(np.uint8), np.frombuffer(ids, np.uint8).reshape(len(rows), ID_BYTES)],
                              axis=1)
        os.pwrite(self._spill.fileno(), blob.tobytes(), self.kept * self._row_bytes)
        numbers = np.repeat(np.arange(self.kept, self.kept + len(rows), dtype=np.int32), self.b)
        self.bands.insert(keys[rows].ravel(), numbers)
        self.kept += len(rows)


def ngram_hashes(text: str, n: int) -> set[int]:
    """Hashes of the lower-cased word n-grams (the whole text as one when shorter than n words)."""
    words = tuple(_WORD.findall(text.lower()))
    if len(words) < n:
        return {hash(("short",) + words)} if words else set()
    return {hash(words[i:i + n]) for i in range(len(words) - n + 1)}


class HeldNgrams:
    """Word n-grams of the held-out (val/test) records: added while streaming, then frozen to a sorted array."""

    def __init__(self, n: int):
        self.n = n
        self._parts = array("q")
        self._sorted: np.ndarray | None = None

    def add(self, text: str) -> None:
        self._parts.extend(ngram_hashes(text, self.n))

    def freeze(self) -> None:
        self._sorted = np.unique(np.frombuffer(self._parts, dtype=np.int64)) if self._parts else np.zeros(0, np.int64)
        self._parts = array("q")

    def clean(self, texts: list[str]) -> list[bool]:
        """For each text: True when it shares no n-gram with the held-out records."""
        if self._sorted is None:
            self.freeze()
        held = self._sorted
        grams = [ngram_hashes(t, self.n) for t in texts]
        if not held.size or not texts:
            return [True] * len(texts)
        flat = np.fromiter((h for g in grams for h in g), dtype=np.int64)
        owner = np.repeat(np.arange(len(texts)), [len(g) for g in grams])
        at = np.minimum(np.searchsorted(held, flat), held.size - 1)
        dirty = np.zeros(len(texts), dtype=bool)
        dirty[owner[held[at] == flat]] = True
        return (~dirty).tolist()
