"""llama.cpp backend of the serve engine (llama-cpp-python, the optional `slmkit[llamacpp]` extra).

One llama.cpp context per row: a context holds one sequence's KV cache, and llama-cpp-python's high-level `Llama`
evaluates one sequence at a time, so rows are stepped one after another (like the ONNX backend). Contexts of
finished rows are kept and reused; the weights are mmapped once by the OS and shared by every context. Prompts are
rendered and tokenised by the HF tokenizer read from the GGUF itself (transformers' GGUF reader), so chat template
and ids are the ones the export was verified with; llama.cpp only sees token ids. Tokens are sampled from
llama.cpp's logits by the torch backend's `sample`, so temperature / top_p / seed mean the same on every backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmkit.config.serve import ServeConfig
from slmkit.errors import SlmError
from slmkit.llamacpp_runtime import INSTALL_HINT, import_llama_cpp, last_logits, open_llama
from slmkit.serve.engine import Request
from slmkit.serve.torch_runner import sample

__all__ = ["INSTALL_HINT", "LlamaCppRunner", "find_gguf", "load_llamacpp"]
MAX_ROWS = 8  # rows are stepped one by one: more only queue behind each other, holding memory


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

        self.path, self.max_sequences, self.threads = path, max_sequences, cpu_cores()
        first = open_llama(path, threads=self.threads)
        self.n_ctx = int(first.n_ctx())
        self._rows: list = []
        self._free = [first]
        self.model = first
        self.vocab = int(first.n_vocab())
        self.eos_ids = {int(self.model.token_eos())}
        self.context = self.n_ctx

    def _new(self):
        return open_llama(self.path, self.n_ctx, self.threads)

    def _logits(self, llm):
        return last_logits(llm, self.vocab)[None]  # [1, V]

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
