"""A `python` tool: the model writes code, the sandbox (slide/sandbox.py) runs it, stdout/stderr come back.

    task = PythonTask(); problem = task.generate(random.Random(0), level=1)   # "What is the sum of ...?"
    run_episodes(engine, tok, [problem], lambda p: PythonEnv(), params, n=8, max_turns=3, max_tokens=1024)

Questions whose answer is a number easier computed than recalled (sums of primes, Fibonacci numbers,
divisor counts); the final answer is verified like the arithmetic task. A call whose code fails (non-zero
exit, timeout, memory, ...) is an observation counted as "code_error"; if this machine cannot sandbox (no
bwrap, no user namespaces) the observation says so and "sandbox_unavailable" is counted: never a crash.
"""
from __future__ import annotations

import random

from slide.agent.env import StepResult, arg_text, tool_schema
from slide.errors import UserError
from slide.tasks.answer import final_answer, numbers_equal
from slide.tasks.base import Problem

TOOLS = [tool_schema("python", "Run a Python program; its stdout and stderr come back.",
                     {"code": ("string", "the program")})]
MAX_OBSERVATION_CHARS = 600  # a character-level model pays one token per character of output


def _primes_below(n: int) -> list[int]:
    return [p for p in range(2, n) if all(p % d for d in range(2, int(p**0.5) + 1))]


def _fib(k: int) -> int:
    a, b = 0, 1
    for _ in range(k):
        a, b = b, a + b
    return a


def _question(rng: random.Random, level: int) -> tuple[str, int]:
    kind = rng.choice(["primes", "fib", "divisors"])
    if kind == "primes":
        n = rng.randint(50, 200) * level
        return f"What is the sum of the primes below {n}?", sum(_primes_below(n))
    if kind == "fib":
        k = rng.randint(20, 40) * level
        return f"What is Fibonacci number {k} (F0=0, F1=1)?", _fib(k)
    n = rng.randint(1000, 99999) * level
    return f"How many divisors does {n} have?", sum(1 for d in range(1, n + 1) if n % d == 0)


class PythonTask:
    name = "python"
    levels: tuple[int, ...] = (1, 2)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in self.levels:
            raise UserError(f"python has no level {level} (levels: 1-2)")
        question, answer = _question(rng, level)
        return Problem(prompt=f"{question} Use python.", answer=str(answer), family=self.name, level=level,
                       solution=str(answer))

    def verify(self, problem: Problem, response: str) -> float:
        return 1.0 if numbers_equal(final_answer(response), problem.answer) else 0.0


class PythonEnv:
    """Each `python` call runs in a fresh sandbox under `limits` (default: 5 s wall, 512 MiB, 4 KB of output)."""

    tools = TOOLS
    isolate = False  # its calls bound their own work: model code runs in the sandbox, the reward is numbers_equal

    def __init__(self, limits=None, max_chars: int = MAX_OBSERVATION_CHARS) -> None:
        self.limits, self.max_chars = limits, max_chars
        self.task = PythonTask()

    def reset(self, problem: Problem) -> list[dict]:
        return [{"role": "user", "content": problem.prompt}]

    def step(self, call: dict) -> StepResult:
        try:  # imported here so the rest of the agent code never depends on the sandbox being present
            from slide.sandbox import Limits, SandboxUnavailable, observation, run_python
        except ImportError as e:
            return StepResult(f"error: the code sandbox is unavailable ({e})", error="sandbox_unavailable")
        limits = self.limits or Limits(output_bytes=4096)
        try:
            result = run_python(arg_text(call["arguments"]["code"]), limits=limits)
        except SandboxUnavailable as e:
            return StepResult(f"error: the code sandbox is unavailable ({e})"[:300], error="sandbox_unavailable")
        text = observation(result)
        if len(text) > self.max_chars:  # keep the end: the status line and the last error lines matter most
            text = "...(cut)\n" + text[-self.max_chars:]
        return StepResult(text, error=None if result.status == "ok" else "code_error")

    def reward(self, problem: Problem, response: str) -> float:
        return self.task.verify(problem, response)
