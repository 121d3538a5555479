"""Run folders: `RunDir` (every path under runs/<name>/), target resolution, stage manifests, the model registry.

Layout: runs/<name>/{config.yaml, logs/, synth/, data/, train/, distill/, eval/, export/, index/}, each stage folder
with a manifest.json: fingerprint (hash of its config section and input hashes), status, times, versions.
A stage is skipped when its manifest says done with the same fingerprint. A crash leaves
status 'running' or 'failed', which never reads as done. No other module spells out these paths.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError
from slmkit.io import atomic_write_json, sha256_json
from slmkit.models import resolve_model
from slmkit.paths import check_writable_output, data_dir

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RunDir:
    """runs/<name>/ and every path in it. `distills`: whether the run's model is the distilled student
    (None: whichever exists, distill/final first)."""

    root: Path
    distills: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.root, RunDir):  # RunDir(run) is run, or run with `distills` decided
            object.__setattr__(self, "distills", self.root.distills if self.distills is None else self.distills)
            object.__setattr__(self, "root", self.root.root)
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, cfg) -> RunDir:
        """<output_dir>/<name> of a BuildConfig (output_dir relative to the working folder; system folders refused)."""
        out = Path(cfg.output_dir).expanduser()
        out = out if out.is_absolute() else Path.cwd() / out
        return cls(check_writable_output(out) / cfg.name, "distill" in cfg.stages)

    @classmethod
    def of_config(cls, cfg, run_dir) -> RunDir:
        """`run_dir` (a path or RunDir) with the config's answer to whether the run's model is the distilled one."""
        return cls(run_dir, "distill" in cfg.stages)

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    # whole run
    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log_file(self) -> Path:
        return self.root / "logs" / "slm.log"

    @property
    def index_dir(self) -> Path:
        """Where `slm index --run RUN` puts its ChromaDB collection."""
        return self.root / "index"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def manifest(self, stage: str) -> Path:
        return self.root / stage / "manifest.json"

    # synth
    @property
    def synth_rows(self) -> Path:
        return self.root / "synth" / "rows.jsonl"

    @property
    def synth_cache(self) -> Path:
        return self.root / "synth" / "cache.sqlite"

    # data
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def split(self, name: str) -> Path:
        return self.root / "data" / f"{name}.jsonl"

    # train / distill
    def checkpoints(self, stage: str = "train") -> Path:
        return self.root / stage / "checkpoints"

    def train_log(self, stage: str = "train") -> Path:
        return self.root / stage / "log.jsonl"

    def loss_plot(self, stage: str = "train") -> Path:
        return self.root / stage / "loss.png"

    @property
    def train_best(self) -> Path:
        """Weights of the best validation so far (train.load_best_model_at_end)."""
        return self.root / "train" / "best"

    @property
    def tune_dir(self) -> Path:
        """`slm tune` / train.search: the study, its trials and best.yaml (laid out by train/search.py's TunePaths)."""
        return self.root / "tune"

    @property
    def val_plot(self) -> Path:
        return self.root / "train" / "val.png"

    @property
    def train_final(self) -> Path:
        return self.root / "train" / "final"

    @property
    def distill_final(self) -> Path:
        return self.root / "distill" / "final"

    @property
    def student_init(self) -> Path:
        return self.root / "distill" / "student_init"

    @property
    def kd_cache(self) -> Path:
        return self.root / "distill" / "cache"

    @property
    def final_model(self) -> Path:
        """The run's model: the distilled student when the build distills, else the fine-tuned model."""
        if self.distills is None:
            return self.distill_final if self.distill_final.is_dir() else self.train_final
        return self.distill_final if self.distills else self.train_final

    # eval / export
    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def eval_metrics(self) -> Path:
        """eval/metrics.json: what export's model card and the registry read."""
        return self.root / "eval" / "metrics.json"

    @property
    def merged(self) -> Path:
        return self.root / "export" / "merged"

    def export(self, name: str) -> Path:
        """export/<format>[-<precision>] (merged, gguf-q8_0, onnx-int4, pt2, ...)."""
        return self.root / "export" / name

    @property
    def shipped_model(self) -> Path:
        """What a user gets: the merged export when there is one, else the run's model."""
        return self.merged if self.merged.is_dir() else self.final_model

    @staticmethod
    def owning(path: Path) -> RunDir | None:
        """The run folder a model folder sits in (export/<x>, train/final, distill/final), else None."""
        p = Path(path)
        if p.parent.name == "export":
            return RunDir(p.parent.parent)
        if p.name == "final" and p.parent.name in ("train", "distill"):
            return RunDir(p.parent.parent)
        return None


def target_folder(target: str) -> Path | None:
    """The folder a RUN_OR_MODEL names: the folder itself, a registered model's path, or runs/<name>; else None."""
    p = Path(target).expanduser()
    if not p.is_dir():
        entry = get_model(target)
        p = Path(entry["path"]) if entry else Path("runs", target)
    return p if p.is_dir() else None


def run_of(target: str) -> RunDir | None:
    """The run a target belongs to: a run folder (it has export/), a model folder inside one (export/<x>,
    train/final, distill/final, where registered paths point), else None."""
    p = target_folder(target)
    if p is None:
        return None
    p = p.resolve()
    return RunDir(p) if (p / "export").is_dir() else RunDir.owning(p)


def resolve_target(target: str) -> tuple[Path | str, Path | None, dict]:
    """RUN_OR_MODEL -> (model folder or hub id, adapter folder or None, slmkit info).

    Tried in order: a run folder (its merged export, else distill/final, else train/final), an adapter or model folder,
    a name in the registry, runs/<name>, then a model name ('default', a hub id).
    """
    p = Path(target).expanduser()
    if p.is_dir():
        run = RunDir(p)
        for sub in (run.merged, run.distill_final, run.train_final):
            if sub.is_dir():
                return resolve_target(str(sub))
        info = json.loads((p / "slmkit.json").read_text()) if (p / "slmkit.json").is_file() else {}
        if (p / "adapter_config.json").is_file():
            if "base_model" not in info:
                raise SlmError(f"adapter folder {p} does not say its base model", "chat with the run folder instead")
            return resolve_model(info["base_model"]), p, info
        return resolve_model(str(p)), None, info
    if (entry := get_model(target)) is not None:
        return resolve_target(entry["path"])
    if Path("runs", target).is_dir():
        return resolve_target(str(Path("runs", target)))
    return resolve_model(target), None, {}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(run_dir: Path, stage: str) -> dict | None:
    p = RunDir(run_dir).manifest(stage)
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

    manifest = {
        "stage": stage,
        "status": "running",
        "fingerprint": fp,
        "inputs": inputs,
        "config": config,
        "versions": versions(),
        "started": _now(),
        "finished": None,
        "summary": {},
    }
    path = RunDir(run_dir).manifest(stage)
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
        con.execute(
            "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
            (name, base_model, data_hash, json.dumps(metrics), str(Path(path).resolve()), _now()),
        )


def list_models() -> list[dict]:
    with closing(_connect()) as con:
        rows = con.execute(
            "SELECT name, base_model, data_hash, metrics, path, created FROM models ORDER BY created DESC"
        ).fetchall()
    return [
        dict(zip(("name", "base_model", "data_hash", "metrics", "path", "created"), r)) | {"metrics": json.loads(r[3])}
        for r in rows
    ]


def get_model(name: str) -> dict | None:
    return next((m for m in list_models() if m["name"] == name), None)
