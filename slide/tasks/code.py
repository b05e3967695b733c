"""Write a tiny Python function; the reward is 1 iff it passes hidden unit tests run in the sandbox.

Level 1: f(x) = x + k or x - k.   Level 2: f(x) = a*x + b.
Level 3: f(xs) over a list: its largest or smallest element, the sum of elements above k, or the count of k.
The reference solution is a ```python block; the tests are `assert f(...) == ...` lines in meta["tests"].

A program that fakes success on purpose (reads its own source for the end marker, returns an object
whose __eq__ is always True) can still score 1; the sandbox bounds what it can do, not what it claims.
"""
from __future__ import annotations

import random
import re
import secrets

from slide.errors import UserError
from slide.sandbox import Limits, SandboxUnavailable, run_python
from slide.tasks.base import Problem

# Tight enough that a reward call (default timeout 5 s) always gets the sandbox's own verdict.
LIMITS = Limits(wall_s=2.0, cpu_s=2, memory_mb=256, processes=16, output_bytes=16384, file_mb=4)
_N_TESTS = 5
_THINK_END = "</think>"
_STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
# A fenced block, optionally tagged python/py; an unclosed last fence runs to the end of the text.
_FENCE = re.compile(r"```(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(response: str) -> str:
    """The program in a response: the last fenced block after `</think>`, else all the text after it."""
    idx = response.rfind(_THINK_END)
    text = response[idx + len(_THINK_END):] if idx != -1 else response
    for tok in _STOP_TOKENS:
        text = text.split(tok, 1)[0]
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text.strip()


def unit_test_reward(code: str, tests: str, limits: Limits = LIMITS) -> tuple[float, str]:
    """(1.0, "ok") iff `code` followed by `tests` runs to the end with exit code 0, else (0.0, why).

    `why` is a sandbox status ("error", "timeout", ...), "incomplete" (exited 0 before the tests
    finished, e.g. by sys.exit), or "sandbox_unavailable". Never raises.
    """
    marker = secrets.token_hex(16)  # printed after the last test, so an early exit(0) does not pass
    program = f"{code}\n\n{tests}\nprint({marker!r})\n"
    try:
        result = run_python(program, limits=limits)
    except SandboxUnavailable:
        return 0.0, "sandbox_unavailable"
    if result.status != "ok":
        return 0.0, result.status
    lines = result.stdout.rstrip("\n").rsplit("\n", 1)
    return (1.0, "ok") if lines[-1] == marker else (0.0, "incomplete")


def _scalar_problem(rng: random.Random, level: int) -> tuple[str, str, str, list]:
    """(what f returns, body, reasoning, inputs) for f(x) on an integer."""
    k = rng.randint(1, 20)
    if level == 1:
        if rng.random() < 0.5:
            return f"x + {k}", f"x + {k}", f"f adds {k} to x.", [rng.randint(-50, 50) for _ in range(_N_TESTS)]
        return f"x - {k}", f"x - {k}", f"f subtracts {k} from x.", [rng.randint(-50, 50) for _ in range(_N_TESTS)]
    a = rng.randint(2, 9)
    return (f"{a} * x + {k}", f"{a} * x + {k}", f"f multiplies x by {a}, then adds {k}.",
            [rng.randint(-50, 50) for _ in range(_N_TESTS)])


def _list_problem(rng: random.Random) -> tuple[str, str, str, list]:
    """(what f returns, body, reasoning, inputs) for f(xs) on a list of integers."""
    inputs = [[rng.randint(0, 20) for _ in range(rng.randint(1, 8))] for _ in range(_N_TESTS)]
    k = rng.randint(0, 20)
    kind = rng.choice(("max", "min", "sum_above", "count"))
    if kind == "max":
        return "the largest number in the list xs", "max(xs)", "f returns the largest element: max(xs).", inputs
    if kind == "min":
        return "the smallest number in the list xs", "min(xs)", "f returns the smallest element: min(xs).", inputs
    if kind == "sum_above":
        return (f"the sum of the numbers in the list xs that are greater than {k}", f"sum(x for x in xs if x > {k})",
                f"f adds up the elements greater than {k}.", inputs)
    return (f"how many numbers in the list xs are equal to {k}", f"xs.count({k})",
            f"f counts the elements equal to {k}: xs.count({k}).", inputs)


class Code:
    name = "code"
    levels: tuple[int, ...] = (1, 2, 3)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in self.levels:
            raise UserError(f"code has no level {level} (levels: 1-3)")
        if level == 3:
            what, body, reasoning, inputs = _list_problem(rng)
            arg = "xs"
        else:
            what, body, reasoning, inputs = _scalar_problem(rng, level)
            arg = "x"
        program = f"def f({arg}):\n    return {body}\n"
        ref = eval(f"lambda {arg}: {body}")  # noqa: S307 - our own generated expression, not model output
        tests = "\n".join(f"assert f({x!r}) == {ref(x)!r}" for x in inputs)
        return Problem(
            prompt=f"Write a Python function f({arg}) that returns {what}. Answer with a ```python code block.",
            answer=program,
            family=self.name,
            level=level,
            reasoning=reasoning,
            solution=f"```python\n{program}```",
            meta={"tests": tests},
        )

    def verify(self, problem: Problem, response: str) -> float:
        tests = problem.meta.get("tests", "") if isinstance(problem.meta, dict) else ""
        if not isinstance(response, str) or not isinstance(tests, str) or not tests.strip():
            return 0.0
        return unit_test_reward(extract_code(response), tests)[0]
