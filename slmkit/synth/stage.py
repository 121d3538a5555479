"""The synth stage: run the configured recipes against the teacher, write `<run>/synth/rows.jsonl`.

    slm synth CONFIG [--dry-run]        (or inside `slm build` when `stages` lists synth)

`run` is the stage door; `synthesize` runs a bare `SynthConfig` and returns a manifest-friendly summary dict;
`plan` is the `--dry-run` (calls a config would make and how many are cached; no teacher is contacted).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

from slmkit.config import BuildConfig
from slmkit.config.synth import SynthConfig
from slmkit.errors import SlmError
from slmkit.io import atomic_write_jsonl, sha256_file
from slmkit.runs import RunDir, fingerprint
from slmkit.synth import inputs
from slmkit.synth.cache import SynthCache, default_cache_path
from slmkit.synth.recipes import RECIPES, Ctx
from slmkit.synth.teacher import Reply, Teacher

log = logging.getLogger("slmkit.synth")


def cache_path(cfg: SynthConfig, run_dir: Path, config_dir: Path) -> Path:
    if cfg.cache == "user":
        return default_cache_path()
    if cfg.cache == "run":
        return RunDir(run_dir).synth_cache
    p = Path(cfg.cache).expanduser()
    return p if p.is_absolute() else config_dir / p


def input_hashes(cfg: SynthConfig, config_dir: Path) -> dict[str, str]:
    """sha256 of every file the recipes read (for the stage fingerprint)."""
    paths: list[Path] = []
    for r in cfg.recipes:
        for attr in ("seeds", "prompts", "rows"):
            if getattr(r, attr, None):
                paths.append(inputs.resolve(config_dir, getattr(r, attr)))
        if r.type == "qa_from_docs" and r.docs:
            paths += inputs.doc_files(config_dir, r.docs, f"synth.recipes.{r.label}.docs")
    hashes = {str(p): sha256_file(p) for p in paths if p.is_file()}
    for r in cfg.recipes:
        if r.type == "qa_from_docs" and r.collection:  # hash what is stored, not Chroma's files (they change on open)
            from slmkit.chroma import collection_digest

            folder = inputs.resolve(config_dir, r.collection.path)
            hashes[f"chroma:{folder}#{r.collection.name}"] = collection_digest(folder, r.collection.name)
    return hashes


def synth_fingerprint(cfg: SynthConfig, config_dir: Path, inputs: dict[str, str] | None = None) -> str:
    """The stage fingerprint: the synth section plus the hash of every input (pass `inputs` if already hashed)."""
    return fingerprint(
        "synth", cfg.model_dump(mode="json"), inputs if inputs is not None else input_hashes(cfg, config_dir)
    )


def _require_recipes(cfg: SynthConfig) -> None:
    if not cfg.recipes:
        raise SlmError(
            "synth.recipes is empty: nothing to make",
            "add a recipe, e.g. synth: {recipes: [{type: respond, prompts: prompts.txt}]}",
        )


def _progress(show: bool):
    if not show:
        return nullcontext(None)
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]synth {task.description}"),
        TextColumn("calls {task.fields[made]} · cached {task.fields[cached]} · failed {task.fields[failed]}"),
        TimeElapsedColumn(),
    )


def run(cfg: BuildConfig, run_dir: RunDir, *, resume: bool = False, show_progress: bool = True) -> dict:
    """The build config's synth section -> rows.jsonl. A rerun (resume or not) repeats no cached teacher call."""
    return synthesize(cfg.synth, RunDir(run_dir).root, Path(cfg.config_dir or "."), show_progress=show_progress)


def synthesize(cfg: SynthConfig, run_dir: Path, config_dir: Path, show_progress: bool = True, backend=None) -> dict:
    """Run every recipe in order; write rows.jsonl (also after a budget stop); return the summary."""
    from slmkit.data import dedup_records as dedup

    _require_recipes(cfg)
    cache = SynthCache(cache_path(cfg, run_dir, config_dir))
    teacher = Teacher(cfg.teacher, cfg.budget, cache, backend=backend)
    by_recipe: dict[str, dict] = {}
    try:
        teacher.preflight()
        ctx = Ctx(teacher, config_dir)
        with _progress(show_progress) as prog:
            for r in cfg.recipes:
                if teacher.stopped:
                    by_recipe[r.label] = {"type": r.type, "rows": 0, "dropped": {}, "skipped": teacher.stopped}
                    continue
                before = teacher.stats.as_dict()
                if prog is not None:
                    task = prog.add_task(r.label, total=None, made=0, cached=0, failed=0)
                    teacher.on_reply = _advance(prog, task)
                result = RECIPES[r.type][0](r, ctx)
                rows = result.rows[: r.max_rows] if r.max_rows else result.rows
                ctx.rows = rows if result.replaces_previous else ctx.rows + rows
                after = teacher.stats.as_dict()
                dropped = {k: v for k, v in result.dropped.items() if v}
                by_recipe[r.label] = {
                    "type": r.type,
                    "rows": len(rows),
                    "dropped": dropped,
                    "calls": after["calls"] - before["calls"],
                    "cached": after["cached"] - before["cached"],
                }
                log.info("synth %s: %d rows, dropped %s", r.label, len(rows), dropped or "none")
        rows, duplicates = dedup(ctx.rows)
        out = atomic_write_jsonl(RunDir(run_dir).synth_rows, rows)
    finally:
        teacher.close()
        cache.close()
    if teacher.stopped:
        log.warning(
            "synth stopped early (%s); kept %d rows. Rerun to continue: cached calls are not repeated.",
            teacher.stopped,
            len(rows),
        )
    return {
        "rows": len(rows),
        "path": str(out),
        "duplicates_dropped": duplicates,
        "recipes": by_recipe,
        "teacher": {"backend": cfg.teacher.backend, "model": cfg.teacher.model, "base_url": cfg.teacher.base_url},
        "stats": teacher.stats.as_dict(),
        "stopped": teacher.stopped,
        "cache": str(cache.path),
    }


def _advance(prog, task):
    counts = {"made": 0, "cached": 0, "failed": 0}

    def on_reply(rep: Reply) -> None:
        counts["cached" if rep.cached else "made" if rep.ok else "failed"] += 1
        prog.update(task, **counts)

    return on_reply


def plan(cfg: SynthConfig, run_dir: Path, config_dir: Path) -> dict:
    """Calls the config would make and how many are already cached. Contacts no teacher."""
    _require_recipes(cfg)
    path = cache_path(cfg, run_dir, config_dir)
    cache = SynthCache(path)
    teacher = Teacher(cfg.teacher, cfg.budget, cache, backend=_NoBackend())
    try:
        ctx, recipes, rows_above = Ctx(teacher, config_dir), [], 0
        for r in cfg.recipes:
            p = RECIPES[r.type][1](r, ctx)
            if r.type == "judge" and r.rows is None:
                p.more, p.rows = rows_above, rows_above
            cached = sum(cache.has(teacher.key(q)) for q in p.requests)
            recipes.append(
                {
                    "recipe": r.label,
                    "type": r.type,
                    "calls": len(p.requests),
                    "cached": cached,
                    "more_at_most": p.more,
                    "rows_expected": p.rows,
                }
            )
            rows_above = p.rows if r.type == "judge" and r.rows is None else rows_above + p.rows
    finally:
        cache.close()
    return {
        "recipes": recipes,
        "calls": sum(x["calls"] for x in recipes),
        "cached": sum(x["cached"] for x in recipes),
        "more_at_most": sum(x["more_at_most"] for x in recipes),
        "cache": str(path),
        "budget": cfg.budget.model_dump(),
    }


class _NoBackend:
    name = "none"

    def preflight(self) -> None:  # the dry run contacts nobody
        return None
