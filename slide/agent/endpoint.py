"""Agent episodes played through an OpenAI-compatible chat API (`slide serve`, vLLM, ...): the environments, call
checks, limits and outcomes of run_episodes (slide/agent/episode.py), with the model behind an endpoint.

    ask = chat_client("http://127.0.0.1:8000/v1", "glm-tiny")
    samples = play_endpoint(ask, problems, env_factory, max_new_tokens=96, max_turns=4, max_tokens=512)

Each turn sends the conversation so far (the env's prompt; the model's turns with their reasoning and `tool_calls`;
each tool result as a `tool` message) with the env's tools as OpenAI `tools`, at temperature 0. The reply's calls
go through episode.py's own functions: decide_turn (the schema check, the final answer's env.reward), run_turn_calls
(env.step under the step timeout, in the same isolation RL uses) and take_results, so a status, a reason, a reward
and a counted event mean here what they mean in RL. The endpoint's chat template renders the conversation and its
server parses the calls.

Where this differs from the same checkpoint played in-process, and why:
- not in the tools: they are sent as OpenAI `tools`, and every chat template sees tools in that wrapped form,
  run_episodes' too (slide/model/tokenizer.py: openai_tool). (Before that rule, a calculator cold start trained
  on bare schemas called its tool in 0 of 32 served episodes against 32 of 32 in-process, 2026-12-03.)
- a turn whose calls the server cannot parse comes back as plain content (the API has no "malformed call"), so the
  episode ends as a final answer (completed/answer, usually reward 0) where run_episodes says failed/invalid_format;
  the stop-token check of GLM's format (calls end with <|observation|>, and only calls do) is the server's.
- tokens come from the API's `usage`: an episode's response tokens are the growth of prompt_tokens since its first
  turn plus the latest turn's completion_tokens, which is run_episodes' count whenever the template renders the
  conversation as the model wrote it (append-only). A turn is asked for at most what was left before the latest
  tool results; when its usage shows the results already filled the budget, the turn is dropped and the episode
  truncated (max_tokens), as run_episodes would have stopped before generating it. Without `usage` only
  completion tokens count.
- an API error in the middle of an episode (context exceeded, a server error, a lost connection) ends that episode
  only: aborted/endpoint_error, its message in `error`.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from slide.agent.env import EnvFactory
from slide.agent.episode import AgentSample, decide_turn, run_turn_calls, start_episode, take_results
from slide.tasks.base import Problem
from slide.model.tokenizer import openai_tool

PARALLEL = 8  # episodes in flight at once per endpoint (a server batches their turns)


@dataclass
class Reply:
    """One chat completion as the agent loop needs it."""
    reasoning: str
    content: str
    tool_calls: list[dict]  # [{"id", "name", "arguments": the JSON text the server sent}]
    finish_reason: str  # "stop", "tool_calls", "length", ...
    prompt_tokens: int | None  # from `usage`; None if the server sent none
    completion_tokens: int | None


Ask = Callable[[list[dict], list[dict], int], Reply]  # (OpenAI messages, OpenAI tools, max_tokens) -> Reply


@dataclass
class EndpointSample(AgentSample):
    """An AgentSample without token ids (the server holds them): `tokens` counts its response tokens (see above)."""
    tokens: int = 0

    def record(self, step: int) -> dict:
        return super().record(step) | {"response_len": self.tokens}


def chat_client(url: str, model: str, timeout_s: float = 600) -> Ask:
    """An Ask over the official openai client (temperature 0; thinking left at the server's default)."""
    import openai
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=1, timeout=timeout_s)

    def ask(messages: list[dict], tools: list[dict], max_tokens: int) -> Reply:
        r = client.chat.completions.create(model=model, messages=messages, tools=tools or openai.NOT_GIVEN,
                                           temperature=0, max_tokens=max_tokens)
        c = r.choices[0]
        m = c.message
        calls = [{"id": t.id, "name": t.function.name, "arguments": t.function.arguments} for t in m.tool_calls or []]
        return Reply(getattr(m, "reasoning_content", None) or "", m.content or "", calls, c.finish_reason or "stop",
                     r.usage.prompt_tokens if r.usage else None, r.usage.completion_tokens if r.usage else None)
    return ask


def play_endpoint(ask: Ask, problems: list[Problem], env_factory: EnvFactory, max_new_tokens: int, max_turns: int,
                  max_tokens: int, step_timeout_s: float = 10.0, reward_timeout_s: float = 10.0,
                  parallel: int = PARALLEL) -> list[EndpointSample]:
    """One greedy episode per problem (group i), PARALLEL at a time; limits as run_episodes takes them."""
    def one(i: int) -> EndpointSample:
        return _play(ask, problems[i], i, env_factory, max_new_tokens, max_turns, max_tokens, step_timeout_s,
                     reward_timeout_s)
    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="slide-endpoint") as pool:
        return list(pool.map(one, range(len(problems))))



def _parse(reply: Reply) -> dict:
    """The reply as episode.py's parsed turn: {"reasoning", "content", "tool_calls": [{"name", "arguments": dict}]},
    with "error" when a call's arguments are not a JSON object."""
    calls = []
    for c in reply.tool_calls:
        try:
            args = json.loads(c["arguments"] or "{}")
        except json.JSONDecodeError as e:
            args, error = None, f"tool {c['name']!r}: arguments are not JSON ({e.msg})"
        else:
            error = f"tool {c['name']!r}: arguments are not a JSON object"
        if not isinstance(args, dict):
            return {"reasoning": reply.reasoning, "content": reply.content, "tool_calls": [], "error": error}
        calls.append({"name": c["name"], "arguments": args})
    return {"reasoning": reply.reasoning, "content": reply.content, "tool_calls": calls}


def _play(ask: Ask, problem: Problem, group: int, env_factory: EnvFactory, max_new_tokens: int, max_turns: int,
          max_tokens: int, step_timeout_s: float, reward_timeout_s: float) -> EndpointSample:
    ep = start_episode(None, problem, group, env_factory, True, 0, step_timeout_s)
    ep.sample = EndpointSample(**vars(ep.sample))
    s = ep.sample
    sent = [dict(m) for m in s.messages]  # the conversation in the API's shape (tool-call ids, JSON arguments)
    tools = [openai_tool(t) for t in ep.tools]
    first_prompt, known = None, 0  # prompt_tokens of the first turn; response tokens known before this turn
    for turn in range(max_turns):
        if not ep.live:
            break
        if known >= max_tokens:  # no room for the tool results: run_episodes truncates here too
            ep.end("truncated", "max_tokens")
            break
        try:
            reply = ask(sent, tools, min(max_new_tokens, max_tokens - known))
        except Exception as e:  # noqa: BLE001 - the endpoint's failure ends this episode, not the arena
            ep.end("aborted", "endpoint_error", f"{type(e).__name__}: {e}"[:300])
            break
        if first_prompt is None:
            first_prompt = reply.prompt_tokens
        before = known if reply.prompt_tokens is None or first_prompt is None else reply.prompt_tokens - first_prompt
        if before >= max_tokens:  # the latest tool results used the budget up: run_episodes stops before this turn
            ep.end("truncated", "max_tokens")
            break
        written = reply.completion_tokens or 0
        s.tokens = known = min(max_tokens, before + written)
        s.turns += 1
        text = (f"<think>{reply.reasoning}</think>\n" if reply.reasoning else "") + reply.content
        parsed = _parse(reply)
        s.messages.append({"role": "assistant", "reasoning_content": parsed["reasoning"],
                           "content": parsed["content"]} | ({"tool_calls": parsed["tool_calls"]}
                                                            if parsed["tool_calls"] else {}))
        if reply.finish_reason == "length" or before + written > max_tokens:
            ep.end("truncated", "max_tokens" if before + written >= max_tokens else "turn_tokens")
            break
        calls = decide_turn(ep, parsed, text, turn == max_turns - 1, reward_timeout_s)
        if not calls:
            break
        sent.append({"role": "assistant", "content": reply.content, "reasoning_content": reply.reasoning,
                     "tool_calls": [{"id": c["id"], "type": "function",
                                     "function": {"name": c["name"], "arguments": c["arguments"]}}
                                    for c in reply.tool_calls]})
        outs = run_turn_calls(ep.env, calls, step_timeout_s)
        if not take_results(ep, outs):
            break
        sent += [{"role": "tool", "tool_call_id": c["id"], "content": o.observation}
                 for c, o in zip(reply.tool_calls, outs)]
    return s
