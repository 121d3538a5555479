"""The serve engine's torch Runner: a transformers model behind one shared KV cache, sampled row by row."""

from __future__ import annotations

import logging
from typing import Any

import torch

from slmkit.config.serve import ServeConfig
from slmkit.serve.batch import RunningBatch, supports_batching
from slmkit.serve.engine import Request

log = logging.getLogger("slmkit")


def sample(logits: torch.Tensor, requests: list[Request]) -> list[int]:
    """Next token per row of logits [B, V]: argmax for greedy rows, temperature + top-p sampling for the rest."""
    tokens = logits.argmax(-1).tolist()
    for i, r in enumerate(requests):
        p = r.params
        if p.greedy:
            continue
        probs = torch.softmax(logits[i] / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (nucleus sampling, Holtzman et al. 2020)
            drop = sorted_p.cumsum(-1) - sorted_p >= p.top_p
            drop[0] = False  # the most likely token stays however small top_p is (it may round to 0 in float32)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p.masked_fill(drop, 0.0))
        tokens[i] = int(torch.multinomial(probs, 1, generator=r.generator))
    return tokens


class TorchRunner:
    """A transformers model behind one shared KV cache (`RunningBatch`), sampled row by row with `sample`."""

    kind = "torch"

    def __init__(self, model, max_batch: int):
        self.model = model
        self.batching = supports_batching(model)
        self.max_sequences = max_batch if self.batching else 1
        if not self.batching:
            log.warning(
                "%s: cache layers are not plain full attention; serving one request at a time", type(model).__name__
            )
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos_ids = {i for i in (gen_eos if isinstance(gen_eos, list) else [gen_eos]) if i is not None}
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self._batch = RunningBatch(model)

    def prefill(self, requests: list[Request]) -> list[int]:
        return sample(self._batch.prefill([r.prompt_ids for r in requests]), requests)

    def decode(self, requests: list[Request]) -> list[int]:
        return sample(self._batch.step([r.next_token for r in requests]), requests)

    def keep(self, rows: list[int]) -> None:
        self._batch.keep(rows)

    def reset(self) -> None:
        self._batch = RunningBatch(self.model)


def decode_dtype(requested: str, hw) -> tuple[str, str]:
    """(dtype, why) of the torch serve model: an explicit dtype wins; `auto` on CPU is the speed probe's measured
    decode choice (bf16 weights only where a decode-shaped matmul ran >= MARGIN x fp32 here), on a GPU hw.dtype."""
    if requested != "auto":
        return requested, "asked for (--dtype / serve.dtype)"
    if hw.device != "cpu":
        return hw.dtype, f"the {hw.device} default"
    return measured_decode_dtype()


def measured_decode_dtype() -> tuple[str, str]:
    """The speed probe's decode dtype on this CPU (cached per machine) and its one-line reason."""
    from slmkit import speed_probe

    result = speed_probe.probe()
    return result["choice"]["decode"], speed_probe.reason(result, "decode")


def load_torch(target: str, cfg: ServeConfig, trust_remote_code: bool) -> tuple[TorchRunner, Any]:
    from slmkit.hardware import detect, setup_threads
    from slmkit.models import load_model, load_tokenizer
    from slmkit.runs import resolve_target

    model_path, adapter, info = resolve_target(target)
    hw = detect()
    setup_threads()
    trust = trust_remote_code or info.get("trust_remote_code", False)
    tok = load_tokenizer(adapter or model_path, trust)
    dtype, why = decode_dtype(cfg.dtype, hw)
    log.info("torch backend in %s: %s", dtype, why)
    model = load_model(model_path, dtype, hw.device, trust, adapter=adapter)
    if adapter is not None:  # one merged matrix per layer decodes faster than base + LoRA branch
        model = model.merge_and_unload()
    if cfg.pack_weights:
        from slmkit.serve.packed import pack_linears

        pack_linears(model, cfg.max_batch_size)
    return TorchRunner(model, cfg.max_batch_size), tok
