"""The distill stage's commands: `slm distill-cache CONFIG`, `slm prune MODEL --out DIR`, and what `slm distill`
prints when it finishes (the stage itself runs through the pipeline, like every stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from slmkit.config import flag_overrides, load_config
from slmkit.errors import SlmError
from slmkit.log import setup_logging
from slmkit.options import LogFmtOpt, NameOpt, OutOpt, ProgOpt, SetOpt
from slmkit.runs import RunDir

out = Console()


def show(summary: dict, console: Console = out) -> None:
    """After `slm distill`: the KD loss from first to last logged step."""
    s = summary
    if s.get("kd_first") is not None and s["kd_first"] == s["kd_first"]:  # NaN when no KD step was logged
        console.print(
            f"kd {s['kd_first']:.4f} -> {s['kd_last']:.4f} in {s['steps']} steps ({s['mode']}, {s['loss_fn']})"
        )
    elif "steps" in s:
        console.print(f"{s['steps']} steps")


def distill_cache(
    config: Path,
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard a cache built for another teacher/data/k"),
    sets: Optional[list[str]] = SetOpt,
    name: Optional[str] = NameOpt,
    output_dir: Optional[str] = OutOpt,
    log_format: str = LogFmtOpt,
    progress: bool = ProgOpt,
) -> None:
    """Run the teacher once over the training split and store top-k log-probs (resumable)."""
    from slmkit.distill.stage import build_teacher_cache

    cfg = load_config(config, flag_overrides(sets, name=name, output_dir=output_dir))
    run = RunDir.of(cfg)
    setup_logging(log_format, run.log_file)
    s = build_teacher_cache(cfg, run.root, cfg.distill, overwrite=overwrite, show_progress=progress)
    out.print(
        f"[bold]distill-cache[/]: {s['rows']} rows, {s['tokens']} tokens, {s['bytes_per_token']} bytes/token "
        f"(k={s['k']}, {s['shards']} shards)"
    )


def prune(
    model: str = typer.Argument(..., help="teacher: 'default', a HF folder, or a slmkit train/final folder"),
    out_dir: Path = typer.Option(..., "--out", help="folder for the pruned model"),
    layers: Optional[int] = typer.Option(None, "--layers", help="decoder layers to KEEP"),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="share of decoder layers to DROP, e.g. 0.5"),
    mlp_ratio: Optional[float] = typer.Option(None, "--mlp-ratio", help="share of MLP channels to drop"),
    data: Optional[Path] = typer.Option(None, "--data", help="calibration: JSONL (messages/text) or text file"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
) -> None:
    """Make a smaller student from MODEL by dropping its least important layers and/or MLP channels."""
    setup_logging("text")
    if layers is None and ratio is None and mlp_ratio is None:
        raise SlmError(
            "nothing to prune", "pass --layers N (layers to keep), --ratio R (share to drop) or --mlp-ratio R"
        )
    from slmkit.distill.prune import prune as prune_model
    from slmkit.distill.prune import read_calibration, tokenizer_of

    texts = read_calibration(data, tokenizer_of(model, trust_remote_code)) if data is not None else None
    s = prune_model(model, out_dir, layers, ratio, mlp_ratio, texts, trust_remote_code)
    out.print(
        f"[bold]prune[/]: {s['layers_before']} -> {s['layers_after']} layers (dropped {s['dropped_layers']}), "
        f"MLP {s['intermediate_size_before']} -> {s['intermediate_size_after']}, "
        f"{s['params_before'] / 1e6:.1f}M -> {s['params_after'] / 1e6:.1f}M params -> {out_dir}"
    )
