"""GRPO pieces as pure tensor functions: group advantages, clipped surrogate, k3 KL, importance weights (TIS,
masked IS, decoupled PPO's behaviour weight), aggregation.

Shapes: G groups of n samples; B sequences of T tokens. Every function takes its inputs explicitly and
returns tensors; masking and aggregation over tokens are left to the aggregation functions below.

Finite off-policy: log-ratios are clamped to +-MAX_LOG_RATIO before exp, and masks select (torch.where) instead
of multiplying, so one extreme ratio, at a real or a padded position, never turns the loss or its gradient into
inf or NaN (0 * inf is NaN).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


MAX_LOG_RATIO = 20.0  # exp(20) ~ 5e8: far past any clip or cap, far from float32's overflow


def group_advantages(rewards: Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Reward minus its group's mean, optionally divided by (group std + eps).

    The std is the population std (unbiased=False): it is defined for any group size, and a group of
    two with rewards (0, 1) gets advantages -1/(0.5+eps), +1/(0.5+eps). A constant group gives zeros
    because the numerator is exactly zero.
    """
    if not rewards.is_floating_point():  # int/bool rewards; keep float64 if given
        rewards = rewards.float()  # [G, n]
    mean = rewards.mean(dim=-1, keepdim=True)  # [G, 1]
    adv = rewards - mean  # [G, n]
    if scale_by_std:
        std = rewards.std(dim=-1, unbiased=False, keepdim=True)  # [G, 1]
        adv = adv / (std + eps)
    return adv  # [G, n]


def _per_token(advantages: Tensor, like: Tensor) -> Tensor:
    """Broadcast per-sequence advantages [B] to [B, T]; [B, T] passes through."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # [B, 1]
    return advantages.to(like.dtype).expand_as(like)  # [B, T]


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO clipped surrogate, -min(r*A, clip(r, 1-clip_low, 1+clip_high)*A).

    logp: [B, T] current policy (with grad); old_logp: [B, T] before the update; advantages: [B] or [B, T].
    dual_clip (c > 1, e.g. 3): for A < 0 the loss is also capped at -c*A, so a token whose ratio ran far up
    cannot dominate the update (Ye et al. 2020's dual-clip PPO).
    Returns the loss [B, T] and detached per-token stats: "ratio" [B, T] and "clipped" [B, T] bool,
    True where a clipped branch is the one selected (so the token gets no gradient).
    """
    adv = _per_token(advantages, logp)  # [B, T]
    log_ratio = (logp - old_logp.detach()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B, T]
    unclipped_loss = -ratio * adv  # [B, T]
    clipped_loss = -clipped_ratio * adv  # [B, T]
    # max of the negated terms == -min of the surrogates (pessimistic bound)
    loss = torch.maximum(unclipped_loss, clipped_loss)  # [B, T]
    # Clipping binds only on the side that would push the ratio further out: up for A>0, down for A<0.
    clipped = ((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low))  # [B, T]
    if dual_clip is not None:
        capped = (adv < 0) & (loss > -dual_clip * adv)  # [B, T]
        loss = torch.where(capped, -dual_clip * adv, loss)
        clipped = clipped | capped
    stats = {"ratio": ratio.detach(), "clipped": clipped.detach()}
    return loss, stats


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 estimator of KL(pi || ref) per token: exp(ref-logp) - (ref-logp) - 1, always >= 0."""
    log_ratio = (ref_logp - logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # [B, T]
    return torch.exp(log_ratio) - log_ratio - 1.0  # [B, T]


def tis_weights(old_logp: Tensor, behaviour_logp: Tensor, cap: float) -> Tensor:
    """Truncated importance weights min(exp(old_logp - behaviour_logp), cap), without grad.

    old_logp: the trainer's logprobs before the update; behaviour_logp: the rollout engine's. Corrects
    the mismatch between the two engines; the cap bounds the variance.
    """
    with torch.no_grad():
        # clamp in log space so a huge mismatch cannot overflow exp to inf
        log_w = (old_logp - behaviour_logp).clamp(max=math.log(cap))  # [B, T]
        return torch.exp(log_w)  # [B, T]


def masked_is_weights(old_logp: Tensor, behaviour_logp: Tensor, bound: float) -> Tensor:
    """Masked importance sampling (IcePop, GLM-5's double-sided masking), without grad: the weight
    exp(old_logp - behaviour_logp) where it lies in [1/bound, bound], 0 outside (those tokens are not trained).
    Unlike TIS, which caps a large weight and keeps the token, a token the engine and the trainer disagree on
    in either direction drops out of the update."""
    with torch.no_grad():
        log_w = (old_logp - behaviour_logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # [B, T]
        return torch.where(log_w.abs() <= math.log(bound), torch.exp(log_w), torch.zeros_like(log_w))  # [B, T]


def decoupled_weights(prox_logp: Tensor, behaviour_logp: Tensor, cap: float) -> Tensor:
    """Decoupled PPO's behaviour weight (AReaL, Fu et al. 2025), without grad: exp(prox_logp - behaviour_logp)
    where it is at most `cap`, 0 above (the token is not trained), as AReaL's behav_imp_weight_cap filters.

    prox_logp: [B, T] the proximal policy's logprobs (the trainer's weights when the sample is trained, before
    this step's first update); behaviour_logp: [B, T] the engine's, recorded when the (possibly stale) sample was
    made. The objective is policy_loss(logp, prox_logp, ...) * decoupled_weights(prox_logp, behaviour_logp, cap):
    the PPO clip is a trust region around the proximal policy, however old the behaviour policy, and the weight
    corrects for sampling from the behaviour policy. A token whose weight is far above 1 is one the trainer now
    likes much more than the stale engine did: its one sample says little, so it is dropped, not truncated (TIS)
    and kept. Small weights are kept as they are (they only shrink the token's gradient)."""
    with torch.no_grad():
        log_w = (prox_logp - behaviour_logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # [B, T]
        return torch.where(log_w <= math.log(cap), torch.exp(log_w), torch.zeros_like(log_w))  # [B, T]


def _select(x: Tensor, mask: Tensor) -> Tensor:
    """x where mask is set, 0 elsewhere, by selection: an inf or NaN at a masked position stays out."""
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over positions where mask is set; 0 for an empty mask (no NaN)."""
    return _select(x, mask).sum() / mask.to(x.dtype).sum().clamp(min=1.0)


# Aggregations. num_tokens / num_seqs are totals over the WHOLE batch, so each function is a sum of
# per-sequence terms divided by a batch constant: summing it over micro-batches gives the full-batch value.


def token_mean(loss: Tensor, mask: Tensor, num_tokens: float, num_seqs: float) -> Tensor:
    """sum(loss*mask) / num_tokens: every token weighs the same (GLM's choice, the default)."""
    return _select(loss, mask).sum() / num_tokens


def seq_mean_token_mean(loss: Tensor, mask: Tensor, num_tokens: float, num_seqs: float) -> Tensor:
    """Mean over sequences of each sequence's token mean: every sequence weighs the same."""
    per_seq = _select(loss, mask).sum(dim=-1) / mask.to(loss.dtype).sum(dim=-1).clamp(min=1.0)  # [B]
    return per_seq.sum() / num_seqs


def seq_mean_token_sum(loss: Tensor, mask: Tensor, num_tokens: float, num_seqs: float) -> Tensor:
    """sum(loss*mask) / num_seqs: token sums averaged over sequences (Dr.GRPO-like, no length division)."""
    return _select(loss, mask).sum() / num_seqs


Aggregation = Callable[[Tensor, Tensor, float, float], Tensor]

AGGREGATIONS: dict[str, Aggregation] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
}

# What each aggregation divides its sum by, given an update's (num_tokens, num_seqs): a trainer that sums
# unnormalised micro-batch losses as samples arrive divides the gradients by this at the end.
LOSS_DIVISOR: dict[str, Callable[[float, float], float]] = {
    "token-mean": lambda num_tokens, num_seqs: num_tokens,
    "seq-mean-token-mean": lambda num_tokens, num_seqs: num_seqs,
    "seq-mean-token-sum": lambda num_tokens, num_seqs: num_seqs,
}

