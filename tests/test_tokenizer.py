"""The bundled character tokenizer, its GLM-4.5-style chat template and the Python helpers that mirror it."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slide.errors import UserError
from slide.model.tokenizer import (
    TOKENIZER_DIR,
    assistant_text,
    chat_prompt,
    load_tokenizer,
    parse_assistant,
    stop_token_ids,
)

REPO = Path(__file__).resolve().parent.parent

CONTROL = [
    "<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>",
    "<tool_response>", "</tool_response>", "<|unk|>",
]
SPECIAL = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<|unk|>"]
TAGS = [t for t in CONTROL if t not in SPECIAL]
CHARS = ["\n", "\t"] + [chr(c) for c in range(32, 127)]
UNK_ID = 17


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def render(tok, messages, **kw):
    return tok.apply_chat_template(messages, tokenize=False, **kw)


# ---------------------------------------------------------------- vocabulary


def test_vocab_is_fixed(tok):
    assert len(tok) == 115
    assert tok.convert_tokens_to_ids(CONTROL + CHARS) == list(range(115))
    assert tok.eos_token == tok.pad_token == "<|endoftext|>" and tok.eos_token_id == tok.pad_token_id == 0
    assert tok.unk_token == "<|unk|>" and tok.unk_token_id == UNK_ID
    assert tok.model_max_length == 4096
    assert tok.padding_side == "left"
    assert sorted(tok.all_special_ids) == [0, 1, 2, 3, 4, 5, 6, 17]


def test_stop_token_ids(tok):
    assert stop_token_ids(tok) == [0, 4, 6]


@pytest.mark.parametrize("text", CONTROL)
def test_control_tokens_are_single_ids(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == [CONTROL.index(text)]
    # also inside running text, with no spaces around
    ids = tok.encode(f"ab{text}cd", add_special_tokens=False)
    assert ids[2] == CONTROL.index(text) and len(ids) == 5


def test_characters_are_single_ids(tok):
    for i, ch in enumerate(CHARS):
        assert tok.encode(ch, add_special_tokens=False) == [18 + i]
    assert tok.encode("  a\n\tb", add_special_tokens=False) == [20, 20, 85, 18, 19, 86]
    assert tok("hello").input_ids == tok.encode("hello", add_special_tokens=False)  # nothing added around


def test_non_ascii_is_unk(tok):
    assert tok.encode("é中😀\r\x00", add_special_tokens=False) == [UNK_ID] * 5
    ids = tok.encode("aéb", add_special_tokens=False)
    assert ids == [tok.convert_tokens_to_ids("a"), UNK_ID, tok.convert_tokens_to_ids("b")]
    assert tok.decode(ids) == "a<|unk|>b"
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_round_trip_random_ascii(tok):
    rng = random.Random(1234)
    for _ in range(300):
        segments = []
        for _ in range(rng.randint(0, 12)):
            if rng.random() < 0.3:
                segments.append(rng.choice(CONTROL))
            else:
                segments.append("".join(rng.choice(CHARS) for _ in range(rng.randint(0, 20))))
        text = "".join(segments)
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        # special tokens vanish, the think/tool tags stay
        kept = "".join(s for s in segments if s not in SPECIAL)
        assert tok.decode(ids, skip_special_tokens=True) == kept
        # per-character: ids of a concatenation are the concatenation of ids
        cut = rng.randint(0, len(segments))
        left, right = "".join(segments[:cut]), "".join(segments[cut:])
        assert tok.encode(left, add_special_tokens=False) + tok.encode(right, add_special_tokens=False) == ids


def test_tags_survive_skip_special_tokens(tok):
    text = "<|assistant|>\n<think>r</think>\nok<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>1</arg_value>\n</tool_call><|observation|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == text.replace("<|assistant|>", "").replace("<|observation|>", "")
    for t in TAGS[:8]:
        assert CONTROL.index(t) in ids


def test_loads_without_slide_code(tmp_path):
    code = (
        "import sys, json\n"
        "from transformers import AutoTokenizer\n"
        f"t = AutoTokenizer.from_pretrained({str(TOKENIZER_DIR)!r})\n"
        "assert not [m for m in sys.modules if m == 'slide' or m.startswith('slide.')]\n"
        "s = t.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=False, add_generation_prompt=True)\n"
        "print(json.dumps([len(t), t.encode('<think>a', add_special_tokens=False), s]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    n, ids, prompt = json.loads(res.stdout.strip().splitlines()[-1])
    assert n == 115 and ids == [7, 85]
    assert prompt == "[gMASK]<sop><|user|>\nhi<|assistant|>\n"


def test_shipped_files():
    names = sorted(p.name for p in TOKENIZER_DIR.iterdir())
    assert names == ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())
    assert config["padding_side"] == "left" and config["model_max_length"] == 4096


def test_load_tokenizer_bad_path(tmp_path):
    with pytest.raises(UserError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "nope")
    assert len(load_tokenizer(TOKENIZER_DIR)) == 115
    assert len(load_tokenizer(str(TOKENIZER_DIR))) == 115


# ---------------------------------------------------------------- chat template, exact strings


def test_single_turn_thinking(tok):
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    expected = "[gMASK]<sop><|user|>\nWhat is 2+3?<|assistant|>\n"
    assert chat_prompt(tok, msgs) == expected
    assert render(tok, msgs, add_generation_prompt=True) == expected  # the template's default is thinking on
    assert render(tok, msgs, add_generation_prompt=True, enable_thinking=True) == expected


def test_single_turn_non_thinking(tok):
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    expected = "[gMASK]<sop><|user|>\nWhat is 2+3?/nothink<|assistant|>\n<think></think>\n"
    assert chat_prompt(tok, msgs, thinking=False) == expected
    # a user turn that already ends in /nothink is not doubled
    msgs = [{"role": "user", "content": "hi/nothink"}]
    assert chat_prompt(tok, msgs, thinking=False) == "[gMASK]<sop><|user|>\nhi/nothink<|assistant|>\n<think></think>\n"


def test_system_and_user(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert chat_prompt(tok, msgs) == "[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>\n"


def test_content_as_text_parts(tok):
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert chat_prompt(tok, msgs) == "[gMASK]<sop><|user|>\nab<|assistant|>\n"


def test_multi_turn_drops_earlier_reasoning(tok):
    msgs = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "reasoning_content": "r1", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "reasoning_content": "r2", "content": "a2"},
    ]
    assert render(tok, msgs) == (
        "[gMASK]<sop><|user|>\nq1<|assistant|>\n<think></think>\na1"
        "<|user|>\nq2<|assistant|>\n<think>r2</think>\na2"
    )
    assert chat_prompt(tok, msgs + [{"role": "user", "content": "q3"}]) == (
        "[gMASK]<sop><|user|>\nq1<|assistant|>\n<think></think>\na1"
        "<|user|>\nq2<|assistant|>\n<think></think>\na2"
        "<|user|>\nq3<|assistant|>\n"
    )
    # non-thinking: every user turn gets /nothink
    assert chat_prompt(tok, msgs[:3], thinking=False) == (
        "[gMASK]<sop><|user|>\nq1/nothink<|assistant|>\n<think></think>\na1"
        "<|user|>\nq2/nothink<|assistant|>\n<think></think>\n"
    )


def test_reasoning_inside_content_is_split(tok):
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>r</think>\na"}]
    assert render(tok, msgs) == "[gMASK]<sop><|user|>\nq<|assistant|>\n<think>r</think>\na"
    # aliases of reasoning_content are accepted too
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "reasoning": "r", "content": "a"}]
    assert render(tok, msgs) == "[gMASK]<sop><|user|>\nq<|assistant|>\n<think>r</think>\na"


WEATHER_CALL = {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}
WEATHER_XML = (
    "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>"
    "\n<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>"
)


def test_tool_call_and_response(tok):
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "reasoning_content": "use the tool", "content": "Let me check.", "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "content": "sunny"},
    ]
    expected = (
        "[gMASK]<sop><|user|>\nWeather in Paris?"
        "<|assistant|>\n<think>use the tool</think>\nLet me check.\n" + WEATHER_XML +
        "<|observation|>\n<tool_response>sunny</tool_response>"
        "<|assistant|>\n"
    )
    assert chat_prompt(tok, msgs) == expected
    # OpenAI-style call with JSON-string arguments, no content, two tool results sharing one <|observation|>
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}},
            {"type": "function", "function": {"name": "now", "arguments": {}}},
        ]},
        {"role": "tool", "content": "sunny"},
        {"role": "observation", "content": "noon"},
    ]
    assert chat_prompt(tok, msgs) == (
        "[gMASK]<sop><|user|>\nWeather in Paris?"
        "<|assistant|>\n<think></think>\n" + WEATHER_XML + "\n<tool_call>now\n</tool_call>"
        "<|observation|>\n<tool_response>sunny</tool_response>\n<tool_response>noon</tool_response>"
        "<|assistant|>\n"
    )


def test_non_string_argument_values_are_json(tok):
    call = {"name": "f", "arguments": {"xs": [1, 2], "o": {"k": "é"}, "b": True, "n": None, "s": "[1]"}}
    msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    assert render(tok, msgs).endswith(
        "<tool_call>f\n<arg_key>xs</arg_key>\n<arg_value>[1, 2]</arg_value>"
        '\n<arg_key>o</arg_key>\n<arg_value>{"k": "é"}</arg_value>'
        "\n<arg_key>b</arg_key>\n<arg_value>true</arg_value>"
        "\n<arg_key>n</arg_key>\n<arg_value>null</arg_value>"
        "\n<arg_key>s</arg_key>\n<arg_value>[1]</arg_value>\n</tool_call>"
    )


def test_tools_system_block(tok):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "hi"}]
    assert chat_prompt(tok, msgs, tools=tools) == (
        "[gMASK]<sop><|system|>\n# Tools\nYou can call these functions (JSON schemas, one per line):\n"
        '{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}\n'
        "To call one, write its name and arguments in this form, one <arg_key>/<arg_value> pair per argument:\n"
        "<tool_call>NAME\n<arg_key>KEY</arg_key>\n<arg_value>VALUE</arg_value>\n</tool_call>\n"
        "The results come back inside <tool_response></tool_response>."
        "<|user|>\nhi<|assistant|>\n"
    )


def test_a_bare_tool_schema_renders_as_its_openai_form(tok):
    """Environments describe tools as bare schemas, OpenAI clients wrap them: both render as the wrapped form, so
    what a model trains on is what a server shows it."""
    schema = {"name": "add", "parameters": {"type": "object"}}
    msgs = [{"role": "user", "content": "hi"}]
    assert chat_prompt(tok, msgs, tools=[schema]) == \
        chat_prompt(tok, msgs, tools=[{"type": "function", "function": schema}])
    assert '{"type": "function", "function": {"name": "add"' in chat_prompt(tok, msgs, tools=[schema])


def test_unknown_role_raises(tok):
    with pytest.raises(UserError, match="unknown chat role narrator"):
        chat_prompt(tok, [{"role": "narrator", "content": "x"}])
    with pytest.raises(UserError, match="not valid JSON"):
        chat_prompt(tok, [{"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "{oops"}]}])


# ---------------------------------------------------------------- prompt/target split


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+3?"}],
    [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}],
    [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "reasoning_content": "r1", "content": "a1"},
        {"role": "user", "content": "q2"},
    ],
    [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "reasoning_content": "r", "content": "", "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "content": "sunny"},
    ],
]
REPLIES = [
    ("think hard", "5", None),
    ("", "answer", None),
    ("r", "", [WEATHER_CALL]),
    ("r", "I'll check.", [WEATHER_CALL, {"name": "g", "arguments": {"x": [1, "a"]}}]),
    (" spaces \n", "\n text with <think> tag \n", None),
]


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("reply", REPLIES)
def test_prompt_target_prefix_consistency(tok, conv, reply):
    reasoning, content, calls = reply
    msg = {"role": "assistant", "reasoning_content": reasoning, "content": content}
    if calls:
        msg["tool_calls"] = calls
    full = render(tok, conv + [msg])
    prompt = chat_prompt(tok, conv)
    target = assistant_text(reasoning, content, end="", tool_calls=calls)
    assert full == prompt + target
    # and on token ids
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    assert enc(full) == enc(prompt) + enc(target)
    assert enc(full + "<|endoftext|>") == enc(prompt) + enc(assistant_text(reasoning, content, tool_calls=calls))


@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_prefix_consistency_non_thinking(tok, conv):
    full = render(tok, conv + [{"role": "assistant", "content": "five"}], enable_thinking=False)
    assert full == chat_prompt(tok, conv, thinking=False) + "five"


def test_assistant_text_layout():
    assert assistant_text("2+3=5", "5") == "<think>2+3=5</think>\n5<|endoftext|>"
    assert assistant_text("", "x", end="") == "<think></think>\nx"
    assert assistant_text("r", "", end="<|observation|>", tool_calls=[WEATHER_CALL]) == (
        "<think>r</think>\n" + WEATHER_XML + "<|observation|>"
    )


def test_generation_mask_covers_assistant_text(tok):
    conv = CONVERSATIONS[3]
    msg = {"role": "assistant", "reasoning_content": "r", "content": "ok", "tool_calls": [WEATHER_CALL]}
    out = tok.apply_chat_template(conv + [msg], return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    target = tok.encode(assistant_text("r", "ok", end="", tool_calls=[WEATHER_CALL]), add_special_tokens=False)
    assert ids[len(ids) - len(target):] == target
    assert mask[len(ids) - len(target):] == [1] * len(target)
    # the earlier assistant turn (after the last user turn, so its reasoning is kept) is marked too, nothing else
    n_earlier = len(tok.encode(assistant_text("r", "", end="", tool_calls=[WEATHER_CALL]), add_special_tokens=False))
    assert sum(mask) == len(target) + n_earlier


# ---------------------------------------------------------------- parse_assistant


def test_parse_round_trip():
    cases = [
        ("2+3=5", "5", None),
        ("", "", None),
        ("multi\nline", "a\n\nb\n", None),
        ("r", "", [WEATHER_CALL]),
        ("r", "calling", [WEATHER_CALL, {"name": "g", "arguments": {"x": [1, "a"], "y": {"k": None}, "z": "hi there"}}]),
        ("r", "", [{"name": "now", "arguments": {}}]),
    ]
    for reasoning, content, calls in cases:
        for end in ("<|endoftext|>", "<|observation|>", ""):
            got = parse_assistant(assistant_text(reasoning, content, end=end, tool_calls=calls))
            assert got == {"reasoning": reasoning, "content": content, "tool_calls": calls or []}


def test_parse_without_think_block_and_stop_tokens():
    assert parse_assistant("just text") == {"reasoning": "", "content": "just text", "tool_calls": []}
    got = parse_assistant("<think>r</think>\nans<|endoftext|><|user|>\nmore junk")
    assert got == {"reasoning": "r", "content": "ans", "tool_calls": []}
    got = parse_assistant("<think>r</think>\nans<|user|>")
    assert got == {"reasoning": "r", "content": "ans", "tool_calls": []}


def test_parse_values_and_whitespace():
    text = (
        "<think>r</think>\n<tool_call> f \n\n<arg_key>n</arg_key>  <arg_value>3.5</arg_value>\n"
        "<arg_key>s</arg_key>\n<arg_value>Paris, France</arg_value>\n"
        "<arg_key>j</arg_key>\n<arg_value>{\"a\": [1]}</arg_value>\n</tool_call>  \n"
    )
    got = parse_assistant(text)
    assert "error" not in got
    assert got["tool_calls"] == [{"name": "f", "arguments": {"n": 3.5, "s": "Paris, France", "j": {"a": [1]}}}]


MALFORMED = [
    ("<think>still thinking", "unclosed <think>"),
    ("<think>r</think>\n<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>1</arg_value>", "unclosed <tool_call>"),
    ("<think>r</think>\n<tool_call>f\n<arg_key>a</arg_key>\n</tool_call>", "missing <arg_value> for key 'a'"),
    (
        "<think>r</think>\n<tool_call>f\n<arg_key>a</arg_key>\n<arg_key>b</arg_key>\n<arg_value>1</arg_value>\n</tool_call>",
        "missing <arg_value> for key 'a'",
    ),
    ("<think>r</think>\n<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>1\n</tool_call>", "unclosed <arg_value>"),
    ("<think>r</think>\n<tool_call>f\n<arg_key>a\n<arg_value>1</arg_value>\n</tool_call>", "unclosed <arg_key>"),
    ("<think>r</think>\n<tool_call>f\n<arg_key>a</arg_key>junk<arg_value>1</arg_value>\n</tool_call>", "junk between tags"),
    ("<think>r</think>\n<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>1</arg_value>xx\n</tool_call>", "junk between tags"),
    ("<think>r</think>\n<tool_call>f\n</tool_call>\nand then some text", "junk after </tool_call>"),
    ("<think>r</think>\n<tool_call>f\n</tool_call> x <tool_call>g\n</tool_call>", "junk after </tool_call>"),
    ("<think>r</think>\n<tool_call>\n<arg_key>a</arg_key>\n<arg_value>1</arg_value>\n</tool_call>", "without a function name"),
    ("<think>r</think>\n<tool_call>get weather\n</tool_call>", "junk in tool call name"),
    ("<think>r</think>\n<tool_call>f\n<tool_call>g\n</tool_call>", "unclosed <tool_call>"),
    (
        "<think>r</think>\n<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>1</arg_value>"
        "\n<arg_key>a</arg_key>\n<arg_value>2</arg_value>\n</tool_call>",
        "duplicate argument 'a'",
    ),
    ("<think>r</think>\nanswer</tool_call>", "stray </tool_call>"),
    ("<think>r</think>\n<arg_key>a</arg_key>", "stray <arg_key>"),
    ("<think>r</think>\nok<tool_response>fake</tool_response>", "stray <tool_response>"),
]


@pytest.mark.parametrize("text,reason", MALFORMED)
def test_parse_malformed(text, reason):
    got = parse_assistant(text)
    assert reason in got.get("error", ""), got
    assert got["tool_calls"] == []
    assert "\n" not in got["error"]


def test_parse_never_raises():
    rng = random.Random(7)
    pieces = CONTROL + ["\n", " ", "f", "a", "1", '{"x": 1}', "[", "é"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 15)))
        got = parse_assistant(text)
        assert set(got) <= {"reasoning", "content", "tool_calls", "error"}


# ---------------------------------------------------------------- the build script


def test_build_check_passes():
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_tokenizer.py"), "--check"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_build_check_detects_drift(tmp_path):
    stale = tmp_path / "tok"
    shutil.copytree(TOKENIZER_DIR, stale)
    (stale / "chat_template.jinja").write_text("{{ messages }}")
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_tokenizer.py"), "--check", "--out", str(stale)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 1
    assert "chat_template.jinja: differs" in res.stderr
