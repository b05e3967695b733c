"""Prompt sources: which problems a run trains and evaluates on, with a resumable position."""
from __future__ import annotations

import random

from slide.tasks.base import Problem, Task

Specs = list[tuple[Task, tuple[int, ...]]]  # parsed once by slide.tasks.parse_task_specs

EVAL_SALT = 1_000_003  # eval problems come from their own RNG stream, never the training one


def _draw(specs, rng: random.Random) -> Problem:
    task, levels = specs[rng.randrange(len(specs))]
    return task.generate(rng, levels[rng.randrange(len(levels))])


def eval_problems(specs: Specs, count: int, seed: int) -> list[Problem]:
    """`count` distinct held-out problems, spread evenly over the specs' (task, level) pairs."""
    pairs = [(task, level) for task, levels in specs for level in levels]
    rng = random.Random(seed + EVAL_SALT)
    seen, out = set(), []
    for i in range(count * 20):
        if len(out) == count:
            break
        task, level = pairs[i % len(pairs)]
        p = task.generate(rng, level)
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out


class PromptSource:
    """Training problems drawn from task specs; never one of the held-out problems (best effort:
    gives up after 100 redraws, e.g. for a dataset smaller than the held-out set)."""

    def __init__(self, specs: Specs, seed: int, held_out: list[Problem] = ()):
        self.specs = specs
        self.rng = random.Random(seed)
        self.held_out = {p.key for p in held_out}

    def next(self, k: int) -> list[Problem]:
        out = []
        for _ in range(k):
            for _ in range(100):
                p = _draw(self.specs, self.rng)
                if p.key not in self.held_out:
                    break
            out.append(p)
        return out

    def start_stage(self, step: int, measure) -> dict | None:
        """A staged curriculum measures its next pool here; uniform draws have no stages."""
        return None

    def observe(self, groups) -> None:
        """Rewarded groups of this source's problems (a curriculum learns from them; uniform draws do not)."""

    def stats(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
