"""Load any model slmkit can score -- a run, an HF folder, a GGUF file, an ONNX export, a .pt2 program -- behind one interface.

Each backend reads its artifact with its own reader (transformers' GGUF loader, onnxruntime-genai,
torch.export), so export verification compares independent implementations, not one model twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from slmkit.errors import SlmError
from slmkit.llamacpp_runtime import last_logits, open_llama


@dataclass
class Backend:
    """name: shown in tables; kind: torch|gguf|onnx|pt2; tok: an HF tokenizer (chat template, ids)."""

    name: str
    kind: str
    tok: Any
    model: Any = None
    info: dict = field(default_factory=dict)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of the chat prompt (generation prompt added) with this backend's tokenizer."""
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def next_token_logits(self, ids: list[int]) -> torch.Tensor:
        """Logits for the token after `ids`: [V] float32."""
        return self.model(input_ids=torch.tensor([ids], device=self.model.device)).logits[0, -1].float().cpu()

    def generate(
        self,
        conversations: list[list[dict]],
        max_new_tokens: int,
        batch_size: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[str]:
        from slmkit.generation import generate

        return generate(self.model, self.tok, conversations, max_new_tokens, batch_size, on_batch=on_batch)

    @property
    def has_torch_model(self) -> bool:
        return self.kind in ("torch", "gguf")


class OnnxBackend(Backend):
    """onnxruntime-genai: its own tokenizer encodes and decodes; the HF tokenizer only renders the template."""

    def __init__(self, name: str, folder: Path):
        from slmkit.onnx_runtime import import_og, load_onnx_folder

        model, cfg, tok = load_onnx_folder(folder)
        super().__init__(name, "onnx", tok)
        self.model = model
        self.og_tok = import_og().Tokenizer(self.model)
        eos = cfg.get("eos_token_id")
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.info = {"eos_token_id": eos, "folder": str(folder)}

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.og_tok.encode(text)]

    def _generator(self, ids: list[int], max_length: int):
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False)
        gen = og.Generator(self.model, params)
        gen.append_tokens([ids])
        return gen

    def next_token_logits(self, ids: list[int]) -> torch.Tensor:
        import numpy as np

        gen = self._generator(ids, len(ids) + 1)
        return torch.from_numpy(np.asarray(gen.get_logits(), dtype="float32").reshape(-1).copy())

    def generate(self, conversations, max_new_tokens, batch_size, on_batch=None) -> list[str]:
        out = []
        for conv in conversations:
            ids = self.prompt_ids(conv)
            gen = self._generator(ids, len(ids) + max_new_tokens)
            new: list[int] = []
            while not gen.is_done():
                gen.generate_next_token()
                tid = int(gen.get_next_tokens()[0])
                if tid in self.eos:
                    break
                new.append(tid)
            out.append(self.og_tok.decode(new).strip() if new else "")
            if on_batch:
                on_batch(1)
        return out


class Pt2Backend(Backend):
    """A torch.export program (input_ids [1, T] -> logits [1, T, V]); greedy decoding without a KV cache."""

    def __init__(self, name: str, path: Path):
        from slmkit.models import load_tokenizer

        super().__init__(name, "pt2", load_tokenizer(path.parent))
        self.model = torch.export.load(str(path)).module()
        self.info = {"path": str(path)}

    @torch.no_grad()
    def next_token_logits(self, ids: list[int]) -> torch.Tensor:
        return self.model(torch.tensor([ids]))[0, -1].float()

    def generate(self, conversations, max_new_tokens, batch_size, on_batch=None) -> list[str]:
        eos = self.tok.eos_token_id
        out = []
        for conv in conversations:
            ids = self.prompt_ids(conv)
            start = len(ids)
            for _ in range(max_new_tokens):
                nxt = int(self.next_token_logits(ids).argmax())
                if nxt == eos:
                    break
                ids.append(nxt)
            out.append(self.tok.decode(ids[start:], skip_special_tokens=True).strip())
            if on_batch:
                on_batch(1)
        return out


class LlamaCppBackend(Backend):
    """A GGUF run by llama.cpp itself (the llamacpp extra): what users deploy it in. The HF tokenizer read from the
    GGUF renders the chat template and encodes; llama.cpp sees token ids only. Greedy, one row at a time."""

    def __init__(self, name: str, path: Path, tok):
        super().__init__(name, "gguf", tok, None, {"path": str(path), "reader": "llama.cpp"})
        self.llm = open_llama(path)
        self.vocab = int(self.llm.n_vocab())
        self.eos = {int(self.llm.token_eos())} | ({tok.eos_token_id} if tok.eos_token_id is not None else set())

    def next_token_logits(self, ids: list[int]) -> torch.Tensor:
        self.llm.reset()  # a reused context starts from an empty cache
        self.llm.eval(ids)
        return last_logits(self.llm, self.vocab)

    def generate(self, conversations, max_new_tokens, batch_size, on_batch=None) -> list[str]:
        out = []
        for conv in conversations:
            ids = self.prompt_ids(conv)
            if len(ids) + max_new_tokens > self.llm.n_ctx():
                raise SlmError(
                    f"a prompt of {len(ids)} tokens + {max_new_tokens} new does not fit llama.cpp's context of "
                    f"{self.llm.n_ctx()} ({self.name})",
                    "shorten the eval rows or lower eval.max_new_tokens",
                )
            new: list[int] = []
            nxt = int(self.next_token_logits(ids).argmax())
            while nxt not in self.eos and len(new) < max_new_tokens:
                new.append(nxt)
                if len(new) < max_new_tokens:
                    self.llm.eval([nxt])
                    nxt = int(last_logits(self.llm, self.vocab).argmax())
            out.append(self.tok.decode(new, skip_special_tokens=True).strip())
            if on_batch:
                on_batch(1)
        return out

    @property
    def has_torch_model(self) -> bool:
        return False


def gguf_reader() -> str:
    """Who reads GGUF files for eval and export checks: llama.cpp where the extra is installed, else transformers."""
    from slmkit.llamacpp_runtime import installed

    return "llama.cpp" if installed() else "transformers"


def _gguf_backend(name: str, path: Path) -> Backend:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reader = gguf_reader()
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if reader == "llama.cpp":
            return LlamaCppBackend(name, path, tok)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError) as e:
        raise SlmError(
            f"cannot read GGUF file {path}: {str(e).splitlines()[0]}",
            "check it is a complete GGUF file of a supported architecture",
        ) from None
    return Backend(name, "gguf", tok, model.eval(), {"path": str(path), "reader": "transformers"})


def _torch_backend(name: str, target: str, device: str, dtype: str) -> Backend:
    from slmkit.models import load_model, load_tokenizer
    from slmkit.runs import resolve_target

    model_path, adapter, info = resolve_target(target)
    tok = load_tokenizer(adapter or model_path, info.get("trust_remote_code", False))
    model = load_model(model_path, dtype, device, info.get("trust_remote_code", False), adapter=adapter)
    return Backend(name, "torch", tok, model, {"path": str(adapter or model_path)})


def artifact_kind(path: Path) -> str:
    """gguf | onnx | pt2 | torch, from what the path holds."""
    if path.suffix == ".gguf":
        return "gguf"
    if path.suffix == ".pt2":
        return "pt2"
    if path.is_dir() and (path / "genai_config.json").is_file():
        return "onnx"
    if path.is_dir() and (path / "model.pt2").is_file():
        return "pt2"
    if path.is_dir() and not (path / "config.json").is_file() and len(list(path.glob("*.gguf"))) == 1:
        return "gguf"
    return "torch"


def load_backend(spec: str, name: str | None = None, device: str = "cpu", dtype: str = "float32") -> Backend:
    """MODEL spec -> Backend: a .gguf file, an ONNX or pt2 export folder, a run folder, an HF folder, 'default'..."""
    path = Path(spec).expanduser()
    name = name or (path.name if path.exists() else spec)
    kind = artifact_kind(path) if path.exists() else "torch"
    if kind == "gguf":
        return _gguf_backend(name, path if path.suffix == ".gguf" else next(path.glob("*.gguf")))
    if kind == "onnx":
        return OnnxBackend(name, path)
    if kind == "pt2":
        return Pt2Backend(name, path if path.suffix == ".pt2" else path / "model.pt2")
    return _torch_backend(name, spec, device, dtype)


def from_model(name: str, model, tok) -> Backend:
    """Wrap an already loaded torch model and tokenizer."""
    return Backend(name, "torch", tok, model.eval())
