"""ONNX Runtime GenAI backend of the serve engine: one onnxruntime-genai `Generator` per sequence.

A Generator owns one sequence's KV cache and samples its own tokens, but it cannot take new rows once it has
started, so continuous batching here is interleaving: each scheduler step advances every live generator by one
token, one after another, in the scheduler thread. The scheduler (queue, limits, stops, events) is the same as
for torch. Prompts are rendered and tokenised with the HF tokenizer that the export keeps (same chat template and
ids as the torch backend); onnxruntime-genai only ever sees token ids.
"""

from __future__ import annotations

from typing import Any

from slmkit.config.serve import ServeConfig
from slmkit.onnx_runtime import find_onnx_folder, import_og, load_onnx_folder
from slmkit.serve.engine import Request, SamplingParams

_SEED_RANGE = 2**31  # onnxruntime-genai takes random_seed as a 32-bit int; -1 would mean 'random'


def load_onnx(target: str, cfg: ServeConfig) -> tuple[OnnxRunner, Any]:
    """(runner, HF tokenizer) for an ONNX export folder or a run that has one."""
    model, config, tok = load_onnx_folder(find_onnx_folder(target))
    return OnnxRunner(model, config, cfg.max_batch_size), tok


def search_options(params: SamplingParams, prompt_len: int, seed: int) -> dict:
    """onnxruntime-genai search options that make its sampler do what the torch engine's `sample` does."""
    max_length = prompt_len + params.max_tokens  # the KV buffer is allocated at max_length: no bigger than needed
    opts: dict = {
        "max_length": max_length,
        "batch_size": 1,
        "num_beams": 1,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
    }
    if params.ignore_eos:
        # a generator stops for good at EOS; below min_length it never picks EOS, so it runs to max_length
        opts["min_length"] = max_length
    if params.greedy:
        return {**opts, "do_sample": False}
    # top_k=0 turns off the top-k cut (genai_config defaults to 50), leaving temperature + nucleus like torch
    return {
        **opts,
        "do_sample": True,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": 0,
        "random_seed": seed % _SEED_RANGE,
    }


class OnnxRunner:
    """The engine's Runner over onnxruntime-genai: rows are Generators, stepped one after another."""

    kind = "onnx"
    batching = False  # each generator runs its own forward pass

    def __init__(self, model, genai_model_config: dict, max_sequences: int):
        self.model = model
        self.max_sequences = max_sequences
        eos = genai_model_config.get("eos_token_id")
        # the generator ends at these ids itself, so the engine must stop there too
        self.eos_ids = {int(i) for i in (eos if isinstance(eos, list) else [eos]) if i is not None}
        self.context = int(genai_model_config.get("context_length") or 0) or None
        self._gens: list = []

    def _start(self, r: Request):
        og = import_og()
        params = og.GeneratorParams(self.model)
        params.set_search_options(**search_options(r.params, len(r.prompt_ids), r.seed))
        gen = og.Generator(self.model, params)
        gen.append_tokens(r.prompt_ids)  # runs the prompt through the model (prefill)
        return gen

    @staticmethod
    def _next(gen) -> int:
        gen.generate_next_token()
        return int(gen.get_next_tokens()[0])

    def prefill(self, requests: list[Request]) -> list[int]:
        gens = [self._start(r) for r in requests]
        tokens = [self._next(g) for g in gens]
        self._gens.extend(gens)
        return tokens

    def decode(self, requests: list[Request]) -> list[int]:
        assert len(requests) == len(self._gens), "engine and runner disagree on the rows"
        return [self._next(g) for g in self._gens]

    def keep(self, rows: list[int]) -> None:
        self._gens = [self._gens[i] for i in rows]  # dropped generators free their KV cache

    def reset(self) -> None:
        self._gens = []
