"""Merge LoRA into the base weights and write a standalone HF folder; verify by reloading it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from slmkit.config import BuildConfig
from slmkit.errors import SlmError
from slmkit.export.card import render_card
from slmkit.export.licence import check_licences
from slmkit.io import atomic_dir, atomic_write_json, atomic_write_text
from slmkit.models import load_model, load_tokenizer, resolve_model
from slmkit.runs import RunDir

log = logging.getLogger("slmkit")

VERIFY_PROMPTS = ["Hello! What can you do?", "What is the capital of France?", "Summarise: the cat sat on the mat."]


@torch.no_grad()
def prompt_logits(model, tok) -> torch.Tensor:
    """Logits of the last prompt token for a fixed set of chat prompts: [len(VERIFY_PROMPTS), V]."""
    rows = []
    for p in VERIFY_PROMPTS:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        rows.append(model(**ids).logits[0, -1].float())
    return torch.stack(rows)


def export_merged(cfg: BuildConfig, run_dir: RunDir) -> dict:
    """export/merged/ from the run's model (LoRA merged into the base), checked against it by prompt logits."""
    run = RunDir.of_config(cfg, run_dir)
    final = run.final_model
    if not final.is_dir():
        raise SlmError(
            f"no trained model at {final}",
            f"run the {final.parent.name} stage first (`slm {final.parent.name} CONFIG`)",
        )
    tok = load_tokenizer(final, cfg.model.trust_remote_code)
    if (final / "adapter_config.json").is_file():
        model = load_model(
            resolve_model(cfg.model.base_model), "float32", "cpu", cfg.model.trust_remote_code, adapter=final
        )
        reference = prompt_logits(model, tok)
        model = model.merge_and_unload()
    else:
        model = load_model(final, "float32", "cpu", cfg.model.trust_remote_code)
        reference = prompt_logits(model, tok)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    dest = run.merged
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        reloaded = load_model(tmp, "float32", "cpu", cfg.model.trust_remote_code)
        diff = float((prompt_logits(reloaded, load_tokenizer(tmp)) - reference).abs().max())
        verify = {"max_abs_diff": diff, "tolerance": cfg.export.verify_tolerance, "prompts": len(VERIFY_PROMPTS)}
        if diff > cfg.export.verify_tolerance:
            raise SlmError(
                f"merged export differs from the trained model (max |logit diff| {diff:.3g})",
                f"this is a bug or a dtype issue; raise export.verify_tolerance (now {cfg.export.verify_tolerance}) only if expected",
            )
        atomic_write_text(
            tmp / "README.md",
            render_card(run.root, cfg, verify, "merged", check_licences(cfg.model.base_model, run.root)),
        )
        atomic_write_json(
            tmp / "slmkit.json",
            {"base_model": cfg.model.base_model, "export": "merged", "verify": verify, "run": cfg.name},
        )
    size = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())
    log.info("merged export in %s (%.1f MB), max |logit diff| %.2e", dest, size / 1e6, diff)
    return {"path": str(dest), "bytes": size, "verify": verify}


def exported_config(path: Path) -> dict:
    p = Path(path) / "slmkit.json"
    return json.loads(p.read_text()) if p.is_file() else {}
