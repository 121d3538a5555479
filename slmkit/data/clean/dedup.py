"""Every dedup of the data stage: exact (64-bit keys and by id), MinHash near-dedup, decontamination n-grams.

What grows with the number of rows N, per row (see docs/architecture.md, "Data stage memory"); all of it is kept
compact so that rows can stream through in batches:

- ExactDedup: one 64-bit key per distinct record in a HashIndex set: 11-23 bytes.
- NearDedup: b LSH band keys per kept record (b = 9 at the default threshold 0.8 and 128 permutations) in a
  HashIndex with row numbers: 150-300 bytes. The signatures themselves (num_perm x 4 bytes + the id) go to
  an unnamed temp file and are read back only for LSH candidates, so they cost disk, not memory.
- HeldNgrams: one 64-bit hash per word n-gram of the val/test records (decontamination): 8 bytes each.

HashIndex, the compact hash multimap under the first two, is at the end. `dedup_records` is the exact dedup of a
list of records by id (the synth stage's rows, the chunks `slm index` stores).
"""

from __future__ import annotations

import os
import re
import tempfile
from array import array
from pathlib import Path
from typing import Any

import numpy as np

Record = dict[str, Any]
_WORD = re.compile(r"\w+")
_SPACES = re.compile(r"\s+")
ID_BYTES = 40  # sha1 hex ids


def texts_of(rec: Record, roles: tuple[str, ...] = ("user", "assistant")) -> list[str]:
    """The contents that carry the record's meaning: user/assistant turns (not the shared system prompt)."""
    if "text" in rec:
        return [rec["text"]]
    return [m["content"] for m in rec["messages"] if m["role"] in roles] + (
        [rec["rejected"]] if rec.get("rejected") and "assistant" in roles else []
    )


def near_text(rec: Record) -> str:
    """What near-dedup and decontamination compare: the record's user/assistant texts. Rows of a group (questions
    on one SQuAD context) share that context by construction, and the split keeps a group together: they are
    compared on what tells them apart, the user turn's last paragraph (the question) and the answer."""
    if (rec.get("meta") or {}).get("group") and "messages" in rec:
        user = next((m["content"] for m in reversed(rec["messages"]) if m["role"] == "user"), "")
        answer = [m["content"] for m in rec["messages"] if m["role"] == "assistant"]
        return "\n".join([user.rsplit("\n\n", 1)[-1], *answer])
    return "\n".join(texts_of(rec))


# ----------------------------------------------------------------------------- exact


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

    def filter(self, records: list[Record]) -> list[Record]:
        """The records whose id (a sha1, see records.refresh_id) was not seen before; the first one is kept."""
        return [r for r, new in zip(records, self.keep([id_key(r["id"]) for r in records])) if new]


def dedup_records(records: list[Record]) -> tuple[list[Record], int]:
    """Drop records whose id was already seen (keep the first); returns (kept, n_dropped). Any hashable id."""
    seen: set = set()
    kept = []
    for rec in records:
        if rec["id"] not in seen:
            seen.add(rec["id"])
            kept.append(rec)
    return kept, len(records) - len(kept)


# ----------------------------------------------------------------------------- near (MinHash LSH)


def shingles(text: str, n: int, kind: str = "words") -> set[bytes]:
    """The n-grams MinHash compares: lower-cased word n-grams (a text shorter than n words is one shingle), or with
    kind="chars" character n-grams of the lower-cased text with runs of white space made one space."""
    if kind == "chars":
        t = _SPACES.sub(" ", text.lower()).strip()
        return {t[i : i + n].encode() for i in range(max(len(t) - n + 1, 1))}
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


class NearDedup:
    """MinHash (datasketch) + banded LSH: a text whose estimated Jaccard with a kept one is >= threshold repeats it.

    The bands are datasketch's (MinHashLSH picks b and r for the threshold); LSH candidates are checked
    against the full signature, so banding false positives are not dropped. Texts are handled in
    order, so the first of a group of near duplicates is the one kept. Shingles are word n-grams (the
    data stage: `data.clean.dedup.ngram`) or character n-grams (`shingle="chars"`: synth's short prompts).
    Close it (or use it in a `with`) to remove its signature file.
    """

    def __init__(
        self,
        threshold: float,
        num_perm: int,
        ngram: int,
        seed: int,
        spill_dir: str | Path | None = None,
        shingle: str = "words",
    ):
        from datasketch import MinHashLSH

        if shingle not in ("words", "chars"):
            raise ValueError(f"shingle must be 'words' or 'chars', not {shingle!r}")
        # datasketch needs >= 2 bands, i.e. a threshold below 1; candidates are re-checked at `threshold` anyway.
        lsh = MinHashLSH(threshold=min(threshold, 0.95), num_perm=num_perm)
        self.b, self.r = lsh.b, lsh.r
        self.threshold, self.num_perm, self.ngram, self.seed, self.shingle = threshold, num_perm, ngram, seed, shingle
        self.bands = HashIndex(values=True)
        self.kept = 0
        self._texts = 0  # texts seen: default ids
        self._row_bytes = num_perm * 4 + ID_BYTES
        self._spill = tempfile.TemporaryFile(dir=spill_dir)
        rng = np.random.default_rng(0)
        self._band_seeds = rng.integers(1, 2**63, size=self.b, dtype=np.uint64)

    def __enter__(self) -> NearDedup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._spill.close()

    def signatures(self, texts: list[str]) -> np.ndarray:
        """[len(texts), num_perm] uint32 MinHash values (datasketch's values fit in 32 bits)."""
        from datasketch import MinHash

        sets = [list(shingles(t, self.ngram, self.shingle)) for t in texts]
        mhs = MinHash.bulk(sets, num_perm=self.num_perm, seed=self.seed)
        return np.stack([m.hashvalues for m in mhs]).astype(np.uint32)

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """[rows, b] 64-bit hashes of each band of r values (band number mixed in)."""
        m = sigs.shape[0]
        vals = sigs[:, : self.b * self.r].reshape(m, self.b, self.r).astype(np.uint64)
        h = np.broadcast_to(self._band_seeds, (m, self.b)).copy()
        for j in range(self.r):
            h = (h ^ vals[:, :, j]) * np.uint64(0x100000001B3)
            h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        return h ^ (h >> np.uint64(31))

    def _ids(self, texts: list[str], ids: list[str] | None) -> list[str]:
        if ids is None:
            ids = [str(self._texts + i) for i in range(len(texts))]
        self._texts += len(texts)
        return ids

    def check(self, texts: list[str], ids: list[str] | None = None) -> list[str | None]:
        """For each text in order: None when it is new (it is kept: later texts are compared with it), else the
        id of the kept text it near-duplicates. `ids` (ASCII, at most 40 bytes) name the texts; default: numbers."""
        if not texts:
            return []
        ids = self._ids(texts, ids)
        sigs = self.signatures(texts)
        keys = self.band_keys(sigs)
        earlier = self._earlier_candidates(keys)
        local: dict[int, list[int]] = {}  # band key -> rows kept in this batch
        local_sigs: dict[int, np.ndarray] = {}
        out: list[str | None] = []
        kept_rows: list[int] = []
        for i in range(len(texts)):
            cands = sorted(earlier.get(i, set()).union(*(local.get(k, ()) for k in keys[i].tolist())))
            dupe = next((g for g in cands if self._similar(local_sigs.get(g), g, sigs[i])), None)
            if dupe is not None:
                out.append(self._id(dupe, ids, kept_rows))
                continue
            g = self.kept + len(kept_rows)
            for k in keys[i].tolist():
                local.setdefault(k, []).append(g)
            local_sigs[g] = sigs[i]
            kept_rows.append(i)
            out.append(None)
        self._commit(sigs, keys, ids, kept_rows)
        return out

    def add(self, texts: list[str], ids: list[str] | None = None) -> None:
        """Keep every one of `texts` (e.g. seed rows), near duplicates of each other or not."""
        if texts:
            ids = self._ids(texts, ids)
            sigs = self.signatures(texts)
            self._commit(sigs, self.band_keys(sigs), ids, list(range(len(texts))))

    def filter(self, records: list[Record], texts: list[str]) -> list[Record]:
        """The records of this batch that are not near duplicates of an earlier kept record; a dropped one gets
        meta.near_duplicate_of (the id of the record it repeats)."""
        kept = []
        for rec, dupe in zip(records, self.check(texts, [r["id"] for r in records])):
            if dupe is None:
                kept.append(rec)
            else:
                rec["meta"]["near_duplicate_of"] = dupe
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

    def _id(self, g: int, ids: list[str], kept_rows: list[int]) -> str:
        if g >= self.kept:
            return ids[kept_rows[g - self.kept]]
        raw = os.pread(self._spill.fileno(), ID_BYTES, g * self._row_bytes + self.num_perm * 4)
        return raw.decode("ascii").rstrip()

    def _commit(self, sigs: np.ndarray, keys: np.ndarray, ids: list[str], kept_rows: list[int]) -> None:
        """Spill the kept rows' signatures and ids to the temp file and add their bands to the index."""
        if not kept_rows:
            return
        rows = np.asarray(kept_rows)
        raw = b"".join(ids[i].encode("ascii")[:ID_BYTES].ljust(ID_BYTES) for i in kept_rows)
        blob = np.concatenate(
            [sigs[rows].view(np.uint8), np.frombuffer(raw, np.uint8).reshape(len(rows), ID_BYTES)], axis=1
        )
        os.pwrite(self._spill.fileno(), blob.tobytes(), self.kept * self._row_bytes)
        numbers = np.repeat(np.arange(self.kept, self.kept + len(rows), dtype=np.int32), self.b)
        self.bands.insert(keys[rows].ravel(), numbers)
        self.kept += len(rows)


# ----------------------------------------------------------------------------- decontamination


def ngram_hashes(text: str, n: int) -> set[int]:
    """Hashes of the lower-cased word n-grams (the whole text as one when shorter than n words)."""
    words = tuple(_WORD.findall(text.lower()))
    if len(words) < n:
        return {hash(("short",) + words)} if words else set()
    return {hash(words[i : i + n]) for i in range(len(words) - n + 1)}


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


# ----------------------------------------------------------------------------- HashIndex

# A compact hash multimap of 64-bit keys (optionally to int32 values) in two numpy arrays. Open addressing with
# linear probing; inserts and lookups are vectorised over a whole batch of keys. It holds the cross-row state of
# exact dedup (keys only: 8 bytes a slot) and of the near-dedup LSH bands (key + row number: 12 bytes a slot).
# Slots are kept at most 70% full, so an entry costs 11-23 bytes (8-byte keys) or 17-34 bytes (with values),
# against ~100 for a Python set or dict entry.

MAX_LOAD = 0.7
CHUNK = 1 << 16  # keys moved per step when the table grows
EMPTY = np.uint64(0)


def nonzero(keys: np.ndarray) -> np.ndarray:
    """Keys as uint64 with 0 (the empty-slot marker) moved to 1."""
    keys = np.asarray(keys, dtype=np.uint64)
    return np.where(keys == EMPTY, np.uint64(1), keys)


class HashIndex:
    """Multimap uint64 -> int32 (or a set of uint64 when `values` is False). Equal keys may repeat."""

    def __init__(self, values: bool = True, capacity: int = 1024):
        self.count = 0
        self._values = values
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.vals = np.zeros(capacity, dtype=np.int32) if self._values else None
        self.mask = np.uint64(capacity - 1)

    def nbytes(self) -> int:
        return self.keys.nbytes + (self.vals.nbytes if self.vals is not None else 0)

    def insert(self, keys: np.ndarray, vals: np.ndarray | None = None) -> None:
        keys = nonzero(keys)
        if not keys.size:
            return
        vals = np.zeros(keys.size, np.int32) if vals is None else np.asarray(vals, dtype=np.int32)
        if self.count + keys.size > MAX_LOAD * self.keys.size:
            self._grow(self.count + keys.size)
        self._place(keys, vals)
        self.count += keys.size

    def _grow(self, needed: int) -> None:
        """Double until `needed` fits, moving the entries over a chunk at a time (small temporaries)."""
        capacity = self.keys.size
        while needed > MAX_LOAD * capacity:
            capacity *= 2
        old_keys, old_vals = self.keys, self.vals
        self._alloc(capacity)
        for start in range(0, old_keys.size, CHUNK):
            keys = old_keys[start : start + CHUNK]
            used = keys != EMPTY
            vals = (
                old_vals[start : start + CHUNK][used] if old_vals is not None else np.zeros(int(used.sum()), np.int32)
            )
            self._place(keys[used], vals)

    def _place(self, keys: np.ndarray, vals: np.ndarray) -> None:
        """Put each key in the first free slot from its home slot on (one winner per slot and round)."""
        pos = keys & self.mask
        pending = np.arange(keys.size)
        while pending.size:
            slots = pos[pending]
            taken = self.keys[slots] != EMPTY
            pos[pending[taken]] = (slots[taken] + np.uint64(1)) & self.mask
            free = pending[~taken]
            if not free.size:
                continue
            uniq, first = np.unique(pos[free], return_index=True)
            winners = free[first]
            self.keys[uniq] = keys[winners]
            if self.vals is not None:
                self.vals[uniq] = vals[winners]
            done = np.zeros(keys.size, dtype=bool)
            done[winners] = True
            pending = pending[~done[pending]]

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every match: (position in `keys`, stored value) pairs, in no particular order."""
        keys = nonzero(keys)
        pos = keys & self.mask
        pending = np.arange(keys.size)
        found_q, found_v = [], []
        while pending.size:
            slots = pos[pending]
            stored = self.keys[slots]
            hit = stored == keys[pending]
            if hit.any():
                found_q.append(pending[hit])
                found_v.append(self.vals[slots[hit]] if self.vals is not None else np.zeros(hit.sum(), np.int32))
            live = stored != EMPTY
            pending = pending[live]
            pos[pending] = (slots[live] + np.uint64(1)) & self.mask
        if not found_q:
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        return np.concatenate(found_q), np.concatenate(found_v)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        hits = np.zeros(np.asarray(keys).size, dtype=bool)
        hits[self.lookup(keys)[0]] = True
        return hits
