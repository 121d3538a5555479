"""The `slm` command: build, one command per stage, and the tools around them, all listed in COMMANDS below.

Stage commands (data, synth, train, distill, eval, export) run through `pipeline.run_stage`, so alone or inside
`slm build` a stage has the same fingerprint, skip rule and upstream check. The other commands are plain functions
in each stage's cli.py. This module and pipeline.py are the only ones that import stages.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from slmkit.config import STAGE_ORDER, flag_overrides, load_config
from slmkit.data import cli as data_cli
from slmkit.distill import cli as distill_cli
from slmkit.errors import SlmError
from slmkit.eval import cli as eval_cli
from slmkit.export import cli as export_cli
from slmkit.log import setup_logging
from slmkit.options import (
    FailCollapseOpt,
    ForceOpt,
    LogFmtOpt,
    ModelOpt,
    NameOpt,
    OutOpt,
    ProgOpt,
    ResumeOpt,
    SetOpt,
    StepsOpt,
    run_app,
)
from slmkit.runs import RunDir
from slmkit.serve import cli as serve_cli
from slmkit.synth import cli as synth_cli
from slmkit.train import cli as train_cli

out = Console()
SHOW = {
    "data": data_cli.show,
    "synth": synth_cli.show,
    "train": train_cli.show,
    "distill": distill_cli.show,
    "eval": eval_cli.show,
}  # what each stage command prints after its one-line status


def _stage_cmd(
    stage: str,
    config: Path,
    sets,
    name=None,
    output_dir=None,
    base_model=None,
    max_steps=None,
    force: bool = False,
    log_format: str = "text",
    progress: bool = True,
    resume: bool = False,
) -> dict:
    """One stage under the pipeline's manifest. A stage the config does not list (`slm distill` on a config without
    distill in `stages`) runs as if it were listed, so a later `slm build` of that config finds it done."""
    from slmkit.pipeline import fingerprints, run_stage

    cfg = load_config(
        config, flag_overrides(sets, name=name, output_dir=output_dir, base_model=base_model, max_steps=max_steps)
    )
    if stage not in cfg.stages:
        cfg = cfg.model_copy(update={"stages": [s for s in STAGE_ORDER if s in (*cfg.stages, stage)]})
    if stage == "synth":
        synth_cli.require_recipes(cfg, config)
    run_dir = RunDir.of(cfg)
    setup_logging(log_format, run_dir.log_file)
    outcome = run_stage(cfg, run_dir, stage, fingerprints(cfg), force=force, resume=resume, show_progress=progress)
    out.print(f"[bold]{stage}[/]: {outcome.status} -> {run_dir.stage_dir(stage)}")
    if stage in SHOW:
        SHOW[stage](outcome.summary, out)
    return outcome.summary


def build(
    config: Path,
    force: bool = ForceOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, run nothing"),
    resume: bool = ResumeOpt,
    sets: Optional[list[str]] = SetOpt,
    name: Optional[str] = NameOpt,
    output_dir: Optional[str] = OutOpt,
    base_model: Optional[str] = ModelOpt,
    max_steps: Optional[int] = StepsOpt,
    log_format: str = LogFmtOpt,
    progress: bool = ProgOpt,
    fail_on_collapse: bool = FailCollapseOpt,
) -> None:
    """Run the config's stages ([synth ->] data -> train [-> distill] -> eval -> export) in runs/<name>/."""
    from slmkit.pipeline import build as run_build
    from slmkit.pipeline import plan

    cfg = load_config(
        config, flag_overrides(sets, name=name, output_dir=output_dir, base_model=base_model, max_steps=max_steps)
    )
    if dry_run:
        setup_logging(log_format)
        _print_plan(plan(cfg), log_format)
        return
    run_dir = RunDir.of(cfg)
    setup_logging(log_format, run_dir.log_file)
    outcomes = run_build(cfg, force=force, resume=resume, show_progress=progress)
    for o in outcomes:
        out.print(f"  {o.stage:<7} {o.status:<8} {o.seconds:6.1f} s")
    ev = next((o.summary for o in outcomes if o.stage == "eval"), None)
    if ev:
        eval_cli.show(ev, out)
    model = run_dir.shipped_model
    if model.is_dir():
        out.print(f"model: {model}\nchat with it: slm chat {run_dir}")
    else:
        out.print(f"no model in this build (stages: {', '.join(cfg.stages)}); outputs in {run_dir}")
    if ev and fail_on_collapse:
        eval_cli.fail_on_collapse(ev)


def _print_plan(p: dict, log_format: str) -> None:
    if log_format == "json":
        out.print_json(data=p)
        return
    for s in p["stages"]:
        out.print(f"  {s['stage']:<7} {s['action']}")
    if "synth" in p:
        out.print(
            f"synth: {p['synth']['calls']} teacher calls, {p['synth']['cached']} cached, "
            f"+ up to {p['synth']['more_at_most']} more depending on replies"
        )
    if "rows" in p:
        out.print(
            f"rows: {p['rows']} ({p['task']}), ~{p['train_rows_est']} train rows, ~{p['tokens_per_row']} tokens/row"
        )
        out.print(
            f"train: {p['train_steps']} steps, ~{p['train_tokens']} tokens, ~{p['train_tokens_per_s_est']} tok/s "
            f"on this machine -> ~{p['train_minutes_est']} min"
            + (" (before the recipe search picks the recipe)" if "search" in p else "")
        )
        if s := p.get("search"):
            final = "what it leaves" if s["final_minutes"] is None else f"at least {s['final_minutes']} min"
            out.print(
                f"recipe search: up to {s['trials_at_most']} trials in {s['search_minutes']} min, then the final "
                f"training of the best recipe in {final} (train.search.budget_minutes {s['budget_minutes']:g})"
            )
    else:
        out.print("rows: known after the synth stage has run")
    out.print(f"run dir: {p['run_dir']}")


def data(
    config: Path,
    force: bool = ForceOpt,
    sets: Optional[list[str]] = SetOpt,
    name: Optional[str] = NameOpt,
    output_dir: Optional[str] = OutOpt,
    log_format: str = LogFmtOpt,
) -> None:
    """Read, clean and split the data into runs/<name>/data/."""
    _stage_cmd("data", config, sets, name, output_dir, force=force, log_format=log_format, progress=False)


def synth(
    config: Path,
    dry_run: bool = typer.Option(False, "--dry-run", help="Count the calls, call nothing"),
    force: bool = ForceOpt,
    sets: Optional[list[str]] = SetOpt,
    name: Optional[str] = NameOpt,
    output_dir: Optional[str] = OutOpt,
    log_format: str = LogFmtOpt,
    progress: bool = ProgOpt,
) -> None:
    """A teacher model writes training rows (cot, amplify, qa_from_docs, respond, judge), cached and budgeted."""
    if dry_run:
        cfg = load_config(config, flag_overrides(sets, name=name, output_dir=output_dir))
        synth_cli.require_recipes(cfg, config)
        setup_logging(log_format)
        synth_cli.dry_run(cfg, log_format)
        return
    _stage_cmd("synth", config, sets, name, output_dir, force=force, log_format=log_format, progress=progress)


def train(
    config: Path,
    force: bool = ForceOpt,
    resume: bool = ResumeOpt,
    sets: Optional[list[str]] = SetOpt,
    name: Optional[str] = NameOpt,
    output_dir: Optional[str] = OutOpt,
    base_model: Optional[str] = ModelOpt,
    max_steps: Optional[int] = StepsOpt,
    log_format: str = LogFmtOpt,
    progress: bool = ProgOpt,
) -> None:
    """Fine-tune (LoRA or full) on the run's data."""
    _stage_cmd(
        "train", config, sets, name, output_dir, base_model, max_steps, force or resume, log_format, progress, resume
    )


def tune(
    config: Path,
    budget: Optional[str] = typer.Option(
        None,
        "--budget",
        help="Wall time for the search and the final training of its best recipe: 45m, 1h30m, 90s "
        "(default: train.search.budget_minutes; train.search.final_share of it is kept for the final training)",
    ),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="At most this many finished trials"),
    sets: Optional[list[str]] = SetOpt,
    name: Optional[str] = NameOpt,
    output_dir: Optional[str] = OutOpt,
    log_format: str = LogFmtOpt,
) -> None:
    """Search lr, epochs, LoRA r/alpha and train.balance within a time budget (Optuna); resumable; writes
    runs/<name>/tune/best.yaml (rerun it with `slm build`) and a table of the trials."""
    from slmkit.pipeline import require_upstream
    from slmkit.train.budget import parse_budget

    seconds = parse_budget(budget) if budget is not None else None
    cfg = load_config(config, flag_overrides(sets, name=name, output_dir=output_dir))
    run = RunDir.of(cfg)
    setup_logging(log_format, run.log_file)
    require_upstream(cfg, run, "train")  # the data stage done for this very config (its fingerprint), not any
    train_cli.run_tune(cfg, seconds, trials)


def distill(
    config: Path,
    force: bool = ForceOpt,
    resume: bool = ResumeOpt,
    sets: Optional[list[str]] = SetOpt,
    name: Optional[str] = NameOpt,
    output_dir: Optional[str] = OutOpt,
    log_format: str = LogFmtOpt,
    progress: bool = ProgOpt,
) -> None:
    """Distill the teacher into the student (online, offline cache, or on-policy) into runs/<name>/distill/."""
    _stage_cmd(
        "distill",
        config,
        sets,
        name,
        output_dir,
        force=force or resume,
        log_format=log_format,
        progress=progress,
        resume=resume,
    )


def eval_(
    config: Path,
    force: bool = ForceOpt,
    sets: Optional[list[str]] = SetOpt,
    name: Optional[str] = NameOpt,
    output_dir: Optional[str] = OutOpt,
    log_format: str = LogFmtOpt,
    progress: bool = ProgOpt,
    fail_on_collapse: bool = FailCollapseOpt,
) -> None:
    """Score base and trained model on the test split."""
    summary = _stage_cmd("eval", config, sets, name, output_dir, force=force, log_format=log_format, progress=progress)
    if fail_on_collapse:
        eval_cli.fail_on_collapse(summary)


def export(
    config: Path,
    force: bool = ForceOpt,
    sets: Optional[list[str]] = SetOpt,
    name: Optional[str] = NameOpt,
    output_dir: Optional[str] = OutOpt,
    log_format: str = LogFmtOpt,
) -> None:
    """Write the merged model folder with tokenizer, chat template and model card, and verify it."""
    _stage_cmd("export", config, sets, name, output_dir, force=force, log_format=log_format, progress=False)


def config_show(config: Optional[Path] = typer.Argument(None), sets: Optional[list[str]] = SetOpt) -> None:
    """Print the merged config (defaults < YAML < env SLM_* < flags), secrets redacted."""
    import yaml

    from slmkit.config import redact

    cfg = load_config(config, flag_overrides(sets))
    sys.stdout.write(yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False, width=1_000_000))


def models_list() -> None:
    """Finished runs: name, base model, headline metric, path."""
    from rich.table import Table

    from slmkit.runs import list_models

    table = Table("name", "base model", "metrics (trained)", "created", "path")
    for m in list_models():
        trained = m["metrics"].get("trained", {})
        shown = ", ".join(f"{k}={v:.3f}" for k, v in trained.items() if k != "n")
        table.add_row(m["name"], m["base_model"], shown or "-", m["created"], m["path"])
    out.print(table)


def models_show(name: str) -> None:
    """Everything the registry knows about one model, as JSON."""
    from slmkit.runs import get_model

    entry = get_model(name)
    if entry is None:
        raise SlmError(f"no model named '{name}' in the registry", "`slm models list` shows the names")
    out.print_json(data=entry)


def doctor(
    reprobe: bool = typer.Option(False, "--reprobe", help="Time this CPU's fp32 and bf16 matmuls again"),
) -> None:
    """Device, dtype choice (measured on CPU), cores, memory, library versions, and training's speed choices."""
    from slmkit import speed_probe
    from slmkit.hardware import detect, versions
    from slmkit.train.speed import plan_lines

    if reprobe:
        speed_probe.probe(reprobe=True)
    hw = detect()
    lines = {**hw.as_dict(), **versions(), **plan_lines(hw.device)}
    if hw.device == "cpu":
        result = speed_probe.probe()
        when = result.get("measured_at", "now")
        lines |= {
            "cpu_probe": f"{result['key']['cpu']}, {result['key']['cores']} cores, measured {when} "
            f"({speed_probe.cache_path()})",
            "cpu_probe_train": speed_probe.reason(result, "train"),
            "cpu_probe_decode": speed_probe.reason(result, "decode"),
            "cpu_probe_attention": speed_probe.reason(result, "attention") + " (for bf16 training)",
        }
    for k, v in lines.items():
        out.print(f"{k:<23} {v}", soft_wrap=True)


class _DefaultGroup(TyperGroup):
    """`slm data CONFIG` runs the stage (the group's `run` command); `slm data inspect ...` is a sub-command."""

    def parse_args(self, ctx, args):  # noqa: ANN001 - click's signature
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


# The whole command line: (group, name, function). Group None is `slm NAME`; a group is `slm GROUP NAME`.
GROUPS = {
    "data": ("Prepare the data (`slm data CONFIG`) or inspect it (`slm data inspect PATH_OR_RUN`).", _DefaultGroup),
    "config": ("Inspect configuration.", None),
    "models": ("The local registry of finished runs.", None),
}
COMMANDS = [
    (None, "build", build),
    ("data", "run", data),
    ("data", "inspect", data_cli.data_inspect),
    (None, "index", data_cli.index),
    (None, "synth", synth),
    (None, "train", train),
    (None, "tune", tune),
    (None, "distill", distill),
    (None, "distill-cache", distill_cli.distill_cache),
    (None, "prune", distill_cli.prune),
    (None, "eval", eval_),
    (None, "eval-models", eval_cli.eval_models),
    (None, "export", export),
    (None, "export-model", export_cli.export_model),
    (None, "serve", serve_cli.serve),
    (None, "chat", serve_cli.chat),
    ("config", "show", config_show),
    ("models", "list", models_list),
    ("models", "show", models_show),
    (None, "doctor", doctor),
]


def make_app() -> typer.Typer:
    root = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        help="slmkit: turn your data into a small, specialised language model.",
    )
    groups = {}
    for group, (help_, cls) in GROUPS.items():
        groups[group] = typer.Typer(no_args_is_help=True, help=help_, **({"cls": cls} if cls else {}))
        root.add_typer(groups[group], name=group)
    for group, name, fn in COMMANDS:
        (groups[group] if group else root).command(name)(fn)
    return root


app = make_app()


def main(argv: list[str] | None = None) -> None:
    run_app(app, argv, "slm")


if __name__ == "__main__":
    main()
