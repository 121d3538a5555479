"""Perplexity of a model on the reference answers: exp(mean NLL over assistant tokens), the SFT loss's own scale."""

from __future__ import annotations

import math

import torch

from slmkit.encoding import IGNORE, encode_chat


@torch.no_grad()
def answer_perplexity(model, tok, conversations: list[list[dict]], max_len: int = 1024) -> float:
    """Conversations include their reference assistant turn; only its tokens (and end-of-turn) are scored.

    Per row: logits [1, T, V] -> next-token CE on labelled positions; summed over rows, then exp(total/count).
    """
    total, count = 0.0, 0
    for messages in conversations:
        enc = encode_chat(tok, messages, max_len)
        ids = torch.tensor([enc["input_ids"]], device=model.device)
        labels = torch.tensor([enc["labels"]], device=model.device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = labels[:, 1:]
        n = int((target != IGNORE).sum())
        if n == 0:
            continue
        total += float(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
        )
        count += n
    return math.exp(total / count) if count else float("nan")
