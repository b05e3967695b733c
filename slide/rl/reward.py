"""Rewards that never kill a run: an exception or a timeout scores 0 and is counted.

A reward function is any callable `(problem, response_text) -> float`. Each call runs in a daemon
thread bounded by `timeout_s`; a hung call is abandoned (its thread cannot be killed, but it never
blocks the run or the interpreter's exit). Code rewards that may hang for real run in the sandbox.
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from typing import Any, Callable

from slide.tasks.base import Problem

RewardFn = Callable[[Problem, str], float]


def bounded_call(fn: Callable, *args, timeout_s: float) -> tuple[str, Any]:
    """Run fn(*args) in a daemon thread: ("ok", value), ("raised", exception) or ("timeout", None). A call that
    times out is abandoned (threads cannot be killed) but never blocks the run or the interpreter's exit."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # an env bug is data, not a crash
            box["raised"] = e

    t = threading.Thread(target=target, daemon=True, name="slide-bounded-call")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return "timeout", None
    return ("raised", box["raised"]) if "raised" in box else ("ok", box.get("value"))


def safe_reward(fn: RewardFn, problem: Problem, response: str, timeout_s: float) -> tuple[float, str]:
    """(reward, status) with status "ok", "error" or "timeout"; the reward is 0 unless "ok"."""
    status, value = bounded_call(lambda: float(fn(problem, response)), timeout_s=timeout_s)
    if status == "timeout":
        return 0.0, "timeout"
    if status == "raised" or not math.isfinite(value):  # a verifier bug is data, not a crash
        return 0.0, "error"
    return value, "ok"


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
