"""The built-in agent environments: the Env contract (every env), then each env's own logic."""
from __future__ import annotations

import math
import random
import statistics
import sys
import time
from fractions import Fraction

import pytest

from slide.agent.env import StepResult, check_call, tool_schema, validate_tools
from slide.agent.envs import calculator, function_call, python_exec
from slide.agent.envs.calculator import CalculatorEnv, CalculatorTask, sft_traces, value_text
from slide.agent.envs.function_call import CATALOG, FunctionCallEnv, FunctionCallTask, call_matches
from slide.agent.envs.latency import LatencyEnv, with_latency
from slide.agent.envs.python_exec import PythonEnv, PythonTask
from slide.agent.episode import encode_conversation
from slide.model.tokenizer import assistant_text, chat_prompt, load_tokenizer, parse_assistant, tool_calls_text


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def sandbox_works() -> bool:
    try:
        from slide.sandbox import run_python
        return run_python("print(1)").stdout == "1\n"
    except Exception:  # noqa: BLE001 - no sandbox module, no bwrap, no user namespaces
        return False


# name -> (task, env factory, a well-formed call for the problem that the env must run without error)
ENVS = {
    "calculator": (CalculatorTask(), CalculatorEnv,
                   lambda p: {"name": "calculate", "arguments": {"expression": p.meta["expression"]}}),
    "function_call": (FunctionCallTask(), FunctionCallEnv, lambda p: p.meta["call"]),
    "python": (PythonTask(), PythonEnv, lambda p: {"name": "python", "arguments": {"code": "print(6*7)"}}),
    "latency(calculator)": (CalculatorTask(), lambda: LatencyEnv(CalculatorEnv(), 0.001, 1.0, 0.01, random.Random(0)),
                            lambda p: {"name": "calculate", "arguments": {"expression": "1+2"}}),
}
GARBAGE = ["", "\x00\xff", "<think>", "</think>" * 3, "<|endoftext|>", "\\boxed{", "9" * 500, "<tool_call>x"]


@pytest.mark.parametrize("name", ENVS)
def test_env_contract(tok, name):
    """What the episode runner relies on (slide/agent/env.py), for every built-in env."""
    if name == "python" and not sandbox_works():
        pytest.skip("no working code sandbox on this machine")
    task, make, good_call = ENVS[name]
    for level in task.levels:
        problem = task.generate(random.Random(level), level)
        env = make()
        messages = env.reset(problem)
        assert isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)
        assert any(m["role"] == "user" for m in messages) and {m["role"] for m in messages} <= {"system", "user"}
        for tool in env.tools:  # JSON-schema descriptions the template can render and check_call can enforce
            props, required = tool["parameters"]["properties"], tool["parameters"]["required"]
            assert tool["name"] and set(required) <= set(props)
        assert chat_prompt(tok, messages, tools=env.tools or None).endswith("<|assistant|>\n")
        call = good_call(problem)
        assert check_call(env.tools, call) is None
        result = env.step(call)
        assert isinstance(result, StepResult) and isinstance(result.observation, str) and result.error is None
        assert result.reward is None or math.isfinite(result.reward)
        for text in GARBAGE + [problem.answer, assistant_text("r", problem.answer)]:
            r = env.reward(problem, text)
            assert isinstance(r, float) and 0.0 <= r <= 1.0


def test_check_call():
    tools = [tool_schema("f", "", {"a": ("string", ""), "n": ("integer", ""), "x": ("number", "")}, required=["a"])]
    ok = {"name": "f", "arguments": {"a": 12, "n": 3, "x": 1.5}}  # "12" parses to 12: still a valid string
    assert check_call(tools, ok) is None
    assert check_call([{"type": "function", "function": tools[0]}], ok) is None
    assert check_call(tools, {"name": "g", "arguments": {}})[0] == "unknown_tool"
    assert check_call([], {"name": "f", "arguments": {}})[0] == "unknown_tool"
    assert check_call(tools, {"name": "f", "arguments": {"n": 1}})[0] == "missing_argument"
    assert check_call(tools, {"name": "f", "arguments": {"a": "s", "b": 1}})[0] == "extra_argument"
    assert check_call(tools, {"name": "f", "arguments": {"a": "s", "n": "three"}})[0] == "bad_arguments"
    assert check_call(tools, {"name": "f", "arguments": {"a": "s", "n": 2.5}})[0] == "bad_arguments"
    assert check_call(tools, {"name": "f", "arguments": {"a": "s", "x": True}})[0] == "bad_arguments"
    assert validate_tools(tuple(tools)) == tools
    for bad in ([{"description": "x"}], ["get_weather"], [{"name": "f", "parameters": "x"}]):
        with pytest.raises(ValueError, match="tool 0"):
            validate_tools(bad)


def test_calculator_task_and_tool():
    task, env = CalculatorTask(), CalculatorEnv()
    rng = random.Random(0)
    for level, digits in ((1, (3, 2)), (2, (3, 3)), (3, (4, 3))):
        p = task.generate(rng, level)
        a, b = p.meta["expression"].split("+")[0].split("*")
        assert (len(a), len(b)) == digits and p.prompt.startswith(f"What is {p.meta['expression']}?")
        call = {"name": "calculate", "arguments": {"expression": p.meta["expression"]}}
        assert env.step(call).observation == p.answer
        assert task.verify(p, assistant_text("x", p.answer)) == 1.0
        assert task.verify(p, assistant_text("x", str(int(p.answer) + 1))) == 0.0
    assert task.generate(random.Random(5), 2) == task.generate(random.Random(5), 2)
    calc = lambda e: env.step({"name": "calculate", "arguments": {"expression": e}})  # noqa: E731
    assert calc("7/3").observation == "7/3" and calc("2-9").observation == "-7" and calc(12).observation == "12"
    for bad in ("__import__('os').system('true')", "1/0", "(" * 30 + "1" + ")" * 30, "1" * 300, "2**10"):
        r = calc(bad)
        assert r.error == "tool_error" and r.observation.startswith("error:")
    assert value_text(Fraction(-6, 4)) == "-3/2"


def test_calculator_sft_traces(tok):
    traces = sft_traces(random.Random(0), 6)
    assert len(traces) == 6
    for t in traces:
        msgs, p = t["messages"], t["problem"]
        env = CalculatorEnv()
        assert env.reset(p) == msgs[:1]
        call = msgs[1]["tool_calls"][0]
        assert check_call(t["tools"], call) is None and env.step(call).observation == msgs[2]["content"]
        assert env.reward(p, assistant_text(msgs[3]["reasoning_content"], msgs[3]["content"])) == 1.0
        ids, mask = encode_conversation(tok, msgs, t["tools"])
        text = tok.decode(ids, skip_special_tokens=False)
        assert text == chat_prompt(tok, msgs[:3], tools=t["tools"]) + assistant_text(
            msgs[3]["reasoning_content"], msgs[3]["content"])
        trained = tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
        assert trained == assistant_text(msgs[1]["reasoning_content"], "", end="<|observation|>",
                                         tool_calls=[call]) + assistant_text(msgs[3]["reasoning_content"], p.answer)
        # what the model would write parses back to the same call
        turn = assistant_text(msgs[1]["reasoning_content"], "", end="<|observation|>", tool_calls=[call])
        assert parse_assistant(turn)["tool_calls"] == [call]


def test_function_call_exact_match():
    task, env = FunctionCallTask(), FunctionCallEnv()
    for level, shown in ((1, 1), (2, 3), (3, len(CATALOG))):
        p = task.generate(random.Random(level), level)
        env.reset(p)
        assert len(env.tools) == shown and p.meta["call"]["name"] in [t["name"] for t in env.tools]
    p = task.generate(random.Random(3), 2)
    env.reset(p)
    ref = p.meta["call"]
    # the reference call as the model would write it, parsed back, matches (numbers survive the round trip)
    parsed = parse_assistant(assistant_text("", "", end="<|observation|>", tool_calls=[ref]))["tool_calls"][0]
    assert parsed == ref or call_matches(parsed, ref)
    r = env.step(parsed)
    assert (r.done, r.reward, r.error) == (True, 1.0, None)
    first = next(iter(ref["arguments"]))
    for wrong in ({"name": ref["name"], "arguments": {**ref["arguments"], first: "other"}},
                  {"name": ref["name"], "arguments": {**ref["arguments"], "extra": 1}},
                  {"name": ref["name"], "arguments": dict(list(ref["arguments"].items())[1:])},
                  {"name": "nope", "arguments": ref["arguments"]}):
        r = env.step(wrong)
        assert (r.done, r.reward, r.error) == (True, 0.0, "wrong_call")
    assert call_matches({"name": "convert", "arguments": {"amount": 12.5, "from": "USD", "to": "EUR"}},
                        {"name": "convert", "arguments": {"amount": "12.5", "from": "USD", "to": "EUR"}})
    assert not call_matches({"name": "convert", "arguments": {"amount": 12.50}},
                            {"name": "convert", "arguments": {"amount": 12}})
    assert env.reward(p, "anything") == 0.0 and p.answer == tool_calls_text([ref], after_content=False)
    for t in function_call.sft_traces(random.Random(0), 5):
        env.reset(t["problem"])
        assert env.step(t["messages"][1]["tool_calls"][0]).reward == 1.0


def test_python_env_without_sandbox(monkeypatch):
    env = PythonEnv()
    call = {"name": "python", "arguments": {"code": "print(1)"}}
    monkeypatch.setitem(sys.modules, "slide.sandbox", None)  # the module cannot be imported
    r = env.step(call)
    assert r.error == "sandbox_unavailable" and "unavailable" in r.observation
    monkeypatch.undo()
    sandbox = pytest.importorskip("slide.sandbox")

    def unavailable(code, **kw):
        raise sandbox.SandboxUnavailable("code sandbox: bwrap not found")

    monkeypatch.setattr(sandbox, "run_python", unavailable)
    r = env.step(call)
    assert r.error == "sandbox_unavailable" and "bwrap not found" in r.observation


def test_python_env_runs_code():
    pytest.importorskip("slide.sandbox")
    if not sandbox_works():
        pytest.skip("no working code sandbox on this machine")
    env = PythonEnv(max_chars=200)
    run = lambda code: env.step({"name": "python", "arguments": {"code": code}})  # noqa: E731
    r = run("print(6*7)")
    assert r.error is None and r.observation.startswith("42\n")
    r = run("1/0")
    assert r.error == "code_error" and "ZeroDivisionError" in r.observation
    r = run("print('x' * 5000)")
    assert len(r.observation) <= 200 + len("...(cut)\n") and r.observation.startswith("...(cut)")
    p = PythonTask().generate(random.Random(0), 1)
    assert PythonTask().verify(p, assistant_text("", p.answer)) == 1.0


def test_latency_is_seeded_heavy_tailed_and_capped():
    make = lambda seed: with_latency(lambda p: CalculatorEnv(), median_s=0.5, sigma=1.0, cap_s=4.0, seed=seed)  # noqa
    p = CalculatorTask().generate(random.Random(0), 1)
    a, b, c = make(0), make(0), make(1)
    draws = lambda f: [f(p).delay() for _ in range(3)]  # noqa: E731  the first draw of each new env
    assert draws(a) == draws(b) != draws(c)
    env = make(0)(p)
    many = [env.delay() for _ in range(4000)]
    assert max(many) == 4.0 and min(many) > 0
    assert abs(statistics.median(many) - 0.5) < 0.05
    assert sum(d > 2.5 for d in many) / len(many) > 0.03  # P(> 5x median) = 5% at sigma=1
    env = LatencyEnv(CalculatorEnv(), median_s=0.05, sigma=0.0, cap_s=1.0, rng=random.Random(0))
    assert env.tools == calculator.TOOLS and env.reset(p) == CalculatorEnv().reset(p)
    t0 = time.perf_counter()
    assert env.step({"name": "calculate", "arguments": {"expression": "1+2"}}).observation == "3"
    assert time.perf_counter() - t0 >= 0.05 and env.delays == [0.05]
    with pytest.raises(ValueError):
        LatencyEnv(CalculatorEnv(), median_s=-1, sigma=1, cap_s=1, rng=random.Random(0))
    assert python_exec.TOOLS[0]["name"] == "python"
