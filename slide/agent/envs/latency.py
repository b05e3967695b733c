"""Heavy-tailed step times for any environment, so an async trainer has slow episodes to not wait for.

    factory = with_latency(lambda p: CalculatorEnv(), median_s=0.2, sigma=1.0, cap_s=5.0, seed=0)
    run_episodes(engine, tok, problems, factory, ...)

Each step sleeps a log-normal time (median `median_s`, log-space standard deviation `sigma`, at most `cap_s`)
before the wrapped env answers: with sigma=1 one step in 20 takes over 5x the median, one in 100 over 10x.
"""
from __future__ import annotations

import itertools
import math
import random
import time

from slide.agent.env import Env, EnvFactory, StepResult
from slide.tasks.base import Problem


class LatencyEnv:
    """`env` with a log-normal sleep in every step; everything else is passed through."""

    def __init__(self, env: Env, median_s: float, sigma: float, cap_s: float, rng: random.Random):
        if median_s < 0 or sigma < 0 or cap_s < 0:
            raise ValueError(f"latency: median_s, sigma and cap_s must be >= 0 (got {median_s}, {sigma}, {cap_s})")
        self.env, self.median_s, self.sigma, self.cap_s, self.rng = env, median_s, sigma, cap_s, rng
        self.delays: list[float] = []  # seconds slept, one per step

    @property
    def tools(self) -> list[dict]:
        return self.env.tools

    @property
    def isolate(self) -> bool:  # whether the wrapped env's calls run in the call pool (slide/agent/isolated.py)
        return getattr(self.env, "isolate", False)

    def delay(self) -> float:
        """The next step's sleep in seconds (drawn from this env's rng)."""
        if self.median_s == 0:
            return 0.0
        return min(self.cap_s, self.median_s * math.exp(self.sigma * self.rng.gauss(0.0, 1.0)))

    def reset(self, problem: Problem) -> list[dict]:
        return self.env.reset(problem)

    def step(self, call: dict) -> StepResult:
        d = self.delay()
        self.delays.append(d)
        time.sleep(d)
        return self.env.step(call)

    def reward(self, problem: Problem, response: str) -> float:
        return self.env.reward(problem, response)

    def pop_notes(self) -> dict[str, int]:
        pop = getattr(self.env, "pop_notes", None)
        return pop() if pop else {}


def with_latency(factory: EnvFactory, median_s: float, sigma: float, cap_s: float, seed: int) -> EnvFactory:
    """A factory whose envs are `factory`'s wrapped in LatencyEnv; the k-th env made draws from seed (seed, k),
    so a run's delays are reproducible."""
    made = itertools.count()  # next() on a count is atomic: factories may be called from several threads

    def make(problem: Problem) -> LatencyEnv:
        rng = random.Random(f"{seed}:{next(made)}")
        return LatencyEnv(factory(problem), median_s, sigma, cap_s, rng)

    return make
