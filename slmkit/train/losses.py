"""Loss functions. Each is a small standalone function with documented shapes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slmkit.train.collate import IGNORE

# Architectures whose logits are exactly lm_head(final hidden state): no softcapping or logit scale,
# so the head can be applied to the labelled positions only.
PLAIN_HEAD_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3", "starcoder2"}


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def assistant_ce_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over labelled (assistant) tokens.

    input_ids, attention_mask, labels: [B, T] (labels = -100 where not trained).
    Returns (loss scalar, number of labelled tokens). For plain-head architectures the output
    projection runs only on the N labelled positions ([N, H] @ [H, V]) instead of all B*T, so the
    full [B, T, V] logits (V = 49k for SmolLM2) are never built.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE
    n = int(keep.sum())
    base = _unwrap(model)
    if base.config.model_type in PLAIN_HEAD_TYPES:
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][keep])
        return F.cross_entropy(logits.float(), targets[keep]), n
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    return F.cross_entropy(logits[keep].float(), targets[keep]), n
