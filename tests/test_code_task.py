"""Tests for slide.tasks.code: generation, code extraction, and rewards from unit tests run in the sandbox.

Sandbox-backed tests are skipped where bubblewrap is missing (the setup script installs it).
"""
from __future__ import annotations

import random

import pytest

from slide.errors import UserError
from slide.sandbox import SandboxUnavailable, run_python
from slide.tasks.code import Code, extract_code, unit_test_reward

TASK = Code()


@pytest.fixture(scope="module")
def bwrap():
    try:
        run_python("")
    except SandboxUnavailable as e:
        pytest.skip(str(e))


def _sft_response(p) -> str:
    return f"<think>{p.reasoning}</think>{p.solution}<|endoftext|>"


def test_generate_is_deterministic_and_well_formed() -> None:
    for level in TASK.levels:
        a = [TASK.generate(random.Random(7), level) for _ in range(2)]
        assert a[0] == a[1]
        p = a[0]
        assert p.family == "code" and p.level == level and p.prompt.startswith("Write a Python function f(")
        assert p.solution == f"```python\n{p.answer}```" and p.answer.startswith("def f(")
        tests = p.meta["tests"].splitlines()
        assert len(tests) == 5 and all(t.startswith("assert f(") for t in tests)
    kinds = {TASK.generate(random.Random(s), 3).answer.split("return ")[1].split("(")[0] for s in range(40)}
    assert kinds == {"max", "min", "sum", "xs.count"}
    with pytest.raises(UserError, match="levels: 1-3"):
        TASK.generate(random.Random(0), 4)


def test_hand_derived_problem() -> None:
    p = TASK.generate(random.Random(0), 1)
    # Re-derive the expectations from the prompt's own words: "returns x + K" or "returns x - K".
    expr = p.prompt.split("returns ")[1].split(".")[0]
    for line in p.meta["tests"].splitlines():
        x, want = line.removeprefix("assert f(").split(") == ")
        assert eval(expr, {"x": int(x)}) == int(want)


_EXTRACT = [
    ("<think>```python\nbad\n```</think>```python\ngood\n```", "good\n"),
    ("```python\nfirst\n```\ntext\n```py\nsecond\n```", "second\n"),
    ("</think>def f(x):\n    return x<|endoftext|>", "def f(x):\n    return x"),
    ("</think>```\nplain\n```", "plain\n"),
    ("</think>```python\ncut off", "cut off"),
    ("", ""),
]


@pytest.mark.parametrize("response, code", _EXTRACT)
def test_extract_code(response: str, code: str) -> None:
    assert extract_code(response) == code


@pytest.mark.usefixtures("bwrap")
def test_reference_solution_scores_one_at_every_level() -> None:
    for level in TASK.levels:
        for seed in range(2):
            p = TASK.generate(random.Random(seed), level)
            assert TASK.verify(p, _sft_response(p)) == 1.0, p
            assert TASK.verify(p, p.solution) == 1.0  # no think block
            assert TASK.verify(p, p.answer) == 1.0  # no fence either


JUNK = "\x00\xff\ufffd\ud800\x1b[31m" + "".join(chr(i) for i in range(0, 300, 7))

_WRONG = [
    "```python\ndef f(x):\n    return 0\n```",  # wrong answer
    "```python\ndef g(x):\n    return x\n```",  # wrong name
    "the answer is 42",  # no code
    "",
    JUNK,
    "```python\n" + JUNK + "\n```",
    "```python\nimport sys\nsys.exit(0)\n```",  # exits 0 before the tests run
    "```python\nimport os\nos._exit(0)\n```",
    "```python\ndef f(x):\n    return x\nprint('ALL TESTS PASSED')\nraise SystemExit\n```",
    "```python\nwhile True:\n    pass\n```",  # hangs
    "```python\nimport os\nwhile True:\n    os.fork()\n```",  # fork bomb
    "```python\nx = bytearray(10**10)\n```",  # memory bomb
    "```python\nwhile True:\n    print('x' * 10000)\n```",  # floods output
    "```python\nimport socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n```",
    "```python\nopen('/work/main/pwned', 'w').write('x')\n```",
    "```python\ndef f(x):\n    return x\n\x00\n```",  # a NUL byte
]


@pytest.mark.usefixtures("bwrap")
def test_wrong_garbage_and_malicious_responses_score_zero() -> None:
    p = TASK.generate(random.Random(3), 1)  # f(x) = x + k or x - k, never the identity
    for response in _WRONG:
        assert TASK.verify(p, response) == 0.0, response


@pytest.mark.usefixtures("bwrap")
def test_unit_test_reward_statuses() -> None:
    tests = "assert f(2) == 4"
    assert unit_test_reward("def f(x):\n    return 2 * x", tests) == (1.0, "ok")
    assert unit_test_reward("def f(x):\n    return x", tests) == (0.0, "error")
    assert unit_test_reward("import sys\nsys.exit(0)", tests) == (0.0, "incomplete")
    assert unit_test_reward("while True:\n    pass", tests) == (0.0, "timeout")


def test_verify_never_raises_without_a_sandbox(monkeypatch) -> None:
    import slide.tasks.code as code

    def unavailable(*args, **kwargs):
        raise SandboxUnavailable("code sandbox: bwrap not found")

    monkeypatch.setattr(code, "run_python", unavailable)
    p = TASK.generate(random.Random(0), 1)
    assert TASK.verify(p, p.solution) == 0.0
    assert unit_test_reward("pass", "assert True") == (0.0, "sandbox_unavailable")
    bad_meta = p.__class__(**{**p.__dict__, "meta": {"tests": None}})
    assert TASK.verify(bad_meta, p.solution) == 0.0
