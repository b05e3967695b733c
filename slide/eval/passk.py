"""pass@k evaluation per task family and level.

    slide eval --model runs/demo/final --data arithmetic:2,countdown:1 --k 8

k = 1 decodes greedily; k > 1 samples k completions at `temperature` and reports the mean success
rate (pass@1) and the unbiased pass@k estimate (with n = k samples: any one correct).
"""
from __future__ import annotations

from collections import defaultdict
from math import comb

from slide.agent.episode import AgentSample, episode_stats
from slide.config import AgentSpec
from slide.engine.inprocess import SamplingParams
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
             agent: AgentSpec = AgentSpec()) -> dict:
    """{"summary": {"pass@1": .., "pass@k": .., "<family>/L<level>/pass@1": ..}, "rows": [per family/level]}.
    Agentic families run whole episodes (tools included) under `agent`'s limits; their summary adds the
    tool-call success rate."""
    params = SamplingParams(temperature=0.0 if k == 1 else temperature, max_new_tokens=max_new_tokens,
                            stop_token_ids=tuple(stop_token_ids(tokenizer)))
    reward = RewardRunner(by_family(verify), timeout_s)  # verifiers run in the call pool's processes
    groups = Rollout(engine, tokenizer, params, k, reward, thinking, agent).groups(problems, generator=generator)
    cells: dict[tuple[str, int], list] = defaultdict(list)
    for problem, group in zip(problems, groups):
        correct = sum(s.reward >= 1.0 for s in group)
        cells[(problem.family, problem.level)].append((correct / k, pass_at_k(k, correct, k)))
    samples = [s for g in groups for s in g]
    rows, summary = [], {}
    for (family, level), vals in sorted(cells.items()):
        p1 = sum(v[0] for v in vals) / len(vals)
        pk = sum(v[1] for v in vals) / len(vals)
        rows.append({"family": family, "level": level, "prompts": len(vals), "pass@1": p1, f"pass@{k}": pk})
        summary[f"{family}/L{level}/pass@1"] = p1
    everything = [v for vals in cells.values() for v in vals]
    summary["pass@1"] = sum(v[0] for v in everything) / max(1, len(everything))
    summary[f"pass@{k}"] = sum(v[1] for v in everything) / max(1, len(everything))
    summary["response_len_mean"] = sum(len(s.response_ids) for s in samples) / max(1, len(samples))
    calls = [s for s in samples if isinstance(s, AgentSample)]
    if calls:
        summary["tool_call_success_rate"] = episode_stats([calls])["tool_call_success_rate"]
    counts = {k: v for k, v in reward.pop_stats().items() if not k.startswith("time/")}  # eval.jsonl: no timings
    return {"k": k, "summary": summary, "rows": rows, **counts}
