"""The running batch of the continuous-batching engine: one left-padded KV cache shared by all live sequences.

Rows join after their prompt is prefilled (their cache is left-padded to the batch length and concatenated),
every decode step feeds one token per row, and finished rows are dropped (with the left padding no row needs
any more trimmed away). Each row keeps its own position ids, so padding changes nothing in its attention.

Shapes: B rows, T cache length, H kv heads, D head dim; cache tensors are [B, H, T, D]; mask is [B, T].
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowLayer(DynamicLayer):
    """A DynamicLayer over a buffer with spare room: a decode step writes in place instead of torch.cat."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.buf_k = self.buf_v = None
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.buf_k is None:  # prefill: the buffer starts as the prompt's states
            self.set(key_states, value_states, spare=0)
            return self.keys, self.values
        length = self.get_seq_length()
        need = length + key_states.shape[-2]
        if need > self.buf_k.shape[-2]:
            self._grow(need, length)
        self.buf_k[:, :, length:need] = key_states
        self.buf_v[:, :, length:need] = value_states
        self.keys, self.values = self.buf_k[:, :, :need], self.buf_v[:, :, :need]
        return self.keys, self.values

    def _grow(self, need: int, length: int) -> None:
        """Reallocate to at least `need` positions, doubling so that appends cost O(1) amortised."""
        b, h, cap, d = self.buf_k.shape
        cap = max(need, 64, 2 * cap)
        k, v = self.buf_k.new_zeros(b, h, cap, d), self.buf_v.new_zeros(b, h, cap, d)
        k[:, :, :length], v[:, :, :length] = self.buf_k[:, :, :length], self.buf_v[:, :, :length]
        self.buf_k, self.buf_v = k, v

    def set(self, keys: torch.Tensor, values: torch.Tensor, spare: int = 64) -> None:
        """Replace the content with [B, H, T, D] tensors, leaving `spare` free positions after them."""
        b, h, t, d = keys.shape
        self.buf_k, self.buf_v = keys.new_zeros(b, h, t + spare, d), values.new_zeros(b, h, t + spare, d)
        self.buf_k[:, :, :t], self.buf_v[:, :, :t] = keys, values
        self.keys, self.values = self.buf_k[:, :, :t], self.buf_v[:, :, :t]
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    def select(self, rows: torch.Tensor, start: int) -> None:
        """Keep `rows` and drop the first `start` positions (padding of every kept row)."""
        t = self.get_seq_length()
        self.buf_k, self.buf_v = self.buf_k[rows, :, start:], self.buf_v[rows, :, start:]
        self.keys, self.values = self.buf_k[:, :, : t - start], self.buf_v[:, :, : t - start]


def supports_batching(model) -> bool:
    """True when every cache layer of the model is a plain full-attention DynamicLayer (llama, qwen2, mistral...)."""
    cache = DynamicCache(config=model.config)
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class RunningBatch:
    """KV cache, padding mask and positions of the sequences being decoded, in row order."""

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, T] 1 = real token
        self.pos: torch.Tensor | None = None  # [B] position of the next token = real tokens so far

    @property
    def size(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Run the prompts (left-padded together), append them as new rows; return next-token logits [n, V]."""
        longest = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        cache.layers = [GrowLayer() for _ in cache.layers]
        logits = self._forward(ids, mask, pos, cache)
        self._merge(cache, mask)
        return logits

    def _merge(self, new: DynamicCache, new_mask: torch.Tensor) -> None:
        new_pos = new_mask.sum(-1)
        if self.cache is None:
            for layer in new.layers:
                layer.set(layer.keys, layer.values)
            self.cache, self.mask, self.pos = new, new_mask, new_pos
            return
        length = max(self.mask.shape[1], new_mask.shape[1])
        for old, fresh in zip(self.cache.layers, new.layers):
            old.set(
                torch.cat([_left_pad(old.keys, length, 2), _left_pad(fresh.keys, length, 2)]),
                torch.cat([_left_pad(old.values, length, 2), _left_pad(fresh.values, length, 2)]),
            )
        self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(new_mask, length, 1)])
        self.pos = torch.cat([self.pos, new_pos])

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token per row; return next-token logits [B, V]."""
        ids = torch.tensor(tokens, device=self.device)[:, None]
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.size, 1)], dim=1)
        logits = self._forward(ids, self.mask, self.pos[:, None], self.cache)
        self.pos = self.pos + 1
        return logits

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order); trim the left padding they all share."""
        if not rows:
            self.cache = self.mask = self.pos = None
            return
        if rows == list(range(self.size)):
            return
        idx = torch.tensor(rows, device=self.device)
        mask = self.mask[idx]
        start = int(mask.shape[1] - mask.sum(-1).max())  # rows are left-padded: real tokens sit at the right end
        for layer in self.cache.layers:
            layer.select(idx, start)
        self.mask, self.pos = mask[:, start:], self.pos[idx]
