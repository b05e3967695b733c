"""Countdown: combine some of the given numbers with + - * / to hit a target.

Level L gives L+1 source numbers (1..10 for L <= 2, else 1..25). The reference solution is built by
repeatedly combining two values of a pool, like a player would, so the trace is a list of steps
(`25*3=75, 75+7=82`) and the solution a minimally parenthesised expression (`25*3+7`).
Any expression that reaches the target with the allowed numbers wins, not just the reference.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from slide.errors import UserError
from slide.tasks.answer import final_answer
from slide.tasks.base import Problem
from slide.tasks.expr import ExprError, evaluate, numbers_used

MAX_TARGET = 999
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM_PREC = 3
# Each attempt almost always succeeds; the cap only guarantees termination.
_MAX_ATTEMPTS = 1000


@dataclass(frozen=True)
class _Node:
    value: int
    text: str  # minimally parenthesised expression
    prec: int  # precedence of the outermost operator (atoms bind tightest)


def _combine(left: _Node, op: str, right: _Node) -> _Node:
    p = _PREC[op]
    ltxt = f"({left.text})" if left.prec < p else left.text
    # - and / are not associative, so a same-precedence right operand keeps its parentheses.
    right_needs = right.prec < p or (right.prec == p and op in "-/")
    rtxt = f"({right.text})" if right_needs else right.text
    if op == "+":
        value = left.value + right.value
    elif op == "-":
        value = left.value - right.value
    elif op == "*":
        value = left.value * right.value
    else:
        value = left.value // right.value
    return _Node(value, f"{ltxt}{op}{rtxt}", p)


def _valid_ops(a: int, b: int) -> list[str]:
    """Ops for a (op) b that keep every intermediate a positive integer and are not no-ops."""
    ops = ["+"]
    if a > b:
        ops.append("-")
    if a != 1 and b != 1:
        ops.append("*")
    if b != 1 and a % b == 0:
        ops.append("/")
    return ops


def _random_solution(rng: random.Random, numbers: list[int]) -> tuple[_Node, list[str]]:
    """A random expression over a random subset (size >= 2) of `numbers`, with its step trace."""
    k = rng.randint(2, len(numbers))
    pool = [_Node(n, str(n), _ATOM_PREC) for n in rng.sample(numbers, k)]
    steps: list[str] = []
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        left, right = pool[i], pool[j]
        # Put the larger value on the left so - and / have more chances to be valid.
        if left.value < right.value:
            left, right = right, left
        op = rng.choice(_valid_ops(left.value, right.value))
        node = _combine(left, op, right)
        steps.append(f"{left.value}{op}{right.value}={node.value}")
        pool = [n for idx, n in enumerate(pool) if idx not in (i, j)] + [node]
    return pool[0], steps


def _prompt(numbers: list[int], target: int) -> str:
    nums = " ".join(str(n) for n in numbers)
    return f"Use the numbers {nums} to make {target}. Use each number at most once, with + - * / and parentheses."


class Countdown:
    name = "countdown"
    levels: tuple[int, ...] = (1, 2, 3, 4)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in self.levels:
            raise UserError(f"countdown has no level {level} (levels: 1-4)")
        hi = 10 if level <= 2 else 25
        for _ in range(_MAX_ATTEMPTS):
            numbers = [rng.randint(1, hi) for _ in range(level + 1)]
            node, steps = _random_solution(rng, numbers)
            # A target equal to a given number is solvable without any arithmetic: skip it.
            if 1 <= node.value <= MAX_TARGET and node.value not in numbers:
                break
        else:  # pragma: no cover - needs ~1000 consecutive unlucky draws
            raise RuntimeError("countdown: could not generate a problem")
        target = node.value
        return Problem(
            prompt=_prompt(numbers, target),
            answer=str(target),
            family=self.name,
            level=level,
            reasoning=", ".join(steps),
            solution=node.text,
            meta={"numbers": numbers, "target": target},
        )

    def verify(self, problem: Problem, response: str) -> float:
        # Accept `expr` or `expr=value`; the claimed value is ignored, the expression is checked.
        expr_text = final_answer(response).split("=", 1)[0]
        try:
            used = numbers_used(expr_text)
            value = evaluate(expr_text)
        except ExprError:
            return 0.0
        if Counter(used) - Counter(problem.meta["numbers"]):
            return 0.0  # a number used more often than given, or not given at all
        return 1.0 if value == int(problem.meta["target"]) else 0.0
