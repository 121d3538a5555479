"""The `slm` command: one sub-command per stage, plus build, chat, config, models and doctor."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from slmkit.errors import SlmError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="slmkit: turn your data into a small, specialised language model.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configuration.")
models_app = typer.Typer(no_args_is_help=True, help="The local registry of finished runs.")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
console = Console(stderr=True)
out = Console()
log = logging.getLogger("slmkit")

# Shared options, declared once.
SetOpt = typer.Option(None, "--set", help="Override any config field: --set train.lr=1e-4 (repeatable)")
NameOpt = typer.Option(None, "--name", help="Run name (folder under output_dir)")
OutOpt = typer.Option(None, "--output-dir", help="Where run folders go")
ModelOpt = typer.Option(None, "--base-model", help="'default', a local HF folder or a hub id")
StepsOpt = typer.Option(None, "--max-steps", help="Stop training after this many optimizer steps")
ForceOpt = typer.Option(False, "--force", help="Rerun stages even if their inputs are unchanged")
LogFmtOpt = typer.Option("text", "--log-format", help="text or json (one JSON object per line)")
ProgOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars")


def _overrides(sets: list[str] | None, name, output_dir, base_model, max_steps) -> dict:
    """CLI flags are the top layer of the precedence chain: named flags, then --set pairs."""
    from slmkit.config import _deep_merge, cli_overrides

    named = {k: v for k, v in {"name": name, "output_dir": output_dir}.items() if v is not None}
    if base_model is not None:
        named["model"] = {"base_model": base_model}
    if max_steps is not None:
        named["train"] = {"max_steps": max_steps}
    return _deep_merge(named, cli_overrides(sets or []))


def _load(config: Path | None, sets, name=None, output_dir=None, base_model=None, max_steps=None):
    from slmkit.config import load_config

    return load_config(config, _overrides(sets, name, output_dir, base_model, max_steps))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name,
                           "message": record.getMessage()})


def setup_logging(log_format: str, run_dir: Path | None = None) -> None:
    if log_format not in ("text", "json"):
        raise SlmError(f"--log-format {log_format!r} is not text or json", "use --log-format text or --log-format json")
    root = logging.getLogger("slmkit")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    root.propagate = False
    if log_format == "json":
        h: logging.Handler = logging.StreamHandler(sys.stderr)
        h.setFormatter(_JsonFormatter())
    else:
        from rich.logging import RichHandler

        h = RichHandler(console=console, show_path=False, show_time=False)
    root.addHandler(h)
    if run_dir is not None:
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "logs" / "slm.log")
        fh.setFormatter(_JsonFormatter() if log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(fh)
    for noisy in ("transformers", "accelerate", "peft", "datasets"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # weight-loading bars; slmkit shows its own progress for long work
    warnings.filterwarnings("ignore", category=FutureWarning)


def _stage_cmd(stage: str, config: Path, sets, name, output_dir, base_model, max_steps, force, log_format, progress,
               resume: bool = False) -> None:
    from slmkit.pipeline import fingerprints, run_dir_of, run_stage

    cfg = _load(config, sets, name, output_dir, base_model, max_steps)
    run_dir = run_dir_of(cfg)
    setup_logging(log_format, run_dir)
    outcome = run_stage(cfg, run_dir, stage, fingerprints(cfg), force=force, resume=resume, show_progress=progress)
    if stage == "eval" and outcome.summary.get("models"):
        from slmkit.eval.evaluate import print_table

        print_table(outcome.summary, out)
    out.print(f"[bold]{stage}[/]: {outcome.status} -> {run_dir / stage}")


@app.command()
def build(config: Path, force: bool = ForceOpt, dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, run nothing"),
          resume: bool = typer.Option(False, "--resume", help="Continue training from the newest complete checkpoint"),
          sets: Optional[list[str]] = SetOpt, name: Optional[str] = NameOpt, output_dir: Optional[str] = OutOpt,
          base_model: Optional[str] = ModelOpt, max_steps: Optional[int] = StepsOpt, log_format: str = LogFmtOpt,
          progress: bool = ProgOpt) -> None:
    """Run the config's stages ([synth ->] data -> train [-> distill] -> eval -> export) in runs/<name>/."""
    from slmkit.pipeline import build as run_build, plan, run_dir_of

    cfg = _load(config, sets, name, output_dir, base_model, max_steps)
    if dry_run:
        setup_logging(log_format)
        p = plan(cfg)
        if log_format == "json":
            out.print_json(data=p)
            return
        for s in p["stages"]:
            out.print(f"  {s['stage']:<7} {s['action']}")
        if "synth" in p:
            out.print(f"synth: {p['synth']['calls']} teacher calls, {p['synth']['cached']} cached, "
                      f"+ up to {p['synth']['more_at_most']} more depending on replies")
        if "rows" in p:
            out.print(f"rows: {p['rows']} ({p['task']}), ~{p['train_rows_est']} train rows, ~{p['tokens_per_row']} tokens/row")
            out.print(f"train: {p['train_steps']} steps, ~{p['train_tokens']} tokens, ~{p['train_tokens_per_s_est']} tok/s "
                      f"on this machine -> ~{p['train_minutes_est']} min")
        else:
            out.print("rows: known after the synth stage has run")
        out.print(f"run dir: {p['run_dir']}")
        return
    run_dir = run_dir_of(cfg)
    setup_logging(log_format, run_dir)
    outcomes = run_build(cfg, force=force, resume=resume, show_progress=progress)
    for o in outcomes:
        out.print(f"  {o.stage:<7} {o.status:<8} {o.seconds:6.1f} s")
    ev = next((o.summary for o in outcomes if o.stage == "eval"), None)
    if ev and ev.get("models"):
        from slmkit.eval.evaluate import print_table

        print_table(ev, out)
    from slmkit.pipeline import final_model_dir

    final = run_dir / "export" / "merged" if (run_dir / "export" / "merged").is_dir() else final_model_dir(cfg, run_dir)
    out.print(f"model: {final}\nchat with it: slm chat {run_dir}")


@app.command()
def data(config: Path, force: bool = ForceOpt, sets: Optional[list[str]] = SetOpt, name: Optional[str] = NameOpt,
         output_dir: Optional[str] = OutOpt, log_format: str = LogFmtOpt) -> None:
    """Read, clean and split the data into runs/<name>/data/."""
    _stage_cmd("data", config, sets, name, output_dir, None, None, force, log_format, False)


@app.command()
def train(config: Path, force: bool = ForceOpt, resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint"),
          sets: Optional[list[str]] = SetOpt, name: Optional[str] = NameOpt, output_dir: Optional[str] = OutOpt,
          base_model: Optional[str] = ModelOpt, max_steps: Optional[int] = StepsOpt, log_format: str = LogFmtOpt,
          progress: bool = ProgOpt) -> None:
    """Fine-tune (LoRA or full) on the run's data."""
    _stage_cmd("train", config, sets, name, output_dir, base_model, max_steps, force or resume, log_format, progress, resume)


@app.command("eval")
def eval_(config: Path, force: bool = ForceOpt, sets: Optional[list[str]] = SetOpt, name: Optional[str] = NameOpt,
          output_dir: Optional[str] = OutOpt, log_format: str = LogFmtOpt, progress: bool = ProgOpt) -> None:
    """Score base and trained model on the test split."""
    _stage_cmd("eval", config, sets, name, output_dir, None, None, force, log_format, progress)


@app.command()
def export(config: Path, force: bool = ForceOpt, sets: Optional[list[str]] = SetOpt, name: Optional[str] = NameOpt,
           output_dir: Optional[str] = OutOpt, log_format: str = LogFmtOpt) -> None:
    """Write the merged model folder with tokenizer, chat template and model card, and verify it."""
    _stage_cmd("export", config, sets, name, output_dir, None, None, force, log_format, False)


@app.command()
def chat(target: str = typer.Argument(..., metavar="RUN_OR_MODEL"),
         prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Answer one message and exit"),
         system: Optional[str] = typer.Option(None, "--system", help="System message"),
         max_new_tokens: int = typer.Option(256, "--max-new-tokens"), temperature: float = typer.Option(0.0, "--temperature")) -> None:
    """Streaming terminal chat with a run folder, export, registered name, or model."""
    from slmkit.chat import chat_loop, load_engine_for_chat, stream_reply

    setup_logging("text")
    engine = load_engine_for_chat(target)
    try:
        if prompt is not None:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            stream_reply(engine, messages, max_new_tokens, temperature)
        else:
            chat_loop(engine, system, max_new_tokens, temperature)
    finally:
        engine.stop()


@config_app.command("show")
def config_show(config: Optional[Path] = typer.Argument(None), sets: Optional[list[str]] = SetOpt) -> None:
    """Print the merged config (defaults < YAML < env SLM_* < flags), secrets redacted."""
    import yaml

    from slmkit.config import redact

    cfg = _load(config, sets)
    sys.stdout.write(yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False, width=1_000_000))


@models_app.command("list")
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


@models_app.command("show")
def models_show(name: str) -> None:
    """Everything the registry knows about one model, as JSON."""
    from slmkit.runs import get_model

    entry = get_model(name)
    if entry is None:
        raise SlmError(f"no model named '{name}' in the registry", "`slm models list` shows the names")
    out.print_json(data=entry)


@app.command()
def doctor() -> None:
    """Device, dtype choice, cores, memory, library versions, and the speed choices training would make here."""
    from slmkit.hardware import detect, versions
    from slmkit.train.speed import plan_lines

    hw = detect()
    for k, v in {**hw.as_dict(), **versions(), **plan_lines(hw.device)}.items():
        out.print(f"{k:<23} {v}", soft_wrap=True)


# Commands that live beside their stage: each module's register(app) adds its sub-commands.
EXTENSIONS = ("slmkit.data.cli", "slmkit.synth.cli", "slmkit.train.distill_cli", "slmkit.eval.cli", "slmkit.export.cli",
              "slmkit.serve.cli")
for _module in EXTENSIONS:
    importlib.import_module(_module).register(app)


def main() -> None:
    try:
        app(standalone_mode=False)
    except SlmError as e:
        console.print(f"[bold red]error:[/] {e.message}" + (f"  [dim]hint: {e.hint}[/]" if e.hint else ""),
                      highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # click's usage errors keep their own message and exit code
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
