"""A compact hash multimap of 64-bit keys (optionally to int32 values) in two numpy arrays.

Open addressing with linear probing; inserts and lookups are vectorised over a whole batch of keys. It
holds the cross-row state of exact dedup (keys only: 8 bytes a slot) and of the near-dedup LSH bands
(key + row number: 12 bytes a slot). Slots are kept at most 70% full, so an entry costs 11-23 bytes
(8-byte keys) or 17-34 bytes (with values), against ~100 for a Python set or dict entry.
"""

from __future__ import annotations

import numpy as np

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
            keys = old_keys[start:start + CHUNK]
            used = keys != EMPTY
            vals = old_vals[start:start + CHUNK][used] if old_vals is not None else np.zeros(int(used.sum()), np.int32)
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
