"""Batched greedy generation with a transformers model: what eval, distillation and export checks decode with."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(
    model, tok, conversations: list[list[dict]], max_new_tokens: int, batch_size: int, on_batch=None
) -> list[str]:
    """Greedy replies for each conversation (left-padded batches, longest-first to waste less)."""
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        for i, row in zip(idx, gen[:, enc["input_ids"].shape[1] :]):
            out[i] = tok.decode(row, skip_special_tokens=True).strip()
        if on_batch:
            on_batch(len(idx))
    return out
