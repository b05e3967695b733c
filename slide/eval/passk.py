"""pass@k and avg@n evaluation per task family and level.

    slide eval --model runs/demo/final --data arithmetic:2,countdown:1 --k 8            # n = 8 samples
    slide eval --model runs/demo/final --data a.jsonl,b.jsonl --n 16 --k 1 4 8          # a suite of task files

n = 1 decodes greedily; n > 1 samples n completions per problem at `temperature`. pass@j is the unbiased
estimate from n >= j samples (Chen et al. 2021: 1 - C(n-c, j) / C(n, j) with c correct, averaged over problems),
so pass@4 from 16 samples is the chance that 4 fresh samples hold a correct one, not "any of 16". avg@n is the
mean success over all n samples of every problem, as GLM's reports give AIME (avg@32): the same number as pass@1
estimated from n samples, named as reports name it.
"""
from __future__ import annotations

from collections import defaultdict
from math import comb

from slide.agent.episode import AgentSample, episode_stats
from slide.config import AgentSpec
from slide.engine.inprocess import SamplingParams
from slide.eval.chance import above_chance, decoy_correct, lucky
from slide.errors import UserError
from slide.model.tokenizer import stop_token_ids
from slide.rl.reward import RewardRunner, by_family
from slide.rl.rollout import Rollout
from slide.tasks.base import Problem


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def verifiers(specs) -> dict:
    """family name -> verify function for parsed task specs [(task, levels)]."""
    return {task.name: task.verify for task, _ in specs}


def evaluate(engine, tokenizer, problems: list[Problem], verify: dict, k: int = 1, temperature: float = 1.0,
             max_new_tokens: int = 96, thinking: bool = True, timeout_s: float = 5.0, generator=None,
             agent: AgentSpec = AgentSpec(), n: int | None = None, ks: tuple[int, ...] = (),
             chance: bool = False) -> dict:
    """{"k", "n", "ks", "summary": {"pass@1": .., "pass@j": .. per j in ks, "avg@n" (n > 1), "<family>/L<level>/pass@1":
    ..}, "rows": [per family/level]}. n samples per problem (default k), scored at pass@j for j in ks (default k).
    Agentic families run whole episodes (tools included) under `agent`'s limits; their summary adds the
    tool-call success rate. With `chance`, the summary adds chance_pass@1 (the same answers scored against other
    prompts' problems, slide/eval/chance.py), above_chance and its standard error, and lucky (1.0: mostly luck)."""
    n = n or k
    ks = tuple(sorted(set(ks or (k,)) | {1}))
    if ks[-1] > n:
        raise UserError(f"pass@{ks[-1]} needs at least {ks[-1]} samples per problem; got n = {n} (--n >= every --k)")
    params = SamplingParams(temperature=0.0 if n == 1 else temperature, max_new_tokens=max_new_tokens,
                            stop_token_ids=tuple(stop_token_ids(tokenizer)))
    reward = RewardRunner(by_family(verify), timeout_s)  # verifiers run in the call pool's processes
    groups = Rollout(engine, tokenizer, params, n, reward, thinking, agent).groups(problems, generator=generator)
    cells: dict[tuple[str, int], list[int]] = defaultdict(list)
    for problem, group in zip(problems, groups):
        cells[(problem.family, problem.level)].append(sum(s.reward >= 1.0 for s in group))
    rows, summary = score_cells(cells, n, ks)
    if chance and (c := above_chance([sum(s.reward >= 1.0 for s in g) for g in groups],
                                     decoy_correct(reward, tokenizer, problems, groups), n)):
        summary.update({"chance_pass@1": c[1], "above_chance": c[0] - c[1], "above_chance_se": c[2],
                        "lucky": float(lucky(*c))})
    samples = [s for g in groups for s in g]
    summary["response_len_mean"] = sum(len(s.response_ids) for s in samples) / max(1, len(samples))
    calls = [s for s in samples if isinstance(s, AgentSample)]
    if calls:
        summary["tool_call_success_rate"] = episode_stats([calls])["tool_call_success_rate"]
    counts = {k: v for k, v in reward.pop_stats().items() if not k.startswith("time/")}  # eval.jsonl: no timings
    return {"k": ks[-1], "n": n, "ks": list(ks), "summary": summary, "rows": rows, **counts}


def eval_metrics(summary: dict) -> dict:
    """A run's step metrics from an evaluation's summary: eval_pass@1, and where chance was scored,
    eval_chance_pass@1 and eval_lucky (1.0: the pass rate is mostly luck). Chance covers the single-turn prompts
    with a decoy (agentic families have none), so in a mixed suite it is not over the same prompts as pass@1."""
    return {f"eval_{k}": summary[k] for k in ("pass@1", "chance_pass@1", "lucky") if k in summary}


def score_cells(cells: dict[tuple[str, int], list[int]], n: int, ks: tuple[int, ...]) -> tuple[list[dict], dict]:
    """(rows, summary) from the correct counts of each problem (n samples each) per (family, level): pass@j per j
    in ks (1 included) per cell and over all problems, avg@n when n > 1; each problem weighs the same."""
    def scores(counts: list[int]) -> dict[str, float]:
        out = {f"pass@{j}": sum(pass_at_k(n, c, j) for c in counts) / max(1, len(counts)) for j in ks}
        return out | ({f"avg@{n}": sum(counts) / max(1, n * len(counts))} if n > 1 else {})
    rows, summary = [], {}
    for (family, level), counts in sorted(cells.items()):
        cell = scores(counts)
        rows.append({"family": family, "level": level, "prompts": len(counts), **cell})
        summary[f"{family}/L{level}/pass@1"] = cell["pass@1"]
    summary.update(scores([c for counts in cells.values() for c in counts]))
    return rows, summary
