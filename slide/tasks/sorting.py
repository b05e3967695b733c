"""Sorting: a list of numbers 0-99 in ascending order.

Level L = L+2 numbers (3, 4, 5, 6). The trace is selection sort, one pick per step (`min 3, min 17, ...`).
The answer is the numbers joined by commas; spaces are ignored when verifying (`3, 17` = `3,17`).
"""
from __future__ import annotations

import random

from slide.errors import UserError
from slide.tasks.answer import final_answer
from slide.tasks.base import Problem


def _canonical(text: str) -> str:
    return "".join(text.split())


class Sorting:
    name = "sorting"
    levels: tuple[int, ...] = (1, 2, 3, 4)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in self.levels:
            raise UserError(f"sorting has no level {level} (levels: 1-4)")
        numbers = [rng.randint(0, 99) for _ in range(level + 2)]
        ordered = ",".join(str(x) for x in sorted(numbers))
        return Problem(prompt=f"Sort ascending: {','.join(str(x) for x in numbers)}", answer=ordered,
                       family=self.name, level=level, reasoning=", ".join(f"min {x}" for x in sorted(numbers)),
                       solution=ordered, meta={"numbers": numbers})

    def verify(self, problem: Problem, response: str) -> float:
        return 1.0 if _canonical(final_answer(response)) == problem.answer else 0.0
