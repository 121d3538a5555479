"""Knowledge-distillation losses: small standalone functions on log-probabilities.

Notation: p = teacher, q = student. Every divergence takes log-probs `[..., V]` over the same support
(the full vocabulary, or the k+1 buckets of a top-k cache: k kept ids plus one "rest" bucket) and
returns the per-position divergence `[...]`. Work happens in fp32 whatever the input dtype, so bf16
logits give the same loss as fp32 ones up to the input rounding. Reduce with `masked_mean`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from slmkit.encoding import IGNORE
from slmkit.train import labelled_hidden

KDLoss = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl"]
# Floor for log-probs: exp(-1e4) == 0 in fp32, so a zero-probability bucket contributes exactly 0
# instead of 0 * inf = nan (and its gradient stays 0 too).
LOG_FLOOR = -1e4


def _f32(logp: torch.Tensor) -> torch.Tensor:
    return logp.float().clamp_min(LOG_FLOOR)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position: sum_v p_v (log p_v - log q_v). logp, logq: [..., V] -> [...]."""
    return (logp.exp() * (logp - logq)).sum(-1)


def forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q), mean-seeking (Hinton et al. 2015). [..., V], [..., V] -> [...]."""
    return _kl(_f32(teacher_logp), _f32(student_logp))


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(q || p), mode-seeking (MiniLLM, Gu et al. 2024). [..., V], [..., V] -> [...]."""
    return _kl(_f32(student_logp), _f32(teacher_logp))


def generalized_jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised JSD of GKD (Agarwal et al. 2024, eq. 1): beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q.

    beta=0 is forward KL and beta=1 reverse KL (the limits, as in TRL). [..., V], [..., V] -> [...].
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logp, teacher_logp)
    if beta == 1.0:
        return reverse_kl(student_logp, teacher_logp)
    logp, logq = _f32(teacher_logp), _f32(student_logp)
    logm = torch.logaddexp(logp + math.log(beta), logq + math.log1p(-beta))
    return beta * _kl(logp, logm) + (1.0 - beta) * _kl(logq, logm)


def skew_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, skew: float = 0.1) -> torch.Tensor:
    """Skew KL of DistiLLM (Ko et al. 2024): KL(p || skew p + (1-skew) q); skew=0 is forward KL.

    Bounded by log(1/skew), which keeps gradients tame early in training. [..., V], [..., V] -> [...].
    """
    if not 0.0 <= skew < 1.0:
        raise ValueError(f"skew must be in [0, 1), got {skew}")
    logp, logq = _f32(teacher_logp), _f32(student_logp)
    if skew == 0.0:
        return _kl(logp, logq)
    logm = torch.logaddexp(logp + math.log(skew), logq + math.log1p(-skew))
    return _kl(logp, logm)


def divergence(
    name: KDLoss, student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.5, skew: float = 0.1
) -> torch.Tensor:
    """Dispatch by config name. [..., V], [..., V] -> [...]."""
    if name == "forward_kl":
        return forward_kl(student_logp, teacher_logp)
    if name == "reverse_kl":
        return reverse_kl(student_logp, teacher_logp)
    if name == "jsd":
        return generalized_jsd(student_logp, teacher_logp, beta)
    if name == "skew_kl":
        return skew_kl(student_logp, teacher_logp, skew)
    raise ValueError(f"unknown KD loss {name!r}")


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / T) in fp32. [..., V] -> [..., V]."""
    return F.log_softmax(logits.float() / temperature, dim=-1)


def topk_student_log_probs(student_logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Student log-probs on a top-k support plus one "rest" bucket.

    student_logits: [N, V]; ids: [N, k] (teacher's kept token ids) -> [N, k+1], where the last column is
    log of the student's mass outside `ids`, computed as a masked logsumexp (no 1 - sum cancellation).
    Comparing teacher and student on these k+1 buckets is a lower bound of the full-vocabulary
    divergence (data-processing inequality) and equals it when the teacher's rest mass is zero.
    """
    z = student_logits.float() / temperature
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    kept = z.gather(-1, ids.long()) - lse
    rest = torch.logsumexp(z.scatter(-1, ids.long(), float("-inf")), dim=-1, keepdim=True) - lse
    return torch.cat([kept, rest], dim=-1)


def topk_teacher_log_probs(logp: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """Teacher log-probs on k+1 buckets from cached top-k log-probs and missing mass.

    logp: [N, k] (fp16 in the cache), missing: [N] -> [N, k+1], renormalised so that rounding of the
    stored values cannot make the buckets sum past 1.
    """
    rest = torch.log(missing.float().clamp_min(0.0)).unsqueeze(-1)
    full = torch.cat([logp.float(), rest], dim=-1).clamp_min(LOG_FLOOR)
    return full - torch.logsumexp(full, dim=-1, keepdim=True)


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over positions where mask is True ([...] and [...] bool -> scalar); 0 when nothing is kept."""
    if mask is None:
        return per_token.mean()
    kept = per_token[mask]
    return kept.sum() / max(int(kept.numel()), 1)


def assistant_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token is an assistant token: labels [B, T] -> bool [B, T-1] (logits[:, :-1] align)."""
    return labels[:, 1:] != IGNORE


def kd_mask(labels: torch.Tensor, attention_mask: torch.Tensor, positions: str = "assistant") -> torch.Tensor:
    """Positions the KD loss covers: bool [B, T-1], aligned like `assistant_mask`.

    "assistant": positions predicting an assistant token. "all": every position whose own token and next token
    are real (prompt included), as in Minitron's pruned-student distillation (Sreenivas et al. 2024), where the
    teacher's distribution over the whole sequence repairs what pruning removed.
    """
    if positions == "assistant":
        return assistant_mask(labels)
    if positions == "all":
        real = attention_mask.bool()
        return real[:, 1:] & real[:, :-1]
    raise ValueError(f"kd positions must be 'assistant' or 'all', got {positions!r}")


def generalized_jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Token-mean generalised JSD over already-shifted logits [B, T, V] and labels [B, T] (-100 = ignore).

    Same contract as TRL's `GKDTrainer.generalized_jsd_loss` (reduction="batchmean").
    """
    per_tok = generalized_jsd(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature), beta)
    return masked_mean(per_tok, None if labels is None else labels != IGNORE)


def mix_with_ce(kd: torch.Tensor, ce: torch.Tensor | None, alpha: float, temperature: float = 1.0) -> torch.Tensor:
    """alpha * CE + (1 - alpha) * T^2 * KD (scalars -> scalar).

    T^2 keeps the KD gradient scale independent of the temperature (Hinton et al. 2015, sec. 2).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    kd_term = (1.0 - alpha) * temperature**2 * kd
    if alpha == 0.0 or ce is None:
        return kd_term
    return alpha * ce + kd_term


def labelled_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits at the kept positions, in row-major order: [B, T] ids and mask, bool [B, T-1] keep -> [N, V].

    Plain-head architectures run the output head on those N positions only, so [B, T, V] is never built.
    """
    found = labelled_hidden(model, input_ids, attention_mask, keep)
    if found is not None:
        return found[1](found[0])
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][keep]
