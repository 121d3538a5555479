"""llama.cpp backend of the serve engine (llama-cpp-python, the optional `slmkit[llamacpp]` extra).

One llama.cpp context per row: a context holds one sequence's KV cache, and llama-cpp-python's high-level `Llama`
evaluates one sequence at a time, so rows are stepped one after another (like the ONNX backend). Contexts of
finished rows are kept and reused; the weights are mmapped once by the OS and shared by every context. Prompts are
rendered and tokenised by the HF tokenizer read from the GGUF itself (transformers' GGUF reader), so chat template
and ids are the ones the export was verified with; llama.cpp only sees token ids. Tokens are sampled from
llama.cpp's logits by the torch backend's `sample`, so temperature / top_p / seed mean the same on every backend.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmkit.config.serve import ServeConfig
from slmkit.errors import SlmError
from slmkit.serve.engine import Request
from slmkit.serve.torch_runner import sample

INSTALL_HINT = "pip install 'slmkit[llamacpp]' (llama-cpp-python builds from source: ~5 min on 2 cores)"
N_CTX = 2048  # per row: SmolLM2-135M's f16 KV cache is ~23 KB a position, so ~47 MB a row
MAX_ROWS = 8  # rows are stepped one by one: more only queue behind each other, holding memory


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise SlmError("serving a GGUF export needs llama-cpp-python, which is not installed", INSTALL_HINT) from None
    return llama_cpp


_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_extra_buffers():
    """Load with llama.cpp's `use_extra_bufts` off. Its CPU extra buffers repack weights for AMX (and other
    kernels) at load; on a 2-core AMX Xeon that path segfaulted in the first decode of SmolLM2-135M q8_0 exports
    (llama-cpp-python 0.3.36 built from source, 2026-12-03) while the plain CPU path ran them. `Llama()` takes no
    such argument, so its default model params are swapped while one is built."""
    import llama_cpp.llama as high

    with _PARAMS_LOCK:
        default = high.llama_cpp.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        high.llama_cpp.llama_model_default_params = params
        try:
            yield
        finally:
            high.llama_cpp.llama_model_default_params = default


def find_gguf(target: str) -> Path:
    """The .gguf file of `target`: the file itself, or the one .gguf in a folder."""
    p = Path(target).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p
    found = sorted(p.glob("*.gguf")) if p.is_dir() else []
    if len(found) != 1:
        raise SlmError(
            f"'{target}' is not a .gguf file or a folder with exactly one ({len(found)} found)",
            "pass a GGUF export folder (export/gguf-*) or the .gguf file",
        )
    return found[0]


def load_llamacpp(target: str, cfg: ServeConfig) -> tuple[LlamaCppRunner, Any]:
    """(runner, HF tokenizer) for a GGUF export folder or file."""
    from transformers import AutoTokenizer

    path = find_gguf(target)
    import_llama_cpp()
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # transformers reads only the architectures it knows
        raise SlmError(f"cannot read the tokenizer of {path}: {e}", "serve the run's merged model (--backend torch)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return LlamaCppRunner(path, min(cfg.max_batch_size, MAX_ROWS)), tok


class LlamaCppRunner:
    """The engine's Runner over llama.cpp: each row is a `llama_cpp.Llama` context, stepped one after another."""

    kind = "gguf"
    batching = False

    def __init__(self, path: Path, max_sequences: int):
        from slmkit.speed_probe import cpu_cores

        self.path, self.max_sequences, self.threads, self.n_ctx = path, max_sequences, cpu_cores(), N_CTX
        self._llama_cpp = import_llama_cpp()  # once: _logits runs every token
        first = self._new()
        if first._model.n_ctx_train() < self.n_ctx:  # no use holding positions the model was never trained on
            self.n_ctx = first._model.n_ctx_train()
            first = self._new()
        self._rows: list = []
        self._free = [first]
        self.model = first
        self.vocab = int(first.n_vocab())
        self.eos_ids = {int(self.model.token_eos())}
        self.context = int(self.model.n_ctx())

    def _new(self):
        try:
            with _without_extra_buffers():
                return self._llama_cpp.Llama(
                    model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.threads, n_batch=512, verbose=False
                )
        except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
            raise SlmError(f"llama.cpp cannot load {self.path}: {e}", "re-export it: slm export-model RUN -f gguf")

    def _logits(self, llm) -> torch.Tensor:
        """[1, V]: the last evaluated position's logits, copied out of llama.cpp's buffer (llama-cpp-python keeps
        `scores` only with logits_all, which would compute the head for every prompt position)."""
        ptr = self._llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(self.vocab,)).copy())[None]

    def prefill(self, requests: list[Request]) -> list[int]:
        tokens = []
        for r in requests:
            llm = self._free.pop() if self._free else self._new()
            llm.reset()  # a reused context starts from an empty cache
            llm.eval(r.prompt_ids)
            self._rows.append(llm)
            tokens += sample(self._logits(llm), [r])
        return tokens

    def decode(self, requests: list[Request]) -> list[int]:
        assert len(requests) == len(self._rows), "engine and runner disagree on the rows"
        tokens = []
        for llm, r in zip(self._rows, requests):
            llm.eval([r.next_token])
            tokens += sample(self._logits(llm), [r])
        return tokens

    def keep(self, rows: list[int]) -> None:
        kept = set(rows)
        self._free += [llm for i, llm in enumerate(self._rows) if i not in kept]
        self._rows = [self._rows[i] for i in rows]

    def reset(self) -> None:
        self._free += self._rows
        self._rows = []
