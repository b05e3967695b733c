"""SLIDE's character-level tokenizer and the GLM-4.5 chat layout, seen from Python.

The tokenizer itself is plain Hugging Face: slide/assets/tokenizer/ (built by scripts/build_tokenizer.py) loads
with `transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)` and carries the chat template. This module adds
the few helpers the trainers need and that must agree exactly with that template:

    chat_prompt(tok, messages)           "[gMASK]<sop>...<|assistant|>\\n"     what the model is conditioned on
    assistant_text(reasoning, content)   "<think>...</think>\\n...<|endoftext|>" what it writes after that
    parse_assistant(text)                the inverse of assistant_text, tool calls included

so that `chat_prompt(...) + assistant_text(r, c, end="")` is exactly the template's rendering of the same
conversation with the assistant message appended (a prompt/target split on exact token ids is safe: the
tokenizer is per character, so the token ids of a concatenation are the concatenation of the token ids).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from slide.errors import UserError, first_line

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"

EOS = "<|endoftext|>"
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")  # any of these ends an assistant turn
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
KEY_OPEN, KEY_CLOSE = "<arg_key>", "</arg_key>"
VALUE_OPEN, VALUE_CLOSE = "<arg_value>", "</arg_value>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
_TOOL_TAGS = (CALL_OPEN, CALL_CLOSE, KEY_OPEN, KEY_CLOSE, VALUE_OPEN, VALUE_CLOSE, RESPONSE_OPEN, RESPONSE_CLOSE)


def load_tokenizer(path: str | Path | None = None, what: str = "tokenizer path"):
    """The tokenizer saved in folder `path` (a checkpoint: tokenizer.json or tokenizer_config.json), or the
    bundled one. A checkpoint's stop ids (its generation_config.json eos ids, and the tokenizer's eos) ride along
    for `stop_token_ids`."""
    from transformers import AutoTokenizer

    folder = TOKENIZER_DIR if path is None else Path(path)
    if not has_tokenizer(folder):
        raise UserError(f"{what} {str(folder)!r}: no tokenizer files there (tokenizer.json or tokenizer_config.json); "
                        f"save the tokenizer with the checkpoint (tokenizer.save_pretrained(folder))")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a broken tokenizer folder
        raise UserError(f"{what} {str(folder)!r}: cannot load its tokenizer ({first_line(e)})") from None
    tok.slide_stop_ids = _checkpoint_stop_ids(folder, tok)
    return tok


def has_tokenizer(folder: str | Path) -> bool:
    """Whether a folder holds a saved tokenizer (what AutoTokenizer.from_pretrained reads)."""
    return any((Path(folder) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))


def tokenizer_for(init: str | Path | None, tool_format: str = "auto"):
    """The tokenizer a run uses: the checkpoint's own for `model.init`, the bundled one for the built-in model;
    `tool_format` (model.tool_format) names how its model writes tool calls (slide/model/tool_formats.py)."""
    tok = load_tokenizer(init, "model.init") if init else load_tokenizer()
    tok.slide_tool_format = tool_format
    return tok


def _checkpoint_stop_ids(folder: Path, tok) -> list[int]:
    ids: list[int] = []
    gen = folder / "generation_config.json"
    if gen.is_file():
        try:
            eos = json.loads(gen.read_text()).get("eos_token_id")
        except (json.JSONDecodeError, AttributeError):
            eos = None
        ids += eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
    if tok.eos_token_id is not None:
        ids.append(tok.eos_token_id)
    return list(dict.fromkeys(i for i in ids if isinstance(i, int)))


def glm_chat(tok) -> bool:
    """Whether `tok` is SLIDE's character tokenizer with its GLM-4.5 template (the built-in tiny model's, also
    saved in every checkpoint of it), whose stop tokens are GLM's three role tokens. Every tokenizer, this one
    included, is rendered through its own chat template (slide/model/chat.py)."""
    cached = getattr(tok, "slide_glm_chat", None)
    if cached is None:
        bundled = _bundled()
        cached = tok.chat_template == bundled.chat_template and tok.get_vocab() == bundled.get_vocab()
        tok.slide_glm_chat = cached
    return cached


@functools.lru_cache(maxsize=1)
def _bundled():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def stop_token_ids(tok) -> list[int]:
    """Ids that end an assistant turn. GLM's (bundled tokenizer): <|endoftext|>, <|user|>, <|observation|>, in
    that order. Any other tokenizer: its checkpoint's eos ids (generation_config.json, then the tokenizer's)."""
    if not glm_chat(tok):
        ids = getattr(tok, "slide_stop_ids", None) or ([tok.eos_token_id] if tok.eos_token_id is not None else [])
        if not ids:
            raise UserError(f"tokenizer {getattr(tok, 'name_or_path', '?')!r}: no stop token (no eos_token_id in "
                            f"generation_config.json or the tokenizer); set one so that generation can end")
        return list(ids)
    ids = tok.convert_tokens_to_ids(list(STOP_TOKENS))
    if any(i is None or i == tok.unk_token_id for i in ids):
        raise UserError(f"tokenizer {getattr(tok, 'name_or_path', '?')!r} lacks one of the stop tokens {STOP_TOKENS}")
    return ids


def _plain_arguments(args: Any) -> dict:
    """Tool-call arguments as a dict (OpenAI-style JSON strings are decoded)."""
    if args is None:
        return {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise UserError(f"tool call arguments are not valid JSON ({e.msg}): {args[:80]!r}") from None
    if not isinstance(args, dict):
        raise UserError(f"tool call arguments must be a JSON object, got {type(args).__name__}: {args!r:.80}")
    return args


def _normalize_messages(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls:
            m = dict(m)
            fixed = []
            for call in calls:
                fn = call.get("function", call)
                fixed.append({"name": fn["name"], "arguments": _plain_arguments(fn.get("arguments"))})
            m["tool_calls"] = fixed
        out.append(m)
    return out


def chat_prompt(tok, messages: list[dict], thinking: bool = True, tools: list | None = None,
                generation_prompt: bool = True) -> str:
    """The rendered conversation up to where the model starts writing (ends with "<|assistant|>\\n", plus
    "<think></think>\\n" when `thinking` is False; without that generation prompt if `generation_prompt` is
    False). Messages: dicts with role (system, user, assistant, tool or observation), content, and for
    assistants optionally reasoning_content and tool_calls."""
    from jinja2 import TemplateError

    try:
        return tok.apply_chat_template(
            _normalize_messages(messages),
            tools=[openai_tool(t) for t in tools] if tools else None,
            add_generation_prompt=generation_prompt,
            tokenize=False,
            enable_thinking=thinking,
        )
    except TemplateError as e:  # raise_exception() in the template: bad role, bad tool-call arguments
        raise UserError(f"chat messages, rendered by the template of {getattr(tok, 'name_or_path', '?')!r}: "
                        f"{' '.join(str(e).split())[:300]}") from None


def openai_tool(tool: dict) -> dict:
    """A tool as OpenAI clients send it, `{"type": "function", "function": SCHEMA}`, from a bare SCHEMA (what SLIDE's
    environments describe) or as given. Every template sees this one form, so a model trained on an environment's
    tools reads the same system prompt when a client offers the same tools to `slide serve` or vLLM (transformers
    and the GLM, Qwen and Llama templates are written for it)."""
    if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        return tool
    return {"type": "function", "function": tool}


def _value_text(v: Any) -> str:
    # Same rule as the template: strings as-is, anything else as JSON (transformers' tojson is json.dumps
    # with ensure_ascii=False and default separators).
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def tool_calls_text(tool_calls: list[dict], after_content: bool) -> str:
    """The XML block the template writes for `tool_calls` ({"name", "arguments"} or OpenAI {"function": ...})."""
    parts = []
    for i, call in enumerate(tool_calls):
        fn = call.get("function", call)
        if after_content or i:
            parts.append("\n")
        parts.append(CALL_OPEN + fn["name"])
        for k, v in _plain_arguments(fn.get("arguments")).items():
            parts.append(f"\n{KEY_OPEN}{k}{KEY_CLOSE}\n{VALUE_OPEN}{_value_text(v)}{VALUE_CLOSE}")
        parts.append("\n" + CALL_CLOSE)
    return "".join(parts)


def assistant_text(reasoning: str, content: str, end: str = EOS, *, tool_calls: list[dict] | None = None) -> str:
    """Exactly what the model writes after `chat_prompt(..., thinking=True)`:
    "<think>{reasoning}</think>\\n{content}" + tool calls (if any) + `end`.

    `end` is the stop token that closes the turn: "<|endoftext|>" for a final answer, "<|observation|>" after tool
    calls, or "" for the text the chat template itself renders (it writes no end token). In non-thinking mode the
    prompt already holds "<think></think>\\n", so the model writes only the part after it."""
    text = f"{THINK_OPEN}{reasoning}{THINK_CLOSE}\n{content}"
    if tool_calls:
        text += tool_calls_text(tool_calls, after_content=bool(content))
    return text + end


def _decode_value(raw: str) -> Any:
    """An argument value as written: JSON numbers, booleans, null, arrays and objects are decoded, everything else
    stays the raw string (so a string argument that looks like a number comes back as that number)."""
    try:
        v = json.loads(raw)
    except (json.JSONDecodeError, ValueError):
        return raw
    return raw if isinstance(v, str) else v


class _Malformed(Exception):
    pass


def _skip_ws(s: str, pos: int) -> int:
    while pos < len(s) and s[pos].isspace():
        pos += 1
    return pos


def _snippet(s: str, pos: int) -> str:
    return repr(s[pos : pos + 30])


def _parse_call_body(body: str) -> dict:
    """`body` is the text between <tool_call> and </tool_call>."""
    for tag in (CALL_OPEN, CALL_CLOSE, RESPONSE_OPEN, RESPONSE_CLOSE):
        if tag in body:
            raise _Malformed(f"unclosed {CALL_OPEN}: {tag} inside a tool call")
    k = body.find(KEY_OPEN)
    head = body if k < 0 else body[:k]
    for tag in (KEY_CLOSE, VALUE_OPEN, VALUE_CLOSE):
        if tag in head:
            raise _Malformed(f"{tag} before any {KEY_OPEN} in tool call")
    name = head.strip()
    if not name:
        raise _Malformed(f"tool call without a function name after {CALL_OPEN}")
    if any(c.isspace() for c in name):
        raise _Malformed(f"junk in tool call name: {name[:40]!r}")
    args: dict[str, Any] = {}
    pos = len(head)
    while True:
        pos = _skip_ws(body, pos)
        if pos == len(body):
            break
        if not body.startswith(KEY_OPEN, pos):
            raise _Malformed(f"junk between tags in tool call {name!r}: {_snippet(body, pos)}")
        pos += len(KEY_OPEN)
        end = body.find(KEY_CLOSE, pos)
        if end < 0:
            raise _Malformed(f"unclosed {KEY_OPEN} in tool call {name!r}")
        key = body[pos:end]
        if any(tag in key for tag in _TOOL_TAGS):
            raise _Malformed(f"unclosed {KEY_OPEN} in tool call {name!r}")
        key = key.strip()
        if not key:
            raise _Malformed(f"empty {KEY_OPEN} in tool call {name!r}")
        pos = _skip_ws(body, end + len(KEY_CLOSE))
        if not body.startswith(VALUE_OPEN, pos):
            if pos == len(body) or body.startswith(KEY_OPEN, pos):
                raise _Malformed(f"missing {VALUE_OPEN} for key {key!r} in tool call {name!r}")
            raise _Malformed(f"junk between tags in tool call {name!r}: {_snippet(body, pos)}")
        pos += len(VALUE_OPEN)
        end = body.find(VALUE_CLOSE, pos)
        if end < 0:
            raise _Malformed(f"unclosed {VALUE_OPEN} for key {key!r} in tool call {name!r}")
        raw = body[pos:end]
        if any(tag in raw for tag in _TOOL_TAGS):
            raise _Malformed(f"unclosed {VALUE_OPEN} for key {key!r} in tool call {name!r}")
        if key in args:
            raise _Malformed(f"duplicate argument {key!r} in tool call {name!r}")
        args[key] = _decode_value(raw)
        pos = end + len(VALUE_CLOSE)
    return {"name": name, "arguments": args}


def _parse_calls(region: str) -> list[dict]:
    """`region` starts at the first <tool_call>; only whitespace may separate and follow the calls."""
    calls = []
    pos = 0
    while True:
        pos = _skip_ws(region, pos)
        if pos == len(region):
            return calls
        if not region.startswith(CALL_OPEN, pos):
            raise _Malformed(f"junk after {CALL_CLOSE}: {_snippet(region, pos)}")
        pos += len(CALL_OPEN)
        end = region.find(CALL_CLOSE, pos)
        if end < 0:
            raise _Malformed(f"unclosed {CALL_OPEN}")
        calls.append(_parse_call_body(region[pos:end]))
        pos = end + len(CALL_CLOSE)


def parse_assistant(text: str) -> dict:
    """Split a generated assistant turn into {"reasoning", "content", "tool_calls"}.

    The inverse of `assistant_text`: the text is cut at the first stop token (<|endoftext|>, <|user|>,
    <|observation|>, if the decode kept them); a leading <think>...</think> block is optional (without one the
    reasoning is ""); one "\\n" after </think> and one before the first <tool_call> are layout, not content.
    Tool calls become [{"name": str, "arguments": dict}] with values decoded as in `_decode_value`.

    A malformed turn adds "error" (one line saying what is wrong) and then has no tool calls, so nothing half-parsed
    is ever executed: unclosed <think>, <tool_call>, <arg_key> or <arg_value>; a key without a value; an empty or
    duplicate key; a missing function name; anything but whitespace between or after the calls; tool tags
    outside a call."""
    cut = min((i for i in (text.find(s) for s in STOP_TOKENS) if i >= 0), default=len(text))
    text = text[:cut]
    out: dict[str, Any] = {"reasoning": "", "content": "", "tool_calls": []}

    rest = text
    if THINK_CLOSE in rest:
        head, rest = rest.split(THINK_CLOSE, 1)
        out["reasoning"] = head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head
        if rest.startswith("\n"):
            rest = rest[1:]
    elif rest.lstrip().startswith(THINK_OPEN):
        out["reasoning"] = rest.split(THINK_OPEN, 1)[1]
        out["error"] = f"unclosed {THINK_OPEN} (no {THINK_CLOSE})"
        return out

    start = rest.find(CALL_OPEN)
    content, region = (rest, "") if start < 0 else (rest[:start], rest[start:])
    if region and content.endswith("\n"):
        content = content[:-1]
    out["content"] = content

    stray = next((tag for tag in _TOOL_TAGS if tag in content), None)
    if stray is not None:
        out["error"] = f"stray {stray} outside a tool call"
        return out
    try:
        out["tool_calls"] = _parse_calls(region)
    except _Malformed as e:
        out["error"] = str(e)
    return out
