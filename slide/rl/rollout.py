"""Rollout: problems -> prompts -> n samples each from the engine -> rewarded `Sample` groups.

Single-turn families (arithmetic, countdown, code, datasets) are one engine call per batch; agentic
families (slide/agent/families.py) run multi-turn episodes with their environments. One `Rollout` holds
what both need, so the sync driver, the async workers and evaluation share it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slide.agent.episode import run_episodes
from slide.agent.families import env_factory, is_agentic
from slide.algo.sampling import DynamicSampler
from slide.config import AgentSpec
from slide.engine.inprocess import SamplingParams
from slide.model.tokenizer import chat_prompt
from slide.rl.reward import RewardRunner
from slide.rl.sample import Sample
from slide.tasks.base import Problem


def encode_prompt(tokenizer, problem: Problem, thinking: bool) -> list[int]:
    text = chat_prompt(tokenizer, [{"role": "user", "content": problem.prompt}], thinking=thinking)
    return tokenizer.encode(text, add_special_tokens=False)


@dataclass
class Rollout:
    engine: object  # generate(prompts, params, n, generator) -> completions; .version
    tokenizer: object
    params: SamplingParams
    n: int  # samples per prompt
    reward: RewardRunner  # single-turn verifier calls (agentic rewards come from the environments)
    thinking: bool
    agent: AgentSpec = AgentSpec()
    seed: int = 0  # seeds the environments' latency draws

    def __post_init__(self):
        self.envs = env_factory(self.agent, self.seed)

    def groups(self, problems: list[Problem], first_group: int = 0,
               generator: torch.Generator | None = None) -> list[list[Sample]]:
        """One group of n rewarded samples per problem, in order; group ids count up from first_group."""
        out: list[list[Sample] | None] = [None] * len(problems)
        single = [i for i, p in enumerate(problems) if not is_agentic(p)]
        multi = [i for i, p in enumerate(problems) if is_agentic(p)]
        if single:
            for i, g in zip(single, self._single_turn([problems[i] for i in single], generator)):
                out[i] = g
        if multi:
            a = self.agent
            episodes = run_episodes(self.engine, self.tokenizer, [problems[i] for i in multi], self.envs, self.params,
                                    self.n, a.max_turns, a.max_tokens, generator, thinking=self.thinking,
                                    step_timeout_s=a.step_timeout_s, reward_timeout_s=self.reward.timeout_s)
            for i, g in zip(multi, episodes):
                out[i] = g
        for i, g in enumerate(out):
            for s in g:
                s.group = first_group + i
        return out

    def _single_turn(self, problems: list[Problem], generator) -> list[list[Sample]]:
        tok = self.tokenizer
        prompts = [encode_prompt(tok, p, self.thinking) for p in problems]
        outputs = self.engine.generate(prompts, self.params, n=self.n, generator=generator)
        groups = []
        for problem, prompt, completions in zip(problems, prompts, outputs):
            group = []
            for c in completions:
                text = tok.decode(c.tokens, skip_special_tokens=False)
                s = Sample(prompt_ids=prompt, response_ids=c.tokens, loss_mask=[1] * len(c.tokens),
                           behaviour_logprobs=c.logprobs, version=c.version, problem=problem, group=0,
                           status="completed" if c.finish_reason == "stop" else "truncated", response_text=text)
                s.reward = self.reward(problem, text)
                group.append(s)
            groups.append(group)
        return groups


def sample_batch(rollout: Rollout, source, groups_per_step: int, dynamic: bool, max_rounds: int,
                 generator: torch.Generator | None = None):
    """Dynamic sampling: roll out until `groups_per_step` groups with a reward signal are held.

    Returns (batch: groups to train on, seen: every group sampled, stats: sampler counters). With
    dynamic=False every group is kept. After max_rounds the batch may be short (logged).
    """
    sampler = DynamicSampler(groups_per_step, keep_all=not dynamic)
    seen: list[list[Sample]] = []
    want = sampler.missing
    for _ in range(max_rounds):
        groups = rollout.groups(source.next(want), first_group=len(seen), generator=generator)
        seen += groups
        sampler.add(groups, torch.tensor([[s.reward for s in g] for g in groups]))
        if sampler.full:
            break
        # over-sample by the observed keep rate so that the next round likely fills the batch
        keep_rate = max(len(sampler) / len(seen), 1 / 4)
        want = min(4 * groups_per_step, math.ceil(sampler.missing / keep_rate))
    batch = sampler.take(allow_short=True)
    return batch, seen, sampler.stats()
