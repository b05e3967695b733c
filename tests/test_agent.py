"""The multi-turn episode runner: token bookkeeping against the chat template, failure rules, limits, timeouts.

A scripted engine (same generate() signature as InProcessEngine, returns pre-written turns) checks the
bookkeeping exactly; one run with the real random-init tiny model checks that garbage output never crashes
and that the recorded logprobs are the model's own.
"""
from __future__ import annotations

import dataclasses
import random
import threading
import time

import pytest
import torch

from slide.agent.env import InvalidCall
from slide.agent.envs.calculator import TOOLS, CalculatorEnv, CalculatorTask
from slide.agent.envs.function_call import FunctionCallEnv, FunctionCallTask
from slide.agent.envs.latency import with_latency
from slide.agent.episode import encode_conversation, episode_stats, run_episodes
from slide.model.chat import chat_format
from slide.engine.batching import BatchingEngine
from slide.engine.inprocess import Completion, InProcessEngine, SamplingParams
from slide.model.tiny import build_model, tiny_config
from slide.model.tokenizer import EOS, assistant_text, chat_prompt, load_tokenizer, stop_token_ids

OBS = "<|observation|>"
PARAMS = SamplingParams(temperature=1.0, max_new_tokens=200)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def fake_logprob(position: int) -> float:
    """The scripted engine's logprob of the token at `position` of prompt+response: distinct, so misalignment shows."""
    return -0.01 * (1 + position % 97)


class ScriptedEngine:
    """generate() like InProcessEngine, but each row's turn comes from `policy(prompt_text, turn) -> text or ids`
    (turn = assistant turns already in the prompt). Stops at the first stop token, cuts at max_new_tokens."""

    def __init__(self, tok, policy):
        self.tok, self.policy, self.version = tok, policy, 3
        self.calls: list[int] = []  # rows per generate call

    def generate(self, prompts, params, n=1, generator=None):
        assert n == 1 and set(params.stop_token_ids) == set(stop_token_ids(self.tok))
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            text = self.tok.decode(p, skip_special_tokens=False)
            turn = self.policy(text, text.count("<|assistant|>") - 1)
            ids = self.tok.encode(turn, add_special_tokens=False) if isinstance(turn, str) else list(turn)
            end = next((i + 1 for i, t in enumerate(ids) if t in params.stop_token_ids), None)
            ids = ids[:end][:params.max_new_tokens]
            finish = "stop" if ids and ids[-1] in params.stop_token_ids else "length"
            out.append([Completion(ids, [fake_logprob(len(p) + j) for j in range(len(ids))], finish, self.version)])
        return out


def call_turn(expression: str, reasoning: str = "use the tool", **extra) -> str:
    return assistant_text(reasoning, "", end=OBS,
                          tool_calls=[{"name": "calculate", "arguments": {"expression": expression, **extra}}])


def solver_for(thinking: bool):
    """A correct calculator policy: call the tool with the question's expression, then repeat its answer. In
    non-thinking mode the model writes after the pre-filled empty think block."""
    def policy(text: str, turn: int) -> str:
        if turn == 0:
            out = call_turn(text.split("What is ")[1].split("?")[0], reasoning="use the tool" if thinking else "")
        else:
            answer = text.rsplit("<tool_response>", 1)[1].split("</tool_response>")[0]
            out = assistant_text(f"the tool says {answer}" if thinking else "", answer)
        return out if thinking else out.removeprefix("<think></think>\n")
    return policy


solver = solver_for(True)


def problems(k: int, seed: int = 0):
    rng = random.Random(seed)
    return [CalculatorTask().generate(rng, level=1 + i % 3) for i in range(k)]


def calc_env(problem):
    return CalculatorEnv()


def observation_text(observations: list[str], thinking: bool) -> str:
    """GLM's environment turn, by hand: each result in <tool_response>, then the next generation prompt."""
    body = "".join(f"\n<tool_response>{o}</tool_response>" for o in observations)
    return body + "<|assistant|>\n" + ("" if thinking else "<think></think>\n")


@pytest.mark.parametrize("thinking", [True, False])
def test_environment_turn_is_the_template_rendering(tok, thinking):
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "reasoning_content": "" if not thinking else "r", "content": "",
             "tool_calls": [{"name": "calculate", "arguments": {"expression": "1+2"}}]},
            {"role": "tool", "content": "3"}, {"role": "tool", "content": "x y"}]
    turn = assistant_text(msgs[1]["reasoning_content"], "", end=OBS, tool_calls=msgs[1]["tool_calls"])
    if not thinking:
        turn = turn.removeprefix("<think></think>\n")
    prompt = chat_prompt(tok, msgs[:1], thinking=thinking, tools=TOOLS)
    assert prompt + turn + observation_text(["3", "x y"], thinking) == chat_prompt(tok, msgs, thinking=thinking,
                                                                                   tools=TOOLS)
    env = chat_format(tok).environment_ids(msgs[:1], msgs[1], msgs[2:], thinking, TOOLS)
    assert tok.decode(env) == observation_text(["3", "x y"], thinking)


@pytest.mark.parametrize("thinking", [True, False])
def test_two_turn_episode_token_bookkeeping(tok, thinking):
    probs = problems(2)
    engine = ScriptedEngine(tok, solver_for(thinking))
    groups = run_episodes(engine, tok, probs, calc_env, PARAMS, n=2, max_turns=4, max_tokens=400, thinking=thinking,
                          first_group=5)
    assert engine.calls == [4, 4]  # one batched generate per turn, one row per live episode
    assert [[s.group for s in g] for g in groups] == [[5, 5], [6, 6]]
    for problem, group in zip(probs, groups):
        for s in group:
            assert (s.status, s.reason, s.reward, s.turns, s.tool_calls, s.tool_successes) == \
                ("completed", "answer", 1.0, 2, 1, 1)
            assert s.problem is problem and s.version == 3 and s.events == {}
            assert len(s.response_ids) == len(s.loss_mask) == len(s.behaviour_logprobs)
            # the token ids are exactly the template's rendering of the conversation
            final = s.messages[-1]
            last = assistant_text(final["reasoning_content"], final["content"])
            if not thinking:
                last = last.removeprefix("<think></think>\n")
            full = tok.decode(s.prompt_ids + s.response_ids, skip_special_tokens=False)
            assert full == chat_prompt(tok, s.messages[:-1], thinking=thinking, tools=TOOLS) + last
            ids, mask = encode_conversation(tok, s.messages, TOOLS, thinking)
            assert ids == s.prompt_ids + s.response_ids
            assert mask == [0] * len(s.prompt_ids) + s.loss_mask
            assert s.messages[2] == {"role": "tool", "content": problem.answer}
            # environment tokens: masked, logprob 0, and exactly the observation turn
            env = [t for t, m in zip(s.response_ids, s.loss_mask) if m == 0]
            assert env == tok.encode(observation_text([problem.answer], thinking), add_special_tokens=False)
            for j, (m, lp) in enumerate(zip(s.loss_mask, s.behaviour_logprobs)):
                assert lp == (fake_logprob(len(s.prompt_ids) + j) if m else 0.0)
            assert s.response_ids[-1] == tok.convert_tokens_to_ids(EOS)
            assert s.record(0)["tool_calls"] == 1
    stats = episode_stats(groups)
    assert stats["episodes"] == 4 and stats["completed_frac"] == 1.0 and stats["tool_call_success_rate"] == 1.0
    assert stats["answer"] == 4 and stats["reward_mean"] == 1.0


def junk_ids(tok):
    rng = random.Random(0)
    stops = set(stop_token_ids(tok))
    ids = [t for t in range(len(tok)) if t not in stops]
    return [tok.convert_tokens_to_ids("<tool_call>")] + [rng.choice(ids) for _ in range(40)] + \
        [tok.convert_tokens_to_ids(OBS)]


MALFORMED = {
    "unclosed value": ("<think>x</think>\n<tool_call>calculate\n<arg_key>expression</arg_key>\n<arg_value>1+2" + OBS,
                       "invalid_format"),
    "unclosed call": ("<think>x</think>\n<tool_call>calculate" + OBS, "invalid_format"),
    "unknown tool": (assistant_text("", "", end=OBS, tool_calls=[{"name": "search", "arguments": {"q": "x"}}]),
                     "unknown_tool"),
    "missing argument": (assistant_text("", "", end=OBS, tool_calls=[{"name": "calculate", "arguments": {}}]),
                         "missing_argument"),
    "extra argument": (call_turn("1+2", base=10), "extra_argument"),
    "calls end with eos": (call_turn("1+2").replace(OBS, EOS), "invalid_format"),
    "observation without call": ("<think></think>\nhello" + OBS, "invalid_format"),
    "binary junk": (None, "invalid_format"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_tool_calls_fail_cleanly(tok, case):
    text, reason = MALFORMED[case]
    turn = junk_ids(tok) if text is None else tok.encode(text, add_special_tokens=False)
    [[s]] = run_episodes(ScriptedEngine(tok, lambda t, k: turn), tok, problems(1), calc_env, PARAMS, n=1, max_turns=3,
                         max_tokens=400)
    assert (s.status, s.reason, s.reward, s.turns, s.tool_calls) == ("failed", reason, 0.0, 1, 0)
    assert s.error and s.response_ids == turn and s.loss_mask == [1] * len(turn)
    assert episode_stats([[s]])[reason] == 1


def test_junk_final_answer_scores_zero(tok):
    junk = "<think>\x00\xff\x7f" + "é" * 5 + EOS  # unknown characters become <|unk|>
    [[s]] = run_episodes(ScriptedEngine(tok, lambda t, k: junk), tok, problems(1), calc_env, PARAMS, n=1,
                         max_turns=3, max_tokens=400)
    assert (s.status, s.reason, s.reward) == ("failed", "invalid_format", 0.0)  # unclosed <think>
    [[s]] = run_episodes(ScriptedEngine(tok, lambda t, k: "\x00\xff 12" + EOS), tok, problems(1), calc_env, PARAMS,
                         n=1, max_turns=3, max_tokens=400)
    assert (s.status, s.reason, s.reward) == ("completed", "answer", 0.0)


def test_turn_limit_truncates(tok):
    engine = ScriptedEngine(tok, lambda t, k: call_turn("1+2"))
    [[s]] = run_episodes(engine, tok, problems(1), calc_env, PARAMS, n=1, max_turns=2, max_tokens=1000)
    assert (s.status, s.reason, s.reward, s.turns, s.tool_calls) == ("truncated", "max_turns", 0.0, 2, 1)
    assert s.response_ids[-1] == tok.convert_tokens_to_ids(OBS) and s.loss_mask[-1] == 1  # last call not run


def test_token_budget_truncates(tok):
    long = "<think>" + "x" * 300
    [[s]] = run_episodes(ScriptedEngine(tok, lambda t, k: long), tok, problems(1), calc_env, PARAMS, n=1, max_turns=3,
                         max_tokens=50)
    assert (s.status, s.reason, len(s.response_ids)) == ("truncated", "max_tokens", 50)
    short = SamplingParams(max_new_tokens=30)
    [[s]] = run_episodes(ScriptedEngine(tok, lambda t, k: long), tok, problems(1), calc_env, short, n=1, max_turns=3,
                         max_tokens=100)
    assert (s.status, s.reason, len(s.response_ids)) == ("truncated", "turn_tokens", 30)
    # the observation does not fit: the episode ends at the model's <|observation|>, nothing appended
    turn = tok.encode(call_turn("1+2"), add_special_tokens=False)
    [[s]] = run_episodes(ScriptedEngine(tok, lambda t, k: turn), tok, problems(1), calc_env, PARAMS, n=1, max_turns=3,
                         max_tokens=len(turn) + 5)
    assert (s.status, s.reason, s.response_ids, s.tool_calls) == ("truncated", "max_tokens", turn, 1)
    # batched rows with different budgets left: each is cut at its own budget
    groups = run_episodes(ScriptedEngine(tok, lambda t, k: solver(t, k) if "7" in t.split("What is")[1][:4] else long),
                          tok, problems(4), calc_env, PARAMS, n=1, max_turns=3, max_tokens=120)
    assert all(len(s.response_ids) <= 120 for g in groups for s in g)


class SlowEnv(CalculatorEnv):
    """step blocks until released (a hang), raises, or answers, by the expression it gets."""

    release = threading.Event()

    def step(self, call):
        expr = call["arguments"]["expression"]
        if expr == "hang":
            self.release.wait(60)
        if expr == "raise":
            raise RuntimeError("tool crashed")
        if expr == "invalid":
            raise InvalidCall("bad_arguments", "no such expression here")
        return super().step(call)


def two_calls(first: str, second: str) -> str:
    return assistant_text("", "", end=OBS, tool_calls=[
        {"name": "calculate", "arguments": {"expression": first}},
        {"name": "calculate", "arguments": {"expression": second}}])


def test_hanging_and_raising_steps_become_observations(tok):
    def policy(text, turn):
        if turn == 0:
            return two_calls("raise", "1+2") if "raise-first" in text else two_calls("hang", "1+2")
        return assistant_text("", "0")

    probs = [CalculatorTask().generate(random.Random(0), 1), CalculatorTask().generate(random.Random(0), 1)]
    probs[1] = dataclasses.replace(probs[1], prompt=probs[1].prompt + " raise-first")
    t0 = time.perf_counter()
    try:
        groups = run_episodes(ScriptedEngine(tok, policy), tok, probs, lambda p: SlowEnv(), PARAMS, n=1, max_turns=3,
                              max_tokens=600, step_timeout_s=0.3)
    finally:
        SlowEnv.release.set()
    assert time.perf_counter() - t0 < 5
    hung, raised = groups[0][0], groups[1][0]
    assert (hung.status, hung.reason, hung.turns, hung.tool_calls, hung.tool_successes) == \
        ("completed", "answer", 2, 2, 0)
    assert hung.events == {"step_timeout": 1, "step_skipped": 1}
    assert "timed out" in hung.messages[2]["content"] and "not run" in hung.messages[3]["content"]
    assert (raised.status, raised.tool_calls, raised.tool_successes, raised.events) == \
        ("completed", 2, 1, {"step_error": 1})
    assert "RuntimeError: tool crashed" in raised.messages[2]["content"] and raised.messages[3]["content"] == "3"
    assert episode_stats(groups)["tool_call_success_rate"] == 0.25


def test_env_failures_are_data(tok):
    [[s]] = run_episodes(ScriptedEngine(tok, lambda t, k: call_turn("invalid")), tok, problems(1),
                         lambda p: SlowEnv(), PARAMS, n=1, max_turns=3, max_tokens=600)
    assert (s.status, s.reason, s.reward) == ("failed", "bad_arguments", 0.0)

    class BrokenReset(CalculatorEnv):
        def reset(self, problem):
            raise OSError("no container")

    class BadTools(CalculatorEnv):
        tools = [{"description": "no name"}]

    class BrokenReward(CalculatorEnv):
        def reward(self, problem, response):
            return float("nan")

    engine = ScriptedEngine(tok, solver)
    [[s]] = run_episodes(engine, tok, problems(1), lambda p: BrokenReset(), PARAMS, n=1, max_turns=3, max_tokens=600)
    assert (s.status, s.reason, s.response_ids, engine.calls) == ("aborted", "reset_error", [], [])
    assert "no container" in s.error and s.prompt_ids
    [[s]] = run_episodes(engine, tok, problems(1), lambda p: BadTools(), PARAMS, n=1, max_turns=3, max_tokens=600)
    assert (s.status, s.reason) == ("aborted", "reset_error") and "tool 0" in s.error
    [[s]] = run_episodes(engine, tok, problems(1), lambda p: BrokenReward(), PARAMS, n=1, max_turns=3, max_tokens=600)
    assert (s.status, s.reward, s.events) == ("completed", 0.0, {"reward_error": 1})


def test_function_call_step_reward_ends_episode(tok):
    probs = [FunctionCallTask().generate(random.Random(i), level=2) for i in range(2)]
    right = assistant_text("", "", end=OBS, tool_calls=[probs[0].meta["call"]])
    wrong_name = next(n for n in probs[1].meta["tools"] if n != probs[1].meta["call"]["name"])
    from slide.agent.envs.function_call import CATALOG
    wrong_args = {k: "x" for k in CATALOG[wrong_name][0]["parameters"]["properties"]}
    wrong = assistant_text("", "", end=OBS, tool_calls=[{"name": wrong_name, "arguments": wrong_args}])
    policy = lambda t, k: right if probs[0].prompt in t else wrong  # noqa: E731
    groups = run_episodes(ScriptedEngine(tok, policy), tok, probs, lambda p: FunctionCallEnv(), PARAMS, n=1,
                          max_turns=2, max_tokens=800)
    a, b = groups[0][0], groups[1][0]
    assert (a.status, a.reason, a.reward, a.tool_successes) == ("completed", "done", 1.0, 1)
    assert (b.status, b.reason, b.reward, b.tool_successes, b.events) == ("completed", "done", 0.0, 0,
                                                                          {"wrong_call": 1})
    for s in (a, b):  # nothing is appended after the call that ended the episode
        assert s.loss_mask == [1] * len(s.response_ids) and s.response_ids[-1] == tok.convert_tokens_to_ids(OBS)


def test_slow_steps_of_different_episodes_overlap(tok):
    factory = with_latency(calc_env, median_s=0.5, sigma=0.0, cap_s=1.0, seed=0)
    t0 = time.perf_counter()
    groups = run_episodes(ScriptedEngine(tok, solver), tok, problems(4), factory, PARAMS, n=1, max_turns=3,
                          max_tokens=600)
    assert time.perf_counter() - t0 < 1.5  # 4 x 0.5 s if the steps ran one after another
    assert all(s.reward == 1.0 for g in groups for s in g)


def test_real_tiny_model_garbage_never_crashes(tok):
    model = build_model(tiny_config("test", tok), seed=0)
    engine = InProcessEngine(model, tok.pad_token_id)
    params = SamplingParams(temperature=1.0, max_new_tokens=16)
    groups = run_episodes(engine, tok, problems(2), calc_env, params, n=2, max_turns=2, max_tokens=40,
                          generator=torch.Generator().manual_seed(0))
    samples = [s for g in groups for s in g]
    assert len(samples) == 4 and {s.status for s in samples} <= {"completed", "failed", "truncated"}
    for s in samples:
        assert 0 < len(s.response_ids) == len(s.loss_mask) == len(s.behaviour_logprobs) <= 40
        assert s.reward == 0.0 and s.turns >= 1
    # the recorded logprobs are the model's own, at the positions the trainer scores them (one right-padded
    # forward: under causal attention the padding at the end changes nothing before it)
    seqs = [s.prompt_ids + s.response_ids for s in samples]
    width = max(map(len, seqs))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([q + [0] * (width - len(q)) for q in seqs])).logits
                                 .float(), -1)
    for row, s in zip(logp, samples):
        ref = row[len(s.prompt_ids) - 1:len(s.prompt_ids) + len(s.response_ids) - 1].gather(
            -1, torch.tensor(s.response_ids)[:, None]).squeeze(-1)
        model_tokens = torch.tensor(s.loss_mask, dtype=torch.bool)
        assert torch.allclose(ref[model_tokens], torch.tensor(s.behaviour_logprobs)[model_tokens], atol=1e-4)
    stats = episode_stats(groups)
    assert stats["episodes"] == 4
    assert abs(stats["completed_frac"] + stats["failed_frac"] + stats["truncated_frac"] - 1) < 1e-9


# concurrent episodes (the async workers' mode) through a BatchingEngine

def bookkeeping(groups):
    return [[(s.group, s.status, s.reason, s.reward, s.turns, s.tool_calls, s.response_ids, s.loss_mask,
              s.behaviour_logprobs, s.messages) for s in g] for g in groups]


def test_concurrent_episodes_record_exactly_what_lockstep_does(tok):
    probs = problems(3)
    lockstep = run_episodes(ScriptedEngine(tok, solver), tok, probs, calc_env, PARAMS, n=2, max_turns=4,
                            max_tokens=400, first_group=2)
    engine = BatchingEngine(ScriptedEngine(tok, solver))
    concurrent = run_episodes(engine, tok, probs, calc_env, PARAMS, n=2, max_turns=4, max_tokens=400,
                              first_group=2, concurrent=True)
    assert bookkeeping(concurrent) == bookkeeping(lockstep)
    assert engine.requests == 12 and sum(engine.engine.calls) == 12  # 6 episodes x 2 turns, one row each


class StepLog(CalculatorEnv):
    """The calculator, sleeping `delay` seconds per expression; logs when each step ends."""

    def __init__(self, log: list, delays: dict[str, float]):
        self.log, self.delays = log, delays

    def step(self, call):
        expr = call["arguments"]["expression"]
        time.sleep(self.delays.get(expr, 0.0))
        self.log.append(("tool done", expr))
        return super().step(call)


def test_concurrent_episode_writes_while_another_waits_on_its_tool(tok):
    """Lockstep: turn 2 of every episode waits for the slowest tool of turn 1. Concurrent: the fast episode
    calls its tool twice and answers while the slow one's first call is still running."""
    log: list = []

    def policy(text, turn):
        slow = "slow" in text
        if turn < 2:
            return call_turn("9*9" if slow else f"{turn}+1")
        return assistant_text("", "done")

    class Logged(ScriptedEngine):
        def generate(self, prompts, params, n=1, generator=None):
            out = super().generate(prompts, params, n, generator)
            log.extend(("write", "slow" in self.tok.decode(p)) for p in prompts)
            return out

    fast, slow = problems(2)
    probs = [fast, dataclasses.replace(slow, prompt=slow.prompt + " slow")]
    make = lambda p: StepLog(log, {"9*9": 0.6})  # noqa: E731
    for concurrent in (False, True):
        log.clear()
        engine = Logged(tok, policy)
        groups = run_episodes(BatchingEngine(engine) if concurrent else engine, tok, probs, make, PARAMS, n=1,
                              max_turns=4, max_tokens=600, concurrent=concurrent)
        assert [s.turns for g in groups for s in g] == [3, 3]
        first_slow_tool = log.index(("tool done", "9*9"))
        fast_writes_before = log[:first_slow_tool].count(("write", False))
        assert fast_writes_before == (3 if concurrent else 1), log


def test_batching_engine_merges_callers_and_cuts_each_to_its_limit():
    class Echo:
        version = 7

        def __init__(self):
            self.batches = []

        def generate(self, prompts, params, n=1, generator=None):
            self.batches.append((len(prompts), params.max_new_tokens))
            time.sleep(0.05)  # callers arriving meanwhile form the next batch
            return [[Completion(p * 10, [-0.5] * len(p) * 10, "stop", self.version)] * n for p in prompts]

    engine = BatchingEngine(Echo())
    results = {}

    def ask(i):
        limit = 4 + i % 3  # a prompt [i, i] echoes 20 tokens: cut to the caller's own limit
        results[i] = engine.generate([[i, i]], SamplingParams(max_new_tokens=limit), n=2)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(rows for rows, _ in engine.engine.batches) == 12 and len(engine.engine.batches) < 12
    for i, [[a, b]] in results.items():
        assert a.tokens == b.tokens == [i] * (4 + i % 3) and a.finish_reason == "length" and a.version == 7
    assert engine.requests == 12 and engine.batches == len(engine.engine.batches)

    class Broken(Echo):
        def generate(self, prompts, params, n=1, generator=None):
            raise RuntimeError("engine down")

    with pytest.raises(RuntimeError, match="engine down"):
        BatchingEngine(Broken()).generate([[1]], SamplingParams())


def test_batching_engine_never_mixes_sampling_params():
    seen = []

    class Record:
        version = 0

        def generate(self, prompts, params, n=1, generator=None):
            seen.append({params.temperature for _ in prompts})
            time.sleep(0.02)
            return [[Completion([1], [0.0], "stop", 0)] for _ in prompts]

    engine = BatchingEngine(Record())
    threads = [threading.Thread(target=engine.generate, args=([[i]], SamplingParams(temperature=0.5 + i % 2)))
               for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(s) == 1 for s in seen) and sum(1 for _ in seen) >= 2


def test_turns_record_their_weights_version_and_stale_turns_leave_the_loss(tok):
    """Weights loaded between two turns (async workers): each token records the version that sampled it (the
    observation carries the turn before's), `version` is the oldest; the async driver then masks the turns older
    than its bound, keeps the fresh ones, and drops a group only when nothing fresh is left."""
    from slide.rl.async_rl import drop_stale_turns, group_version

    class Reloading(ScriptedEngine):
        def generate(self, prompts, params, n=1, generator=None):
            out = super().generate(prompts, params, n, generator)
            self.version += 2  # a push lands after every turn: 3, then 5
            return out

    [group] = run_episodes(Reloading(tok, solver), tok, problems(1), calc_env, PARAMS, n=2, max_turns=4,
                           max_tokens=400, thinking=True, first_group=0)
    for s in group:
        assert s.turns == 2 and s.version == 3 and len(s.token_versions) == len(s.response_ids)
        second = len(s.loss_mask) - s.loss_mask[::-1].index(0)  # the second turn starts after the observation
        assert set(s.token_versions[:second]) == {3} and set(s.token_versions[second:]) == {5}
    assert group_version(group) == 3
    mask_before = [list(s.loss_mask) for s in group]
    assert drop_stale_turns(group, oldest=3) == 0 and group_version(group) == 3
    masked = drop_stale_turns(group, oldest=4)
    assert masked == sum(m.index(0) for m in mask_before)  # exactly the first turns' model tokens
    for s, before in zip(group, mask_before):
        first = before.index(0)
        assert s.loss_mask[:first] == [0] * first and s.loss_mask[first:] == before[first:]
    assert group_version(group) == 5  # the oldest trained token now
    assert drop_stale_turns(group, oldest=6) > 0 and group_version(group) == 3 < 6  # nothing fresh: dropped
