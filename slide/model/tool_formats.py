"""How a model writes tool calls: a render/parse pair of plain functions per format, chosen by the checkpoint.

    fmt = TOOL_FORMATS["hermes"]
    text = fmt.render([{"name": "calculate", "arguments": {"expression": "2+3"}}], after_content=False)
    fmt.parse("<think>\\nadd\\n</think>\\n\\n" + text)
    # {"reasoning": "add", "content": "", "tool_calls": [{"name": "calculate", "arguments": {"expression": "2+3"}}]}

    glm     GLM-4.5's XML: <tool_call>NAME\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>\\n</tool_call>; a turn
            with calls ends with <|observation|> (slide/model/tokenizer.py holds the pair)
    hermes  Hermes / Qwen2.5 / Qwen3 JSON: <tool_call>\\n{"name": N, "arguments": {...}}\\n</tool_call>, any stop
            token ends the turn
    llama3_json  Llama-3.1's custom tools: the whole turn is one JSON object {"name": N, "parameters": {...}}

`parse(text)` takes one assistant turn as the model wrote it (cut at its stop token) and returns
{"reasoning", "content", "tool_calls": [{"name": str, "arguments": dict}]}; a malformed turn adds "error" (one line
saying what is wrong) and then has no tool calls, so nothing half-parsed is ever run. Reasoning is split at
<think>...</think>. `render(calls, after_content)` is what the model writes for `calls` after its content, the
layout the format's chat templates render (the tests check it against them).

Adding a format: write the two functions and register them,

    TOOL_FORMATS["mine"] = ToolFormat("mine", render=my_render, parse=my_parse, marker="<my_call>")

where `marker` is a string that only that family's chat templates contain (how `model.tool_format: auto` finds
it), and `calls_stop` the stop token a turn with calls must end with, if the format has one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from slide.errors import UserError
from slide.model.tokenizer import CALL_CLOSE, CALL_OPEN, THINK_CLOSE, THINK_OPEN, parse_assistant, tool_calls_text


@dataclass(frozen=True)
class ToolFormat:
    name: str
    render: Callable[[list[dict], bool], str]
    parse: Callable[[str], dict]
    marker: str  # found in a chat template: the template writes this format
    calls_stop: str | None = None  # the stop token that must end a turn with tool calls (GLM: <|observation|>)


def split_reasoning(text: str) -> tuple[str, str, str | None]:
    """(reasoning, rest, error) of a turn: the reasoning inside a leading <think>...</think> (without the newlines
    around it), the rest after </think> and the newlines after it; error for an unclosed <think>."""
    if THINK_CLOSE in text:
        head, rest = text.split(THINK_CLOSE, 1)
        reasoning = head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head
        return reasoning.strip("\n"), rest.lstrip("\n"), None
    if text.lstrip().startswith(THINK_OPEN):
        return text.split(THINK_OPEN, 1)[1].strip("\n"), "", f"unclosed {THINK_OPEN} (no {THINK_CLOSE})"
    return "", text, None


def hermes_render(calls: list[dict], after_content: bool) -> str:
    """Each call as the Qwen/Hermes templates write it: "<tool_call>\\n{"name": ..., "arguments": ...}\\n
    </tool_call>", separated by (and after content, preceded by) one newline."""
    parts = []
    for i, call in enumerate(calls):
        fn = call.get("function", call)
        args = fn.get("arguments") or {}
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        parts.append(("\n" if after_content or i else "") + f'{CALL_OPEN}\n{{"name": "{fn["name"]}", '
                                                            f'"arguments": {args}}}\n{CALL_CLOSE}')
    return "".join(parts)


def _hermes_call(body: str) -> dict:
    try:
        call = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"tool call is not valid JSON ({e.msg}): {body.strip()[:60]!r}") from None
    if not isinstance(call, dict):
        raise ValueError(f"tool call must be a JSON object, got {type(call).__name__}")
    name, args = call.get("name"), call.get("arguments", {})
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
        raise ValueError(f"tool call without a function name: {body.strip()[:60]!r}")
    if isinstance(args, str):  # some models write the arguments as a JSON string, as OpenAI's API carries them
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ValueError(f"arguments of tool call {name!r} are not a JSON object") from None
    if not isinstance(args, dict):
        raise ValueError(f"arguments of tool call {name!r} must be a JSON object, got {type(args).__name__}")
    extra = sorted(set(call) - {"name", "arguments"})
    if extra:
        raise ValueError(f"unexpected key {extra[0]!r} in tool call {name!r}")
    return {"name": name, "arguments": args}


def hermes_parse(text: str) -> dict:
    """The inverse of hermes_render after a Qwen3-style reasoning block: {"reasoning", "content", "tool_calls"},
    plus "error" for a malformed turn: unclosed <think> or <tool_call>, a call that is not a JSON object with a
    name and object arguments, text between or after the calls, a stray </tool_call>."""
    reasoning, rest, error = split_reasoning(text)
    out: dict[str, Any] = {"reasoning": reasoning, "content": "", "tool_calls": []}
    if error:
        out["error"] = error
        return out
    start = rest.find(CALL_OPEN)
    content, region = (rest, "") if start < 0 else (rest[:start], rest[start:])
    out["content"] = content.removesuffix("\n") if region else content
    if CALL_CLOSE in content:
        out["error"] = f"stray {CALL_CLOSE} outside a tool call"
        return out
    calls, pos = [], 0
    try:
        while True:
            while pos < len(region) and region[pos].isspace():
                pos += 1
            if pos == len(region):
                break
            if not region.startswith(CALL_OPEN, pos):
                raise ValueError(f"junk after {CALL_CLOSE}: {region[pos:pos + 30]!r}")
            end = region.find(CALL_CLOSE, pos)
            if end < 0:
                raise ValueError(f"unclosed {CALL_OPEN}")
            body = region[pos + len(CALL_OPEN):end]
            if CALL_OPEN in body:
                raise ValueError(f"unclosed {CALL_OPEN}: {CALL_OPEN} inside a tool call")
            calls.append(_hermes_call(body))
            pos = end + len(CALL_CLOSE)
    except ValueError as e:
        out["error"] = str(e)
        return out
    out["tool_calls"] = calls
    return out


def llama3_render(calls: list[dict], after_content: bool) -> str:
    """One call as Llama-3.1's template writes it: the turn is {"name": ..., "parameters": ...} alone."""
    if len(calls) != 1 or after_content:
        raise ValueError("llama3_json: a turn holds exactly one tool call and nothing else")
    fn = calls[0].get("function", calls[0])
    return json.dumps({"name": fn["name"], "parameters": fn.get("arguments") or {}}, ensure_ascii=False)


def llama3_parse(text: str) -> dict:
    """A turn that is one JSON object with "name" and "parameters" is a tool call; any other turn is content. A turn
    that starts with "{" but is not such an object is malformed."""
    reasoning, rest, error = split_reasoning(text)
    out: dict[str, Any] = {"reasoning": reasoning, "content": rest, "tool_calls": []}
    if error or not rest.lstrip().startswith("{"):
        return out | ({"error": error} if error else {})
    try:
        call = json.loads(rest)
    except json.JSONDecodeError as e:
        return out | {"error": f"tool call is not valid JSON ({e.msg}): {rest.strip()[:60]!r}"}
    if not isinstance(call, dict) or set(call) != {"name", "parameters"} or not isinstance(call["name"], str) \
            or not isinstance(call["parameters"], dict):
        return out | {"error": f"a JSON turn must be {{\"name\": str, \"parameters\": object}}: {rest.strip()[:60]!r}"}
    return out | {"content": "", "tool_calls": [{"name": call["name"], "arguments": call["parameters"]}]}


TOOL_FORMATS: dict[str, ToolFormat] = {
    "glm": ToolFormat("glm", tool_calls_text, parse_assistant, marker="<arg_key>", calls_stop="<|observation|>"),
    "hermes": ToolFormat("hermes", hermes_render, hermes_parse, marker=CALL_OPEN),
    "llama3_json": ToolFormat("llama3_json", llama3_render, llama3_parse, marker='"parameters": '),
}


def find_tool_format(name: str, template: str | None) -> ToolFormat | None:
    """The format `name` ("auto": the first whose marker the chat template contains, GLM's before Hermes', whose
    <tool_call> GLM's templates also write), or None when "auto" finds none (a template without tool calls)."""
    if name != "auto":
        if name not in TOOL_FORMATS:
            raise UserError(f"model.tool_format {name!r}: allowed: auto, {', '.join(TOOL_FORMATS)}")
        return TOOL_FORMATS[name]
    return next((f for f in TOOL_FORMATS.values() if template and f.marker in template), None)
