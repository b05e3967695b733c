"""The agentic arena (CC-Bench's way): every player runs whole tool-use episodes on the same problems, and each pair's
trajectories are judged problem by problem. `slide arena` (slide/eval/arena.py) comes here when --data names agent
families (calculator, python, lookup, function_call: slide/agent/families.py).

    slide arena sft=runs/agent-sft/final rl=runs/agent-rl/checkpoints/step_000040/model --data calculator:1 \\
        --prompts 64 --max-new-tokens 160 --max-turns 3 --max-episode-tokens 400

A checkpoint player plays through run_episodes with the in-process engine, greedy; an endpoint player (URL#MODEL:
`slide serve`, vLLM) through the OpenAI chat API (slide/agent/endpoint.py, which says where its outcomes may differ).
Both use the families' environments in the call pool, under the same step and reward timeouts as RL, and one episode
means the same everywhere: status, reason and reward as episode.py defines them. Judging: by the verifier (the
episode's reward: a solved episode, reward >= 1, beats an unsolved one; two solved or two unsolved tie, however many
turns either took), or with --judge by a judge model shown both whole trajectories (the task; each side's reasoning,
tool calls, tool results and final answer, rendered as text) in both orders (arena.judge_verdict).
Writes, beside arena.json's pairs and ratings, per player: solved rate, mean turns, tool calls, statuses and end
reasons ("episodes"), and every episode to OUT/trajectories.jsonl (AgentSample.record plus player and problem index;
the response of an endpoint episode is its readable transcript).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from slide.agent.endpoint import chat_client, play_endpoint
from slide.agent.episode import AgentSample, run_episodes
from slide.agent.families import AGENT_FAMILIES, env_factory
from slide.config import AgentSpec
from slide.errors import UserError
from slide.eval.arena import Player, chat_caller, games_of, judge_verdict, summarize, write

REWARD_TIMEOUT_S = 5.0  # env.reward of a final answer (slide eval's verifier timeout)
MAX_TEXT = 1500  # characters of any one piece of a transcript shown to a judge

TRAJECTORY_JUDGE_PROMPT = """You are judging two agents' whole attempts at the same task: their reasoning, their tool \
calls, what the tools returned, and their final answers. Reply with exactly one of: A, B, tie.

Task:
{question}

Agent A:
{a}

Agent B:
{b}

Which agent did the task better (a correct final answer, tools used soundly)? Reply A, B or tie."""


def agentic(specs) -> bool:
    """Whether parsed task specs [(task, levels)] are agent families only; a mix with single-turn ones is refused."""
    kinds = {task.name in AGENT_FAMILIES for task, _ in specs}
    if kinds == {True, False}:
        names = ", ".join(task.name for task, _ in specs)
        raise UserError(f"arena --data: {names} mixes agent families (whole episodes) with single-turn ones "
                        f"(one answer); run them as two arenas")
    return kinds == {True}


def check_players(players: list[Player], data: str) -> None:
    """Fail before any episode runs: a checkpoint whose chat template writes no tool calls SLIDE parses, an endpoint
    that cannot be reached or does not serve the named model."""
    from slide.model.chat import chat_format
    from slide.model.tokenizer import load_tokenizer
    for p in players:
        if p.model is None:
            tok = load_tokenizer(p.source, f"arena player {p.name!r}")
            chat_format(tok).needs_tools(f"arena player {p.name!r} on {data}")
        else:
            check_endpoint(p)


def check_endpoint(player: Player) -> None:
    import openai
    client = openai.OpenAI(base_url=player.source, api_key="none", max_retries=1, timeout=60)
    try:
        served = [m.id for m in client.models.list().data]
    except openai.APIConnectionError:
        raise UserError(f"arena player {player.name!r}: cannot reach {player.source}") from None
    except openai.APIStatusError as e:
        raise UserError(f"arena player {player.name!r}: {player.source}/models answered {e.status_code}") from None
    if player.model not in served:
        raise UserError(f"arena player {player.name!r}: {player.source} serves {', '.join(served) or 'nothing'}, "
                        f"not {player.model!r}")


def play(player: Player, problems, agent: AgentSpec, max_new_tokens: int, device, dtype, pool) -> list[AgentSample]:
    """One greedy episode per problem, in order."""
    envs = env_factory(agent, 0, pool, REWARD_TIMEOUT_S)
    if player.model is not None:
        return play_endpoint(chat_client(player.source, player.model), problems, envs, max_new_tokens,
                             agent.max_turns, agent.max_tokens, agent.step_timeout_s, REWARD_TIMEOUT_S)
    from slide.engine.inprocess import InProcessEngine
    from slide.model.load import load_with_tokenizer
    model, tok = load_with_tokenizer(player.source, f"arena player {player.name!r}", dtype, device)
    return play_engine(InProcessEngine(model, tok.pad_token_id), tok, problems, envs, agent, max_new_tokens)


def play_engine(engine, tok, problems, envs, agent: AgentSpec, max_new_tokens: int) -> list[AgentSample]:
    """run_episodes, greedy, one episode per problem (in lockstep: each turn of all problems is one engine call)."""
    from slide.engine.inprocess import SamplingParams
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)  # run_episodes sets the stop tokens
    groups = run_episodes(engine, tok, problems, envs, params, n=1, max_turns=agent.max_turns,
                          max_tokens=agent.max_tokens, step_timeout_s=agent.step_timeout_s,
                          reward_timeout_s=REWARD_TIMEOUT_S)
    return [g[0] for g in groups]


# ---------------------------------------------------------------------------------------------------- judging
def solved(s: AgentSample) -> bool:
    return s.reward >= 1.0


def verifier_score(a: AgentSample, b: AgentSample) -> float:
    """A solved episode beats an unsolved one; otherwise a tie."""
    return 0.5 if solved(a) == solved(b) else float(solved(a))


def _cut(text: str) -> str:
    text = str(text).strip()
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + " ...(cut)"


def transcript(s: AgentSample) -> str:
    """An episode as a judge reads it: each assistant turn's thinking, words and tool calls, each tool result, the
    final answer, and how the episode ended (the question itself is shown apart)."""
    lines, turn = [], 0
    assistants = [i for i, m in enumerate(s.messages) if m["role"] == "assistant"]
    for i, m in enumerate(s.messages):
        if m["role"] == "assistant":
            turn += 1
            lines.append(f"[turn {turn}]")
            if m.get("reasoning_content"):
                lines.append(f"thinking: {_cut(m['reasoning_content'])}")
            final = s.reason == "answer" and i == assistants[-1]
            if m.get("content") or final:
                lines.append(f"{'final answer' if final else 'says'}: {_cut(m.get('content') or '')}")
            for c in m.get("tool_calls") or []:
                args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in c["arguments"].items())
                lines.append(f"calls {c['name']}({_cut(args)})")
        elif m["role"] in ("tool", "observation"):
            lines.append(f"tool result: {_cut(m['content'])}")
    lines.append(f"[episode ended: {s.status}, {s.reason}" + (f": {_cut(s.error)}]" if s.error else "]"))
    return "\n".join(lines)


def judge_score(ask, a: AgentSample, b: AgentSample) -> float:
    return judge_verdict(ask, a.problem.prompt, transcript(a), transcript(b), TRAJECTORY_JUDGE_PROMPT)


# ---------------------------------------------------------------------------------------------------- results
def player_stats(samples: list[AgentSample]) -> dict:
    n = max(1, len(samples))
    return {"episodes": len(samples), "solved": sum(map(solved, samples)),
            "solved_rate": sum(map(solved, samples)) / n, "turns_mean": sum(s.turns for s in samples) / n,
            "tool_calls": sum(s.tool_calls for s in samples), "statuses": dict(Counter(s.status for s in samples)),
            "reasons": dict(Counter(s.reason for s in samples))}


def records(name: str, samples: list[AgentSample]) -> list[dict]:
    out = []
    for i, s in enumerate(samples):
        if not s.response_text:  # played through an API: no token ids, the transcript instead
            s.response_text = transcript(s)
        out.append({"player": name, "index": i, **s.record(0)})
    return out


def print_players(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title="episodes per player (greedy; solved: reward >= 1)")
    for col in ("player", "episodes", "solved rate", "mean turns", "tool calls", "statuses", "end reasons"):
        t.add_column(col, justify="right")
    for name, x in result["episodes"].items():
        t.add_row(name, str(x["episodes"]), f"{x['solved_rate']:.3f}", f"{x['turns_mean']:.2f}", str(x["tool_calls"]),
                  " ".join(f"{k}={v}" for k, v in sorted(x["statuses"].items())),
                  " ".join(f"{k}={v}" for k, v in sorted(x["reasons"].items())))
    Console().print(t)


def run(players: list[Player], judge: Player | None, data: str, problems, agent: AgentSpec, max_new_tokens: int,
        out: Path, device, dtype, rounds: int, seed: int) -> dict:
    """Episodes of every player, games of every pair, summary; writes OUT/arena.json, arena.png and
    trajectories.jsonl."""
    from slide.callpool import shared_pool
    check_players(players + ([judge] if judge else []), data)
    pool = shared_pool()
    episodes = {p.name: play(p, problems, agent, max_new_tokens, device, dtype, pool) for p in players}
    if judge is None:
        score = lambda i, a, b: verifier_score(a, b)  # noqa: E731
    else:
        ask = chat_caller(judge, max_new_tokens)
        score = lambda i, a, b: judge_score(ask, a, b)  # noqa: E731
    games = games_of(players, episodes, problems, score)
    rows = [r for p in players for r in records(p.name, episodes[p.name])]
    out.mkdir(parents=True, exist_ok=True)
    (out / "trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = {"players": [vars(p) for p in players], "data": data, "prompts": len(problems), "agentic": True,
              "judge": f"{judge.source}#{judge.model}" if judge else "verifier",
              "limits": {"max_new_tokens": max_new_tokens, "max_turns": agent.max_turns,
                         "max_tokens": agent.max_tokens, "step_timeout_s": agent.step_timeout_s},
              **summarize(players, games, rounds, seed),
              "episodes": {n: player_stats(s) for n, s in episodes.items()},
              "games": [list(g) + [i % len(problems)] for i, g in enumerate(games)],
              "trajectories": "trajectories.jsonl"}
    write(result, out)
    return result
