"""Base conversion: a decimal number written in base 2, 3 or 8.

Level 1: numbers 2-15, level 2: 16-63, level 3: 64-255, level 4: 256-1023. The trace is repeated division
with the remainders (`13/2=6 r1, 6/2=3 r0, 3/2=1 r1, 1/2=0 r1`), read from the last one up. Verified by
exact digits (no prefix, no leading zeros).
"""
from __future__ import annotations

import random

from slide.errors import UserError
from slide.tasks.answer import final_answer
from slide.tasks.base import Problem

_RANGES = {1: (2, 15), 2: (16, 63), 3: (64, 255), 4: (256, 1023)}
_BASES = (2, 3, 8)


def to_base(value: int, base: int) -> str:
    digits = ""
    while True:
        value, r = divmod(value, base)
        digits = str(r) + digits
        if value == 0:
            return digits


def trace(value: int, base: int) -> str:
    steps = []
    while True:
        q, r = divmod(value, base)
        steps.append(f"{value}/{base}={q} r{r}")
        if q == 0:
            return ", ".join(steps)
        value = q


class BaseConversion:
    name = "base"
    levels: tuple[int, ...] = (1, 2, 3, 4)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in _RANGES:
            raise UserError(f"base has no level {level} (levels: 1-4)")
        value, base = rng.randint(*_RANGES[level]), rng.choice(_BASES)
        digits = to_base(value, base)
        return Problem(prompt=f"Write {value} in base {base}.", answer=digits, family=self.name, level=level,
                       reasoning=trace(value, base), solution=digits, meta={"value": value, "base": base})

    def verify(self, problem: Problem, response: str) -> float:
        return 1.0 if final_answer(response).strip() == problem.answer else 0.0
