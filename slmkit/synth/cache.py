"""Persistent teacher-call cache: SQLite in WAL mode, one row per call, committed as each call returns.

The key hashes everything that decides a reply (backend, model, sampling params, messages, schema), so a
rerun or a run resumed after Ctrl-C / kill asks the teacher only for calls it has not answered yet.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError
from slmkit.paths import cache_dir

SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed")


def default_cache_path() -> Path:
    return cache_dir() / "synth" / "cache.sqlite"


def cache_key(
    backend: str, model: str, sampling: dict[str, Any], messages: list[dict[str, str]], schema: Any = None
) -> str:
    """sha256 of the canonical JSON of what decides the reply."""
    payload = {
        "backend": backend,
        "model": model,
        "sampling": {k: sampling.get(k) for k in SAMPLING_KEYS},
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "schema": schema,
    }
    canon = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


@dataclass
class CachedReply:
    text: str
    prompt_tokens: int
    completion_tokens: int


class SynthCache:
    """`get`/`put` by key; every `put` is its own committed transaction (nothing is lost on a kill)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill (SQLite docs)
            self._con.execute("""CREATE TABLE IF NOT EXISTS calls (
                key TEXT PRIMARY KEY, backend TEXT, model TEXT, request TEXT, reply TEXT,
                prompt_tokens INTEGER, completion_tokens INTEGER, created TEXT DEFAULT CURRENT_TIMESTAMP)""")
        except sqlite3.DatabaseError as e:
            raise SlmError(
                f"cannot open the synth cache {self.path}: {e}",
                "delete that file (it only holds re-creatable teacher replies) or set synth.cache",
            ) from None

    def get(self, key: str) -> CachedReply | None:
        row = self._con.execute(
            "SELECT reply, prompt_tokens, completion_tokens FROM calls WHERE key = ?", (key,)
        ).fetchone()
        return CachedReply(row[0], row[1] or 0, row[2] or 0) if row else None

    def has(self, key: str) -> bool:
        return self._con.execute("SELECT 1 FROM calls WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, backend: str, model: str, request: dict, reply: CachedReply) -> None:
        self._con.execute(
            "INSERT OR REPLACE INTO calls (key, backend, model, request, reply, prompt_tokens, "
            "completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                backend,
                model,
                json.dumps(request, ensure_ascii=False),
                reply.text,
                reply.prompt_tokens,
                reply.completion_tokens,
            ),
        )

    def __len__(self) -> int:
        return self._con.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        self._con.close()
