"""Run directories, per-stage manifests, skip-if-unchanged, and the local model registry.

Layout: runs/<name>/{config.yaml, logs/, data/, train/, eval/, export/}, each stage folder with a
manifest.json: fingerprint (hash of its config section and input hashes), status, times, versions.
A stage is skipped when its manifest says done with the same fingerprint. A crash leaves
status 'running' or 'failed', which never reads as done.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slmkit.io import atomic_write_json, sha256_json
from slmkit.paths import data_dir


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def manifest_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / stage / "manifest.json"


def read_manifest(run_dir: Path, stage: str) -> dict | None:
    p = manifest_path(run_dir, stage)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None  # a torn manifest cannot happen with atomic writes, but never trust one


def fingerprint(stage: str, config: Any, inputs: dict[str, str]) -> str:
    return sha256_json({"stage": stage, "config": config, "inputs": inputs})


def is_done(run_dir: Path, stage: str, fp: str | None = None) -> bool:
    m = read_manifest(run_dir, stage)
    return bool(m and m.get("status") == "done" and (fp is None or m.get("fingerprint") == fp))


@contextmanager
def stage_manifest(run_dir: Path, stage: str, fp: str, config: Any, inputs: dict[str, str]):
    """Mark a stage running, yield a dict the stage fills with its summary, then mark it done.

    On any exception (including Ctrl-C) the manifest says 'failed' with the error, and re-raises.
    """
    from slmkit.hardware import versions

    manifest = {"stage": stage, "status": "running", "fingerprint": fp, "inputs": inputs, "config": config,
                "versions": versions(), "started": _now(), "finished": None, "summary": {}}
    path = manifest_path(run_dir, stage)
    atomic_write_json(path, manifest)
    t0 = time.monotonic()
    summary: dict = {}
    try:
        yield summary
    except BaseException as e:
        manifest.update(status="failed", error=f"{type(e).__name__}: {e}", finished=_now(), summary=summary)
        atomic_write_json(path, manifest)
        raise
    manifest.update(status="done", finished=_now(), seconds=round(time.monotonic() - t0, 2), summary=summary)
    atomic_write_json(path, manifest)


# ----------------------------------------------------------------------------- registry

def registry_path() -> Path:
    return data_dir() / "registry.sqlite"


def _connect() -> sqlite3.Connection:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=30)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("""CREATE TABLE IF NOT EXISTS models (
        name TEXT PRIMARY KEY, base_model TEXT, data_hash TEXT, metrics TEXT, path TEXT, created TEXT)""")
    return con


def register_model(name: str, base_model: str, data_hash: str, metrics: dict, path: Path) -> None:
    with closing(_connect()) as con, con:
        con.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                    (name, base_model, data_hash, json.dumps(metrics), str(Path(path).resolve()), _now()))


def list_models() -> list[dict]:
    with closing(_connect()) as con:
        rows = con.execute("SELECT name, base_model, data_hash, metrics, path, created FROM models ORDER BY created DESC").fetchall()
    return [dict(zip(("name", "base_model", "data_hash", "metrics", "path", "created"), r)) | {"metrics": json.loads(r[3])}
            for r in rows]


def get_model(name: str) -> dict | None:
    return next((m for m in list_models() if m["name"] == name), None)
