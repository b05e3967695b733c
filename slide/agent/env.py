"""The environment contract of the agent loop, and the checks every tool call goes through.

An environment is any object with the attributes and methods of `Env` below (no base class, no
registry). The episode runner (slide/agent/episode.py) makes one per episode with an `EnvFactory`,
calls `reset` once, `step` once per parsed tool call, and `reward` once if the model writes a final
answer. In RL and evaluation the built-in factory wraps every env in `IsolatedEnv` (slide/agent/isolated.py):
each call runs in a worker process of the call pool, where a call past its timeout is killed, so an env
must be picklable (its state travels to the worker and back with every call) or set `isolate = False`
when it bounds its own work. Calls are made from the episode's thread, never two at once on one env.

    env = CalculatorEnv()
    messages = env.reset(problem)                     # [{"role": "user", "content": ...}]
    prompt = chat_prompt(tok, messages, tools=env.tools)
    result = env.step({"name": "calculate", "arguments": {"expression": "123*456"}})
    result.observation                                # "56088": goes back inside <tool_response>
    env.reward(problem, final_turn_text)              # 1.0 if the final answer is right
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from slide.tasks.base import Problem

# Reasons a tool call ends the episode as "failed" with reward 0 (GLM: a bad tool-call format ends the trajectory).
INVALID_FORMAT = "invalid_format"  # parse_assistant error, or tool calls / <|observation|> not paired up
UNKNOWN_TOOL = "unknown_tool"
MISSING_ARGUMENT = "missing_argument"
EXTRA_ARGUMENT = "extra_argument"
BAD_ARGUMENTS = "bad_arguments"  # wrong JSON type, or an env-specific check (raise InvalidCall)


@dataclass(frozen=True)
class StepResult:
    """What one tool call returns to the model."""

    observation: str  # the text inside <tool_response>...</tool_response>
    done: bool = False  # the episode ends after this call (its reward, if any, is the episode's reward)
    reward: float | None = None  # a step-wise reward; the episode's reward when done=True (None counts as 0)
    error: str | None = None  # None: the call succeeded. Otherwise a short counter key ("tool_error",
    #                           "sandbox_unavailable", ...): the call counts as failed and the key is counted


class InvalidCall(Exception):
    """Raised by `Env.step` for a call the env refuses as malformed (beyond the schema check the runner
    already made): the episode ends as "failed" with reward 0 and `reason` counted."""

    sent_as_is = True  # comes back from a call-pool worker as itself (slide/callpool.py), reason intact

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        return InvalidCall, (self.reason, str(self))


class Env(Protocol):
    tools: list[dict]  # JSON-schema tool descriptions shown to the model; read after reset (may be [])

    def reset(self, problem: Problem) -> list[dict]:
        """The chat messages the episode starts with (system/user dicts as chat_prompt takes them)."""

    def step(self, call: dict) -> StepResult:
        """Run one tool call {"name": str, "arguments": dict} that already passed `check_call(self.tools, call)`.
        Errors of the tool itself are observations (StepResult.error set), not exceptions; raise InvalidCall
        to fail the episode. Anything else raised, or a call slower than the runner's timeout, becomes an
        error observation counted as "step_error" / "step_timeout"."""

    def reward(self, problem: Problem, response: str) -> float:
        """Reward in [0, 1] for the final assistant turn's text (reasoning included, as decoded), called when
        the model answers without a tool call. Never raises on any string."""


EnvFactory = Callable[[Problem], Env]  # a fresh env for each episode (n per problem)


def tool_schema(name: str, description: str, params: dict[str, tuple[str, str]],
                required: list[str] | None = None) -> dict:
    """A JSON-schema tool description: params maps argument -> (JSON type, description); all required by default."""
    return {"name": name, "description": description,
            "parameters": {"type": "object",
                           "properties": {k: {"type": t, "description": d} for k, (t, d) in params.items()},
                           "required": list(params) if required is None else required}}


def arg_text(value: Any) -> str:
    """An argument value as the model wrote it (the chat template's rule: strings as-is, anything else as JSON).
    parse_assistant decodes "12" to 12; tools that want text use this to get "12" back."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


_TYPES = {"number": (int, float), "integer": (int,), "boolean": (bool,), "array": (list,), "object": (dict,),
          "null": (type(None),)}


def _type_ok(value: Any, kind: Any) -> bool:
    if not isinstance(kind, str) or kind == "string":
        return True  # strings are written raw, so any decoded value (12, true, ...) is a valid string argument
    if isinstance(value, bool) and kind in ("number", "integer"):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, object))


def validate_tools(tools: Any) -> list[dict]:
    """`tools` as a list, or ValueError naming the first schema check_call cannot use (an env bug: the episode
    is aborted)."""
    tools = list(tools)
    for i, t in enumerate(tools):
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or \
                not isinstance(fn.get("parameters", {}), dict):
            raise ValueError(f"tool {i}: expected a JSON-schema dict with a name and parameters, got {t!r:.80}")
    return tools


def check_call(tools: list[dict], call: dict) -> tuple[str, str] | None:
    """None if `call` names one of `tools` with exactly its arguments (every required one present, none unknown,
    JSON types right), else (reason, one-line message). Tools are plain or OpenAI-style {"function": {...}}."""
    schemas = {t.get("function", t)["name"]: t.get("function", t) for t in tools}
    name, args = call["name"], call["arguments"]
    if name not in schemas:
        known = ", ".join(schemas) or "none"
        return UNKNOWN_TOOL, f"unknown tool {name[:40]!r} (tools: {known})"
    params = schemas[name].get("parameters") or {}
    props = params.get("properties") or {}
    missing = [k for k in params.get("required", []) if k not in args]
    if missing:
        return MISSING_ARGUMENT, f"tool {name!r}: missing argument {missing[0]!r}"
    extra = [k for k in args if k not in props]
    if extra and params.get("additionalProperties") is not True:
        return EXTRA_ARGUMENT, f"tool {name!r}: unknown argument {extra[0][:40]!r}"
    for k, v in args.items():
        if k in props and not _type_ok(v, props[k].get("type")):
            return BAD_ARGUMENTS, f"tool {name!r}: argument {k!r} should be {props[k].get('type')}"
    return None
