"""The recipe search's outputs: trial parameters applied to a config, the trials as rows (tune/trials.jsonl and
trials.md), their values per trial (trials.png), and tune/best.yaml: the full build config with the best train
section and the search switched off, rerunnable with `slm build runs/<name>/tune/best.yaml`.

best.yaml's relative paths (data.path, synth seeds, ...) are made absolute, since they were relative to the original
config's folder; output_dir stays as it was (relative to the working folder), so from the same folder the rerun
lands in the same run and reuses its data stage.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import yaml

from slmkit.config import BuildConfig, redact
from slmkit.errors import SlmError
from slmkit.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl, atomic_write_text

# Config keys whose values are paths relative to the config file (data.path, synth recipes' seeds, ...): in best.yaml
# those naming an existing file or folder become absolute. The model and train sections hold none.
PATH_KEYS = frozenset(
    {"path", "test_path", "seeds", "prompts", "rows", "docs", "persist_dir", "cache_dir", "cache", "imports"}
)
SKIP_SECTIONS = ("name", "output_dir", "stages", "model", "train")


def apply_params(train: dict, params: dict) -> dict:
    """A train section (a dict, changed in place and returned) with a trial's parameters."""
    if "lr" in params:
        train["lr"] = params["lr"]
    if "epochs" in params:
        train["epochs"], train["max_steps"] = float(params["epochs"]), None
    if "steps" in params:
        train["max_steps"] = params["steps"]
    if "lora_r" in params:
        train["lora"]["r"] = params["lora_r"]
    if "alpha_multiplier" in params:
        train["lora"]["alpha"] = train["lora"]["r"] * params["alpha_multiplier"]
    if "balance" in params:
        train["balance"] = params["balance"]
    return train


def config_params(train, space) -> dict:
    """The train section's own recipe as search parameters (trial 0 with train.search.start_from_config): each
    searched value clamped into its range, or the nearest listed choice; a dimension it cannot express (steps with
    no max_steps) is left out, so the sampler picks it."""

    def clamp(v, lo_hi):
        return min(max(v, lo_hi[0]), lo_hi[1])

    def nearest(v, choices):
        return v if v in choices else min(choices, key=lambda c: (abs(c - v), c))

    p: dict = {}
    if space.lr:
        p["lr"] = clamp(train.lr, space.lr)
    if space.epochs:
        p["epochs"] = int(clamp(max(1, round(train.epochs)), space.epochs))
    if space.steps and train.max_steps:
        p["steps"] = int(clamp(train.max_steps, space.steps))
    if train.method == "lora" and space.lora_r:
        p["lora_r"] = nearest(train.lora.r, list(space.lora_r))
    if train.method == "lora" and space.alpha_multiplier:
        p["alpha_multiplier"] = nearest(train.lora.alpha / train.lora.r, list(space.alpha_multiplier))
    if space.balance:
        p["balance"] = train.balance if train.balance in space.balance else space.balance[0]
    return p


def best_config(cfg: BuildConfig, params: dict, final: dict | None = None) -> BuildConfig:
    """cfg with the best parameters in its train section and train.search.enabled false (a rerun trains, once);
    `final` (search._final): the final training's epochs, and the max_steps cap that fits it in the budget."""
    dump = cfg.model_dump()
    apply_params(dump["train"], params)["search"]["enabled"] = False
    if final and final.get("epochs") is not None:
        dump["train"]["epochs"] = final["epochs"]
    if final and final.get("max_steps") is not None:
        dump["train"]["max_steps"] = final["max_steps"]
    return BuildConfig.model_validate(dump)


def trial_rows(study) -> list[dict]:
    """[{number, state, value, params, seconds, steps, best_step, pruned_at, requeued_from, from_config}] of every
    started trial."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":
            continue
        a = t.user_attrs
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        row = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "seconds": None if seconds is None else round(seconds, 1),
            "steps": a.get("steps"),
            "best_step": a.get("best_step"),
            "pruned_at": a.get("pruned_at"),
        }
        rows.append(row | {k: a[k] for k in ("requeued_from", "from_config", "error") if k in a})
    return rows


def write_outputs(paths, cfg: BuildConfig, study, summary: dict, plot: bool = True) -> None:
    """trials.jsonl, trials.md, best.yaml, summary.json (and trials.png with `plot`) under tune/."""
    rows, best = summary["trials"], summary["best"]
    atomic_write_jsonl(paths.root / "trials.jsonl", rows)
    atomic_write_text(paths.root / "trials.md", trials_md(rows, summary["metric"], best and best["number"]))
    if best is None:  # no finished trial yet
        return
    header = (
        f"# slm tune: the best recipe of study {summary['study']} (trial {best['number']}, {summary['metric']} "
        f"{best['value']:.4f} on the val split,\n# {len(rows)} trials on {summary['rows']} of "
        f"{summary['rows_total']} train rows). Rerun: slm build {paths.best_yaml}\n"
    )
    final = summary.get("final") or {}
    if final.get("epochs") is not None:
        header += f"# train.epochs {final['epochs']:g}: the final training may use the space's most epochs\n"
    if final.get("capped"):
        header += (
            f"# train.max_steps {final['steps']}: its {final['natural_steps']} steps capped to fit "
            f"the {summary['budget_s'] / 60:.0f}-minute budget\n"
        )
    best_cfg = best_config(cfg, best["params"], final)
    atomic_write_text(paths.best_yaml, header + yaml.safe_dump(rerunnable(best_cfg), sort_keys=False))
    atomic_write_json(paths.summary, summary)
    if plot:
        try:
            plot_trials(rows, summary["metric"], paths.root / "trials.png")
        except ImportError:  # matplotlib missing: the tables are still written
            pass


def rerunnable(cfg: BuildConfig) -> dict:
    """The config as YAML data: secrets redacted, config_dir left to the loader, relative paths made absolute."""
    dump = redact(cfg.model_dump(mode="json", exclude={"config_dir"}))
    base = Path(cfg.config_dir or ".").resolve()
    return {k: v if k in SKIP_SECTIONS else _absolute(v, base) for k, v in dump.items()}


def _absolute(value, base: Path, is_path: bool = False):
    if isinstance(value, dict):
        return {k: _absolute(v, base, k in PATH_KEYS) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolute(v, base, is_path) for v in value]
    if (
        is_path
        and isinstance(value, str)
        and value
        and "://" not in value
        and not Path(value).expanduser().is_absolute()
    ):
        try:
            if (base / value).exists():
                return str((base / value).resolve())
        except OSError:  # a value too long or odd to be a path
            pass
    return value


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def trials_md(rows: list[dict], metric: str, best_number: int | None = None) -> str:
    names = list(dict.fromkeys(k for r in rows for k in r["params"]))
    head = f"| trial | state | {metric} | " + " | ".join(names) + " | steps run | seconds |"
    lines = [head, "|" + "---|" * (len(names) + 5)]
    for r in rows:
        mark = (" (your config)" if r.get("from_config") else "") + (" (best)" if r["number"] == best_number else "")
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        state = r["state"].lower() + (f" at step {r['pruned_at']}" if r.get("pruned_at") else "")
        cells = " | ".join(_fmt(r["params"].get(n, "")) for n in names)
        lines.append(
            f"| {r['number']}{mark} | {state} | {value} | {cells} | {r.get('steps') or ''} | {r.get('seconds') or ''} |"
        )
    return "\n".join(lines) + "\n"


def plot_trials(rows: list[dict], metric: str, path: Path) -> Path:
    """Value per trial (finished and pruned marked apart) and the best so far."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(f"Recipe search: val {metric} per trial")
    for state, style in (
        ("COMPLETE", {"marker": "o", "color": "tab:blue"}),
        ("PRUNED", {"marker": "x", "color": "tab:gray"}),
    ):
        pts = [(r["number"], r["value"]) for r in rows if r["state"] == state and r["value"] is not None]
        if pts:
            ax.scatter(*zip(*pts), label=state.lower(), **style)
    best, line = None, []
    for r in rows:
        if r["state"] == "COMPLETE" and r["value"] is not None:
            best = r["value"] if best is None else max(best, r["value"])
        if best is not None:
            line.append((r["number"], best))
    if line:
        ax.step(*zip(*line), where="post", color="tab:green", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


def read_trials(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def fresh_dir(folder: Path) -> None:
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def link(target: Path, link: Path) -> None:
    """A relative symlink (a copy where the file system has none); replaces what is at `link`."""
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    try:
        os.symlink(os.path.relpath(target, link.parent), link)
    except OSError:
        (shutil.copytree if target.is_dir() else shutil.copy2)(target, link)


def drop_weights(root: Path) -> None:
    """A trial's scores and logs stay; its weights (final/, best/, checkpoints/) are never used again."""
    for sub in ("final", "best", "checkpoints"):
        shutil.rmtree(root / "train" / sub, ignore_errors=True)


def fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


@contextmanager
def search_lock(path: Path, run):
    """One search per run folder at a time (the OS drops the lock when its process dies, kill -9 included)."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SlmError(
                f"another recipe search is running on {run.root}", "wait for it to finish, or stop it"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
