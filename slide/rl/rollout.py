"""Rollout: problems -> prompts -> n samples each from the engine -> rewarded `Sample` groups."""
from __future__ import annotations

import torch

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
