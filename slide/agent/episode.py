"""Multi-turn agent episodes over the checkpoint's own chat format: the model calls tools, environments answer.

    groups = run_episodes(engine, tok, problems, lambda p: CalculatorEnv(), params, n=8, max_turns=4,
                          max_tokens=1024)
    stats = episode_stats(groups)

Each turn, every live episode generates its next assistant turn in ONE batched engine.generate call
(n=1 per row). A turn ends at one of the checkpoint's stop tokens (GLM: <|observation|> after tool calls,
<|endoftext|> or <|user|> after a final answer; ChatML: <|im_end|>). The turn is parsed by the checkpoint's
tool format (slide/model/tool_formats.py: GLM's XML, Hermes/Qwen JSON), each call is checked against the
env's tool schemas and run with env.step (all episodes' calls in parallel threads, each under a timeout),
and the environment's turn is appended as the chat template renders it (slide/model/chat.py), e.g. GLM's:

    ...</tool_call><|observation|>            <- the model's stop token (trained)
    \\n<tool_response>OBS</tool_response>      <- one per call                    \\ environment tokens
    <|assistant|>\\n  (+ <think></think>\\n in non-thinking mode)                   / (loss mask 0)

Token ids are never re-tokenised: the response is the exact concatenation of sampled ids and rendered
environment ids. For an append-only template decode(prompt + response) is the template's rendering of the
conversation; where the template renders it otherwise, the episode keeps its tokens and counts the event
template_rewrites (ChatFormat.rewritten).

How an episode ends (AgentSample.status / .reason):
    completed  answer       final answer; reward = env.reward(problem, final turn text)
    completed  done         an env.step returned done=True; reward = that step's reward
    failed     invalid_format | unknown_tool | missing_argument | extra_argument | bad_arguments   reward 0
    truncated  max_turns | max_tokens | turn_tokens (one turn hit params.max_new_tokens)       reward 0
    aborted    reset_error  the env could not start the episode (factory/reset raised, bad tools)  reward 0
    aborted    template_error  the chat template could not render a tool-result turn               reward 0
The rules of one turn (start_episode, decide_turn, run_turn_calls, take_results) are shared with the agent loop over
an OpenAI-compatible API (slide/agent/endpoint.py), so an episode ends the same way whoever hosts the model.
Incidents that do not end the episode are counted in AgentSample.events: step_timeout, step_error,
step_skipped (calls after a timed-out one in the same turn), reward_timeout, reward_error, and each
StepResult.error key (tool_error, sandbox_unavailable, ...), and template_rewrites (above).
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from slide.agent.env import INVALID_FORMAT, Env, EnvFactory, InvalidCall, StepResult, check_call, validate_tools
from slide.engine.inprocess import SamplingParams
from slide.errors import UserError
from slide.model.chat import assistant_message, chat_format
from slide.model.routing import extend_routes
from slide.agent.isolated import CallTimeout
from slide.rl.reward import bounded_call
from slide.rl.sample import Sample
from slide.tasks.base import Problem

@dataclass
class AgentSample(Sample):
    """A `Sample` (so the trainer takes it as is) plus what the agent metrics need. An async engine may load new
    weights between turns: `version` is the oldest policy version among its turns, `token_versions` each
    token's."""

    reason: str = ""  # why the episode ended (see the module docstring)
    error: str = ""  # one line for failed/aborted episodes: what was wrong
    turns: int = 0  # assistant turns generated
    tool_calls: int = 0  # calls run with env.step
    tool_successes: int = 0  # of those, calls whose StepResult.error is None
    events: dict[str, int] = field(default_factory=dict)  # counted incidents, e.g. {"step_timeout": 1}
    messages: list[dict] = field(default_factory=list)  # the episode as chat messages (tools not included)

    def record(self, step: int) -> dict:
        return super().record(step) | {"reason": self.reason, "error": self.error, "turns": self.turns,
                                       "tool_calls": self.tool_calls, "tool_successes": self.tool_successes,
                                       "events": self.events, "messages": self.messages}


def encode_conversation(tok, messages: list[dict], tools: list[dict] | None = None,
                        thinking: bool = True) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of a whole agent conversation, built as run_episodes builds an episode (ChatFormat.
    conversation): mask 1 on what the model writes (each assistant turn and its stop token), 0 on the prompt and
    the environment's turns. For cold-start SFT on tool traces (pack() takes these)."""
    return chat_format(tok).conversation(messages, tools, thinking)


def _bounded(env: Env, method: str, *args, timeout_s: float) -> tuple[str, Any]:
    """("ok", value), ("raised", exception) or ("timeout", None) of env.method(*args). An isolated env's calls
    run in the call pool, which kills one at its timeout (CallTimeout): called here, without a thread (a thread
    that gave up waiting would later write a stale env state back). Any other env: under bounded_call. Notes
    the call counted in the pool (e.g. guard rejections) are for the caller to pop (_count_notes)."""
    if getattr(env, "isolate", False):
        try:
            return "ok", getattr(env, method)(*args)
        except CallTimeout:
            return "timeout", None
        except Exception as e:  # noqa: BLE001 - an env bug is data, not a crash
            return "raised", e
    return bounded_call(getattr(env, method), *args, timeout_s=timeout_s)


def _count_notes(ep: "Episode") -> None:
    pop = getattr(ep.env, "pop_notes", None)
    for key, n in (pop() if pop else {}).items():
        ep.sample.events[key] = ep.sample.events.get(key, 0) + n


def _run_calls(env: Env, calls: list[dict], timeout_s: float) -> list[StepResult | InvalidCall]:
    """One episode's calls of one turn, in order; stops at done=True or InvalidCall."""
    out: list[StepResult | InvalidCall] = []
    for call in calls:
        name = call["name"]
        if out and isinstance(out[-1], StepResult) and out[-1].error == "step_timeout":
            out.append(StepResult(f"error: {name} not run (an earlier call timed out)", error="step_skipped"))
            continue
        status, value = _bounded(env, "step", call, timeout_s=timeout_s)
        if status == "timeout":
            value = StepResult(f"error: {name} timed out after {timeout_s:g} s", error="step_timeout")
        elif status == "raised" and not isinstance(value, InvalidCall):
            value = StepResult(f"error: {name} failed: {type(value).__name__}: {value}"[:500], error="step_error")
        elif status == "ok" and not (isinstance(value, StepResult) and isinstance(value.observation, str)):
            value = StepResult(f"error: {name} returned no result", error="step_error")
        out.append(value)
        if isinstance(value, InvalidCall) or value.done:
            break
    return out


@dataclass
class Episode:
    """One episode in play: its sample (the record), its env and tools, and whether it still runs."""
    sample: AgentSample
    env: Env
    tools: list[dict]
    prompt: list[dict] = field(default_factory=list)  # the messages of the prompt (what env.reset returned)
    turn_start: int = 0  # where the model's latest turn starts in sample.response_ids
    live: bool = True

    def end(self, status: str, reason: str, error: str = "", reward: float = 0.0) -> None:
        s = self.sample
        s.status, s.reason, s.error, s.reward, self.live = status, reason, error, reward, False

    def add(self, tokens: list[int], logprobs: list[float], model: bool, version: int | None = None,
            routes=None) -> None:
        """Append a model turn (its engine routes, if recorded, cover the context and the turn) or an environment
        turn (its tokens get routes at the next turn's prefill)."""
        s = self.sample
        if model:
            self.turn_start = len(s.response_ids)
        s.token_versions += [s.token_versions[-1] if version is None else version] * len(tokens)
        s.response_ids += tokens
        s.loss_mask += [int(model)] * len(tokens)
        s.behaviour_logprobs += logprobs if model else [0.0] * len(tokens)
        s.routes = extend_routes(s.routes, routes, len(s.prompt_ids) + len(s.response_ids) - 1)

    def count(self, key: str) -> None:
        self.sample.events[key] = self.sample.events.get(key, 0) + 1


def start_episode(fmt, problem: Problem, group: int, env_factory: EnvFactory, thinking: bool, version: int,
                  timeout_s: float) -> Episode:
    """A fresh env for `problem`, reset under `timeout_s`; an env that cannot start gives an episode already ended
    (aborted, reset_error). fmt=None: no token ids (an episode played through a chat API, slide/agent/endpoint.py)."""
    sample = AgentSample(prompt_ids=[], response_ids=[], loss_mask=[], behaviour_logprobs=[], version=version,
                         problem=problem, group=group)
    env, status, value = None, "raised", None
    try:
        env = env_factory(problem)
        status, value = _bounded(env, "reset", problem, timeout_s=timeout_s)
        if status == "ok":
            tools = validate_tools(getattr(env, "tools", None) or [])
            sample.messages = list(value)
            sample.prompt_ids = fmt.prompt_ids(sample.messages, thinking, tools) if fmt else []
            return Episode(sample, env, tools, prompt=list(value))
    except Exception as e:  # noqa: BLE001 - factory bug, or reset returned messages the template refuses
        status, value = "raised", e
    sample.messages = [{"role": "user", "content": problem.prompt}]
    sample.prompt_ids = fmt.prompt_ids(sample.messages, thinking) if fmt else []
    ep = Episode(sample, env, [])
    ep.end("aborted", "reset_error", "env reset timed out" if status == "timeout" else
           f"env reset failed: {type(value).__name__}: {value}"[:300])
    return ep


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _final_reward(ep: Episode, text: str, timeout_s: float) -> float:
    status, value = _bounded(ep.env, "reward", ep.sample.problem, text, timeout_s=timeout_s)
    _count_notes(ep)
    reward = _finite(value) if status == "ok" else None
    if reward is None:
        ep.count("reward_timeout" if status == "timeout" else "reward_error")
        return 0.0
    return reward


def run_episodes(engine, tokenizer, problems: list[Problem], env_factory: EnvFactory, params: SamplingParams,
                 n: int, max_turns: int, max_tokens: int, generator: torch.Generator | None = None, *,
                 thinking: bool = True, step_timeout_s: float = 10.0, reward_timeout_s: float = 10.0,
                 first_group: int = 0, concurrent: bool = False,
                 before_turn: Callable[[], None] | None = None) -> list[list[AgentSample]]:
    """n episodes per problem (result[i] is problem i's group, group ids from first_group).

    max_turns: assistant turns per episode; max_tokens: response tokens per episode (model + environment;
    len(response_ids) never exceeds it); params.max_new_tokens: tokens per turn (its stop_token_ids are
    replaced by GLM's three stop tokens); step_timeout_s bounds each env.step (and reset), reward_timeout_s
    env.reward.

    Lockstep (default, deterministic for a seed): turn t of every live episode is one engine call, then all
    their tool calls run in parallel, then turn t+1: each turn waits for the slowest tool call. concurrent=True:
    every episode runs on its own thread, writing as soon as its tools answer; give it a BatchingEngine
    (slide/engine/batching.py), which batches whichever episodes are ready to write into one engine call.
    before_turn runs before every engine call; an exception it raises (an async worker's partial_rollout abort)
    ends the whole call."""
    if n < 1 or max_turns < 1 or max_tokens < 1:
        raise ValueError(f"run_episodes: n, max_turns and max_tokens must be >= 1 "
                         f"(got {n}, {max_turns}, {max_tokens})")
    fmt = chat_format(tokenizer)
    fmt.needs_tools("multi-turn agent episodes")
    run = _Run(fmt, replace(params, stop_token_ids=tuple(fmt.stop_ids)), max_turns, max_tokens,
               thinking, step_timeout_s, reward_timeout_s, before_turn or (lambda: None))
    version = getattr(engine, "version", 0)
    episodes = [start_episode(fmt, p, first_group + g, env_factory, thinking, version, step_timeout_s)
                for g, p in enumerate(problems) for _ in range(n)]
    if concurrent:
        _each_on_its_own(engine, run, episodes, generator)
    else:
        _lockstep(engine, run, episodes, generator)
    for ep in episodes:  # every episode has ended: the last turn truncates the ones still calling tools
        ep.sample.response_text = tokenizer.decode(ep.sample.response_ids, skip_special_tokens=False)
        if ep.sample.turns > 1 and _rewritten(fmt, ep, thinking):
            ep.count("template_rewrites")
    return [[e.sample for e in episodes[i * n:(i + 1) * n]] for i in range(len(problems))]


@dataclass(frozen=True)
class _Run:
    """What every turn of every episode of one run_episodes call needs."""
    fmt: Any  # the checkpoint's ChatFormat
    params: SamplingParams  # with the checkpoint's stop tokens
    max_turns: int
    max_tokens: int
    thinking: bool
    step_timeout_s: float
    reward_timeout_s: float
    before_turn: Callable[[], None]

    def turn_params(self, room: int) -> SamplingParams:
        return replace(self.params, max_new_tokens=min(self.params.max_new_tokens, room))


def _lockstep(engine, run: _Run, episodes: list[Episode], generator) -> None:
    for turn in range(run.max_turns):
        live = [e for e in episodes if e.live]
        if not live:
            break
        room = [run.max_tokens - len(e.sample.response_ids) for e in live]  # > 0 for every live episode
        run.before_turn()
        # one engine call for all rows: the longest budget left; rows with less are cut to theirs below
        outputs = engine.generate([e.sample.prompt_ids + e.sample.response_ids for e in live],
                                  run.turn_params(max(room)), n=1, generator=generator)
        pending = [(ep, calls) for ep, budget, (c,) in zip(live, room, outputs)
                   if (calls := _after_turn(run, ep, c, budget, last=turn == run.max_turns - 1))]
        results: list[list] = [[] for _ in pending]

        def worker(i: int, env: Env, calls: list[dict]) -> None:
            results[i] = run_turn_calls(env, calls, run.step_timeout_s)

        threads = [threading.Thread(target=worker, args=(i, ep.env, calls), daemon=True)
                   for i, (ep, calls) in enumerate(pending)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()  # each worker returns: every call inside it is bounded by step_timeout_s
        for (ep, _), outs in zip(pending, results):
            _after_calls(run, ep, outs)


def _each_on_its_own(engine, run: _Run, episodes: list[Episode], generator) -> None:
    errors: list[BaseException] = []

    def play(ep: Episode) -> None:
        try:
            for turn in range(run.max_turns):
                if not ep.live:
                    return
                room = run.max_tokens - len(ep.sample.response_ids)
                run.before_turn()
                [[c]] = engine.generate([ep.sample.prompt_ids + ep.sample.response_ids], run.turn_params(room),
                                        n=1, generator=generator)
                calls = _after_turn(run, ep, c, room, last=turn == run.max_turns - 1)
                if calls:
                    _after_calls(run, ep, run_turn_calls(ep.env, calls, run.step_timeout_s))
        except BaseException as e:  # noqa: BLE001 - an engine error or before_turn's abort: the caller's
            errors.append(e)

    threads = [threading.Thread(target=play, args=(ep,), daemon=True, name="slide-episode") for ep in episodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _after_turn(run: _Run, ep: Episode, c, budget: int, last: bool) -> list[dict] | None:
    """Record a generated turn (cut to `budget` tokens); the tool calls to run, or None if the episode ended."""
    tok = run.fmt.tok
    cut = len(c.tokens) > budget
    tokens, finish = c.tokens[:budget], "length" if cut else c.finish_reason
    ep.add(tokens, list(c.logprobs[:budget]), model=True, version=c.version, routes=c.routes)
    s = ep.sample
    s.version, s.turns = min(s.version, c.version) if s.turns else c.version, s.turns + 1
    text = tok.decode(tokens, skip_special_tokens=False)
    if finish != "stop":
        s.messages.append({"role": "assistant", "content": text})
        ep.end("truncated", "max_tokens" if len(s.response_ids) >= run.max_tokens else "turn_tokens")
        return None
    parsed = run.fmt.parse(text)
    s.messages.append(assistant_message(parsed, text))
    if "error" not in parsed and (mismatch := run.fmt.call_turn_ok(tokens[-1] if tokens else None,
                                                                  bool(parsed["tool_calls"]))):
        parsed = {**parsed, "error": mismatch}
    return decide_turn(ep, parsed, run.fmt.cut(text), last, run.reward_timeout_s)


def decide_turn(ep: Episode, parsed: dict, text: str, last: bool, reward_timeout_s: float) -> list[dict] | None:
    """What a complete assistant turn does to its episode: the tool calls to run (each checked against the env's
    schemas), or None once it ended: a malformed turn (`parsed["error"]`) or a bad call fails it, a turn without
    calls is the final answer (rewarded by env.reward on `text`), calls on the last turn truncate it."""
    calls = parsed["tool_calls"]
    if "error" in parsed:
        ep.end("failed", INVALID_FORMAT, parsed["error"])
    elif not calls:
        ep.end("completed", "answer", reward=_final_reward(ep, text, reward_timeout_s))
    elif bad := next((b for b in (check_call(ep.tools, call) for call in calls) if b), None):
        ep.end("failed", *bad)
    elif last:
        ep.end("truncated", "max_turns")
    else:
        return calls
    return None


def run_turn_calls(env: Env, calls: list[dict], timeout_s: float) -> list:
    """One turn's calls run by env.step, each bounded by timeout_s: StepResults (an InvalidCall last, if one was
    raised); anything the env raises becomes an error observation."""
    try:
        return _run_calls(env, calls, timeout_s)
    except Exception as e:  # noqa: BLE001 - e.g. an env whose StepResult.done is not a bool
        return [StepResult(f"error: {type(e).__name__}: {e}"[:300], error="step_error")]


def take_results(ep: Episode, outs: list) -> bool:
    """Record a turn's tool results (run_turn_calls') as tool messages; False if they ended the episode (an
    InvalidCall fails it, done=True completes it with that step's reward)."""
    s = ep.sample
    _count_notes(ep)
    invalid = next((o for o in outs if isinstance(o, InvalidCall)), None)
    if invalid is not None:
        ep.end("failed", invalid.reason, str(invalid)[:300])
        return False
    for o in outs:
        s.tool_calls += 1
        s.tool_successes += o.error is None
        if o.error is not None:
            ep.count(o.error)
        s.messages.append({"role": "tool", "content": o.observation})
    if outs[-1].done:
        reward = _finite(outs[-1].reward)
        if reward is None and outs[-1].reward is not None:
            ep.count("reward_error")
        ep.end("completed", "done", reward=reward or 0.0)
        return False
    return True


def _after_calls(run: _Run, ep: Episode, outs: list) -> None:
    """Append a turn's tool results as the observation turn, or end the episode."""
    s = ep.sample
    assistant = s.messages[-1]
    if not take_results(ep, outs):
        return
    try:
        env_ids = run.fmt.environment_ids(ep.prompt, assistant, s.messages[-len(outs):], run.thinking, ep.tools)
    except UserError as e:  # preflight renders a tool round; a result this template cannot render ends only this one
        ep.end("aborted", "template_error", str(e)[:300])
        return
    if len(s.response_ids) + len(env_ids) >= run.max_tokens:  # no room left for the model to write anything
        ep.end("truncated", "max_tokens")
        return
    ep.add(env_ids, [], model=False)


def _rewritten(fmt, ep: Episode, thinking: bool) -> bool:
    """Whether the template renders the conversation before the model's last turn otherwise than the ids the model
    was given (one rendering per episode)."""
    s = ep.sample
    last = max(i for i, m in enumerate(s.messages) if m["role"] == "assistant")
    seen = s.prompt_ids + s.response_ids[:ep.turn_start]
    try:
        return fmt.rewritten(s.messages[:last + 1], seen, thinking, ep.tools)
    except UserError:  # a malformed last turn the template refuses: the episode has already failed on it
        return False


def episode_stats(groups: list[list[AgentSample]]) -> dict[str, float]:
    """Batch metrics: status fractions, end-reason and incident counts, tool-call success rate, turns, reward."""
    samples = [s for g in groups for s in g]
    if not samples:
        return {"episodes": 0}
    calls = sum(s.tool_calls for s in samples)
    out: dict[str, float] = {
        "episodes": len(samples),
        "reward_mean": sum(s.reward for s in samples) / len(samples),
        "turns_mean": sum(s.turns for s in samples) / len(samples),
        "tool_calls": calls,
        "tool_call_success_rate": sum(s.tool_successes for s in samples) / calls if calls else 0.0,
    }
    for status in ("completed", "failed", "truncated", "aborted"):
        out[f"{status}_frac"] = sum(s.status == status for s in samples) / len(samples)
    out.update(Counter(s.reason for s in samples))
    events: Counter = Counter()
    for s in samples:
        events.update(s.events)
    out.update(events)
    return out
