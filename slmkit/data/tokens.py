"""Token counts in the chosen model's tokenizer (lengths, filters, chunking, the histogram)."""

from __future__ import annotations

import functools
from typing import Any

BATCH = 1000


@functools.lru_cache(maxsize=4)
def get_tokenizer(name: str) -> Any:
    """The tokenizer of model `name` ('default', a folder or a hub id), loaded once per process."""
    from slmkit.models import DEFAULT_ALIASES, resolve_model
    from slmkit.paths import cache_dir

    if name.lower() in DEFAULT_ALIASES and not (cache_dir() / "models" / "smollm2-135m-instruct").is_dir():
        # Counting tokens needs only the tokenizer: read it from the GGUF instead of converting the weights.
        from transformers import AutoTokenizer

        from slmkit.models import embedded_gguf

        gguf = embedded_gguf()
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    from transformers import AutoTokenizer

    from slmkit.errors import SlmError

    resolved = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(str(resolved))
    except (OSError, ValueError) as e:
        raise SlmError(
            f"cannot load the tokenizer of '{name}' to count tokens: {str(e).splitlines()[0]}",
            "set data.clean.tokenizer (or model.base_model) to a local model folder",
        ) from None


def tokenizer_name(cfg: Any) -> str:
    """data.clean.tokenizer, else model.base_model."""
    return cfg.data.clean.tokenizer or cfg.model.base_model


def count_tokens(tok: Any, texts: list[str]) -> list[int]:
    """Number of tokens of each text (no special tokens), tokenized in batches."""
    counts: list[int] = []
    for i in range(0, len(texts), BATCH):
        enc = tok(texts[i : i + BATCH], add_special_tokens=False)["input_ids"]
        counts += [len(ids) for ids in enc]
    return counts
