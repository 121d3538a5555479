"""slmkit: turn your own data into a small, specialised language model.

Python API (thin wrappers over the stages; each stage reads and writes files in a run folder):

    cfg = slmkit.load_config("build.yaml")
    slmkit.build(cfg)                        # data -> train -> eval -> export
    slmkit.prepare_data(cfg, "runs/x/data")  # one stage alone
"""

from __future__ import annotations

from slmkit.config import BuildConfig, load_config
from slmkit.errors import SlmError

__version__ = "0.1.0"
__all__ = ["BuildConfig", "SlmError", "load_config", "build", "prepare_data", "train", "evaluate", "export"]


def build(cfg: BuildConfig, force: bool = False, resume: bool = False, show_progress: bool = True):
    from slmkit.pipeline import build as _build

    return _build(cfg, force=force, resume=resume, show_progress=show_progress)


def prepare_data(cfg: BuildConfig, out_dir):
    from slmkit.data import prepare

    return prepare(cfg, out_dir)


def train(cfg: BuildConfig, run_dir, resume: bool = False):
    from slmkit.train.stage import run

    return run(cfg, run_dir, resume=resume)


def evaluate(cfg: BuildConfig, run_dir, task: str | None = None):
    from slmkit.eval.stage import run

    return run(cfg, run_dir, task=task)


def export(cfg: BuildConfig, run_dir):
    from slmkit.export.stage import run

    return run(cfg, run_dir)
