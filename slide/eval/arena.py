"""`slide arena`: two or more models answer the same prompts; every pair is judged prompt by prompt; the games become
win/tie/loss with intervals and Bradley-Terry ratings (slide/eval/bradley_terry.py).

    slide arena sft=runs/sft/final rl=runs/rl/checkpoints/step_000080/model --data arithmetic:1-3 --prompts 100
    slide arena a=DIR b=http://127.0.0.1:8000/v1#glm-tiny --data questions.jsonl --judge http://127.0.0.1:8001/v1#judge

A player is `[NAME=]CHECKPOINT_FOLDER` (greedy answers from the in-process engine) or `[NAME=]URL#MODEL` (an
OpenAI-compatible endpoint, e.g. `slide serve` or vLLM; answered with temperature 0). Judging: by the task's
verifier where it has one (a correct answer beats a wrong one; both right or both wrong tie); with `--judge` by a
judge model behind an OpenAI-compatible endpoint instead, asked twice per pair with the answers in both orders: a
verdict counts only when both orders name the same answer, anything else is a tie (position bias cancels).
Writes OUT/arena.json (players, answers, games, pairs, ratings), OUT/arena.png, and prints the tables.
Agent families (`--data calculator:1`, python, lookup, function_call) play whole multi-turn episodes instead, judged
trajectory against trajectory: slide/eval/agent_arena.py.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Callable

from slide.errors import UserError
from slide.eval.bradley_terry import bootstrap, elo, fit, wilson

JUDGE_PROMPT = """You are judging two answers to the same question. Reply with exactly one of: A, B, tie.

Question:
{question}

Answer A:
{a}

Answer B:
{b}

Which answer is better (correct, complete, clear)? Reply A, B or tie."""


@dataclass(frozen=True)
class Player:
    name: str
    source: str  # a checkpoint folder, or an endpoint's base URL
    model: str | None = None  # the endpoint's model name (None: a checkpoint)


def parse_player(spec: str, what: str = "arena player") -> Player:
    """`[NAME=]FOLDER` or `[NAME=]URL#MODEL` (see the module docstring)."""
    name, _, source = spec.partition("=") if "=" in spec.split("#")[0] else ("", "", spec)
    if source.startswith(("http://", "https://")):
        url, _, model = source.partition("#")
        if not model:
            raise UserError(f"{what} {spec!r}: an endpoint needs its model name: URL#MODEL "
                            f"(e.g. http://127.0.0.1:8000/v1#my-model)")
        return Player(name or model, url.rstrip("/"), model)
    folder = Path(source)
    if not (folder / "config.json").is_file():
        raise UserError(f"{what} {spec!r}: not a checkpoint folder (no {folder / 'config.json'}) nor an "
                        f"endpoint URL#MODEL")
    return Player(name or folder.name, source)


def parse_players(specs: list[str]) -> list[Player]:
    players = [parse_player(s) for s in specs]
    if len(players) < 2:
        raise UserError(f"arena: needs at least two players, got {len(players)}")
    names = [p.name for p in players]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise UserError(f"arena: two players are named {dup!r}; name them: NAME=FOLDER or NAME=URL#MODEL")
    return players


# ---------------------------------------------------------------------------------------------------- answers
def checkpoint_answers(player: Player, questions: list[str], max_new_tokens: int, device, dtype) -> list[str]:
    """Greedy answers of a checkpoint, each turn as the model wrote it up to its stop token."""
    from slide.engine.inprocess import InProcessEngine, SamplingParams
    from slide.model.chat import chat_format
    from slide.model.load import load_with_tokenizer
    model, tok = load_with_tokenizer(player.source, f"arena player {player.name!r}", dtype, device)
    fmt = chat_format(tok)
    prompts = [fmt.prompt_ids([{"role": "user", "content": q}], thinking=True) for q in questions]
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=tuple(fmt.stop_ids))
    out = InProcessEngine(model, tok.pad_token_id).generate(prompts, params)
    return [fmt.cut(tok.decode(g[0].tokens, skip_special_tokens=False)) for g in out]


def endpoint_answers(player: Player, questions: list[str], max_new_tokens: int) -> list[str]:
    """Answers from an OpenAI-compatible endpoint: reasoning (if returned) inside <think></think>, then content."""
    ask = chat_caller(player, max_new_tokens)
    return [ask(q) for q in questions]


def chat_caller(player: Player, max_tokens: int) -> Callable[[str], str]:
    """question -> the endpoint's answer text (temperature 0); an unreachable endpoint is a UserError."""
    import openai
    client = openai.OpenAI(base_url=player.source, api_key="none", max_retries=1, timeout=600)

    def ask(question: str) -> str:
        try:
            r = client.chat.completions.create(model=player.model, temperature=0, max_tokens=max_tokens,
                                               messages=[{"role": "user", "content": question}])
        except openai.APIConnectionError:
            raise UserError(f"arena player {player.name!r}: cannot reach {player.source}") from None
        except openai.APIStatusError as e:
            raise UserError(f"arena player {player.name!r}: {player.source} answered {e.status_code}: "
                            f"{str(e.message)[:200]}") from None
        m = r.choices[0].message
        reasoning = getattr(m, "reasoning_content", None) or ""
        return (f"<think>{reasoning}</think>\n" if reasoning else "") + (m.content or "")
    return ask


# ---------------------------------------------------------------------------------------------------- judging
def judge_verdict(ask: Callable[[str], str], question: str, a: str, b: str, prompt: str = JUDGE_PROMPT) -> float:
    """Score of `a` against `b` (1, 0.5, 0) from a judge asked in both orders; disagreement is a tie. `prompt` has
    {question}, {a} and {b} (agent_arena's shows whole trajectories)."""
    first = _verdict(ask(prompt.format(question=question, a=a, b=b)))
    second = _verdict(ask(prompt.format(question=question, a=b, b=a)))
    swapped = {"A": "B", "B": "A", "tie": "tie", None: None}[second]
    if first is not None and first == swapped and first != "tie":
        return 1.0 if first == "A" else 0.0
    return 0.5


def _verdict(text: str) -> str | None:
    """A, B or tie from a judge's reply (the last such word after any reasoning); None if it names none."""
    text = text.rsplit("</think>", 1)[-1]
    found = re.findall(r"\b(A|B|tie)\b", text, flags=re.IGNORECASE)
    if not found:
        return None
    last = found[-1]
    return "tie" if last.lower() == "tie" else last.upper()


def games_of(players: list[Player], answers: dict[str, list[str]], questions: list[str],
             score: Callable[[int, str, str], float]) -> list[tuple[str, str, float]]:
    """One game per prompt per pair: (a, b, score of a), `score(prompt index, answer a, answer b)`."""
    return [(a.name, b.name, score(i, answers[a.name][i], answers[b.name][i]))
            for a, b in combinations(players, 2) for i in range(len(questions))]


def verifier_score(problems, verify: dict) -> Callable[[int, str, str], float]:
    def score(i: int, a: str, b: str) -> float:
        p = problems[i]
        ra, rb = (verify[p.family](p, x) >= 1.0 for x in (a, b))
        return 0.5 if ra == rb else float(ra)
    return score


# ---------------------------------------------------------------------------------------------------- results
def summarize(players: list[Player], games: list[tuple[str, str, float]], rounds: int = 200, seed: int = 0) -> dict:
    names = [p.name for p in players]
    pairs = []
    for a, b in combinations(names, 2):
        scores = [g[2] for g in games if g[0] == a and g[1] == b]
        win, tie = sum(s == 1.0 for s in scores), sum(s == 0.5 for s in scores)
        rate = (win + tie / 2) / max(1, len(scores))
        pairs.append({"a": a, "b": b, "win": win, "tie": tie, "loss": len(scores) - win - tie, "games": len(scores),
                      "win_rate": rate, "win_rate_ci95": list(wilson(rate, len(scores)))})
    theta = fit(games, names)
    low, high = bootstrap(games, names, rounds, seed)
    ratings = sorted(({"player": n, "rating": float(elo(theta)[i]), "ci95": [float(elo(low)[i]), float(elo(high)[i])]}
                      for i, n in enumerate(names)), key=lambda r: -r["rating"])
    return {"pairs": pairs, "ratings": ratings}


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title="pairs (win rate: ties count half; 95% Wilson interval)")
    for col in ("a", "b", "win", "tie", "loss", "win rate of a", "95% CI"):
        t.add_column(col, justify="right")
    for p in result["pairs"]:
        lo, hi = p["win_rate_ci95"]
        t.add_row(p["a"], p["b"], str(p["win"]), str(p["tie"]), str(p["loss"]), f"{p['win_rate']:.3f}",
                  f"{lo:.3f}-{hi:.3f}")
    r = Table(title="Bradley-Terry ratings (Elo scale; 95% bootstrap interval)")
    for col in ("player", "rating", "95% CI"):
        r.add_column(col, justify="right")
    for x in result["ratings"]:
        r.add_row(x["player"], f"{x['rating']:.0f}", f"{x['ci95'][0]:.0f}-{x['ci95'][1]:.0f}")
    Console().print(t)
    Console().print(r)
    if "episodes" in result:
        from slide.eval.agent_arena import print_players
        print_players(result)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ratings = result["ratings"][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.6 * len(ratings) + 1.5))
    y = range(len(ratings))
    values = [r["rating"] for r in ratings]
    errors = [[r["rating"] - r["ci95"][0] for r in ratings], [r["ci95"][1] - r["rating"] for r in ratings]]
    ax.errorbar(values, list(y), xerr=errors, fmt="o", capsize=4)
    ax.set_yticks(list(y), [r["player"] for r in ratings])
    ax.set_xlabel("Bradley-Terry rating (Elo scale), 95% bootstrap interval")
    ax.set_title("arena")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "arena.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "arena.png")


def run(specs: list[str], data: str, prompts: int, seed: int, judge: str | None, max_new_tokens: int, out: Path,
        device, dtype, rounds: int = 200, agent=None) -> dict:
    """The whole arena: answers, games, summary; writes OUT/arena.json and OUT/arena.png. Agent families in `data`
    play whole episodes under `agent` (an AgentSpec; slide/eval/agent_arena.py)."""
    from slide.config import AgentSpec
    from slide.eval import agent_arena
    from slide.eval.passk import verifiers
    from slide.rl.data import eval_problems
    from slide.tasks import parse_task_specs
    players = parse_players(specs)
    judge_player = parse_player(judge, "--judge") if judge else None
    if judge_player is not None and judge_player.model is None:
        raise UserError(f"--judge {judge!r}: the judge is an OpenAI-compatible endpoint URL#MODEL (e.g. a slide serve)")
    specs_ = parse_task_specs(data)
    problems = eval_problems(specs_, prompts, seed)
    if agent_arena.agentic(specs_):
        return agent_arena.run(players, judge_player, data, problems, agent or AgentSpec(), max_new_tokens, out,
                               device, dtype, rounds, seed)
    questions = [p.prompt for p in problems]
    answers = {p.name: (endpoint_answers(p, questions, max_new_tokens) if p.model else
                        checkpoint_answers(p, questions, max_new_tokens, device, dtype)) for p in players}
    if judge_player is None:
        score = verifier_score(problems, verifiers(specs_))
    else:
        ask = chat_caller(judge_player, max_new_tokens)
        score = lambda i, a, b: judge_verdict(ask, questions[i], a, b)  # noqa: E731
    games = games_of(players, answers, questions, score)
    result = {"players": [vars(p) for p in players], "data": data, "prompts": len(problems),
              "judge": judge or "verifier", **summarize(players, games, rounds, seed),
              "games": [list(g) for g in games],
              "answers": [{"prompt": q, **{n: answers[n][i] for n in answers}} for i, q in enumerate(questions)]}
    write(result, out)
    return result
