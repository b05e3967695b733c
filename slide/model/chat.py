"""One chat-format object per checkpoint: prompts, training targets, tool-call parsing and the environment's turns
of a multi-turn episode, all from the checkpoint's own chat template and stop tokens.

    fmt = chat_format(tok)                                        # cached on the tokenizer
    ids = fmt.prompt_ids([{"role": "user", "content": "2+3?"}], thinking=True)
    fmt.parse(text)                        # {"reasoning", "content", "tool_calls"} (+ "error") of a generated turn
    env_ids, note = fmt.environment_ids(prompt, assistant, tool_messages, thinking, tools)
    ids, mask = fmt.conversation(messages, tools, thinking)      # SFT: 1 on what the model writes

Token in, token out. A multi-turn episode is the prompt's ids, then what the model sampled (kept exactly, never
re-tokenized), then each environment turn's ids, then the model again. An environment turn is the text the template
writes between the end of the model's turn (its stop token) and the next generation prompt: found by rendering a
short conversation of the episode's prompt, the model's turn as parsed, and the tool results, so each turn costs the
same whatever the number of turns before it:

    ChatML:  ...</tool_call><|im_end|>        |  \\n<|im_start|>user\\n<tool_response>\\n3\\n</tool_response><|im_end|>\\n
                                             |  <|im_start|>assistant\\n
    GLM:     ...</tool_call><|observation|>  |  \\n<tool_response>3</tool_response><|assistant|>\\n
             (the model's turn, trained)     |  (the environment's turn, loss mask 0)

The model's turn ends at the template's first stop token after the generation prompt; the environment's text
starts right after it. A template that is not append-only (it renders earlier turns differently once more follows:
Qwen3 drops an earlier turn's empty think block, some templates drop all earlier reasoning) cannot change these
ids: the rule is that the episode keeps the tokens the model saw. `rewritten` tells, once per episode, whether the
template's rendering of the whole conversation differs from them (counted as the `template_rewrites` event), so a
user sees when training contexts and the template's own rendering part ways.

SFT targets (`conversation`, `example`) are built the same way, turn by turn: the prompt's ids, each assistant
turn's text as the template renders it after the generation prompt (through its stop token, trained), each
environment turn (masked). So cold-start SFT trains on exactly the token sequences RL episodes produce. A template
that writes no end token after the last assistant turn (GLM's: the next role token ends it) gets the checkpoint's
first stop token appended, trained: generation ends there.
"""
from __future__ import annotations

from typing import Any

from slide.errors import UserError
from slide.model.tokenizer import chat_prompt, stop_token_ids
from slide.model.tool_formats import find_tool_format, split_reasoning


def chat_format(tok) -> "ChatFormat":
    """`tok`'s ChatFormat (built once per tokenizer; the tool format from `tok.slide_tool_format`, default auto)."""
    fmt = getattr(tok, "slide_chat_format", None)
    if fmt is None:
        fmt = ChatFormat(tok, getattr(tok, "slide_tool_format", "auto"))
        tok.slide_chat_format = fmt
    return fmt


class ChatFormat:
    def __init__(self, tok, tool_format: str = "auto"):
        self.tok = tok
        self.name = getattr(tok, "name_or_path", "?")
        self.stop_ids = stop_token_ids(tok)
        self.stop_texts = [tok.decode([i], skip_special_tokens=False) for i in self.stop_ids]
        self.tools = find_tool_format(tool_format, getattr(tok, "chat_template", None))

    # ------------------------------------------------------------------ rendering
    def render(self, messages: list[dict], thinking: bool, tools: list | None = None, gen: bool = True) -> str:
        """The template's text of `messages` (with the generation prompt if `gen`); template errors are UserErrors."""
        return chat_prompt(self.tok, messages, thinking, tools, generation_prompt=gen)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False) if text else []

    def prompt_ids(self, messages: list[dict], thinking: bool, tools: list | None = None) -> list[int]:
        return self.encode(self.render(messages, thinking, tools))

    # ------------------------------------------------------------------ parsing
    def cut(self, text: str) -> str:
        """`text` up to its first stop token: what a verifier scores (any template's end token removed)."""
        return text[:min((i for i in (text.find(s) for s in self.stop_texts) if i >= 0), default=len(text))]

    def parse(self, text: str) -> dict:
        """A generated turn, cut at its first stop token, parsed by the checkpoint's tool format (reasoning and
        content only, no tool calls, for a template without one)."""
        text = self.cut(text)
        if self.tools is not None:
            return self.tools.parse(text)
        reasoning, content, error = split_reasoning(text)
        return {"reasoning": reasoning, "content": content, "tool_calls": []} | ({"error": error} if error else {})

    def needs_tools(self, what: str) -> None:
        """A UserError unless the template writes tool calls in a format SLIDE parses."""
        if self.tools is None:
            raise UserError(f"{what}: the chat template of {self.name!r} writes no tool calls in a format SLIDE "
                            f"knows (glm, hermes, llama3_json: slide/model/tool_formats.py); set model.tool_format "
                            f"if the model writes one of them")

    def call_turn_ok(self, stop_id: int | None, has_calls: bool) -> str | None:
        """None, or why a turn's stop token does not fit its tool calls (GLM: calls end with <|observation|>, and
        only calls do)."""
        want = self.tools.calls_stop if self.tools else None
        if want not in self.stop_texts:  # no such format, or a checkpoint whose template ends turns otherwise
            return None
        stopped = self.tok.decode([stop_id], skip_special_tokens=False) if stop_id is not None else ""
        if has_calls and stopped != want:
            return f"tool calls must end with {want}"
        if stopped == want and not has_calls:
            return f"{want} without a tool call"
        return None

    # ------------------------------------------------------------------ turns
    def _turn_end(self, text: str, start: int) -> tuple[int, str] | None:
        """(end, stop text) of the first stop token in `text` at or after `start`."""
        found = [(i, s) for s in self.stop_texts if (i := text.find(s, start)) >= 0]
        if not found:
            return None
        i, s = min(found)
        return i + len(s), s

    def split_turn(self, prompt: list[dict], assistant: dict, tool_messages: list[dict], thinking: bool,
                   tools: list | None) -> tuple[str, str]:
        """(the assistant's turn as the template writes it after the generation prompt, through its stop token;
        the environment's text after that stop token up to the next generation prompt, "" if no tool messages
        follow). Rendered in the conversation prompt + [assistant] + tool_messages."""
        head = self.render(prompt, thinking, tools, gen=False)
        gen = self.render(prompt, thinking, tools)
        full = self.render(prompt + [assistant] + tool_messages, thinking, tools, gen=bool(tool_messages))
        if not full.startswith(head):
            raise UserError(f"chat template of {self.name!r}: a conversation does not start with the rendering of "
                            f"its first messages (the template rewrites the prompt once the assistant answers)")
        end = self._turn_end(full, len(head))
        if tool_messages and end is None:
            raise UserError(f"chat template of {self.name!r}: no stop token ({', '.join(self.stop_texts)}) between "
                            f"an assistant's tool calls and the tool results, so the environment's turn cannot be "
                            f"told from the model's")
        # the model's turn after the generation prompt: from this rendering, or from the one where the turn is the
        # last message (a template that writes a turn differently once more follows: Qwen3's empty think block)
        src = full if full.startswith(gen) else self.render(prompt + [assistant], thinking, tools, gen=False)
        if not src.startswith(gen):
            raise UserError(f"chat template of {self.name!r}: an assistant's turn does not start with the generation "
                            f"prompt, so the model's span cannot be found")
        stop = self._turn_end(src, len(gen))
        if stop is not None:
            turn = src[len(gen):stop[0] - len(stop[1])] + (end[1] if end else stop[1])
        else:  # the template ends the turn with nothing (GLM's last turn): the model must still learn to stop
            turn = src[len(gen):] + (end[1] if end else self.stop_texts[0])
        return turn, full[end[0]:] if tool_messages else ""

    def environment_ids(self, prompt: list[dict], assistant: dict, tool_messages: list[dict], thinking: bool,
                        tools: list | None) -> list[int]:
        """The environment's turn after the model's `assistant` turn called tools (see the module docstring)."""
        return self.encode(self.split_turn(prompt, assistant, tool_messages, thinking, tools)[1])

    def conversation(self, messages: list[dict], tools: list | None = None,
                     thinking: bool = True) -> tuple[list[int], list[int]]:
        """(ids, loss mask) of a conversation: system/user messages, then assistant turns each followed by a run of
        tool messages (or nothing, at the end); mask 1 on each assistant turn through its stop token."""
        first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
        if first is None:
            raise ValueError("conversation: no assistant turn to train on")
        prompt = messages[:first]
        ids = self.prompt_ids(prompt, thinking, tools)
        mask = [0] * len(ids)
        i = first
        while i < len(messages):
            m = messages[i]
            if m["role"] != "assistant":
                raise ValueError(f"message {i}: expected an assistant turn, got role {m['role']!r}")
            j = i + 1
            while j < len(messages) and messages[j]["role"] in ("tool", "observation"):
                j += 1
            if not thinking:
                m = {**m, "reasoning_content": ""}
            turn, env = self.split_turn(prompt, m, messages[i + 1:j], thinking, tools)
            t, e = self.encode(turn), self.encode(env)
            ids, mask = ids + t + e, mask + [1] * len(t) + [0] * len(e)
            i = j
        return ids, mask

    def example(self, messages: list[dict], reasoning: str, content: str, thinking: bool):
        """(ids, loss mask) of `messages` plus one assistant turn (reasoning, content)."""
        turn = {"role": "assistant", "content": content, "reasoning_content": reasoning if thinking else ""}
        ids, mask = self.conversation(messages + [turn], None, thinking)
        if sum(mask) <= 1 and not content:
            raise UserError(f"chat template of {self.name!r}: the assistant's turn renders to no tokens")
        return ids, mask

    def rewritten(self, messages: list[dict], seen: list[int], thinking: bool, tools: list | None) -> bool:
        """Whether the template renders `messages` (ending with the model's last turn) differently from the ids
        the model was given before that turn, `seen` (prompt + response up to its last turn)."""
        text = self.render(messages[:-1], thinking, tools)
        return text != self.tok.decode(seen, skip_special_tokens=False)


def assistant_message(parsed: dict[str, Any], text: str) -> dict:
    """The chat message of a parsed turn; a malformed one as written (for the record)."""
    if "error" in parsed:
        return {"role": "assistant", "content": text}
    m = {"role": "assistant", "reasoning_content": parsed["reasoning"], "content": parsed["content"]}
    if parsed["tool_calls"]:
        m["tool_calls"] = parsed["tool_calls"]
    return m

