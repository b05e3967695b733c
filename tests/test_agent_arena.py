"""The agentic arena (slide/eval/agent_arena.py) and the agent loop over an OpenAI-compatible API
(slide/agent/endpoint.py): the loop's rules against a scripted API; a verifier-judged arena of whole episodes between
a tool user and an untrained checkpoint; one model through `slide serve` playing the episodes it plays in-process;
the judge shown both trajectories in both orders (a stub, then a judge model behind `slide serve`); bad input as one
error line.

The tool user is a scripted model (PolicyModel: right, wrong and malformed calls by problem): a test-size checkpoint
that calls the calculator well takes ~7 min of SFT on two free cores (benchmarks/RESULTS.md), too long for a test."""
from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from slide.agent.endpoint import Reply, chat_client, play_endpoint
from slide.agent.envs.calculator import CalculatorEnv, CalculatorTask, value_text
from slide.agent.episode import AgentSample
from slide.agent.families import env_factory
from slide.callpool import shared_pool
from slide.config import AgentSpec
from slide.engine.inprocess import InProcessEngine
from slide.eval.agent_arena import judge_score, play_engine, transcript
from slide.eval.arena import run
from slide.model.load import load_with_tokenizer
from slide.model.tokenizer import assistant_text
from slide.rl.data import eval_problems
from slide.serve.backend import Backend
from slide.tasks import parse_task_specs
from slide.tasks.expr import evaluate

CPU = torch.device("cpu")
LIMITS = AgentSpec(max_turns=3, max_tokens=400)


def calc_problems(k: int, seed: int = 0):
    rng = random.Random(seed)
    return [CalculatorTask().generate(rng, 1) for _ in range(k)]


def call(expression: str, id_: str = "call_1", arguments: str | None = None) -> dict:
    return {"id": id_, "name": "calculate",
            "arguments": arguments if arguments is not None else json.dumps({"expression": expression})}


class ScriptedApi:
    """An Ask: each turn's Reply from `script(messages, turn)`. Its prompt_tokens are counted as a server would: 100 for
    the question, then each earlier turn's completion_tokens and 10 per tool result, so the loop's token bookkeeping
    can be derived by hand. Records what it was sent."""

    def __init__(self, script):
        self.script, self.sent, self.written = script, [], {}

    def __call__(self, messages, tools, max_tokens):
        self.sent.append((list(messages), tools, max_tokens))
        question, turn = messages[0]["content"], sum(m["role"] == "assistant" for m in messages)
        reply = self.script(messages, turn)
        reply.prompt_tokens = 100 + sum(self.written[(question, k)] for k in range(turn)) + \
            10 * sum(m["role"] == "tool" for m in messages)
        self.written[(question, turn)] = reply.completion_tokens
        return reply


def solver(messages, turn) -> Reply:
    """A correct policy: call the tool with the question's expression, then answer what it returned."""
    if turn == 0:
        expression = messages[0]["content"].split("What is ")[1].split("?")[0]
        return Reply("use the tool", "", [call(expression)], "tool_calls", 0, 12)
    return Reply("the tool says", messages[-1]["content"], [], "stop", 0, 8)


# ------------------------------------------------------------------------------------------- the API loop
def test_endpoint_loop_runs_tool_calls_and_counts_tokens_from_usage():
    problems = calc_problems(2)
    api = ScriptedApi(solver)
    samples = play_endpoint(api, problems, lambda p: CalculatorEnv(), max_new_tokens=50, max_turns=3,
                            max_tokens=400)
    for p, s in zip(problems, samples):
        assert (s.status, s.reason, s.reward, s.turns, s.tool_calls, s.tool_successes) == \
            ("completed", "answer", 1.0, 2, 1, 1)
        # turn 1 wrote 12; turn 2's prompt grew by those and the tool result's 10; turn 2 wrote 8
        assert s.tokens == 12 + 10 + 8 and s.record(0)["response_len"] == 30
        assert [m["role"] for m in s.messages] == ["user", "assistant", "tool", "assistant"]
        assert s.messages[1]["tool_calls"] == [{"name": "calculate", "arguments": {"expression": p.meta["expression"]}}]
        assert s.messages[2]["content"] == p.answer
    first, second = [x for x in api.sent if x[0][0]["content"] == problems[0].prompt]
    assert [t["function"]["name"] for t in first[1]] == ["calculate"] and first[1][0]["type"] == "function"
    assert first[2] == 50 and second[2] == 50  # min(max_new_tokens, what is left: 400 - 12)
    sent_call, sent_result = second[0][1], second[0][2]
    assert sent_call["tool_calls"][0]["function"]["arguments"] == call(problems[0].meta["expression"])["arguments"]
    assert sent_result == {"role": "tool", "tool_call_id": "call_1", "content": problems[0].answer}


@pytest.mark.parametrize("script, max_tokens, want", [
    # arguments that are not a JSON object: the turn is malformed
    (lambda m, t: Reply("", "", [call("", arguments="{oops")], "tool_calls", 0, 5), 400,
     ("failed", "invalid_format", 1, 0)),
    (lambda m, t: Reply("", "", [{"id": "c", "name": "calc", "arguments": "{}"}], "tool_calls", 0, 5), 400,
     ("failed", "unknown_tool", 1, 0)),
    # calls on every turn: the third (last) turn's calls are not run
    (lambda m, t: Reply("", "", [call("1+1")], "tool_calls", 0, 5), 400, ("truncated", "max_turns", 3, 2)),
    (lambda m, t: Reply("", "x" * 50, [], "length", 0, 50), 400, ("truncated", "turn_tokens", 1, 0)),
    # turn 1 writes 30 of 35; turn 2's prompt shows the tool result's 10 took the rest: stopped before writing
    (lambda m, t: Reply("", "", [call("1+1")], "tool_calls", 0, 30), 35, ("truncated", "max_tokens", 1, 1)),
    # turn 2 may write 45 - (10 + 10) = 25 tokens; it wrote 30 (asked for 35 before the result's 10 were known)
    (lambda m, t: Reply("", "", [call("1+1")], "tool_calls", 0, 30 if t else 10), 45,
     ("truncated", "max_tokens", 2, 1)),
])
def test_endpoint_loop_failure_and_limit_rules(script, max_tokens, want):
    [s] = play_endpoint(ScriptedApi(script), calc_problems(1), lambda p: CalculatorEnv(), max_new_tokens=50,
                        max_turns=3, max_tokens=max_tokens)
    assert (s.status, s.reason, s.turns, s.tool_calls) == want and s.reward == 0.0


def test_an_api_error_ends_only_its_episode():
    problems = calc_problems(4)
    down = {problems[0].prompt, problems[2].prompt}

    def flaky(messages, turn):
        if messages[0]["content"] in down and turn == 1:
            raise ConnectionError("server went away")
        return solver(messages, turn)
    samples = play_endpoint(ScriptedApi(flaky), problems, lambda p: CalculatorEnv(), 50, 3, 400)
    assert [(s.status, s.reason, s.turns) for s in samples] == \
        [("aborted", "endpoint_error", 1), ("completed", "answer", 2)] * 2
    assert "ConnectionError: server went away" in samples[0].error and samples[1].reward == 1.0


# ------------------------------------------------------------------------------------------- the judge
def episode(problem, final: str, status="completed", reason="answer") -> AgentSample:
    expression = problem.meta["expression"]
    s = AgentSample([], [], [], [], 0, problem, 0, status=status, reason=reason, turns=2)
    s.messages = [{"role": "user", "content": problem.prompt},
                  {"role": "assistant", "reasoning_content": "too big", "content": "",
                   "tool_calls": [{"name": "calculate", "arguments": {"expression": expression}}]},
                  {"role": "tool", "content": problem.answer},
                  {"role": "assistant", "reasoning_content": "", "content": final}]
    return s


def test_judge_sees_both_whole_trajectories_in_both_orders():
    [p] = calc_problems(1)
    right, wrong = episode(p, p.answer), episode(p, "12")
    text = transcript(right)
    assert text == (f'[turn 1]\nthinking: too big\ncalls calculate(expression="{p.meta["expression"]}")\n'
                    f"tool result: {p.answer}\n[turn 2]\nfinal answer: {p.answer}\n[episode ended: completed, answer]")
    seen = []

    def fair(prompt):  # prefers the agent whose final answer is right, wherever it is shown
        seen.append(prompt)
        a = prompt.split("Agent A:")[1].split("Agent B:")[0]
        return "<think>compare</think>A" if f"final answer: {p.answer}" in a else "B"
    assert judge_score(fair, right, wrong) == 1.0 and judge_score(fair, wrong, right) == 0.0
    first, second = seen[:2]
    assert p.prompt in first and first.index(text) < first.index(transcript(wrong))  # A = right, then swapped
    assert second.index(transcript(wrong)) < second.index(text)
    assert "tool result:" in first and "calls calculate" in first
    assert judge_score(lambda prompt: "A", right, wrong) == 0.5  # always the first shown: no verdict


# ------------------------------------------------------------------------------------------- models
OBS = "<|observation|>"


def calculator_policy(context: str) -> str:
    """What a scripted model writes next in a calculator episode (`context`: the conversation so far, as text). By
    the first operand mod 3: 0 calls the tool right and answers its result (solved), 1 calls it with a wrong
    expression and answers that (completed, reward 0), 2 writes a call it never closes (malformed)."""
    episode = context.split("<|user|>")[-1]  # the system prompt before it describes the tools (and their results)
    question = episode.split("What is ")[1].split("?")[0]
    kind = int(question.split("*")[0]) % 3
    if "<tool_response>" not in episode:
        if kind == 2:
            return f"<think>x</think>\n<tool_call>calculate\n<arg_key>expression</arg_key>\n<arg_value>{question}{OBS}"
        expression = question if kind == 0 else question + "+1"
        return assistant_text("use the tool", "", end=OBS,
                              tool_calls=[{"name": "calculate", "arguments": {"expression": expression}}])
    return assistant_text("the tool says", episode.rsplit("<tool_response>", 1)[1].split("</tool_response>")[0])


class PolicyModel(torch.nn.Module):
    """A stand-in causal LM whose every turn is `policy(the conversation before the turn)`, written token by token.
    Each row's tokens are kept as layer 0 of the engine's KV cache, so rows the engine drops from a batch (or a
    server batches together) keep their own history."""

    def __init__(self, tok, policy):
        super().__init__()
        self.tok, self.policy, self.vocab = tok, policy, len(tok)
        self.config = SimpleNamespace(max_position_embeddings=4096)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device to run on
        self.turn_start = tok.convert_tokens_to_ids("<|assistant|>")
        self.asked: list[list[int]] = []  # each prompt's ids, at its prefill

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=1):
        ids = input_ids.float()[:, None, :, None]  # [b, 1, t, 1]: "keys" the cache keeps and reorders with the rows
        history, _ = past_key_values.update(ids, ids, 0)
        if input_ids.shape[1] > 1:
            self.asked += [[int(t) for t, m in zip(r.tolist(), k.tolist()) if m]
                           for r, k in zip(input_ids, attention_mask)]
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -1e4)
        for b in range(input_ids.shape[0]):
            row = [int(t) for t, m in zip(history[b, 0, :, 0].tolist(), attention_mask[b].tolist()) if m]
            start = len(row) - row[::-1].index(self.turn_start) + 1  # after the last "<|assistant|>\n"
            context = self.tok.decode(row[:start], skip_special_tokens=False)
            want = self.tok.encode(self.policy(context), add_special_tokens=False)
            logits[b, 0, want[min(len(row) - start, len(want) - 1)]] = 0.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, tok):
    """An untrained test-size checkpoint: it writes no well-formed tool call."""
    from slide.model.tiny import build_model, tiny_config
    folder = tmp_path_factory.mktemp("fresh")
    build_model(tiny_config("test", tok), seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def kinds(problems) -> list[int]:
    return [int(p.meta["expression"].split("*")[0]) % 3 for p in problems]


# ------------------------------------------------------------------------------------------- arenas
def test_verifier_agent_arena_ranks_the_tool_user_first(tok, fresh, tmp_path):
    """The scripted tool user, served by `slide serve`, against an untrained checkpoint played in-process."""
    from test_serve import running
    problems = eval_problems(parse_task_specs("calculator:1"), 12, 0)  # the arena's own draw
    solvable = kinds(problems).count(0)
    assert 0 < solvable < 12
    with running(Backend(PolicyModel(tok, calculator_policy), tok, "tools")) as (_, url):
        result = run([f"tools={url}#tools", f"fresh={fresh}"], "calculator:1", prompts=12, seed=0, judge=None,
                     max_new_tokens=96, out=tmp_path, device=CPU, dtype=torch.float32, rounds=50, agent=LIMITS)
    [pair] = result["pairs"]
    tools, untrained = result["episodes"]["tools"], result["episodes"]["fresh"]
    assert (tools["solved"], untrained["solved"]) == (solvable, 0)
    assert (pair["a"], pair["b"], pair["games"], pair["win"], pair["tie"], pair["loss"]) == \
        ("tools", "fresh", 12, solvable, 12 - solvable, 0)  # each solved episode beats an unsolved one
    assert [r["player"] for r in result["ratings"]] == ["tools", "fresh"]
    # through the API the unclosed call (kind 2) is plain content, so a final answer: all 12 completed
    assert tools["statuses"] == {"completed": 12} and tools["tool_calls"] == 12 - kinds(problems).count(2)
    rows = read_rows(tmp_path / "trajectories.jsonl")
    assert [(r["player"], r["index"]) for r in rows] == [(n, i) for n in ("tools", "fresh") for i in range(12)]
    for r, kind in zip(rows, kinds(problems)):
        assert r["reward"] == float(kind == 0) and r["turns"] == (1 if kind == 2 else 2)
        if kind == 0:
            assert r["messages"][1]["tool_calls"][0]["arguments"]["expression"] == r["prompt"][8:].split("?")[0]
            assert "[turn 2]\nthinking: the tool says\nfinal answer: " + r["answer"] in r["response"]
    saved = json.loads((tmp_path / "arena.json").read_text())
    assert saved["trajectories"] == "trajectories.jsonl" and len(saved["games"]) == 12
    assert saved["episodes"]["fresh"]["turns_mean"] >= 1 and (tmp_path / "arena.png").is_file()


def test_served_model_plays_the_episodes_it_plays_in_process(tok, fresh, tmp_path):
    """Greedy: the same model through `slide serve` (tool_calls round trips) and in-process (run_episodes) ends each
    episode the same way, with the same reward, turns, calls and tokens; the one documented difference is a call
    the server cannot parse (endpoint.py). Then an untrained checkpoint, both ways, through the arena."""
    from test_serve import running
    problems = calc_problems(9, seed=3)
    envs = env_factory(LIMITS, 0, shared_pool(), 5.0)
    model = PolicyModel(tok, calculator_policy)
    local = play_engine(InProcessEngine(model, tok.pad_token_id), tok, problems, envs, LIMITS, 96)
    with running(Backend(model, tok, "policy")) as (_, url):
        served = play_endpoint(chat_client(url, "policy"), problems, envs, 96, LIMITS.max_turns, LIMITS.max_tokens)
    assert set(kinds(problems)) == {0, 1, 2}
    for kind, a, b in zip(kinds(problems), local, served):
        assert (a.reward, a.turns, a.tool_calls) == (b.reward, b.turns, b.tool_calls) == \
            ((1.0, 2, 1), (0.0, 2, 1), (0.0, 1, 0))[kind]
        assert len(a.response_ids) == b.tokens
        want = ("completed", "answer") if kind < 2 else ("failed", "invalid_format")
        assert (a.status, a.reason) == want
        assert (b.status, b.reason) == ("completed", "answer")  # the unparsed call is content
    assert [m["role"] for m in served[0].messages] == [m["role"] for m in local[0].messages]

    model, tok_ = load_with_tokenizer(str(fresh), "model")
    with running(Backend(model, tok_, "fresh")) as (_, url):
        result = run([f"local={fresh}", f"served={url}#fresh"], "calculator:1", prompts=4, seed=1, judge=None,
                     max_new_tokens=32, out=tmp_path, device=CPU, dtype=torch.float32, rounds=20, agent=LIMITS)
    rows = read_rows(tmp_path / "trajectories.jsonl")
    for a, b in zip(rows[:4], rows[4:]):
        assert (a["status"], a["reason"], a["reward"], a["turns"], a["response_len"]) == \
            (b["status"], b["reason"], b["reward"], b["turns"], b["response_len"])
    assert result["pairs"][0]["tie"] == 4


def judge_policy(context: str) -> str:
    """A scripted judge: names the agent whose final answer is the product asked for ("tie" if both or neither)."""
    prompt = context.split("<|user|>")[-1]
    expression = prompt.split("What is ")[1].split("?")[0]
    right = f"final answer: {value_text(evaluate(expression))}\n"
    a, b = prompt.split("Agent A:")[1].split("Agent B:")
    verdict = {(True, False): "A", (False, True): "B"}.get((right in a, right in b), "tie")
    return assistant_text("compare the final answers", verdict)


def test_judged_agent_arena_through_a_judge_endpoint(tok, fresh, tmp_path):
    """--judge: a judge model behind `slide serve` reads both trajectories, asked in both orders."""
    from test_serve import running
    problems = eval_problems(parse_task_specs("calculator:1"), 6, 0)
    judge = PolicyModel(tok, judge_policy)
    with running(Backend(PolicyModel(tok, calculator_policy), tok, "tools")) as (_, url), \
            running(Backend(judge, tok, "judge")) as (_, judge_url):
        result = run([f"tools={url}#tools", f"fresh={fresh}"], "calculator:1", prompts=6, seed=0,
                     judge=f"{judge_url}#judge", max_new_tokens=64, out=tmp_path, device=CPU, dtype=torch.float32,
                     rounds=20, agent=LIMITS)
    [pair] = result["pairs"]
    solvable = kinds(problems).count(0)
    assert (pair["win"], pair["tie"], pair["loss"]) == (solvable, 6 - solvable, 0)
    assert result["judge"] == f"{judge_url}#judge"
    asked = [tok.decode(p, skip_special_tokens=False) for p in judge.asked]
    assert len(asked) == 12  # both orders of each of the 6 games
    for first, second in zip(asked[::2], asked[1::2]):
        assert first.index("Agent A:") < first.index("[episode ended: completed") < first.index("Agent B:")
        assert second.index("Agent B:") < second.index("[episode ended: completed")  # the tool user shown second
    assert sum("calls calculate(" in a and "tool result: " in a for a in asked) == 2 * kinds(problems).count(0) + \
        2 * kinds(problems).count(1)  # the tool user's calls and results, where it made them (kinds 0 and 1)


# ------------------------------------------------------------------------------------------- bad input
def test_bad_agent_arena_input_is_one_error_line(fresh, tmp_path, capsys):
    from slide.cli import main
    from slide.model.tokenizer import load_tokenizer
    plain = tmp_path / "no-calls"  # the fresh model with a chat template that writes no tool calls
    plain.mkdir()
    for f in fresh.iterdir():
        (plain / f.name).write_bytes(f.read_bytes())
    (plain / "chat_template.jinja").write_text("{%- for m in messages -%}{{- m.content -}}{%- endfor -%}")
    assert load_tokenizer(plain).chat_template.startswith("{%- for m")
    cases = [
        ([f"a={fresh}", f"b={plain}", "--data", "calculator:1"], "writes no tool calls in a format SLIDE knows"),
        ([f"a={fresh}", "b=http://127.0.0.1:9/v1#m", "--data", "lookup:1"], "cannot reach http://127.0.0.1:9/v1"),
        ([f"a={fresh}", f"b={fresh}", "--data", "calculator:1,arithmetic:1"], "mixes agent families"),
        ([f"a={fresh}", f"b={fresh}", "--data", "calculator:1", "--max-turns", "0"], "--max-turns 0: must be >= 1"),
    ]
    for args, says in cases:
        assert main(["arena", *args, "--out", str(tmp_path / "out")]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
