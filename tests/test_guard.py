"""The guard before sympy: hand-derived bounds, the adversarial corpus scored 0 in time and counted by reason,
and no reference answer of any task suite rejected."""
import random
import time

import pytest
from adversarial import CORPUS

from slide.agent.envs.calculator import CalculatorTask
from slide.agent.envs.python_exec import PythonTask
from slide.rl.reward import ByFamily, RewardRunner
from slide.tasks import Arithmetic, Countdown
from slide.tasks.answer import final_answer, math_verify_equal
from slide.tasks.base import Problem
from slide.tasks.dataset import DatasetTask
from slide.tasks.guard import MAX_DIGITS, check


@pytest.mark.parametrize("text, reason", [
    # 10^e has e+1 digits, bounded by e * log10(10) = e: the limit is exactly MAX_DIGITS = 100000
    (f"10^{{{MAX_DIGITS}}}", None),
    (f"10^{{{MAX_DIGITS + 1}}}", "huge_power"),
    ("10**100001", "huge_power"),
    # a tower is bounded through its exponent: 2^(2^4) = 65536 is fine, 2^(2^(2^5)) has ~1.3e9 digits
    ("2^2^2^2", None),
    ("2^{2^{2^{5}}}", "huge_power"),
    # n! by Stirling: 25000! has 99,094 digits, 30000! has 121,288
    ("25000!", None),
    ("30000!", "huge_factorial"),
    ("(5!)!", None),  # 120!, 199 digits
    # a fraction to a power is as big as its numerator and denominator together
    ("(1/3)^{10^9}", "huge_power"),
    ("e^{1000}", None),
    ("\\frac{1}{2^{64}}", None),
    ("1.5\\times 10^{300}", None),
    ("x^2 + 3x - 1", None),
    # symbolic exponents and factorials are not expanded: correct answers math-verify checks in < 1 s
    ("e^{-\\frac{1}{2}\\left(\\frac{x-\\mu}{\\sigma}\\right)^{2}}", None),
    ("e^{-\\left(\\frac{x}{\\lambda}\\right)^{k}}", None),
    ("\\frac{(a_1+a_2+a_3)!}{a_1!a_2!a_3!}", None),
    ("x_{1}^{x_{2}^{x_{3}}}", None),
    ("x^{10^{9}}", None),
    ("(x+1)^{1000}", None),
    ("(x+1)^{1001}", "huge_power"),  # a bracketed symbolic base: simplify expands it
    ("\\binom{10}{3}", None),
    ("\\binom{10^{6}}{10}", None),  # <= (10^6)^10: 60 digits
    ("\\binom{10^{9}}{5\\cdot 10^{8}}", "huge_factorial"),
    ("\\Gamma(10^{8})", "huge_factorial"),
    ("x²", None),  # unicode digits are symbols, not numbers (int("²") raises)
    ("(" * 33 + "1" + ")" * 33, "nesting"),
    ("(" * 32 + "1" + ")" * 32, None),
    ("1" * 1001, "too_long"),
])
def test_bounds(text, reason):
    assert check(text) == reason


def dataset_task(tmp_path, answers, **kw) -> DatasetTask:
    path = tmp_path / "rows.jsonl"
    import json
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": a}) + "\n" for i, a in enumerate(answers)))
    return DatasetTask(str(path), **kw)


def test_the_adversarial_corpus_scores_zero_in_time_counted_by_reason(tmp_path):
    task = dataset_task(tmp_path, ["3889"], verifier="math")
    reward = RewardRunner(ByFamily({task.name: task.verify}), timeout_s=2.0)
    problem = task.problems()[0]
    assert reward(problem, "3889") == 1.0  # warm: the pool's workers are up
    reward.pop_stats()
    for text, why in CORPUS:
        t0 = time.perf_counter()
        assert reward(problem, f"<think>x</think>{text}") == 0.0
        assert time.perf_counter() - t0 < 2.0 + 3.0, repr(text[:30])  # the timeout plus a margin
        stats = reward.pop_stats()
        assert stats.get(f"reward_rejected/{why}", 0) == (1 if why else 0), (repr(text[:30]), stats)
        t0 = time.perf_counter()
        assert reward(problem, "\\frac{7778}{2}") == 1.0  # the next call, at normal speed
        assert time.perf_counter() - t0 < 2.0


def test_references_with_huge_values_are_refused_before_sympy(tmp_path):
    """An SFT/eval set whose reference is 9^9^9^9 (the issue's hang in slide sft's final evaluation)."""
    task = dataset_task(tmp_path, ["9^9^9^9", "7^(8^9)"])
    reward = RewardRunner(ByFamily({task.name: task.verify}), timeout_s=2.0)
    t0 = time.perf_counter()
    scores = reward.score([(p, ["7^(8^9)", "9^9^9^9", "3"]) for p in task.problems()])
    assert time.perf_counter() - t0 < 10
    assert scores == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]  # the exact string still matches
    assert reward.pop_stats()["reward_rejected/huge_power"] == 4


FAMILIES = [Arithmetic(), Countdown(), CalculatorTask(), PythonTask()]


@pytest.mark.parametrize("task", FAMILIES, ids=lambda t: t.name)
def test_no_reference_answer_of_the_task_suites_is_rejected(task):
    rng = random.Random(0)
    for level in task.levels:
        for _ in range(100):
            p = task.generate(rng, level)
            answer = final_answer(p.solution or p.answer)
            assert check(answer) is None and check(p.answer) is None, (task.name, level, p.answer)
    ref = Problem(prompt="q", answer=p.answer, family=task.name, level=level)
    assert math_verify_equal(ref.answer, p.answer)
