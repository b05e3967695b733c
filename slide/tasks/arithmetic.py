"""Integer arithmetic (+ - *) with column-wise reasoning traces a tiny character-level model can learn.

Level L = number of digits of each operand (multiplication: the second operand has one digit, so that
every trace is one pass over the columns and all three operations have traces of similar length).
Trace formats, least significant column first:
  add  47+85: `7+5=12 c1, 4+8+1=13 c1, 47+85=132`         (column sum, carry out)
  sub  85-47: `15-7=8 b1, 8-4-1=3 b0, 85-47=38`           (borrowed 10 shown on the top digit, borrow out)
  mul  47*85: `7*5=35 c3, 4*5+3=23 c2, 47*5=235, 7*8=56 c5, 4*8+5=37 c3, 47*80=3760, 235+3760=3995`
             (per non-zero digit of the second operand: its columns, the partial product; then a running sum)
"""
from __future__ import annotations

import random

from slide.errors import UserError
from slide.tasks.answer import final_answer, numbers_equal
from slide.tasks.base import Problem

_OPS = ("+", "-", "*")


def _operand(rng: random.Random, digits: int) -> int:
    # One-digit operands include 0; longer ones have no leading zero, so "digits" is exact.
    if digits == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _digits_lsb_first(n: int, width: int) -> list[int]:
    return [(n // 10**i) % 10 for i in range(width)]


def add_trace(a: int, b: int) -> str:
    width = max(len(str(a)), len(str(b)))
    steps = []
    carry = 0
    for x, y in zip(_digits_lsb_first(a, width), _digits_lsb_first(b, width)):
        s = x + y + carry
        lhs = f"{x}+{y}+1" if carry else f"{x}+{y}"
        carry = s // 10
        steps.append(f"{lhs}={s} c{carry}")
    steps.append(f"{a}+{b}={a + b}")
    return ", ".join(steps)


def sub_trace(a: int, b: int) -> str:
    """Trace of a-b for a >= b >= 0."""
    width = max(len(str(a)), len(str(b)))
    steps = []
    borrow = 0
    for x, y in zip(_digits_lsb_first(a, width), _digits_lsb_first(b, width)):
        need = y + borrow
        borrow_out = 1 if x < need else 0
        top = x + 10 * borrow_out
        lhs = f"{top}-{y}-1" if borrow else f"{top}-{y}"
        steps.append(f"{lhs}={top - need} b{borrow_out}")
        borrow = borrow_out
    steps.append(f"{a}-{b}={a - b}")
    return ", ".join(steps)


def _times_digit_trace(a: int, d: int) -> list[str]:
    """Column steps of a*d for one digit d, as in add_trace: `digit*d(+carry)=value cCARRY`."""
    steps, carry = [], 0
    for x in _digits_lsb_first(a, len(str(a))):
        s = x * d + carry
        lhs = f"{x}*{d}+{carry}" if carry else f"{x}*{d}"
        carry = s // 10
        steps.append(f"{lhs}={s} c{carry}")
    return steps


def mul_trace(a: int, b: int) -> str:
    partials = [(d, i) for i, d in enumerate(_digits_lsb_first(b, len(str(b)))) if d]
    if not partials:  # b == 0
        return f"{a}*0=0"
    steps = []
    for d, i in partials:
        if a >= 10:  # a one-digit a is a times-table fact: no columns
            steps += _times_digit_trace(a, d)
        steps.append(f"{a}*{d * 10**i}={a * d * 10**i}")
    total = a * partials[0][0] * 10 ** partials[0][1]
    for d, i in partials[1:]:
        p = a * d * 10**i
        steps.append(f"{total}+{p}={total + p}")
        total += p
    return ", ".join(steps)


class Arithmetic:
    name = "arithmetic"
    levels: tuple[int, ...] = (1, 2, 3, 4, 5)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in self.levels:
            raise UserError(f"arithmetic has no level {level} (levels: 1-5)")
        op = rng.choice(_OPS)
        a = _operand(rng, level)
        b = _operand(rng, 1 if op == "*" else level)
        if op == "-" and a < b:
            a, b = b, a  # keep results non-negative: no sign handling in the trace
        if op == "+":
            result, reasoning = a + b, add_trace(a, b)
        elif op == "-":
            result, reasoning = a - b, sub_trace(a, b)
        else:
            result, reasoning = a * b, mul_trace(a, b)
        return Problem(
            prompt=f"What is {a}{op}{b}?",
            answer=str(result),
            family=self.name,
            level=level,
            reasoning=reasoning,
            solution=str(result),
            meta={"a": a, "b": b, "op": op},
        )

    def verify(self, problem: Problem, response: str) -> float:
        return 1.0 if numbers_equal(final_answer(response), problem.answer) else 0.0
