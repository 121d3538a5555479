"""Importance matrix for GGUF quantisation: the mean square of each Linear's inputs over calibration text.

llama.cpp's `llama-imatrix` tool computes this while running the model on text, and its quantisers weight each
weight's rounding error by it, so columns that see large activations are rounded more carefully. llama-cpp-python
ships the quantisers (`ggml_quantize_chunk` takes the matrix) but not the tool, so the same statistic is collected
here with forward hooks on the merged model, over the run's own train rows (prompt and reference answer).
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import torch

from slmkit.encoding import padded_batches

log = logging.getLogger("slmkit")


def calibration_texts(conversations: list[list[dict]], refs: list[str], tok) -> list[str]:
    """Each train row as the model saw it in training: the chat template over the prompt plus the reference reply."""
    return [
        tok.apply_chat_template([*conv, {"role": "assistant", "content": ref}], tokenize=False)
        for conv, ref in zip(conversations, refs)
    ]


def texts_sha256(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()


@torch.no_grad()
def collect(model, tok, texts: list[str], batch_size: int = 8, max_len: int = 512) -> dict[str, np.ndarray]:
    """{HF weight name (e.g. model.layers.0.mlp.down_proj.weight): [in_features] mean of x^2 over every real token}.

    Padding positions are left out (their activations are not the model's); a tied head gets its own entry
    (lm_head.weight), which the GGUF writer uses for the token embedding it is tied to.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask_now: list[torch.Tensor] = []

    def hook(name):
        def fn(module, args, _out):
            x = args[0].float()
            keep = mask_now[0].reshape(-1).bool()
            x = x.reshape(-1, x.shape[-1])[keep]
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]

        return fn

    handles = [
        m.register_forward_hook(hook(f"{n}.weight")) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    ]
    try:
        for enc in padded_batches(tok, texts, max_len, batch_size):
            mask_now[:] = [enc["attention_mask"]]
            model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    out = {name: (sums[name] / max(counts[name], 1)).numpy().astype(np.float32) for name in sums}
    log.info("importance matrix: %d tensors from %d calibration rows", len(out), len(texts))
    return out
