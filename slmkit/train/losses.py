"""Loss functions. Each is a small standalone function with documented shapes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slmkit.encoding import IGNORE

# Architectures whose logits are exactly lm_head(final hidden state): no softcapping or logit scale,
# so the head can be applied to the labelled positions only.
PLAIN_HEAD_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3", "starcoder2"}

# Rows per head matmul in `linear_cross_entropy`: the [N, V] buffer is one allocation either way, chunks only keep
# the row-wise passes cache-friendly while each matmul stays large (see kd_head.CHUNK_ROWS for the measurement).
CE_CHUNK_ROWS = 1024
# With a frozen head the [rows, V] fp32 chunk is one buffer reused for every chunk: 128 x 49k x 4 B = 25 MB stays
# under glibc's 32 MiB mmap threshold (hardware.keep_freed_memory), so it is not page-faulted in again each pass.
FROZEN_CE_CHUNK_ROWS = 128


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Backward of a fused head + per-row loss whose forward saved (hidden [N, H], weight [V, H], dL/dz [N, V]) and
    the input dtypes: two matmuls, each row scaled by its upstream gradient [N]. Returns (d_hidden, d_weight)."""
    h, w, grad = ctx.saved_tensors
    g = grad_loss.float().unsqueeze(-1)  # [N, 1]: scale rows through the small operand
    if grad.dtype != w.dtype:  # a bf16 head (train/bf16.py): its backward matmuls run in bf16, as autocast's would
        grad = grad.to(w.dtype)
    d_hidden = (grad @ w).mul_(g).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
    d_weight = (grad.t() @ (h * g).to(w.dtype)).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
    return d_hidden, d_weight


def _ce_chunk(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z: fp32 logits [n, V], turned in place into dL/dz = softmax(z) - onehot(t); t: [n, 1]. Returns the loss [n]."""
    top = z.amax(-1, keepdim=True)
    picked = z.gather(-1, t)
    z.sub_(top).exp_()
    total = z.sum(-1, keepdim=True)
    z.div_(total).scatter_add_(-1, t, torch.full_like(picked, -1.0))
    return (total.log() + top - picked).squeeze(-1)


class _LinearCrossEntropy(torch.autograd.Function):
    """Head matmul + softmax cross-entropy with the gradient written in place during the forward pass.

    dL/dz = softmax(z) - onehot(target) per row, so the [N, V] logits buffer becomes the gradient and the backward
    is two matmuls. Through autograd the same loss costs a log-softmax output, its backward and a scattered
    one-hot: three more [N, V] passes and buffers (V = 49k for SmolLM2). With a frozen head (LoRA) only dL/dh is
    needed, so the forward also multiplies each chunk's gradient by the head and keeps [N, H] instead of [N, V]:
    the backward is one row scaling, and the [N, V] buffer is one reused chunk.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            low = hidden.dtype == weight.dtype != torch.float32  # a bf16 model: the matmul in bf16, softmax in fp32
            h, w = (hidden, weight) if low else (hidden.float(), weight.float())
            n, frozen = h.shape[0], not ctx.needs_input_grad[1]
            rows = FROZEN_CE_CHUNK_ROWS if frozen else CE_CHUNK_ROWS
            loss = torch.empty(n, dtype=torch.float32, device=h.device)
            if frozen:
                buf = torch.empty(min(n, rows), w.shape[0], dtype=torch.float32, device=h.device)
                d_h = torch.empty(n, h.shape[1], dtype=torch.float32, device=h.device)
            else:
                grad = torch.empty(n, w.shape[0], dtype=torch.float32, device=h.device)
            for a in range(0, n, rows):
                b = min(a + rows, n)
                z = buf[: b - a] if frozen else grad[a:b]
                if low:
                    z.copy_(h[a:b] @ w.t())
                else:
                    torch.matmul(h[a:b], w.t(), out=z)
                loss[a:b] = _ce_chunk(z, targets[a:b, None])
                if frozen and ctx.needs_input_grad[0]:
                    d_h[a:b] = (z.to(w.dtype) if low else z) @ w
        ctx.frozen, ctx.dtypes = frozen, (hidden.dtype, weight.dtype)
        ctx.save_for_backward(*((d_h,) if frozen else (h, w, grad)))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.frozen:
            (d_h,) = ctx.saved_tensors
            d_hidden = (d_h * grad_loss.float().unsqueeze(-1)).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
            return d_hidden, None, None
        return *head_backward(ctx, grad_loss), None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy of softmax(hidden @ weight.T) against targets, in fp32 (the matmuls in bf16 when hidden
    and weight both are).

    hidden: [N, H]; weight: [V, H] (a bias-free output head); targets: [N] int ids (no ignore index: select the
    labelled rows first) -> [N]. Equals `F.cross_entropy(hidden @ weight.T, targets, reduction="none")`, values and
    gradients (tests check both); gradients flow to hidden and, unless frozen, to weight.
    """
    return _LinearCrossEntropy.apply(hidden, weight, targets)


def bias_free_linear(head) -> bool:
    """The head is a plain `nn.Linear` without bias, so logits are exactly hidden @ head.weight.T (a LoRA-wrapped or
    biased head is not)."""
    return type(head) is torch.nn.Linear and head.bias is None


def labelled_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor):
    """(final hidden states [N, H] at the kept positions, output head module) for plain-head architectures, else None.

    input_ids, attention_mask: [B, T]; keep: bool [B, T-1]; N = keep.sum(), row-major order.

    Right-padded rows go to the decoder without an attention mask: causal attention already keeps every real token
    from seeing a pad (pads only come after it), so real positions get the same values and gradients as with the
    mask, and attention takes its unmasked causal kernel. Pad positions compute garbage nobody reads. Other
    padding keeps its mask.
    """
    base = _unwrap(model)
    if base.config.model_type not in PLAIN_HEAD_TYPES:
        return None
    right_padded = bool((attention_mask.cummin(-1).values == attention_mask).all())
    mask = None if right_padded else attention_mask
    hidden = base.get_decoder()(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
    return hidden[:, :-1][keep], base.get_output_embeddings()


def assistant_ce_loss(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over labelled (assistant) tokens.

    input_ids, attention_mask, labels: [B, T] (labels = -100 where not trained).
    Returns (loss scalar, number of labelled tokens). For plain-head architectures the output
    projection runs only on the N labelled positions ([N, H] @ [H, V]) instead of all B*T, so the
    full [B, T, V] logits (V = 49k for SmolLM2) are never built, and (bias-free head, without autocast) head and
    loss are one `linear_cross_entropy`.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE
    n = int(keep.sum())
    found = labelled_hidden(model, input_ids, attention_mask, keep)
    if found is not None:
        hidden, head = found
        if bias_free_linear(head) and not torch.is_autocast_enabled(hidden.device.type):  # an fp32 kernel; under
            return linear_cross_entropy(hidden, head.weight, targets[keep]).mean(), n  # autocast the head keeps bf16
        return F.cross_entropy(head(hidden).float(), targets[keep]), n
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    return F.cross_entropy(logits[keep].float(), targets[keep]), n
