"""The OpenAI API's request bodies (what `slide serve` accepts) and its error shape.

Requests are pydantic models: a field of the wrong type or out of range is a 400 naming the field (`param`), as
OpenAI's API answers. Fields outside these models (frequency_penalty, logit_bias, user, ...) are accepted and
ignored, as most OpenAI-compatible servers do with what they do not implement.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An answer of `status` with OpenAI's error body {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """What both endpoints share: the model, sampling, stopping and streaming."""
    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    max_tokens: int | None = Field(None, ge=1)
    min_tokens: int = Field(0, ge=0)  # vLLM's: stop tokens are not sampled before this many (fixed-length benchmarks)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ChatRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none"] | None = None  # "required" / a named function would need constrained decoding
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=0)  # the engine keeps the sampled token's logprob only
    chat_template_kwargs: dict[str, Any] | None = None  # vLLM's: {"enable_thinking": false}

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def thinking(self) -> bool:
        return bool((self.chat_template_kwargs or {}).get("enable_thinking", True))

    def tool_list(self) -> list[dict] | None:
        return None if self.tool_choice == "none" else self.tools or None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions

    def limit(self) -> int | None:
        return self.max_tokens

    def prompt_list(self) -> list[str | list[int]]:
        """One entry per prompt: a text or token ids."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)
