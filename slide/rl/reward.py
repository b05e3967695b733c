"""Rewards that never kill a run: an exception or a timeout scores 0 and is counted.

A reward function is any callable `(problem, response_text) -> float`. Each call runs in a daemon
thread bounded by `timeout_s`; a hung call is abandoned (its thread cannot be killed, but it never
blocks the run or the interpreter's exit). Code rewards that may hang for real run in the sandbox.
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from typing import Callable

from slide.tasks.base import Problem

RewardFn = Callable[[Problem, str], float]


def safe_reward(fn: RewardFn, problem: Problem, response: str, timeout_s: float) -> tuple[float, str]:
    """(reward, status) with status "ok", "error" or "timeout"; the reward is 0 unless "ok"."""
    box: dict = {}

    def call():
        try:
            box["value"] = float(fn(problem, response))
        except BaseException as e:  # a verifier bug is data, not a crash
            box["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return 0.0, "timeout"
    if "error" in box or not math.isfinite(box.get("value", float("nan"))):
        return 0.0, "error"
    return box["value"], "ok"


class RewardRunner:
    """Scores responses with `fn` and counts failures by kind (reset by `pop_stats`)."""

    def __init__(self, fn: RewardFn, timeout_s: float):
        self.fn, self.timeout_s = fn, timeout_s
        self.failures: Counter = Counter()

    def __call__(self, problem: Problem, response: str) -> float:
        value, status = safe_reward(self.fn, problem, response, self.timeout_s)
        if status != "ok":
            self.failures[status] += 1
        return value

    def pop_stats(self) -> dict[str, int]:
        out = {"reward_errors": self.failures["error"], "reward_timeouts": self.failures["timeout"]}
        self.failures.clear()
        return out
