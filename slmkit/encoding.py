"""Turn chat records into token ids with assistant-only labels, and batch them with little padding."""

from __future__ import annotations

import math

import torch

IGNORE = -100


def _render(tok, messages: list[dict], gen_prompt: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen_prompt)


def encode_chat(tok, messages: list[dict], max_len: int) -> dict:
    """Tokenize a conversation with the model's own chat template; label only assistant turns.

    Each assistant turn spans from the end of the prompt rendering (`add_generation_prompt=True`) to
    the end of the rendering that includes the turn, so its end-of-turn token is learned too.
    Returns {"input_ids": [T], "labels": [T]} with labels = IGNORE outside assistant spans.
    """
    full = _render(tok, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_render(tok, messages[:i], gen_prompt=True))
        end = len(_render(tok, messages[: i + 1]))
        if not full.startswith(_render(tok, messages[: i + 1])):
            start, end = start, len(full)  # template rewrites history: label to the end instead
        spans.append((start, end))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [tid if any(s <= a < e for s, e in spans) else IGNORE for tid, (a, _b) in zip(ids, offsets)]
    return {"input_ids": ids[:max_len], "labels": labels[:max_len]}


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The conversation up to (not including) its last assistant turn."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffle, then sort by length inside megabatches of 32 batches, so rows of a batch are alike in length.

    Deterministic in (seed, epoch): a resumed run sees exactly the batches it would have seen.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    mega = batch_size * 32
    batches: list[list[int]] = []
    for i in range(0, len(perm), mega):
        chunk = sorted(perm[i : i + mega], key=lambda j: -lengths[j])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[o] for o in order]


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into input_ids/attention_mask/labels tensors [B, T]."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[r, :n] = torch.tensor(e["input_ids"])
        labels[r, :n] = torch.tensor(e["labels"])
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def steps_for(n_batches: int, grad_accum: int, epochs: float, max_steps: int | None) -> int:
    return max_steps or max(1, math.ceil(epochs * math.ceil(n_batches / grad_accum)))


def padded_batches(tok, texts: list[str], max_len: int, batch_size: int):
    """Right-padded, truncated encodings of `texts` (already rendered, so no special tokens added), `batch_size` at
    a time: what forward passes over calibration text (pruning scores, importance matrices) read."""
    tok.padding_side = "right"
    for i in range(0, len(texts), batch_size):
        yield tok(
            texts[i : i + batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_len,
            add_special_tokens=False,
        )
