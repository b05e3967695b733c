"""Chance: how often a prompt's answers are right for another prompt's problem.

    pairs = decoys(problems)                         # problem i -> another of its family and level (or None)
    hits = decoy_correct(reward, tok, problems, groups)   # per problem: its samples right for the decoy (-1: none)
    own, luck, se = above_chance(correct, hits, n)   # pass@1 against the own and the decoy problems, and the noise
    lucky(own, luck, se)                             # True: the right answers are mostly luck

Where answers come from a small set (a count, a digit), a model that ignores the prompt is right by luck as
often as its guess matches: the counting family's cold start answered 21% of held-out prompts greedily and
exactly 21% of other prompts' problems. Scoring every prompt's answers against a decoy (a fixed derangement
within a family and level) measures that rate with the run's own verifiers and no knowledge of the task.
Answers that read the prompt score less against the decoy; answers that ignore it score the same. Agentic
problems are left out: an episode's reward comes from its environment, not from its text alone.
"""
from __future__ import annotations

import math
from collections import defaultdict

from slide.agent.families import is_agentic
from slide.model.chat import chat_format
from slide.rl.reward import RewardRunner
from slide.tasks.base import Problem


def decoys(problems: list[Problem]) -> list[int | None]:
    """For each problem, the index of another single-turn problem of the same family and level (the next of that
    bucket, cyclically: a fixed derangement); None where there is none."""
    buckets = defaultdict(list)
    for i, p in enumerate(problems):
        if not is_agentic(p):
            buckets[(p.family, p.level)].append(i)
    out: list[int | None] = [None] * len(problems)
    for members in buckets.values():
        if len(members) > 1:
            for i, j in zip(members, members[1:] + members[:1]):
                out[i] = j
    return out


def decoy_correct(reward, tok, problems: list[Problem], groups: list[list]) -> list[int]:
    """Per problem: how many of its group's samples the decoy problem's verifier calls right (-1: no decoy).
    `reward` is the RewardRunner that scored the groups: the decoy verdicts run on its functions and pool (a call
    per sample) but are not counted in its stats (a decoy that makes a verifier raise is not the answer's error)."""
    pairs = [(i, j) for i, j in enumerate(decoys(problems)) if j is not None]
    cut = chat_format(tok).cut
    decoy_reward = RewardRunner(reward.fn, reward.timeout_s, pool=reward.pool)
    decoy_reward.in_process = reward.in_process  # a function that cannot be pickled was warned about once
    scored = decoy_reward.score([(problems[j], [cut(s.response_text) for s in groups[i]]) for i, j in pairs])
    hits = [-1] * len(problems)
    for (i, _), rewards in zip(pairs, scored):
        hits[i] = sum(r >= 1.0 for r in rewards)
    return hits


def above_chance(correct: list[int], hits: list[int], n: int) -> tuple[float, float, float] | None:
    """(pass@1 on the prompts with a decoy, pass@1 of the same samples against their decoys, standard error of the
    per-prompt difference), or None when no prompt has a decoy. The difference is what the answers know about
    their own prompt."""
    pairs = [(c / n, d / n) for c, d in zip(correct, hits) if d >= 0]
    if not pairs:
        return None
    diff = [a - b for a, b in pairs]
    mean = sum(diff) / len(diff)
    se = math.sqrt(sum((x - mean) ** 2 for x in diff) / (len(diff) - 1) / len(diff)) if len(diff) > 1 else 0.0
    return sum(a for a, _ in pairs) / len(pairs), sum(b for _, b in pairs) / len(pairs), se


def lucky(own: float, luck: float, se: float, z: float = 2.0) -> bool:
    """True when the answers are right against other prompts' problems at least half as often as against their
    own, and not `z` standard errors less: their right answers are mostly luck."""
    return own > 0 and luck >= own / 2 and own - luck <= z * se


def chance_line(d: dict, what: str = "pass@1", of: str = "answers") -> str:
    """The one line a report prints from chance_pass@1, above_chance and above_chance_se (and lucky, if given)."""
    flag = "  [lucky: mostly guesses]" if d.get("lucky") else ""
    return (f"chance (the {of} scored against other prompts' problems): {d['chance_pass@1']:.3f}; {what} above it: "
            f"{d['above_chance']:+.3f} +- {d['above_chance_se']:.3f}{flag}")
