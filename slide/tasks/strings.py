"""String transforms: reverse a word, upper-case it, or shift each letter one place on (a->b, z->a).

Level L = word length 2L+1 (3, 5, 7, 9 letters). The trace spells the result one letter at a time, each
from its source letter (`reverse abc: c b a`, `shift abz: a>b b>c z>a`), so a character-level model has a
step per letter instead of one leap. Verified by exact match of the final answer.
"""
from __future__ import annotations

import random
import string

from slide.errors import UserError
from slide.tasks.answer import final_answer
from slide.tasks.base import Problem

_OPS = ("reverse", "upper", "shift")


def transform(op: str, word: str) -> str:
    if op == "reverse":
        return word[::-1]
    if op == "upper":
        return word.upper()
    return "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in word)


def trace(op: str, word: str) -> str:
    if op == "reverse":
        return f"reverse {word}: " + " ".join(reversed(word))
    if op == "upper":
        return f"upper {word}: " + " ".join(f"{c}>{c.upper()}" for c in word)
    return f"shift {word}: " + " ".join(f"{c}>{transform('shift', c)}" for c in word)


class Strings:
    name = "strings"
    levels: tuple[int, ...] = (1, 2, 3, 4)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in self.levels:
            raise UserError(f"strings has no level {level} (levels: 1-4)")
        op = rng.choice(_OPS)
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(2 * level + 1))
        result = transform(op, word)
        return Problem(prompt=f"Apply {op} to the word {word}.", answer=result, family=self.name, level=level,
                       reasoning=trace(op, word), solution=result, meta={"op": op, "word": word})

    def verify(self, problem: Problem, response: str) -> float:
        return 1.0 if final_answer(response) == problem.answer else 0.0
