"""From sampled token ids to what an API client sees: text as it is decoded, and a chat turn split into reasoning,
content and tool calls.

    row = RowText(tok, fmt, stops=["\\n\\n"])
    row.add(token)                 # True once a stop string appeared: stop generating this row
    turn = ChatTurn(fmt, tools=True)
    turn.delta(row.safe(turn.tags))   # (reasoning, content) text not sent yet: what a stream sends now
    turn.final(row.text())            # the rest, and the tool calls parsed by the checkpoint's format

A streamed choice and the same choice answered at once carry the same text: `safe` holds back what could still
turn into something else (half of a tag, of a stop string, of a UTF-8 character), and tool calls are sent only once
the turn is complete and parsed, so nothing half-parsed reaches a client.
"""
from __future__ import annotations

import json
import uuid

from slide.model.tokenizer import CALL_OPEN, THINK_CLOSE, THINK_OPEN
from slide.model.tool_formats import split_reasoning

CALL_OPENERS = {"glm": CALL_OPEN, "hermes": CALL_OPEN, "llama3_json": "{"}  # where a format's calls begin


def held_back(text: str, tags: list[str]) -> int:
    """Length of the longest end of `text` that is the beginning (not all) of one of `tags`."""
    longest = 0
    for tag in tags:
        for size in range(min(len(tag) - 1, len(text)), longest, -1):
            if text.endswith(tag[:size]):
                longest = size
                break
    return longest


class RowText:
    """One choice's text: its tokens decoded, cut at the checkpoint's first stop token and at the request's first
    stop string (`stopped` then)."""

    def __init__(self, tok, fmt, stops: list[str]):
        self.tok, self.fmt, self.stops = tok, fmt, stops
        self.ids: list[int] = []
        self._text = ""
        self.stopped = False

    def add(self, token: int) -> bool:
        """Take one sampled token; True when a stop string ends the text here."""
        if self.stopped:
            return True
        self.ids.append(token)
        text = self.fmt.cut(self.tok.decode(self.ids, skip_special_tokens=False))
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            text, self.stopped = text[:min(hits)], True
        self._text = text
        return self.stopped

    def text(self) -> str:
        return self._text

    def safe(self, tags: list[str] = ()) -> str:
        """The text a stream may send now."""
        text = self._text
        if self.stopped:
            return text
        text = text.rstrip("\ufffd")  # an unfinished multi-byte character
        cut = held_back(text, list(tags) + self.stops)
        return text[:len(text) - cut]


class ChatTurn:
    """The client's view of one chat choice: reasoning and content deltas as text arrives, tool calls at the end
    (parsed only when the request offered tools)."""

    def __init__(self, fmt, tools: bool):
        self.fmt = fmt
        self.format = fmt.tools if tools else None
        self.opener = CALL_OPENERS.get(self.format.name, CALL_OPEN) if self.format else None
        self.tags = [THINK_OPEN, THINK_CLOSE] + ([self.opener] if self.opener else [])
        self.sent = ["", ""]  # reasoning, content

    def _view(self, text: str) -> tuple[str, str]:
        reasoning, content, _ = split_reasoning(text)
        if self.opener and self.opener in content:  # tool calls follow: sent once parsed, at the end
            content = content[:content.index(self.opener)]
        if self.opener:
            content = content.rstrip("\n")  # the newline before a call is not content (the formats' parsers)
        return reasoning, content

    def _send(self, reasoning: str, content: str) -> tuple[str, str]:
        out = []
        for i, now in enumerate((reasoning, content)):
            new = now[len(self.sent[i]):] if now.startswith(self.sent[i]) else ""
            self.sent[i] += new
            out.append(new)
        return out[0], out[1]

    def delta(self, safe_text: str) -> tuple[str, str]:
        """(reasoning, content) not sent yet in the text so far."""
        return self._send(*self._view(safe_text))

    def final(self, text: str) -> tuple[str, str, list[dict]]:
        """(reasoning, content) still to send of the whole turn, and its OpenAI tool calls. A turn whose calls do not
        parse is answered as plain content, as written."""
        reasoning, content, _ = split_reasoning(text)
        calls: list[dict] = []
        if self.format is not None:
            parsed = self.format.parse(text)
            if "error" not in parsed:
                reasoning, content, calls = parsed["reasoning"], parsed["content"], parsed["tool_calls"]
        dr, dc = self._send(reasoning, content)
        return dr, dc, [openai_call(c) for c in calls]

    def full(self) -> tuple[str, str]:
        """Everything sent: (reasoning, content)."""
        return self.sent[0], self.sent[1]


def openai_call(call: dict) -> dict:
    """A parsed call {"name", "arguments": dict} as OpenAI's API carries it (arguments as a JSON string)."""
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
