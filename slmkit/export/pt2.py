"""torch.export (`.pt2`, TorchScript's successor): input_ids [1, T] -> logits [1, T, V], dynamic T, no KV cache."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from slmkit.errors import SlmError

log = logging.getLogger("slmkit")


class _LogitsOnly(torch.nn.Module):
    """The causal LM as one pure function of input_ids, so the exported graph has no cache objects."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def export_pt2(src: Path, dest: Path, max_len: int | None = None) -> Path:
    """Export the HF model folder `src` to dest/model.pt2 and copy its tokenizer beside it."""
    from slmkit.models import load_model, load_tokenizer

    model = load_model(src, "float32", "cpu")
    tok = load_tokenizer(src)
    limit = min(max_len or model.config.max_position_embeddings, model.config.max_position_embeddings) - 1
    # min=2: torch.export specialises sizes 0 and 1, and every chat prompt is longer than one token.
    seq = torch.export.Dim("seq", min=2, max=limit)
    example = torch.tensor([tok("hello world, hello", add_special_tokens=False)["input_ids"][:4] or [0, 0]])
    if example.shape[1] < 2:
        example = torch.zeros((1, 4), dtype=torch.long)
    try:
        program = torch.export.export(
            _LogitsOnly(model), (example,), dynamic_shapes={"input_ids": {1: seq}}, strict=False
        )
    except Exception as e:  # torch raises many exception types for untraceable code
        raise SlmError(
            f"torch.export failed for {src}: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
            "this architecture does not trace yet; use --format onnx or merged",
        ) from None
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(dest / "model.pt2"))
    tok.save_pretrained(dest)
    log.info("torch.export program in %s", dest / "model.pt2")
    return dest / "model.pt2"
