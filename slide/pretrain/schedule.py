"""One learning-rate schedule over the tokens of all stages, and the batch-size warmup (GLM-4.5: warmup, cosine
decay from 2.5e-4 to 2.5e-5; the batch growing from 16M to 64M tokens over the first 500B).

Both are pure functions of tokens trained so far, so a stage boundary is just a point on one curve and a resumed
run recomputes exactly the values it would have had.
"""
from __future__ import annotations

import math

from slide.pretrain.config import ScheduleSpec


def lr_at(tokens: int, total: int, s: ScheduleSpec) -> float:
    """The learning rate of the step that ends with `tokens` trained, of `total` planned."""
    peak, low = s.lr, s.lr * s.min_lr_ratio
    if s.warmup_tokens and tokens < s.warmup_tokens:
        return peak * tokens / s.warmup_tokens
    if s.decay == "wsd":  # stable at the peak, then linear to the floor over the last wsd_decay_frac of tokens
        start = max(s.warmup_tokens, total * (1 - s.wsd_decay_frac))
        return peak - (peak - low) * min(1.0, max(0.0, (tokens - start) / max(1, total - start)))
    p = min(1.0, max(0.0, (tokens - s.warmup_tokens) / max(1, total - s.warmup_tokens)))  # decay progress 0..1
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * p))


def batch_tokens_at(tokens: int, s: ScheduleSpec) -> int:
    """Tokens in the step that starts after `tokens`: linear from batch_start_tokens to batch_tokens."""
    if s.batch_start_tokens is None or not s.batch_warmup_tokens or tokens >= s.batch_warmup_tokens:
        return s.batch_tokens
    return round(s.batch_start_tokens + (s.batch_tokens - s.batch_start_tokens) * tokens / s.batch_warmup_tokens)


def rows_at(tokens: int, seq_len: int, s: ScheduleSpec) -> int:
    """Rows of `seq_len` in the step that starts after `tokens` (at least one)."""
    return max(1, round(batch_tokens_at(tokens, s) / seq_len))


def plan(stages, s: ScheduleSpec) -> list[list[tuple[int, float]]]:
    """Per stage, its steps as (rows, lr): each stage runs until its token budget is reached; the schedule runs
    over the planned tokens of all stages (each stage's last step may pass its budget by less than one batch)."""
    steps: list[list[tuple[int, int]]] = []
    tokens = 0
    for st in stages:
        mine, done = [], 0
        while done < st.tokens:
            rows = rows_at(tokens, st.seq_len, s)
            tokens += rows * st.seq_len
            done += rows * st.seq_len
            mine.append((rows, tokens))
        steps.append(mine)
    return [[(rows, lr_at(t, tokens, s)) for rows, t in mine] for mine in steps]
