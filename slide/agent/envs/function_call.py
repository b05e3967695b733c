"""Function-calling RL (GLM-4.5): the user asks for something one of the shown tools does; the model must call it.

    task = FunctionCallTask(); problem = task.generate(random.Random(0), level=2)
    run_episodes(engine, tok, [problem], lambda p: FunctionCallEnv(), params, n=8, max_turns=1, max_tokens=256)

Step-wise reward: 1 only if the call is well formed and matches the reference exactly, the name and every
argument (no extra, no missing; values compared as the model wrote them, see arg_text); else 0. One call,
then the episode is done. A final answer without a call scores 0. Level 1 shows only the right tool, level 2
three tools (two distractors), level 3 all of them.
"""
from __future__ import annotations

import random

from slide.agent.env import StepResult, arg_text, tool_schema
from slide.errors import UserError
from slide.model.tokenizer import tool_calls_text
from slide.tasks.base import Problem

_CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Rome"]
_CURRENCIES = ["USD", "EUR", "JPY", "GBP", "CHF"]
_NAMES = ["ana", "bo", "cy", "di", "ed"]


def _weather(rng):
    city = rng.choice(_CITIES)
    return f"What is the weather in {city}?", {"city": city}


def _convert(rng):
    amount = rng.choice([rng.randint(1, 999), round(rng.uniform(1, 99), 2)])
    src, dst = rng.sample(_CURRENCIES, 2)
    return f"Convert {amount} {src} to {dst}.", {"amount": amount, "from": src, "to": dst}


def _alarm(rng):
    hour, minute = rng.randint(0, 23), rng.randint(0, 59)
    return f"Set an alarm for {hour:02d}:{minute:02d}.", {"hour": hour, "minute": minute}


def _email(rng):
    to, day = rng.choice(_NAMES), rng.choice(["monday", "friday", "noon"])
    return f"Email {to}@x.org with the subject 'meet {day}'.", {"to": f"{to}@x.org", "subject": f"meet {day}"}


def _timer(rng):
    seconds = rng.randint(5, 600)
    return f"Start a timer for {seconds} seconds.", {"seconds": seconds}


# name -> (schema, request generator): the generator returns the user's text and the reference arguments
CATALOG = {
    "get_weather": (tool_schema("get_weather", "Current weather of a city.", {"city": ("string", "city name")}),
                    _weather),
    "convert": (tool_schema("convert", "Convert money between currencies.",
                            {"amount": ("number", "amount"), "from": ("string", "currency code"),
                             "to": ("string", "currency code")}), _convert),
    "set_alarm": (tool_schema("set_alarm", "Set an alarm.", {"hour": ("integer", "0-23"),
                                                            "minute": ("integer", "0-59")}), _alarm),
    "send_email": (tool_schema("send_email", "Send an email.", {"to": ("string", "address"),
                                                               "subject": ("string", "subject line")}), _email),
    "start_timer": (tool_schema("start_timer", "Start a countdown timer.", {"seconds": ("integer", "duration")}),
                    _timer),
}
_SHOWN = {1: 1, 2: 3, 3: len(CATALOG)}  # level -> tools shown


class FunctionCallTask:
    name = "function_call"
    levels: tuple[int, ...] = (1, 2, 3)

    def generate(self, rng: random.Random, level: int) -> Problem:
        if level not in _SHOWN:
            raise UserError(f"function_call has no level {level} (levels: 1-3)")
        names = sorted(CATALOG)
        target = rng.choice(names)
        shown = [target] + rng.sample([n for n in names if n != target], _SHOWN[level] - 1)
        rng.shuffle(shown)
        prompt, args = CATALOG[target][1](rng)
        call = {"name": target, "arguments": args}
        return Problem(prompt=prompt, answer=tool_calls_text([call], after_content=False), family=self.name,
                       level=level, meta={"tools": shown, "call": call})

    def verify(self, problem: Problem, response: str) -> float:
        return 0.0  # a response with no tool call never completes the request


def call_matches(call: dict, reference: dict) -> bool:
    """Same name and exactly the same arguments, each compared as the text the model wrote."""
    got = {k: arg_text(v) for k, v in call["arguments"].items()}
    want = {k: arg_text(v) for k, v in reference["arguments"].items()}
    return call["name"] == reference["name"] and got == want


class FunctionCallEnv:
    """One request, one call: reward 1 for the exact reference call, then done."""

    def __init__(self) -> None:
        self.tools: list[dict] = []
        self.reference: dict = {}

    def reset(self, problem: Problem) -> list[dict]:
        self.tools = [CATALOG[name][0] for name in problem.meta["tools"]]
        self.reference = problem.meta["call"]
        return [{"role": "user", "content": problem.prompt}]

    def step(self, call: dict) -> StepResult:
        if call_matches(call, self.reference):
            return StepResult("ok", done=True, reward=1.0)
        return StepResult("ok", done=True, reward=0.0, error="wrong_call")

    def reward(self, problem: Problem, response: str) -> float:
        return 0.0


def trace(problem: Problem) -> dict:
    """The correct single-call conversation {"messages", "tools", "problem"} for `problem` (it ends with the
    tool's "ok", which encode_conversation renders masked)."""
    call = problem.meta["call"]
    return {"tools": [CATALOG[n][0] for n in problem.meta["tools"]], "problem": problem, "messages": [
        {"role": "user", "content": problem.prompt},
        {"role": "assistant", "reasoning_content": f"Call {call['name']}.", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "ok"},
    ]}


def sft_traces(rng: random.Random, count: int, levels: tuple[int, ...] = FunctionCallTask.levels) -> list[dict]:
    """`count` correct conversations (see `trace`) for fresh problems drawn from `rng`."""
    task = FunctionCallTask()
    return [trace(task.generate(rng, rng.choice(levels))) for _ in range(count)]
