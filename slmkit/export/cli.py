"""The export stage's command: `slm export-model RUN --format merged|gguf|onnx|pt2 [--quant Q]`, one format of a
finished run, verified after writing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slmkit.errors import SlmError
from slmkit.export.gguf import QUANTS as GGUF_QUANTS
from slmkit.export.onnx import QUANTS as ONNX_QUANTS
from slmkit.runs import RunDir

FORMATS = ("merged", "gguf", "onnx", "pt2")


def _run_config(run: Path):
    from slmkit.config import load_config

    if not RunDir(run).config_file.is_file():
        raise SlmError(f"{run} is not a run folder (no config.yaml)", "pass runs/<name>, the folder `slm build` made")
    cfg = load_config(RunDir(run).config_file, environ={})
    final = RunDir.of_config(cfg, run).final_model
    if not final.is_dir():
        raise SlmError(
            f"run {run} has no finished model ({final.relative_to(run)})", f"run `slm {final.parent.name} CONFIG` first"
        )
    return cfg


def export_model(
    run: Path = typer.Argument(..., help="Run folder (runs/<name>)"),
    fmt: str = typer.Option("merged", "--format", "-f", help="merged, gguf, onnx or pt2"),
    quant: Optional[list[str]] = typer.Option(
        None,
        "--quant",
        "-q",
        help=f"gguf: auto, {', '.join(GGUF_QUANTS)}; onnx: auto, {', '.join(ONNX_QUANTS)} (repeatable; auto keeps the "
        "smallest 4-bit recipe within export.metric_margin_4bit; q4_k_m, q5_k_m, iq4_nl need slmkit[llamacpp])",
    ),
    margin: Optional[float] = typer.Option(
        None, "--metric-margin", help="Max metric drop in points before the export fails"
    ),
    examples: Optional[int] = typer.Option(
        None, "--verify-examples", help="Eval rows for the metric check (0 skips it)"
    ),
) -> None:
    """Export a finished run to one format, then reload it with an independent reader and verify it."""
    from rich.console import Console

    from slmkit.export.stage import export_one
    from slmkit.log import setup_logging

    if fmt not in FORMATS:
        raise SlmError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}", "e.g. --format gguf --quant q8_0")
    run = run.expanduser().resolve()
    cfg = _run_config(run)
    setup_logging("text", RunDir(run).log_file)
    overrides = {
        k: v
        for k, v in {"metric_margin": margin, "metric_margin_4bit": margin, "verify_examples": examples}.items()
        if v is not None
    }
    summary = export_one(run, cfg, fmt, quant or None, **overrides)
    out = Console()
    if fmt == "merged":
        out.print(
            f"[bold]merged[/]: {summary['path']} ({summary['bytes'] / 1e6:.1f} MB), "
            f"max |logit diff| {summary['verify'].get('max_abs_diff'):.2e}"
        )
    for name, entry in summary["formats"].items():
        v = entry["verify"]
        metric = v.get("metric")
        shown = f", {metric['metric']} {metric['source']:.3f} -> {metric['export']:.3f}" if metric else ""
        out.print(
            f"[bold]{name}[/]: {entry['path']} ({entry['bytes'] / 1e6:.1f} MB), "
            f"max |logit diff| {v['logits']['max_abs_diff']:.3g}{shown}"
        )
    for w in summary["licence"]["warnings"]:
        out.print(f"[bold red]licence warning:[/] {w}")
