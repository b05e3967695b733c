"""Hand-derived checks for slide.algo.grpo and slide.algo.sampling."""
import math

import pytest
import torch

from slide.algo.grpo import (
    AGGREGATIONS,
    decoupled_weights,
    group_advantages,
    kl_k3,
    masked_is_weights,
    masked_mean,
    policy_loss,
    seq_mean_token_mean,
    seq_mean_token_sum,
    tis_weights,
    token_mean,
)
from slide.algo.sampling import DynamicSampler, informative

EPS = 1e-6


# ---------------------------------------------------------------- group_advantages

def test_group_advantages_std_scaled():
    # mean = 0.5, deviations = [.5, -.5, -.5, .5], population std = sqrt(mean(.25)) = 0.5
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), eps=EPS)
    d = 0.5 / (0.5 + EPS)
    torch.testing.assert_close(adv, torch.tensor([[d, -d, -d, d]]))


def test_group_advantages_unscaled():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5]]))


def test_group_advantages_pair_is_plus_minus_one():
    # group of 2: mean .5, population std .5 -> -+ .5/(.5+eps)
    adv = group_advantages(torch.tensor([[0.0, 1.0]]), eps=EPS)
    d = 0.5 / (0.5 + EPS)
    torch.testing.assert_close(adv, torch.tensor([[-d, d]]))


def test_group_advantages_constant_group_is_zero():
    for scale in (True, False):
        adv = group_advantages(torch.tensor([[0.7, 0.7, 0.7]]), scale_by_std=scale)
        assert torch.equal(adv, torch.zeros(1, 3))


def test_group_advantages_groups_independent():
    # group 2: mean 3.5, deviations [-.5, -.5, -.5, 1.5], var = (3*.25 + 2.25)/4 = .75, std = sqrt(.75)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 3.0, 3.0, 5.0]])
    adv = group_advantages(rewards, eps=EPS)
    s = math.sqrt(0.75) + EPS
    torch.testing.assert_close(adv[1], torch.tensor([-0.5 / s, -0.5 / s, -0.5 / s, 1.5 / s]))
    # group 1 is the same whether or not group 2 is present, and whatever group 2 holds
    torch.testing.assert_close(adv[0], group_advantages(rewards[:1], eps=EPS)[0])
    other = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [9.0, -4.0, 2.0, 2.0]]), eps=EPS)
    torch.testing.assert_close(adv[0], other[0])


# ---------------------------------------------------------------- policy_loss

def _logp_for_ratios(ratios):
    """logp with grad and old_logp such that exp(logp - old_logp) == ratios; old_logp = log(0.3)."""
    old = torch.full((1, len(ratios)), math.log(0.3))
    logp = (old + torch.log(torch.tensor([ratios]))).requires_grad_(True)
    return logp, old


def test_policy_loss_ratio_one_is_minus_advantage():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, -1.5]])
    adv = torch.tensor([2.0, -0.5])  # [B], broadcast over T
    loss, stats = policy_loss(logp, logp.clone(), adv, clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-2.0] * 3, [0.5] * 3]))
    torch.testing.assert_close(stats["ratio"], torch.ones(2, 3))
    assert not stats["clipped"].any()


def test_policy_loss_clip_values_and_flags():
    # token 0: r=1.5, A=+2 -> -min(3.0, 1.28*2=2.56) = -2.56, clipped (upper, clip-higher 0.28)
    # token 1: r=0.5, A=-1 -> -min(-0.5, 0.8*-1=-0.8) = 0.8, clipped (lower, clip_low 0.2)
    # token 2: r=0.5, A=+1 -> -min(0.5, 0.8) = -0.5, NOT clipped (min picks the unclipped term)
    # token 3: r=1.0, A=+2 -> -2.0, not clipped
    logp, old = _logp_for_ratios([1.5, 0.5, 0.5, 1.0])
    adv = torch.tensor([[2.0, -1.0, 1.0, 2.0]])  # [B, T] form
    loss, stats = policy_loss(logp, old, adv, clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-2.56, 0.8, -0.5, -2.0]]))
    torch.testing.assert_close(stats["ratio"], torch.tensor([[1.5, 0.5, 0.5, 1.0]]))
    assert stats["clipped"].tolist() == [[True, True, False, False]]
    assert not stats["ratio"].requires_grad and not stats["clipped"].requires_grad


def test_policy_loss_gradient_zero_where_clipped():
    # d(-r*A)/d logp = -r*A where unclipped: token 2 -> -0.5*1 = -0.5, token 3 -> -1*2 = -2
    logp, old = _logp_for_ratios([1.5, 0.5, 0.5, 1.0])
    adv = torch.tensor([[2.0, -1.0, 1.0, 2.0]])
    loss, stats = policy_loss(logp, old, adv, clip_low=0.2, clip_high=0.28)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, -0.5, -2.0]]))
    assert torch.all(logp.grad[stats["clipped"]] == 0)


def test_policy_loss_accepts_1d_and_2d_advantages():
    logp, old = _logp_for_ratios([1.5, 0.5, 1.1])
    a1, _ = policy_loss(logp, old, torch.tensor([0.7]), 0.2, 0.28)
    a2, _ = policy_loss(logp, old, torch.full((1, 3), 0.7), 0.2, 0.28)
    torch.testing.assert_close(a1, a2)


# ---------------------------------------------------------------- kl_k3 / tis_weights

def test_kl_k3():
    logp = torch.tensor([[-1.3, -0.2]])
    assert torch.equal(kl_k3(logp, logp.clone()), torch.zeros(1, 2))
    # logp = 0, ref = log 2: x = log 2 -> 2 - log 2 - 1 = 0.306853
    # logp = log 2, ref = 0: x = -log 2 -> 0.5 + log 2 - 1 = 0.193147
    v = kl_k3(torch.tensor([[0.0, math.log(2)]]), torch.tensor([[math.log(2), 0.0]]))
    torch.testing.assert_close(v, torch.tensor([[1.0 - math.log(2), math.log(2) - 0.5]]))
    assert torch.all(kl_k3(torch.randn(4, 5), torch.randn(4, 5)) >= 0)


def test_tis_weights_cap_and_no_grad():
    # diffs: log 2 -> 2 capped to 1.5; log .5 -> .5; 0 -> 1; 1000 -> capped (no inf overflow)
    beh = torch.zeros(1, 4)
    old = torch.tensor([[math.log(2), math.log(0.5), 0.0, 1000.0]], requires_grad=True)
    w = tis_weights(old, beh, cap=1.5)
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.5, 1.0, 1.5]]))
    assert not w.requires_grad and w.grad_fn is None


def test_masked_is_weights_drop_both_sides():
    # ratios 2.5 (out), 1.9 (in), 0.55 (in), 0.4 (out), 1 (in), e^1000 (out, no overflow) with bound 2
    beh = torch.zeros(1, 6)
    old = torch.log(torch.tensor([[2.5, 1.9, 0.55, 0.4, 1.0, 1.0]]))
    old[0, 5] = 1000.0
    w = masked_is_weights(old, beh, bound=2.0)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.9, 0.55, 0.0, 1.0, 0.0]]))
    assert w.grad_fn is None


def test_decoupled_clips_against_the_proximal_policy():
    """Decoupled PPO: ratio to the proximal policy (prox = 0 here), weight prox/behaviour (cap 5, clip 0.2/0.28).
    Token 0 (A=+1): ratio 1.1 to prox, in range, so it trains, weighted 2; against its stale behaviour policy
    (ratio 2.2) plain PPO would have clipped it. Token 1 (A=+1, ratio 1.5 > 1.28) and token 2 (A=-1, ratio
    0.7 < 0.8) are clipped against prox: loss -1.28 and 0.8, no gradient. Token 3 (A=+1, ratio 1.1, weight 0.5):
    loss -0.55. Gradient of -r*A*w in logp is -r*A*w: -2.2, 0, 0, -0.55."""
    logp = torch.log(torch.tensor([[1.1, 1.5, 0.7, 1.1]])).requires_grad_()
    prox = torch.zeros(1, 4)
    behaviour = torch.log(torch.tensor([[0.5, 1.0, 1.0, 2.0]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0]])
    loss, stats = policy_loss(logp, prox, adv, 0.2, 0.28)
    w = decoupled_weights(prox, behaviour, cap=5.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, 1.0, 0.5]]))
    objective = loss * w
    torch.testing.assert_close(objective.detach(), torch.tensor([[-2.2, -1.28, 0.8, -0.55]]))
    assert stats["clipped"].tolist() == [[False, True, True, False]]
    _, against_behaviour = policy_loss(logp, behaviour, adv, 0.2, 0.28)
    assert against_behaviour["clipped"][0, 0]  # the coupled objective would have thrown token 0's gradient away
    token_mean(objective, torch.ones(1, 4), 4.0, 1.0).backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.2, 0.0, 0.0, -0.55]]) / 4)


def test_decoupled_weights_drop_tokens_above_the_cap():
    # prox/behaviour ratios 4.9 (kept), 5.1 (dropped), e^1000 (dropped, no overflow), 0.01 (kept: only shrinks);
    # TIS with the same cap keeps all four, the two large ones at 5
    behaviour = torch.zeros(1, 4)
    prox = torch.log(torch.tensor([[4.9, 5.1, 1.0, 0.01]]))
    prox[0, 2] = 1000.0
    w = decoupled_weights(prox.requires_grad_(), behaviour, cap=5.0)
    torch.testing.assert_close(w, torch.tensor([[4.9, 0.0, 0.0, 0.01]]))
    assert w.grad_fn is None
    torch.testing.assert_close(tis_weights(prox, behaviour, cap=5.0), torch.tensor([[4.9, 5.0, 5.0, 0.01]]))


def test_decoupled_is_plain_ppo_on_fresh_samples():
    """Behaviour == proximal (an on-policy sample): every weight is 1 and the objective is policy_loss's."""
    torch.manual_seed(0)
    prox = torch.randn(3, 5)
    logp = prox + 0.3 * torch.randn(3, 5)
    adv = torch.randn(3)
    loss, _ = policy_loss(logp, prox, adv, 0.2, 0.28)
    w = decoupled_weights(prox, prox, cap=5.0)
    assert torch.equal(w, torch.ones(3, 5))
    torch.testing.assert_close(loss * w, loss)


def test_dual_clip_caps_negative_advantage_tokens():
    # A = -1, clip 0.2/0.28, dual 3: ratio 5 -> unclipped loss 5 capped at 3; ratio 2 -> 2 (under the cap);
    # A = +1 with ratio 5: the upper clip binds (loss -1.28), dual-clip does not apply
    logp = torch.log(torch.tensor([[5.0, 2.0, 5.0]])).requires_grad_()
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    loss, stats = policy_loss(logp, torch.zeros(1, 3), adv, 0.2, 0.28, dual_clip=3.0)
    torch.testing.assert_close(loss.detach(), torch.tensor([[3.0, 2.0, -1.28]]))
    assert stats["clipped"].tolist() == [[True, False, True]]
    loss.sum().backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] == pytest.approx(2.0)  # d(-r*A)/dlogp = -r*A = 2


@pytest.mark.parametrize("name", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_loss_is_finite_for_extreme_log_ratios(name):
    """Log-prob differences of +-100 in fp32 at real and padded positions: finite loss and gradient (exp(100)
    overflows fp32 to inf, and inf * a mask's 0 is NaN)."""
    old = torch.zeros(2, 4)
    logp = torch.tensor([[100.0, -100.0, 0.1, 100.0], [-100.0, 0.0, 100.0, -100.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # padded positions hold +-100 too
    adv = torch.tensor([-1.0, 2.0])
    for dual in (None, 3.0):
        loss, _ = policy_loss(logp, old, adv, 0.2, 0.28, dual_clip=dual)
        loss = loss + 0.1 * kl_k3(logp, old)
        total = AGGREGATIONS[name](loss, mask, 5.0, 2.0)
        (grad,) = torch.autograd.grad(total, logp)
        assert torch.isfinite(total) and torch.isfinite(grad).all(), (dual, total, grad)
        assert (grad[mask == 0] == 0).all()  # padded positions get no gradient


# ---------------------------------------------------------------- aggregation

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])  # 3 tokens, 2 sequences


def test_aggregations_exact():
    # masked loss: seq 0 -> 1+2 = 3 over 2 tokens, seq 1 -> 4 over 1 token; total 7 over 3 tokens
    assert token_mean(LOSS, MASK, 3, 2).item() == pytest.approx(7 / 3)
    assert seq_mean_token_mean(LOSS, MASK, 3, 2).item() == pytest.approx((1.5 + 4.0) / 2)  # 2.75
    assert seq_mean_token_sum(LOSS, MASK, 3, 2).item() == pytest.approx(7 / 2)
    assert set(AGGREGATIONS) == {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum"}
    assert AGGREGATIONS["token-mean"] is token_mean


def test_masked_mean():
    assert masked_mean(LOSS, MASK).item() == pytest.approx(7 / 3)
    assert masked_mean(LOSS, torch.zeros(2, 3)).item() == 0.0  # empty mask: 0, not NaN


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_micro_batch_sum_equals_full_batch(name):
    agg = AGGREGATIONS[name]
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(5, 7, generator=g)
    lengths = torch.tensor([7, 1, 4, 0, 3])  # includes an empty sequence
    mask = (torch.arange(7)[None, :] < lengths[:, None]).float()
    num_tokens, num_seqs = float(mask.sum()), 5.0
    full = agg(loss, mask, num_tokens, num_seqs)
    parts = sum(agg(loss[i:j], mask[i:j], num_tokens, num_seqs) for i, j in [(0, 2), (2, 3), (3, 5)])
    torch.testing.assert_close(parts, full)
    # the hand-made batch split into its two rows
    rows = sum(agg(LOSS[i:i + 1], MASK[i:i + 1], 3, 2) for i in range(2))
    torch.testing.assert_close(rows, agg(LOSS, MASK, 3, 2))


def test_token_mean_weights_long_sequences_more():
    # long seq: 3 tokens of loss 1; short seq: 1 token of loss 0
    # token-mean = 3/4 (long seq weighs 3/4); seq-mean-token-mean = (1 + 0)/2 (each seq weighs 1/2)
    loss = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    tm = token_mean(loss, mask, 4, 2)
    sm = seq_mean_token_mean(loss, mask, 4, 2)
    assert tm.item() == pytest.approx(0.75) and sm.item() == pytest.approx(0.5)
    # per-token gradient weights: token-mean 1/4 everywhere; seq-mean 1/6 on the long seq, 1/2 on the short
    (g_tm,) = torch.autograd.grad(tm, loss)
    (g_sm,) = torch.autograd.grad(sm, loss)
    torch.testing.assert_close(g_tm, torch.tensor([[0.25] * 3, [0.25, 0.0, 0.0]]))
    torch.testing.assert_close(g_sm, torch.tensor([[1 / 6] * 3, [0.5, 0.0, 0.0]]))


# ---------------------------------------------------------------- dynamic sampling

def test_informative():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5 + 1e-12, 0.5], [0.0, 0.0, 0.0]])
    assert informative(rewards).tolist() == [False, True, False, False]


def test_dynamic_sampler_two_rounds():
    s = DynamicSampler(target=3)
    # round 1: a all_correct, b all_wrong, c kept, d all_equal (0.5), e kept -> 2 held
    s.add(list("abcde"), torch.tensor([
        [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 1.0, 1.0]]))
    assert len(s) == 2 and not s.full and s.missing == 1
    with pytest.raises(RuntimeError):
        s.take()
    # round 2: f kept, g all_wrong, h kept -> 4 held, full
    s.add(list("fgh"), torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]]))
    assert s.full and s.missing == 0
    assert s.take() == ["c", "e", "f"]  # exactly target, oldest first; h is surplus
    assert s.stats() == {
        "rounds": 2, "seen": 8, "kept": 4,
        "dropped_all_correct": 1, "dropped_all_wrong": 2, "dropped_all_equal": 1, "dropped_surplus": 1,
    }
    assert len(s) == 0 and not s.full  # surplus discarded to stay on-policy
    # the next add starts a fresh batch's counters
    s.add(["x"], torch.tensor([[1.0, 1.0]]))
    assert s.stats()["rounds"] == 1 and s.stats()["dropped_all_correct"] == 1 and s.stats()["kept"] == 0


def test_dynamic_sampler_keep_all():
    s = DynamicSampler(target=2, keep_all=True)
    s.add(["a", "b", "c"], torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]))
    assert s.full
    assert s.take() == ["a", "b"]
    st = s.stats()
    assert st["kept"] == 3 and st["dropped_surplus"] == 1 and st["dropped_all_correct"] == 0


def test_dynamic_sampler_rejects_mismatched_rewards():
    with pytest.raises(ValueError):
        DynamicSampler(target=2).add(["a"], torch.zeros(2, 4))
