"""Command-line options shared by `slm`'s commands, declared once (typer.Option objects are reusable defaults)."""

from __future__ import annotations

import typer

SetOpt = typer.Option(None, "--set", help="Override any config field: --set train.lr=1e-4 (repeatable)")
NameOpt = typer.Option(None, "--name", help="Run name (folder under output_dir)")
OutOpt = typer.Option(None, "--output-dir", help="Where run folders go")
ModelOpt = typer.Option(None, "--base-model", help="'default', a local HF folder or a hub id")
StepsOpt = typer.Option(None, "--max-steps", help="Stop training after this many optimizer steps")
ForceOpt = typer.Option(False, "--force", help="Rerun stages even if their inputs are unchanged")
ResumeOpt = typer.Option(False, "--resume", help="Continue training from the newest complete checkpoint")
LogFmtOpt = typer.Option("text", "--log-format", help="text or json (one JSON object per line)")
ProgOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars")
