"""Model card (README.md with HF metadata header) for an exported model."""

from __future__ import annotations

import json
from pathlib import Path

from slmkit.eval import metrics_table_md
from slmkit.export.licence import card_section, classify
from slmkit.models import model_license, resolve_model
from slmkit.runs import RunDir


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _verify_lines(verify: dict) -> list[str]:
    logits = verify.get("logits", verify)
    lines = [
        f"- max |logit difference| against the source model on {logits.get('prompts', 3)} fixed prompts: "
        f"{logits.get('max_abs_diff')}"
    ]
    if "top1_agreement" in logits:
        lines.append(
            f"- same next token as the source on {logits['top1_agreement']:.0%} of them; "
            f"tokenizer ids match: {logits.get('tokenizer_match')}"
        )
    if m := verify.get("metric"):
        lines.append(
            f"- {m['metric']} on {m['n']} eval examples: source {m['source']:.4f}, this export {m['export']:.4f} "
            f"(drop {m['drop_points']:.1f} points, allowed {verify.get('margin_points')})"
        )
    if im := verify.get("imatrix"):
        lines.append(
            f"- warning: {im['warning']}"
            if "warning" in im
            else f"- importance matrix from {im['rows']} {im['split']}-split rows (sha256 `{im['sha256'][:16]}`)"
        )
    if auto := verify.get("auto"):
        tried = ", ".join(
            f"{t['recipe']} ({t['bytes'] / 1e6:.1f} MB"
            + (f", {_points(t['calibration']['drop_points'])} points" if "calibration" in t else "")
            + (
                ", kept"
                if t["recipe"] == auto["chosen"]
                else ", failed the test check"
                if "rejected" in t
                else ", rejected"
            )
            + ")"
            for t in auto["tried"]
        )
        lines.append(f"- recipe `{auto['chosen']}`, chosen by `quant: auto` (smallest first): {tried}")
        if auto.get("calibration_rows"):
            lines.append(
                f"- chosen on {auto['calibration_rows']} {auto['calibration_split']}-split rows "
                f"(sha256 `{auto['calibration_sha256'][:16]}`), drops shown as points lost there"
            )
        if auto.get("warning"):
            lines.append(f"- warning: {auto['warning']}")
    return lines


def _points(drop: float) -> str:
    """A drop as a signed change: 4.7 -> "-4.7", a gain -> "+1.6", none -> "0.0"."""
    return f"{-drop:+.1f}" if round(drop, 1) else "0.0"


def render_card(run_dir: Path, cfg, verify: dict, export_format: str = "merged", licence: dict | None = None) -> str:
    run = RunDir(run_dir)
    data = _read(run.manifest("data")).get("summary", {})
    train = _read(run.manifest("train")).get("summary", {})
    metrics = _read(run.eval_metrics)
    base = cfg.model.base_model
    base_license = model_license(base, resolve_model(base))
    data_license = data.get("license") or "unknown"
    lines = [
        "---",
        f"base_model: {'HuggingFaceTB/SmolLM2-135M-Instruct' if base.lower() in ('default', 'smollm2-135m-instruct') else base}",
        f"license: {base_license}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [slmkit]",
        "---",
        "",
        f"# {cfg.name}",
        "",
        f"A small model fine-tuned with slmkit from `{base}` ({cfg.train.method}"
        + (
            f", LoRA r={cfg.train.lora.r}, alpha={cfg.train.lora.alpha}, merged into the weights"
            if cfg.train.method == "lora"
            else ""
        )
        + ").",
        "",
        "## Base model",
        f"- `{base}`, licence: {base_license}",
        "",
        "## Training data",
        f"- source: `{data.get('source', 'unknown')}`",
        f"- sha256: `{data.get('source_sha256', 'unknown')}`",
        f"- licence: {data_license}",
        f"- rows: {data.get('rows', {})}, task: {data.get('task', 'unknown')}",
        "",
        "## Training recipe",
        f"- steps: {train.get('steps')}, epochs: {cfg.train.epochs}, batch size: {cfg.train.batch_size}, lr: {cfg.train.lr}, "
        f"max_seq_len: {cfg.train.max_seq_len}, loss on assistant tokens only",
        f"- final train loss: {train.get('final_loss')}, val loss: {train.get('val_loss')}, device: {train.get('device')}, "
        f"dtype: {train.get('dtype')}, {train.get('seconds')} s",
        "",
        "## Evaluation (held-out test split)",
        metrics_table_md(metrics) if metrics.get("models") else "not evaluated",
        "",
        f"## Export check ({export_format})",
        *_verify_lines(verify),
        "",
        *(card_section(licence) if licence else []),
        "## Intended use and limits",
        f"- Intended for the narrow task in its training data ({data.get('task', 'unknown')}); outside it, expect the "
        "base model's behaviour or worse.",
        "- A 135M-class model makes mistakes: check its outputs where errors matter.",
    ]
    if classify(data_license) != "ok":
        lines.append(f"- Data licence is {data_license}: check it allows your use before shipping this model.")
    return "\n".join(lines) + "\n"
