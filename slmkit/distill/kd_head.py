"""Output head fused with the top-k forward KL of offline distillation.

Why: with `kd_positions: all` every token of a row gets a KD term, so the student's output head runs on every
position and the loss works on [N, V] logits (V = 49k for SmolLM2). Through autograd that costs a dozen full-size
passes (copy, logsumexp twice, a scattered copy, gather, their backward passes). The gradient of forward KL on the
k+1 buckets of a top-k cache has a closed form, so this module computes it in the forward pass, in place, chunk
by chunk, and the backward is two matmuls. It is the same loss as
`forward_kl(topk_student_log_probs(h @ W.T, ids, T), t_logp)` (tests check values and gradients).

The gradient, with s = softmax(z / T) over the vocabulary, K = the teacher's kept ids, p = the teacher's k+1
bucket probabilities and q_rest = the student's mass outside K:
    dL/dz_v = (s_v - p_v) / T                      for v in K
    dL/dz_v = (s_v - p_rest * s_v / q_rest) / T    otherwise (the rest bucket's mass, shared in the student's shape)
"""

from __future__ import annotations

import torch

from slmkit.distill.kd_losses import LOG_FLOOR
from slmkit.train import head_backward

# Rows per head matmul. Everything happens inside the [N, V] gradient buffer, so chunks bound no memory; they are
# only there to keep each matmul large (on this 2-core CPU one [760, 576] x [576, 49k] matmul runs 30% faster
# than six of 128 rows) while the row-wise passes stay cache-friendly enough.
CHUNK_ROWS = 1024


class _TopKForwardKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, ids, t_logp, temperature: float):
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            h, w = hidden.float(), weight.float()
            n, vocab = h.shape[0], w.shape[0]
            logp = t_logp.float().clamp_min(LOG_FLOOR)
            p = logp.exp()
            grad = torch.empty(n, vocab, dtype=torch.float32, device=h.device)  # becomes dL/dz, row by row
            loss = torch.empty(n, dtype=torch.float32, device=h.device)
            for a in range(0, n, CHUNK_ROWS):
                b = min(a + CHUNK_ROWS, n)
                e, idx = grad[a:b], ids[a:b].long()
                torch.matmul(h[a:b], w.t(), out=e)
                if temperature != 1.0:
                    e.div_(temperature)
                e.sub_(e.amax(-1, keepdim=True)).exp_()  # unnormalised student probabilities
                kept = e.gather(-1, idx)  # [c, k]
                e.scatter_(-1, idx, 0.0)
                rest = e.sum(-1, keepdim=True)  # exact mass outside K, no 1 - sum cancellation
                total = kept.sum(-1, keepdim=True) + rest
                logq = (torch.cat([kept, rest], -1).log() - total.log()).clamp_min(LOG_FLOOR)
                loss[a:b] = (p[a:b] * (logp[a:b] - logq)).sum(-1)
                p_rest = p[a:b, -1:]
                coef = torch.where(
                    rest > 0, 1.0 / total - p_rest / rest.clamp_min(torch.finfo(torch.float32).tiny), 0.0
                )
                e.mul_(coef / temperature)
                e.scatter_(-1, idx, (kept / total - p[a:b, :-1]) / temperature)
        ctx.save_for_backward(h, w, grad)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        return *head_backward(ctx, grad_loss), None, None, None


def topk_forward_kl_head(
    hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, t_logp: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-position forward KL(p || q) on k+1 buckets, from the student's final hidden states.

    hidden: [N, H] (positions to distil); weight: [V, H] (the output head, no bias); ids: [N, k] teacher's kept ids;
    t_logp: [N, k+1] teacher log-probs (`topk_teacher_log_probs`) -> [N] fp32. Gradients flow to hidden and weight.
    """
    return _TopKForwardKL.apply(hidden, weight, ids, t_logp, float(temperature))
