"""Tool-needing arithmetic: products too big for a tiny model to do in its head, and a `calculate` tool.

    task = CalculatorTask(); problem = task.generate(random.Random(0), level=2)   # "What is 4821*377? ..."
    run_episodes(engine, tok, [problem], lambda p: CalculatorEnv(), params, n=8, max_turns=3, max_tokens=512)

Level 1: 3-digit * 2-digit, level 2: 3-digit * 3-digit, level 3: 4-digit * 3-digit plus a 3-digit term.
The tool evaluates `expression` with the safe parser of slide/tasks/expr.py (never eval); the final answer
is verified like the arithmetic task. `sft_traces` writes the conversations cold-start SFT teaches the format
with (render them with slide.agent.episode.encode_conversation).
"""
from __future__ import annotations

import random

from slide.agent.env import StepResult, arg_text, tool_schema
from slide.errors import UserError
from slide.tasks.answer import final_answer, numbers_equal
from slide.tasks.base import Problem
from slide.tasks.expr import ExprError, evaluate

TOOLS = [tool_schema("calculate", "Evaluate an arithmetic expression (integers, + - * / and parentheses).",
                     {"expression": ("string", "e.g. 123*45")})]
_DIGITS = {1: (3, 2, 0), 2: (3, 3, 0), 3: (4, 3, 3)}  # level -> digits of a, b, and of an added term c (0: none)


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def value_text(value) -> str:
    """A Fraction as the tool writes it: "56088", "-12" or "7/3"."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


class CalculatorTask:
    name = "calculator"
    levels: tuple[int, ...] = (1, 2, 3)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in _DIGITS:
            raise UserError(f"calculator has no level {level} (levels: 1-3)")
        da, db, dc = _DIGITS[level]
        a, b = _number(rng, da), _number(rng, db)
        expr = f"{a}*{b}" + (f"+{_number(rng, dc)}" if dc else "")
        answer = value_text(evaluate(expr))
        return Problem(prompt=f"What is {expr}? Use the calculator.", answer=answer, family=self.name, level=level,
                       reasoning="Too big to do in my head: call calculate.", solution=answer,
                       meta={"expression": expr})

    def verify(self, problem: Problem, response: str) -> float:
        return 1.0 if numbers_equal(final_answer(response), problem.answer) else 0.0


class CalculatorEnv:
    """One episode: the user asks the question; each `calculate` call returns the exact value or an error."""

    tools = TOOLS

    def __init__(self) -> None:
        self.task = CalculatorTask()

    def reset(self, problem: Problem) -> list[dict]:
        return [{"role": "user", "content": problem.prompt}]

    def step(self, call: dict) -> StepResult:
        try:
            return StepResult(value_text(evaluate(arg_text(call["arguments"]["expression"]))))
        except ExprError as e:
            return StepResult(f"error: {e}", error="tool_error")

    def reward(self, problem: Problem, response: str) -> float:
        return self.task.verify(problem, response)


def trace(problem: Problem) -> dict:
    """A correct conversation {"messages", "tools", "problem"} for `problem`: the user question, a call of
    calculate, the tool's observation, the final answer (render it with encode_conversation for SFT)."""
    expr = problem.meta["expression"]
    return {"tools": TOOLS, "problem": problem, "messages": [
        {"role": "user", "content": problem.prompt},
        {"role": "assistant", "reasoning_content": problem.reasoning, "content": "",
         "tool_calls": [{"name": "calculate", "arguments": {"expression": expr}}]},
        {"role": "tool", "content": problem.answer},
        {"role": "assistant", "reasoning_content": f"The tool says {expr}={problem.answer}.",
         "content": problem.answer},
    ]}


def sft_traces(rng: random.Random, count: int, levels: tuple[int, ...] = CalculatorTask.levels) -> list[dict]:
    """`count` correct conversations (see `trace`) for fresh problems drawn from `rng`."""
    task = CalculatorTask()
    return [trace(task.generate(rng, rng.choice(levels))) for _ in range(count)]
