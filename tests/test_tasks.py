"""Tests for slide.tasks: answer extraction, the expression evaluator, the families, datasets, spec parsing."""
from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest

from slide.errors import UserError
from slide.tasks import Arithmetic, Countdown, DatasetTask, Problem, final_answer, make_task, parse_task_specs
from slide.tasks.answer import exact_or_numeric, math_verify_equal, numbers_equal
from slide.tasks.arithmetic import add_trace, mul_trace, sub_trace
from slide.tasks.dataset import load_rows
from slide.tasks.expr import ExprError, evaluate, numbers_used

JUNK = "\x00\xff\ufffd\x1b[31m" + "".join(chr(i) for i in range(0, 300, 7))


_FINAL_ANSWERS = [
    ("132", "132"), ("<think>a</think>\n132", "132"), ("<think>a</think>x</think> 7 <|endoftext|>", "7"),
    ("42<|user|>\n<|endoftext|>  ", "42"), ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{2}", "2"), ("\\boxed{2} then \\boxed{unbalanced", "2"),
    ("\\boxed{open", "\\boxed{open"), ("", ""),
]


@pytest.mark.parametrize("response, expected", _FINAL_ANSWERS)
def test_final_answer(response: str, expected: str) -> None:
    assert final_answer(response) == expected


def test_numbers_equal() -> None:
    assert numbers_equal("132.0", "132") and numbers_equal("-3/4", "-0.75")
    assert numbers_equal(" 7 ", "7") and numbers_equal("0.5", "1/2")
    for bad in ["1,000", "1e3", "1_0", "", "abc", "1/0", "--1", "+1", "9" * 100, JUNK]:
        assert not numbers_equal(bad, "1000"), bad
    assert not numbers_equal("1320", "132") and not numbers_equal("0.1", "0.10000001")


def test_exact_or_numeric_and_math_verify() -> None:
    assert exact_or_numeric(" Paris ", "Paris") and exact_or_numeric("2.50", "5/2")
    assert not exact_or_numeric("paris", "Paris")
    assert math_verify_equal("0.5", "\\frac{1}{2}") and not math_verify_equal("0.6", "\\frac{1}{2}")
    for junk in ["", JUNK, "\\frac{", "}" * 50, "x" * 5000]:
        assert math_verify_equal(junk, "\\frac{1}{2}") is False


_VALUES = [
    ("(3+5)*2/4", Fraction(4)), ("7/2", Fraction(7, 2)), ("1+2*3", Fraction(7)), ("(1+2)*3", Fraction(9)),
    ("10-4-3", Fraction(3)), ("10-(4-3)", Fraction(9)), ("8/4/2", Fraction(1)), (" 2 *\t( 3 + 4 ) ", Fraction(14)),
    ("1-5", Fraction(-4)), ("((((6))))", Fraction(6)), ("999999", Fraction(999999)),
]


@pytest.mark.parametrize("text, value", _VALUES)
def test_evaluate(text: str, value: Fraction) -> None:
    assert evaluate(text) == value


_NOT_EXPRESSIONS = [
    "", "   ", "-3+5", "3*-5", "3+(-5)", "+3", "2**10", "1/0", "4/(2-2)", "2.5", "1000000", "__import__('os')",
    "(1+2", "1+2)", "1 2", "()", "3x", "\u00b2", "1" + "+1" * 100, "(" * 21 + "1" + ")" * 21,
]


@pytest.mark.parametrize("text", _NOT_EXPRESSIONS)
def test_evaluate_rejects(text: str) -> None:
    with pytest.raises(ExprError):
        evaluate(text)


def test_depth_limit_and_numbers_used() -> None:
    assert evaluate("(" * 20 + "1" + ")" * 20) == 1  # the limit itself is allowed
    assert numbers_used("(25*3)+7 - 3") == [25, 3, 7, 3]
    pytest.raises(ExprError, numbers_used, "2.5")


def test_arithmetic_traces_hand_checked() -> None:
    assert add_trace(47, 85) == "7+5=12 c1, 4+8+1=13 c1, 47+85=132"
    assert add_trace(21, 20) == "1+0=1 c0, 2+2=4 c0, 21+20=41"
    assert sub_trace(85, 47) == "15-7=8 b1, 8-4-1=3 b0, 85-47=38"
    assert sub_trace(1000, 1) == "10-1=9 b1, 10-0-1=9 b1, 10-0-1=9 b1, 1-0-1=0 b0, 1000-1=999"
    assert mul_trace(47, 85) == ("7*5=35 c3, 4*5+3=23 c2, 47*5=235, "
                                 "7*8=56 c5, 4*8+5=37 c3, 47*80=3760, 235+3760=3995")
    assert mul_trace(123, 405) == ("3*5=15 c1, 2*5+1=11 c1, 1*5+1=6 c0, 123*5=615, "  # zero digit skipped
                                   "3*4=12 c1, 2*4+1=9 c0, 1*4=4 c0, 123*400=49200, 615+49200=49815")
    assert mul_trace(47, 5) == "7*5=35 c3, 4*5+3=23 c2, 47*5=235"
    assert mul_trace(7, 6) == "7*6=42" and mul_trace(7, 0) == "7*0=0" and mul_trace(7, 30) == "7*30=210"


def test_arithmetic_generate_deterministic_and_correct() -> None:
    task = Arithmetic()
    rng, ops_seen = random.Random(0), set()
    for level in task.levels:
        assert task.generate(random.Random(7), level) == task.generate(random.Random(7), level)
        for _ in range(200):
            p = task.generate(rng, level)
            a, b, op = p.meta["a"], p.meta["b"], p.meta["op"]
            ops_seen.add(op)
            expected = {"+": a + b, "-": a - b, "*": a * b}[op]
            assert expected >= 0 and p.answer == p.solution == str(expected)
            assert p.prompt == f"What is {a}{op}{b}?" and p.family == "arithmetic" and p.level == level
            b_digits = 1 if op == "*" else level
            assert len(str(a)) == level and len(str(b)) == b_digits
            assert p.reasoning == {"+": add_trace, "-": sub_trace, "*": mul_trace}[op](a, b)
            # Traces end with the result, so SFT teaches the answer right before </think>.
            assert p.reasoning.endswith(f"={expected}")
            assert task.verify(p, f"<think>{p.reasoning}</think>\n{p.solution}") == 1.0
    assert ops_seen == {"+", "-", "*"}


def test_arithmetic_verify() -> None:
    task = Arithmetic()
    p = Problem(prompt="What is 47+85?", answer="132", family="arithmetic", level=2, meta={"a": 47, "b": 85, "op": "+"})
    for good in ["<think>7+5=12 c1</think>\n132", "\\boxed{132}", "132.0", "132<|endoftext|>", "x</think> 132 "]:
        assert task.verify(p, good) == 1.0, good
    for bad in ["1320", "13 2", "", JUNK, "<think>132</think>\n131", "<think>132", "132 apples", "1.32e2"]:
        assert task.verify(p, bad) == 0.0, bad
    with pytest.raises(UserError):
        task.generate(random.Random(0), 6)  # no such level


def test_countdown_generated_solutions_verify() -> None:
    task = Countdown()
    for level in task.levels:
        for seed in range(150):
            p = task.generate(random.Random(seed), level)
            nums, target = p.meta["numbers"], p.meta["target"]
            assert len(nums) == level + 1 and all(1 <= n <= (10 if level <= 2 else 25) for n in nums)
            assert 1 <= target <= 999 and p.answer == str(target) and evaluate(p.solution) == target
            rule = "Use each number at most once, with + - * / and parentheses."
            assert p.prompt == f"Use the numbers {' '.join(map(str, nums))} to make {target}. {rule}"
            assert p.reasoning.endswith(f"={target}")  # the last step produces the target
            sft_target = f"<think>{p.reasoning}</think>\n{p.solution}"
            assert task.verify(p, sft_target) == task.verify(p, f"{p.solution}={target}") == 1.0
    assert task.generate(random.Random(3), 4) == task.generate(random.Random(3), 4)


def _cd(numbers: list[int], target: int) -> Problem:
    meta = {"numbers": numbers, "target": target}
    return Problem(prompt="", answer=str(target), family="countdown", level=2, meta=meta)


def test_countdown_verify_accepts_alternatives() -> None:
    task = Countdown()
    p = _cd([3, 7, 25], 82)
    for good in ["25*3+7", "25*3+7=82", "25*3+7 = 81", "3*25+7", "(25*3)+7", "\\boxed{7+25*3}", "</think> 25 * 3 + 7"]:
        assert task.verify(p, good) == 1.0, good
    # A solution different from the reference, and one that leaves numbers unused, both win.
    p24 = _cd([2, 3, 4, 6], 24)
    for good in ["2*3*4", "4*6", "(6-3)*(2*4)", "6/(3-2)*4"]:
        assert task.verify(p24, good) == 1.0, good
    assert task.verify(_cd([2, 2, 5], 20), "2*2*5") == 1.0  # a repeated number may be used as often as given


_BAD_COUNTDOWN = [
    "25*3+7+3-3",  # 3 used three times, given once
    "25*3+7+1-1",  # 1 not given
    "82",  # the target itself is not one of the numbers
    "25*3+7-0",  # 0 not given
    "-3+25*3+3+7", "25*3+7-(-3)+(-3)",  # unary minus
    "25*3+10.5-2.5", "2.5", "25*3+7.0",  # floats
    "__import__('os')", "2**10", "1/0", "25/(7-7)*3", "1" * 10_000, "(" * 1000 + "25" + ")" * 1000,
    "(" * 21 + "25*3+7" + ")" * 21, "", JUNK, "<think>25*3+7</think> 25*3", "25*3+6",
]


@pytest.mark.parametrize("response", _BAD_COUNTDOWN)
def test_countdown_verify_rejects(response: str) -> None:
    assert Countdown().verify(_cd([3, 7, 25], 82), response) == 0.0


def _jsonl(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_load_jsonl_and_task(tmp_path) -> None:
    rows = [
        {"prompt": "Half of one?", "answer": "\\frac{1}{2}", "level": 2, "source": "x"},
        {"prompt": "2+2?", "answer": 4},
        {"prompt": "Capital of France?", "answer": "Paris", "level": 2},
        {"prompt": "1.5+1.5?", "answer": 3.0, "level": None},
    ]
    path = _jsonl(tmp_path / "mix.jsonl", [json.dumps(r) for r in rows[:2]] + [""] + [json.dumps(r) for r in rows[2:]])
    loaded = load_rows(path)
    assert [r["answer"] for r in loaded] == ["\\frac{1}{2}", "4", "Paris", "3"]
    assert [r["level"] for r in loaded] == [2, 1, 2, 1] and loaded[0]["meta"] == {"source": "x"}
    task = DatasetTask(path)
    assert task.name == "mix" and task.levels == (1, 2)
    probs = task.problems()
    assert [p.prompt for p in probs] == [r["prompt"] for r in rows]
    assert probs[0].solution == probs[0].answer and probs[0].reasoning == "" and probs[0].family == "mix"
    # Deterministic and level-respecting sampling.
    picks = [task.generate(random.Random(s), 2) for s in range(20)]
    assert picks == [task.generate(random.Random(s), 2) for s in range(20)]
    assert {p.prompt for p in picks} == {"Half of one?", "Capital of France?"}
    with pytest.raises(UserError):
        task.generate(random.Random(0), 3)
    half, four, paris = probs[0], probs[1], probs[2]
    assert task.verify(half, "<think>..</think> \\boxed{0.5}") == 1.0  # via math_verify
    assert task.verify(half, "0.6") == 0.0 and task.verify(four, "4.0") == 1.0
    assert task.verify(paris, "Paris") == 1.0 and task.verify(paris, "Lyon") == 0.0
    assert task.verify(paris, JUNK) == 0.0
    exact = DatasetTask(path, name="m", verifier="exact")
    assert exact.name == "m" and exact.verify(half, "0.5") == 0.0 and exact.verify(four, "4") == 1.0
    assert DatasetTask(path, verifier="math").verify(half, "0.5") == 1.0
    with pytest.raises(UserError, match="verifier"):
        DatasetTask(path, verifier="fuzzy")


def test_load_parquet(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a?", "b?"], "answer": ["1", "2"], "level": [1, 3], "id": [10, 11]}), path)
    rows = load_rows(str(path))
    assert rows == [{"prompt": "a?", "answer": "1", "level": 1, "meta": {"id": 10}},
                    {"prompt": "b?", "answer": "2", "level": 3, "meta": {"id": 11}}]
    assert DatasetTask(str(path)).levels == (1, 3)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["a?", None], "answer": ["1", "2"]}), bad)
    _assert_user_error(lambda: load_rows(str(bad)), "bad.parquet row 2", "prompt")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    _assert_user_error(lambda: load_rows(str(junk)), "junk.parquet", "Parquet")


def _assert_user_error(fn, *fragments: str) -> str:
    with pytest.raises(UserError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


_OK = '{"prompt": "a", "answer": "1"}'
_BAD_JSONL = [
    ([_OK, "{not json"], ["x.jsonl line 2", "invalid JSON"]),
    ([_OK, "[1, 2]"], ["x.jsonl row 2", "object"]),
    ([_OK, "", '{"a": 1}'], ["x.jsonl row 3: missing field 'prompt' (required: prompt, answer; optional: level)"]),
    (['{"prompt": "  ", "answer": "1"}'], ["x.jsonl row 1", "prompt"]),
    (['{"prompt": 5, "answer": "1"}'], ["x.jsonl row 1", "prompt"]),
    (['{"prompt": "a"}'], ["x.jsonl row 1: missing field 'answer'"]),
    (['{"prompt": "a", "answer": true}'], ["x.jsonl row 1", "answer"]),
    (['{"prompt": "a", "answer": [1]}'], ["x.jsonl row 1", "answer"]),
    (['{"prompt": "a", "answer": ""}'], ["x.jsonl row 1", "answer"]),
    (['{"prompt": "a", "answer": "1", "level": 0}'], ["x.jsonl row 1", "level", "positive integer"]),
    (['{"prompt": "a", "answer": "1", "level": "2"}'], ["x.jsonl row 1", "level"]),
    (['{"prompt": "a", "answer": "1", "level": 1.5}'], ["x.jsonl row 1", "level"]),
    ([""], ["x.jsonl: no rows"]),
]


@pytest.mark.parametrize("lines, fragments", _BAD_JSONL)
def test_load_jsonl_errors(tmp_path, lines: list[str], fragments: list[str]) -> None:
    path = _jsonl(tmp_path / "x.jsonl", lines)
    _assert_user_error(lambda: load_rows(path), *fragments)


def test_load_file_errors(tmp_path) -> None:
    _assert_user_error(lambda: load_rows(str(tmp_path / "x.jsonl")), "data file", "x.jsonl' not found")
    _assert_user_error(lambda: load_rows(str(tmp_path / "x.csv")), "x.csv", "allowed: .jsonl, .parquet")
    bad_utf8 = tmp_path / "u.jsonl"
    bad_utf8.write_bytes(b'{"prompt": "a", "answer": "1"}\n\xff\xfe\n')
    _assert_user_error(lambda: load_rows(str(bad_utf8)), "u.jsonl line 2", "UTF-8")


def test_parse_task_specs(tmp_path) -> None:
    specs = parse_task_specs("arithmetic, countdown:2, arithmetic:1-3, countdown:1+4, arithmetic:2+2")
    assert [(type(t).__name__, lv) for t, lv in specs] == [
        ("Arithmetic", (1, 2, 3, 4, 5)), ("Countdown", (2,)), ("Arithmetic", (1, 2, 3)), ("Countdown", (1, 4)),
        ("Arithmetic", (2,)),
    ]
    path = _jsonl(tmp_path / "d.jsonl", ['{"prompt": "a", "answer": "1", "level": 2}', _OK])
    (task, levels), (task2, levels2) = parse_task_specs(f"{path},{path}:2")
    assert isinstance(task, DatasetTask) and task.name == "d" and levels == (1, 2) and levels2 == (2,)
    assert isinstance(make_task("countdown"), Countdown) and isinstance(make_task("arithmetic:3"), Arithmetic)
    assert isinstance(make_task(path), DatasetTask)
    _assert_user_error(lambda: make_task("arithmetic,countdown"), "exactly one")
    _assert_user_error(lambda: make_task("nope"), "'nope'", "arithmetic, countdown")


_BAD_SPECS = [
    ("algebra", ["'algebra'", "arithmetic, countdown"]),
    ("arithmetic:6", ["'arithmetic:6'", "level 6", "1, 2, 3, 4, 5"]),
    ("countdown:0-2", ["'countdown:0-2'", "level 0"]), ("countdown:3-1", ["'countdown:3-1'", "1-3"]),
    ("countdown:x", ["'countdown:x'", "1+3"]), ("countdown:", ["'countdown:'"]),
    ("countdown:1-2-3", ["'countdown:1-2-3'"]),
    ("arithmetic,,countdown", ["empty item"]), ("", ["empty item"]), ("data.csv", ["'data.csv'", ".jsonl"]),
    ("missing.jsonl", ["missing.jsonl' not found"]),
]


@pytest.mark.parametrize("spec, fragments", _BAD_SPECS)
def test_parse_task_specs_errors(spec: str, fragments: list[str]) -> None:
    _assert_user_error(lambda: parse_task_specs(spec), *fragments)
