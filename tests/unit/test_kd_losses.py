"""KD losses: hand-computed values, analytic gradients, TRL agreement, top-k buckets, bf16 stability."""

from __future__ import annotations

import math
import os

import pytest
import torch

from slmkit.distill.kd_losses import (
    divergence,
    forward_kl,
    generalized_jsd,
    generalized_jsd_loss,
    log_probs,
    masked_mean,
    mix_with_ce,
    reverse_kl,
    skew_kl,
    topk_student_log_probs,
    topk_teacher_log_probs,
)

P = torch.tensor([0.5, 0.5])
Q = torch.tensor([0.25, 0.75])


def test_known_values_on_two_point_distributions():
    lp, lq = P.log(), Q.log()
    assert forward_kl(lq, lp).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)
    assert reverse_kl(lq, lp).item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)
    m = (P + Q) / 2  # beta = 0.5: the textbook JSD
    jsd = 0.5 * (P * (P / m).log()).sum() + 0.5 * (Q * (Q / m).log()).sum()
    assert generalized_jsd(lq, lp, 0.5).item() == pytest.approx(jsd.item(), abs=1e-6)
    mix = 0.1 * P + 0.9 * Q
    assert skew_kl(lq, lp, 0.1).item() == pytest.approx((P * (P / mix).log()).sum().item(), abs=1e-6)


def test_limits_and_identity():
    g = torch.Generator().manual_seed(0)
    s, t = log_probs(torch.randn(4, 7, 11, generator=g)), log_probs(torch.randn(4, 7, 11, generator=g))
    assert torch.allclose(generalized_jsd(s, t, 0.0), forward_kl(s, t))
    assert torch.allclose(generalized_jsd(s, t, 1.0), reverse_kl(s, t))
    assert torch.allclose(skew_kl(s, t, 0.0), forward_kl(s, t))
    for name in ("forward_kl", "reverse_kl", "jsd", "skew_kl"):
        assert divergence(name, t, t).abs().max() < 1e-6
        assert (divergence(name, s, t) > 0).all()
    assert (skew_kl(s, t, 0.1) <= math.log(10) + 1e-5).all()  # DistiLLM's bound log(1/skew)


def test_gradients_match_analytic_forms():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 9, generator=g, requires_grad=True)
    tp = log_probs(torch.randn(5, 9, generator=g))
    forward_kl(log_probs(z), tp).sum().backward()
    q = torch.softmax(z.detach(), -1)
    assert torch.allclose(z.grad, q - tp.exp(), atol=1e-6)  # d KL(p||q) / dz = q - p
    z.grad = None
    reverse_kl(log_probs(z), tp).sum().backward()
    kl = (q * (q.log() - tp)).sum(-1, keepdim=True)
    assert torch.allclose(z.grad, q * (q.log() - tp - kl), atol=1e-6)  # d KL(q||p) / dz = q (log q/p - KL)
    z.grad = None
    temp = 2.0
    forward_kl(log_probs(z, temp), tp).sum().backward()
    assert torch.allclose(z.grad, (torch.softmax(z.detach() / temp, -1) - tp.exp()) / temp, atol=1e-6)


def test_matches_trl_generalized_jsd_loss():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer

    g = torch.Generator().manual_seed(2)
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        for temp in (1.0, 2.0):
            s, t = torch.randn(3, 6, 50, generator=g) * 3, torch.randn(3, 6, 50, generator=g) * 3
            labels = torch.randint(0, 50, (3, 6), generator=g)
            labels[0, :2] = labels[2, 4:] = -100
            ours = generalized_jsd_loss(s, t, labels, beta=beta, temperature=temp)
            trl = GKDTrainer.generalized_jsd_loss(s, t, labels, beta=beta, temperature=temp)
            assert abs(ours.item() - trl.item()) < 1e-5, (beta, temp)


def test_topk_buckets_equal_full_divergence_when_k_is_vocab():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(6, 20, generator=g), torch.randn(6, 20, generator=g)
    full = forward_kl(log_probs(s), log_probs(t))
    tl = log_probs(t)
    vals, ids = tl.topk(20, -1)
    st = topk_student_log_probs(s, ids)
    tt = topk_teacher_log_probs(vals.half(), (1 - vals.exp().sum(-1)).clamp_min(0))
    assert torch.allclose(forward_kl(st, tt), full, atol=2e-3)  # fp16 storage of the teacher values
    vals5, ids5 = tl.topk(5, -1)
    tt5 = topk_teacher_log_probs(vals5, 1 - vals5.exp().sum(-1))
    st5 = topk_student_log_probs(s, ids5)
    assert torch.allclose(st5.exp().sum(-1), torch.ones(6), atol=1e-5)
    assert torch.allclose(tt5.exp().sum(-1), torch.ones(6), atol=1e-5)
    assert (forward_kl(st5, tt5) <= full + 1e-5).all()  # coarse-graining never increases KL


def test_bf16_logits_are_stable_and_close_to_fp32():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(4, 8, 300, generator=g) * 20, torch.randn(4, 8, 300, generator=g) * 20
    for name in ("forward_kl", "reverse_kl", "jsd", "skew_kl"):
        lo = divergence(name, log_probs(s.bfloat16()), log_probs(t.bfloat16()))
        hi = divergence(name, log_probs(s), log_probs(t))
        assert torch.isfinite(lo).all() and lo.dtype == torch.float32
        assert torch.allclose(lo, hi, rtol=0.05, atol=0.05), name
    # a zero-probability teacher bucket (log p = -inf) gives finite values and gradients
    z = torch.zeros(1, 3, requires_grad=True)
    tp = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    loss = forward_kl(log_probs(z), tp).sum() + generalized_jsd(log_probs(z), tp, 0.5).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_masking_and_alpha_mix():
    per_tok = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert masked_mean(per_tok, mask).item() == pytest.approx(10 / 3)
    assert masked_mean(per_tok, torch.zeros_like(mask)).item() == 0.0
    kd, ce = torch.tensor(2.0), torch.tensor(3.0)
    assert mix_with_ce(kd, ce, 0.25, temperature=2.0).item() == pytest.approx(0.25 * 3 + 0.75 * 4 * 2)
    assert mix_with_ce(kd, ce, 1.0).item() == pytest.approx(3.0)
    with pytest.raises(ValueError):
        mix_with_ce(kd, ce, 1.5)
    with pytest.raises(ValueError):
        generalized_jsd(per_tok, per_tok, beta=2.0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_head_matches_autograd_topk_forward_kl(temperature, monkeypatch):
    """Same values and gradients (hidden and head weight) as the autograd path, over several chunks."""
    import slmkit.distill.kd_head as kd_head

    monkeypatch.setattr(kd_head, "CHUNK_ROWS", 7)  # 20 rows -> 3 chunks, the last one partial
    g = torch.Generator().manual_seed(5)
    n, hid, vocab, k = 20, 16, 50, 6
    h = torch.randn(n, hid, generator=g, dtype=torch.float64).float()
    w = torch.randn(vocab, hid, generator=g) * 0.7
    t_full = log_probs(torch.randn(n, vocab, generator=g) * 3)
    vals, ids = t_full.topk(k, -1)
    miss = (1 - vals.exp().sum(-1)).clamp_min(0)
    miss[0] = 0.0  # a row where the teacher keeps all its mass in the top k
    t_logp = topk_teacher_log_probs(vals.half(), miss)
    upstream = torch.rand(n, generator=g)  # per-row weights, so the backward's row scaling is exercised

    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = forward_kl(topk_student_log_probs(h1 @ w1.t(), ids, temperature), t_logp)
    (ref * upstream).sum().backward()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    got = kd_head.topk_forward_kl_head(h2, w2, ids, t_logp, temperature)
    (got * upstream).sum().backward()
    assert got.shape == (n,) and torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(h2.grad, h1.grad, atol=1e-5, rtol=1e-4)
    assert torch.allclose(w2.grad, w1.grad, atol=1e-5, rtol=1e-4)
    assert h2.grad.abs().sum() > 0 and w2.grad.abs().sum() > 0


def test_fused_head_frozen_weight_and_gradient_check():
    """A frozen head (LoRA students) gets no gradient; float64 gradcheck of the closed-form backward on hidden."""
    from slmkit.distill.kd_head import topk_forward_kl_head

    g = torch.Generator().manual_seed(6)
    h = torch.randn(5, 4, generator=g, requires_grad=True)
    w = torch.randn(12, 4, generator=g)
    t = log_probs(torch.randn(5, 12, generator=g))
    vals, ids = t.topk(3, -1)
    t_logp = topk_teacher_log_probs(vals, 1 - vals.exp().sum(-1))
    topk_forward_kl_head(h, w, ids, t_logp).sum().backward()
    assert w.grad is None and torch.isfinite(h.grad).all()
    # finite differences on the (fp32) forward agree with the analytic gradient
    eps, base = 1e-2, topk_forward_kl_head(h.detach(), w, ids, t_logp).sum()
    i, j = 2, 1
    bumped = h.detach().clone()
    bumped[i, j] += eps
    numeric = (topk_forward_kl_head(bumped, w, ids, t_logp).sum() - base) / eps
    assert numeric.item() == pytest.approx(h.grad[i, j].item(), rel=0.05, abs=1e-3)
