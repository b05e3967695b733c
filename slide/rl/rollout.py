"""Rollout: problems -> prompts -> n samples each from the engine -> rewarded `Sample` groups."""
from __future__ import annotations

import math

import torch

from slide.algo.sampling import DynamicSampler
from slide.engine.inprocess import SamplingParams
from slide.model.tokenizer import chat_prompt
from slide.rl.reward import RewardRunner
from slide.rl.sample import Sample
from slide.tasks.base import Problem


def encode_prompt(tokenizer, problem: Problem, thinking: bool) -> list[int]:
    text = chat_prompt(tokenizer, [{"role": "user", "content": problem.prompt}], thinking=thinking)
    return tokenizer.encode(text, add_special_tokens=False)


def rollout_groups(engine, tokenizer, problems: list[Problem], params: SamplingParams, n: int,
                   reward: RewardRunner, thinking: bool, first_group: int = 0,
                   generator: torch.Generator | None = None) -> list[list[Sample]]:
    """One group of n rewarded samples per problem; group ids count up from first_group."""
    prompts = [encode_prompt(tokenizer, p, thinking) for p in problems]
    outputs = engine.generate(prompts, params, n=n, generator=generator)
    groups = []
    for g, (problem, prompt, completions) in enumerate(zip(problems, prompts, outputs)):
        group = []
        for c in completions:
            text = tokenizer.decode(c.tokens, skip_special_tokens=False)
            s = Sample(prompt_ids=prompt, response_ids=c.tokens, loss_mask=[1] * len(c.tokens),
                       behaviour_logprobs=c.logprobs, version=c.version, problem=problem, group=first_group + g,
                       status="completed" if c.finish_reason == "stop" else "truncated", response_text=text)
            s.reward = reward(problem, text)
            group.append(s)
        groups.append(group)
    return groups


def sample_batch(engine, tokenizer, source, params: SamplingParams, n: int, groups_per_step: int,
                 reward: RewardRunner, thinking: bool, dynamic: bool, max_rounds: int,
                 generator: torch.Generator | None = None):
    """Dynamic sampling: roll out until `groups_per_step` groups with a reward signal are held.

    Returns (batch: groups to train on, seen: every group sampled, stats: sampler counters). With
    dynamic=False every group is kept. After max_rounds the batch may be short (logged).
    """
    sampler = DynamicSampler(groups_per_step, keep_all=not dynamic)
    seen: list[list[Sample]] = []
    want = sampler.missing
    for _ in range(max_rounds):
        groups = rollout_groups(engine, tokenizer, source.next(want), params, n, reward, thinking,
                                first_group=len(seen), generator=generator)
        seen += groups
        sampler.add(groups, torch.tensor([[s.reward for s in g] for g in groups]))
        if sampler.full:
            break
        # over-sample by the observed keep rate so that the next round likely fills the batch
        keep_rate = max(len(sampler) / len(seen), 1 / 4)
        want = min(4 * groups_per_step, math.ceil(sampler.missing / keep_rate))
    batch = sampler.take(allow_short=True)
    return batch, seen, sampler.stats()
