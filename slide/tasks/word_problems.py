"""Multi-step word problems: a count of things changed by L+1 events (buy, give away, boxes of k, share).

Level L = L+1 steps (2, 3, 4, 5). Numbers stay small (at most 3 digits) and every intermediate a whole
non-negative number. The trace is one equation per event (`5+3=8, 8*2=16, 16-4=12`), the answer the last
value. Verified numerically.
"""
from __future__ import annotations

import random

from slide.errors import UserError
from slide.tasks.answer import final_answer, numbers_equal
from slide.tasks.base import Problem

_NAMES = ("Ann", "Bo", "Cy", "Dee", "Eli")
_THINGS = ("apples", "cards", "coins", "pens", "shells")


def _event(rng: random.Random, value: int, thing: str) -> tuple[str, str, int]:
    """(sentence, equation, new value) for one event applied to `value`."""
    kinds = ["buy", "boxes"] + (["lose"] if value > 1 else []) + (["double"] if value < 200 else [])
    kinds += ["share"] if any(value % d == 0 for d in (2, 3)) and value > 0 else []
    kind = rng.choice(kinds)
    if kind == "buy":
        k = rng.randint(2, 20)
        return f"then gets {k} more", f"{value}+{k}={value + k}", value + k
    if kind == "boxes":
        k, size = rng.randint(2, 4), rng.randint(2, 6)
        return (f"then gets {k} boxes of {size}", f"{k}*{size}={k * size}, {value}+{k * size}={value + k * size}",
                value + k * size)
    if kind == "lose":
        k = rng.randint(1, min(value - 1, 20))
        return f"then gives away {k}", f"{value}-{k}={value - k}", value - k
    if kind == "double":
        return "then doubles them", f"{value}*2={value * 2}", value * 2
    d = 2 if value % 2 == 0 else 3
    return f"then keeps 1 of every {d}", f"{value}/{d}={value // d}", value // d


class WordProblems:
    name = "word"
    levels: tuple[int, ...] = (1, 2, 3, 4)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in self.levels:
            raise UserError(f"word has no level {level} (levels: 1-4)")
        name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
        value = rng.randint(2, 20)
        sentences, steps = [f"{name} has {value} {thing}"], []
        for _ in range(level + 1):
            sentence, equation, value = _event(rng, value, thing)
            sentences.append(sentence)
            steps.append(equation)
        prompt = ", ".join(sentences) + f". How many {thing} now?"
        return Problem(prompt=prompt, answer=str(value), family=self.name, level=level, reasoning=", ".join(steps),
                       solution=str(value), meta={})

    def verify(self, problem: Problem, response: str) -> float:
        return 1.0 if numbers_equal(final_answer(response), problem.answer) else 0.0
