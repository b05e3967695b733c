"""A scripted engine that writes a reference conversation's model turns, for episode tests."""
from __future__ import annotations

from slide.engine.inprocess import Completion


class ReplayEngine:
    """generate() like InProcessEngine: every row gets the `turns[i]` token ids on the i-th call."""

    def __init__(self, turns: list[list[int]]):
        self.turns, self.calls, self.version = turns, 0, 0

    def generate(self, prompts, params, n=1, generator=None):
        ids = self.turns[self.calls]
        self.calls += 1
        assert ids[-1] in params.stop_token_ids
        return [[Completion(list(ids), [-0.5] * len(ids), "stop", 0)] for _ in prompts]


def model_turns(ids: list[int], mask: list[int]) -> list[list[int]]:
    runs, prev = [], 0
    for i, m in zip(ids, mask):
        if m and not prev:
            runs.append([])
        if m:
            runs[-1].append(i)
        prev = m
    return runs
