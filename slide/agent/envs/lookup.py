"""Tool use with facts only the tool knows: look up the prices of a few items, answer their total.

    task = LookupTask(); problem = task.generate(random.Random(0), level=2)  # "What do fig and kiwi cost ..."
    run_episodes(engine, tok, [problem], lambda p: LookupEnv(), params, n=8, max_turns=3, max_tokens=512)

Every problem draws its own prices (1-50, in `meta`), so no model can know them: it must call `lookup` with
the items (comma-separated; one call may name several) and add what comes back. Level L asks for L items
(1-3). An unknown item is an error observation; the final answer is verified numerically.
"""
from __future__ import annotations

import random

from slide.agent.env import StepResult, arg_text, tool_schema
from slide.errors import UserError
from slide.tasks.answer import final_answer, numbers_equal
from slide.tasks.base import Problem

TOOLS = [tool_schema("lookup", "Prices of items today.", {"items": ("string", "comma-separated, e.g. fig,kiwi")})]
ITEMS = ("apple", "fig", "kiwi", "lime", "pear", "plum", "date", "melon", "grape", "peach")


def observation(prices: dict, items: list[str]) -> tuple[str, bool]:
    """The tool's answer for `items` and whether all were known."""
    unknown = [i for i in items if i not in prices]
    if unknown:
        return f"error: unknown item {unknown[0][:20]!r} (known: {', '.join(sorted(prices))})", False
    return ", ".join(f"{i}={prices[i]}" for i in items), True


class LookupTask:
    name = "lookup"
    levels: tuple[int, ...] = (1, 2, 3)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in self.levels:
            raise UserError(f"lookup has no level {level} (levels: 1-3)")
        items = rng.sample(ITEMS, level)
        prices = {i: rng.randint(1, 50) for i in rng.sample(ITEMS, 5) + items}  # the asked ones and some others
        total = sum(prices[i] for i in items)
        question = items[0] if level == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"
        verb = "cost" if level > 1 else "costs"
        return Problem(prompt=f"What {verb} {question} in total? Use lookup.", answer=str(total), family=self.name,
                       level=level, reasoning="Prices change: call lookup.", solution=str(total),
                       meta={"items": items, "prices": prices})

    def verify(self, problem: Problem, response: str) -> float:
        return 1.0 if numbers_equal(final_answer(response), problem.answer) else 0.0


class LookupEnv:
    """One episode: each `lookup` call returns today's prices of the named items (this problem's)."""

    tools = TOOLS

    def __init__(self) -> None:
        self.task, self.prices = LookupTask(), {}

    def reset(self, problem: Problem) -> list[dict]:
        self.prices = dict(problem.meta["prices"])
        return [{"role": "user", "content": problem.prompt}]

    def step(self, call: dict) -> StepResult:
        items = [i.strip() for i in arg_text(call["arguments"]["items"]).split(",") if i.strip()]
        text, ok = observation(self.prices, items)
        return StepResult(text) if ok else StepResult(text, error="tool_error")

    def reward(self, problem: Problem, response: str) -> float:
        return self.task.verify(problem, response)


def trace(problem: Problem) -> dict:
    """A correct conversation {"messages", "tools", "problem"}: one lookup of all the items, their sum."""
    items, prices = problem.meta["items"], problem.meta["prices"]
    total = "+".join(str(prices[i]) for i in items) + f"={problem.answer}"
    return {"tools": TOOLS, "problem": problem, "messages": [
        {"role": "user", "content": problem.prompt},
        {"role": "assistant", "reasoning_content": problem.reasoning, "content": "",
         "tool_calls": [{"name": "lookup", "arguments": {"items": ",".join(items)}}]},
        {"role": "tool", "content": observation(prices, items)[0]},
        {"role": "assistant", "reasoning_content": total, "content": problem.answer},
    ]}
