"""`slm distill CONFIG`, `slm distill-cache CONFIG`, `slm prune MODEL --out DIR`: call `register(app)` from cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from slmkit.errors import SlmError

out = Console()


def load_distill_config(config: Path, sets: list[str] | None, name: str | None = None, output_dir: str | None = None):
    """(BuildConfig, DistillConfig) with the usual precedence: defaults < YAML < env SLM_* < --set."""
    from slmkit.config import _deep_merge, cli_overrides, load_config

    named = {k: v for k, v in {"name": name, "output_dir": output_dir}.items() if v is not None}
    cfg = load_config(config, _deep_merge(named, cli_overrides(sets or [])))
    return cfg, cfg.distill


def _stage(cfg, dcfg, stage_fn, label: str, log_format: str, **kw) -> dict:
    from slmkit.cli import setup_logging
    from slmkit.pipeline import fingerprints, run_dir_of
    from slmkit.runs import fingerprint, stage_manifest

    run_dir = run_dir_of(cfg)
    setup_logging(log_format, run_dir)
    fp = fingerprints(cfg)
    dump = dcfg.model_dump(mode="json")
    inputs = {"data": fp["data"], "train": fp["train"]} if dcfg.teacher == "train" else {"data": fp["data"]}
    with stage_manifest(run_dir, label, fingerprint(label, dump, inputs), dump, inputs) as summary:
        summary.update(stage_fn(cfg, run_dir, dcfg, **kw))
    out.print(f"[bold]{label}[/]: done -> {run_dir / 'distill'}")
    return summary


def register(app: typer.Typer) -> None:
    """Add `distill`, `distill-cache` and `prune` to the `slm` app."""
    SetOpt = typer.Option(None, "--set", help="Override any config field: --set distill.mode=offline (repeatable)")

    @app.command("distill")
    def distill_cmd(config: Path, resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint"),
                    sets: Optional[list[str]] = SetOpt, name: Optional[str] = typer.Option(None, "--name"),
                    output_dir: Optional[str] = typer.Option(None, "--output-dir"),
                    log_format: str = typer.Option("text", "--log-format"),
                    progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
        """Distill the teacher into the student (online, offline cache, or on-policy) into runs/<name>/distill/."""
        from slmkit.train.distill import distill

        cfg, dcfg = load_distill_config(config, sets, name, output_dir)
        s = _stage(cfg, dcfg, distill, "distill", log_format, resume=resume, show_progress=progress)
        out.print(f"kd {s['kd_first']:.4f} -> {s['kd_last']:.4f} in {s['steps']} steps ({s['mode']}, {s['loss_fn']})"
                  if s.get("kd_first") is not None and s["kd_first"] == s["kd_first"] else f"{s['steps']} steps")

    @app.command("distill-cache")
    def distill_cache_cmd(config: Path, overwrite: bool = typer.Option(False, "--overwrite", help="Discard a cache built for another teacher/data/k"),
                          sets: Optional[list[str]] = SetOpt, name: Optional[str] = typer.Option(None, "--name"),
                          output_dir: Optional[str] = typer.Option(None, "--output-dir"),
                          log_format: str = typer.Option("text", "--log-format"),
                          progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
        """Run the teacher once over the training split and store top-k log-probs (resumable)."""
        from slmkit.pipeline import run_dir_of
        from slmkit.train.distill import build_teacher_cache

        cfg, dcfg = load_distill_config(config, sets, name, output_dir)
        from slmkit.cli import setup_logging

        setup_logging(log_format, run_dir_of(cfg))
        s = build_teacher_cache(cfg, run_dir_of(cfg), dcfg, overwrite=overwrite, show_progress=progress)
        out.print(f"[bold]distill-cache[/]: {s['rows']} rows, {s['tokens']} tokens, {s['bytes_per_token']} bytes/token "
                  f"(k={s['k']}, {s['shards']} shards)")

    @app.command("prune")
    def prune_cmd(model: str = typer.Argument(..., help="teacher: 'default', a HF folder, or a slmkit train/final folder"),
                  out_dir: Path = typer.Option(..., "--out", help="folder for the pruned model"),
                  layers: Optional[int] = typer.Option(None, "--layers", help="decoder layers to KEEP"),
                  ratio: Optional[float] = typer.Option(None, "--ratio", help="share of decoder layers to DROP, e.g. 0.5"),
                  mlp_ratio: Optional[float] = typer.Option(None, "--mlp-ratio", help="share of MLP channels to drop"),
                  data: Optional[Path] = typer.Option(None, "--data", help="calibration: JSONL (messages/text) or text file"),
                  trust_remote_code: bool = typer.Option(False, "--trust-remote-code")) -> None:
        """Make a smaller student from MODEL by dropping its least important layers and/or MLP channels."""
        from slmkit.cli import setup_logging
        from slmkit.train.prune import prune, read_calibration

        setup_logging("text")
        if layers is None and ratio is None and mlp_ratio is None:
            raise SlmError("nothing to prune", "pass --layers N (layers to keep), --ratio R (share to drop) or --mlp-ratio R")
        texts = None
        if data is not None:
            texts = read_calibration(data, _tokenizer(model, trust_remote_code))
        s = prune(model, out_dir, layers, ratio, mlp_ratio, texts, trust_remote_code)
        out.print(f"[bold]prune[/]: {s['layers_before']} -> {s['layers_after']} layers (dropped {s['dropped_layers']}), "
                  f"MLP {s['intermediate_size_before']} -> {s['intermediate_size_after']}, "
                  f"{s['params_before'] / 1e6:.1f}M -> {s['params_after'] / 1e6:.1f}M params -> {out_dir}")


def _tokenizer(model: str, trust_remote_code: bool):
    from slmkit.train.prune import tokenizer_of

    return tokenizer_of(model, trust_remote_code)
