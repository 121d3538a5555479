"""Model card (README.md with HF metadata header) for an exported model."""

from __future__ import annotations

import json
from pathlib import Path

from slmkit.eval.evaluate import metrics_table_md
from slmkit.models import model_license, resolve_model


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def render_card(run_dir: Path, cfg, verify: dict) -> str:
    run_dir = Path(run_dir)
    data = _read(run_dir / "data" / "manifest.json").get("summary", {})
    train = _read(run_dir / "train" / "manifest.json").get("summary", {})
    metrics = _read(run_dir / "eval" / "metrics.json")
    base = cfg.model.base_model
    base_license = model_license(base, resolve_model(base))
    data_license = data.get("license") or "unknown"
    lines = [
        "---", f"base_model: {'HuggingFaceTB/SmolLM2-135M-Instruct' if base.lower() in ('default', 'smollm2-135m-instruct') else base}",
        f"license: {base_license}", "library_name: transformers", "pipeline_tag: text-generation", "tags: [slmkit]", "---", "",
        f"# {cfg.name}", "",
        f"A small model fine-tuned with slmkit from `{base}` ({cfg.train.method}"
        + (f", LoRA r={cfg.train.lora.r}, alpha={cfg.train.lora.alpha}, merged into the weights" if cfg.train.method == "lora" else "") + ").",
        "", "## Base model", f"- `{base}`, licence: {base_license}", "",
        "## Training data",
        f"- source: `{data.get('source', 'unknown')}`", f"- sha256: `{data.get('source_sha256', 'unknown')}`",
        f"- licence: {data_license}", f"- rows: {data.get('rows', {})}, task: {data.get('task', 'unknown')}", "",
        "## Training recipe",
        f"- steps: {train.get('steps')}, epochs: {cfg.train.epochs}, batch size: {cfg.train.batch_size}, lr: {cfg.train.lr}, "
        f"max_seq_len: {cfg.train.max_seq_len}, loss on assistant tokens only",
        f"- final train loss: {train.get('final_loss')}, val loss: {train.get('val_loss')}, device: {train.get('device')}, "
        f"dtype: {train.get('dtype')}, {train.get('seconds')} s", "",
        "## Evaluation (held-out test split)", metrics_table_md(metrics) if metrics.get("models") else "not evaluated", "",
        "## Export check", f"- max |logit difference| against the unmerged model on fixed prompts: {verify.get('max_abs_diff')}",
        "",
        "## Intended use and limits",
        f"- Intended for the narrow task in its training data ({data.get('task', 'unknown')}); outside it, expect the "
        "base model's behaviour or worse.",
        "- A 135M-class model makes mistakes: check its outputs where errors matter.",
    ]
    if data_license == "unknown" or "nc" in data_license.lower().replace("-", " ").split():
        lines.append(f"- Data licence is {data_license}: check it allows your use before shipping this model.")
    return "\n".join(lines) + "\n"
