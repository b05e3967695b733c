"""The chat-format object on checkpoints with their own templates (tests/own_checkpoint.py: Qwen3-style ChatML with
Hermes JSON calls, Llama-3.1 with JSON calls, GLM-4.5 with XML calls, each over a BPE tokenizer): tool-call formats
by hand, and multi-turn episodes token by token against each template's own rendering."""
from __future__ import annotations

import random

import pytest
from own_checkpoint import STYLES, build
from replay import ReplayEngine, model_turns

from slide.agent.envs.calculator import TOOLS, CalculatorEnv, CalculatorTask, trace
from slide.agent.episode import run_episodes
from slide.engine.inprocess import SamplingParams
from slide.errors import UserError
from slide.model.chat import chat_format
from slide.model.tokenizer import tokenizer_for
from slide.model.tool_formats import TOOL_FORMATS, find_tool_format, hermes_parse, llama3_parse

CALL = {"name": "calculate", "arguments": {"expression": "12*3", "exact": True}}


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("styles")
    return {style: tokenizer_for(str(build(root / style, style=style))) for style in STYLES}


# ---------------------------------------------------------------- tool formats, by hand
def test_hermes_round_trip_and_layout():
    text = TOOL_FORMATS["hermes"].render([CALL, {"name": "f", "arguments": {}}], after_content=True)
    assert text == ('\n<tool_call>\n{"name": "calculate", "arguments": {"expression": "12*3", "exact": true}}\n'
                    '</tool_call>\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>')
    got = hermes_parse("<think>\nLet me see.\n</think>\n\nSure." + text)
    assert got == {"reasoning": "Let me see.", "content": "Sure.", "tool_calls": [CALL, {"name": "f", "arguments": {}}]}
    assert hermes_parse("just 36") == {"reasoning": "", "content": "just 36", "tool_calls": []}
    # arguments as a JSON string (OpenAI's wire form) are decoded
    got = hermes_parse('<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}\n</tool_call>')
    assert got["tool_calls"] == [{"name": "f", "arguments": {"a": 1}}]


@pytest.mark.parametrize("text, error", [
    ("<think>never closed", "unclosed <think>"),
    ("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}", "unclosed <tool_call>"),
    ("<tool_call>\n{\"name\": \"f\", \"arguments\": {}\n</tool_call>", "not valid JSON"),
    ("<tool_call>\n[1, 2]\n</tool_call>", "must be a JSON object"),
    ("<tool_call>\n{\"arguments\": {}}\n</tool_call>", "without a function name"),
    ("<tool_call>\n{\"name\": \"f\", \"arguments\": [1]}\n</tool_call>", "must be a JSON object, got list"),
    ("<tool_call>\n{\"name\": \"f\", \"arguments\": {}, \"id\": 3}\n</tool_call>", "unexpected key 'id'"),
    ("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call> and more", "junk after </tool_call>"),
    ("done </tool_call>", "stray </tool_call>"),
])
def test_hermes_malformed_turns_have_one_reason_and_no_calls(text, error):
    got = hermes_parse(text)
    assert error in got["error"] and got["tool_calls"] == []


def test_llama3_json_turns():
    text = TOOL_FORMATS["llama3_json"].render([CALL], after_content=False)
    assert text == '{"name": "calculate", "parameters": {"expression": "12*3", "exact": true}}'
    assert llama3_parse(text) == {"reasoning": "", "content": "", "tool_calls": [CALL]}
    assert llama3_parse("36") == {"reasoning": "", "content": "36", "tool_calls": []}
    assert "not valid JSON" in llama3_parse('{"name": "f", ')["error"]
    assert "must be" in llama3_parse('{"name": "f", "arguments": {}}')["error"]


def test_auto_finds_each_templates_format(toks):
    assert {s: chat_format(t).tools.name for s, t in toks.items()} == {"chatml": "hermes", "llama3": "llama3_json",
                                                                       "glm": "glm"}
    assert find_tool_format("auto", "{{ messages[0].content }}") is None
    with pytest.raises(UserError, match="model.tool_format 'xml'"):
        find_tool_format("xml", None)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_render_is_what_the_template_writes(toks, style):
    """Each format's render() gives the template's own text for a turn of calls, and parse() inverts it."""
    tok = toks[style]
    fmt = chat_format(tok)
    prompt = [{"role": "user", "content": "What is 12*3?"}]
    turn, _ = fmt.split_turn(prompt, {"role": "assistant", "reasoning_content": "", "content": "",
                                      "tool_calls": [CALL]}, [{"role": "tool", "content": "36"}], False, TOOLS)
    assert fmt.cut(turn).endswith(fmt.tools.render([CALL], after_content=False))
    assert fmt.parse(turn)["tool_calls"] == [CALL]


# ---------------------------------------------------------------- multi-turn, token in / token out
@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("style", sorted(STYLES))
def test_episodes_are_token_in_token_out_for_every_template(toks, style, thinking):
    """A model that writes each template's own turns: the episode's ids are the prompt's, the model's exactly as
    sampled and the environment's turns as the template renders them; equal to SFT's conversation() token for token
    and, for an append-only template, to the template's rendering of the whole conversation. Qwen3's layout drops
    an empty think block once a turn is not the last: counted, the sampled tokens kept."""
    tok = toks[style]
    fmt = chat_format(tok)
    problem = CalculatorTask().generate(random.Random(3), 2)
    messages = trace(problem)["messages"]
    if not thinking:  # no reasoning to write: the generation prompt holds an empty think block
        messages = [{**m, "reasoning_content": ""} if m["role"] == "assistant" else m for m in messages]
    ids, mask = fmt.conversation(messages, TOOLS, thinking)
    engine = ReplayEngine(model_turns(ids, mask))
    [group] = run_episodes(engine, tok, [problem], lambda p: CalculatorEnv(), SamplingParams(max_new_tokens=200),
                           n=2, max_turns=3, max_tokens=600, thinking=thinking)
    for s in group:
        assert (s.status, s.reason, s.reward, s.turns, s.tool_calls) == ("completed", "answer", 1.0, 2, 1)
        assert s.prompt_ids + s.response_ids == ids
        assert [0] * len(s.prompt_ids) + s.loss_mask == mask
        assert s.messages[1]["tool_calls"] == messages[1]["tool_calls"]
        rewritten = style == "chatml" and not thinking
        assert s.events == ({"template_rewrites": 1} if rewritten else {})
        if not rewritten:  # the template's text through the last stop token (GLM writes none: the eos is appended)
            rendered = fmt.render(messages, thinking, TOOLS, gen=False)
            expected = rendered + fmt.stop_texts[0] if style == "glm" else rendered.removesuffix("\n")
            assert tok.decode(ids, skip_special_tokens=False) == expected


@pytest.mark.parametrize("style", sorted(STYLES))
def test_malformed_and_unknown_calls_fail_with_their_reason(toks, style):
    tok = toks[style]
    fmt = chat_format(tok)
    stop = fmt.stop_texts[0] if style != "glm" else "<|observation|>"
    bad = {"chatml": '<tool_call>\n{"name": "calculate", "arguments": {}\n</tool_call>',
           "llama3": '{"name": "calculate", "arguments": {}}',
           "glm": "<tool_call>calculate\n<arg_key>expression</arg_key>\n</tool_call>"}[style]
    unknown = fmt.tools.render([{"name": "search", "arguments": {"q": "x"}}], after_content=False)
    for text, reason in ((bad, "invalid_format"), (unknown, "unknown_tool")):
        engine = ReplayEngine([tok.encode(text + stop, add_special_tokens=False)])
        problem = CalculatorTask().generate(random.Random(0), 1)
        [[s]] = run_episodes(engine, tok, [problem], lambda p: CalculatorEnv(), SamplingParams(max_new_tokens=200),
                             n=1, max_turns=2, max_tokens=300)
        assert (s.status, s.reason, s.reward) == ("failed", reason, 0.0), s.error
