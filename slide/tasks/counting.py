"""Counting: how many times a letter occurs in a string of letters a-d.

Level L = string length 4L+2 (6, 10, 14, 18). The trace walks the string and numbers each occurrence
(`a1 b a2 c d a3`), so the count is the last number written. Verified numerically (`3` or `3.0`).
"""
from __future__ import annotations

import random

from slide.errors import UserError
from slide.tasks.answer import final_answer, numbers_equal
from slide.tasks.base import Problem

_LETTERS = "abcd"


def trace(text: str, letter: str) -> str:
    seen, out = 0, []
    for c in text:
        if c == letter:
            seen += 1
            out.append(f"{c}{seen}")
        else:
            out.append(c)
    return " ".join(out) + f", {seen}"


class Counting:
    name = "counting"
    levels: tuple[int, ...] = (1, 2, 3, 4)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in self.levels:
            raise UserError(f"counting has no level {level} (levels: 1-4)")
        text = "".join(rng.choice(_LETTERS) for _ in range(4 * level + 2))
        letter = rng.choice(_LETTERS)
        count = str(text.count(letter))
        return Problem(prompt=f"How many {letter} are in {text}?", answer=count, family=self.name, level=level,
                       reasoning=trace(text, letter), solution=count, meta={"text": text, "letter": letter})

    def verify(self, problem: Problem, response: str) -> float:
        return 1.0 if numbers_equal(final_answer(response), problem.answer) else 0.0
