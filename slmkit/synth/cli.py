"""`slm synth CONFIG [--dry-run]`: the teacher writes training data into runs/<name>/synth/rows.jsonl.

The same stage runs inside `slm build` when `stages` lists `synth` (see slmkit/pipeline.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slmkit.errors import SlmError


def load(config: Path, overrides: dict):
    """(synth section, the build config around it): defaults < YAML < env SLM_* < overrides."""
    from slmkit.config import load_config

    cfg = load_config(config, overrides)
    if not cfg.synth.recipes:
        raise SlmError(f"{config}: the 'synth' section has no recipes", "add synth: {teacher: {...}, recipes: [...]}")
    return cfg.synth, cfg


def register(app: typer.Typer) -> None:
    """Add `synth` to the `slm` app."""
    from slmkit.cli import LogFmtOpt, NameOpt, OutOpt, ProgOpt, SetOpt, _overrides, out, setup_logging

    @app.command()
    def synth(config: Path, dry_run: bool = typer.Option(False, "--dry-run", help="Count the calls, call nothing"),
              sets: Optional[list[str]] = SetOpt, name: Optional[str] = NameOpt, output_dir: Optional[str] = OutOpt,
              log_format: str = LogFmtOpt, progress: bool = ProgOpt) -> None:
        """A teacher model writes training rows (cot, amplify, qa_from_docs, respond, judge), cached and budgeted."""
        from slmkit.pipeline import run_dir_of
        from slmkit.runs import stage_manifest
        from slmkit.synth.run import input_hashes, plan, synth_fingerprint, synthesize

        synth_cfg, cfg = load(config, _overrides(sets, name, output_dir, None, None))
        run_dir = run_dir_of(cfg)
        config_dir = Path(cfg.config_dir or ".")
        if dry_run:
            setup_logging(log_format)
            p = plan(synth_cfg, run_dir, config_dir)
            if log_format == "json":
                out.print_json(data=p)
                return
            for r in p["recipes"]:
                out.print(f"  {r['recipe']:<14} {r['calls']:>5} calls  {r['cached']:>5} cached  "
                          f"+{r['more_at_most']} at most  ~{r['rows_expected']} rows", soft_wrap=True)
            out.print(f"total: {p['calls']} calls, {p['cached']} cached, {p['calls'] - p['cached']} to make, "
                      f"+ up to {p['more_at_most']} more depending on replies (retries, judge, batches)", soft_wrap=True)
            out.print(f"cache: {p['cache']}", soft_wrap=True, highlight=False)
            return
        setup_logging(log_format, run_dir)
        inputs = input_hashes(synth_cfg, config_dir)  # hashed once: files and any ChromaDB collection are read in full
        fp = synth_fingerprint(synth_cfg, config_dir, inputs)
        with stage_manifest(run_dir, "synth", fp, synth_cfg.model_dump(mode="json"), inputs) as summary:
            summary.update(synthesize(synth_cfg, run_dir, config_dir, show_progress=progress))
        s = summary["stats"]
        for label, r in summary["recipes"].items():
            out.print(f"  {label:<14} {r['rows']:>5} rows  dropped {r['dropped'] or '-'}", soft_wrap=True)
        out.print(f"calls: {s['calls']} made, {s['cached']} cached, {s['retries']} retries, failed {s['failed'] or '-'}; "
                  f"tokens {s['prompt_tokens']} in / {s['completion_tokens']} out; cost ${s['cost_usd']:.4f}", soft_wrap=True)
        if summary["stopped"]:
            out.print(f"[yellow]stopped early: {summary['stopped']}[/] (rerun to continue; cached calls are free)")
        out.print(f"[bold]synth[/]: {summary['rows']} rows -> {summary['path']}", soft_wrap=True)
