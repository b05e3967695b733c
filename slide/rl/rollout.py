"""Rollout: problems -> prompts -> n samples each from the engine -> rewarded `Sample` groups.

Single-turn families (arithmetic, countdown, code, datasets) are one engine call per batch; agentic
families (slide/agent/families.py) run multi-turn episodes with their environments. One `Rollout` holds
what both need, so the sync driver, the async workers and evaluation share it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from slide.agent.episode import run_episodes
from slide.agent.families import env_factory, is_agentic
from slide.algo.sampling import DynamicSampler
from slide.config import AgentSpec
from slide.config import RolloutSpec
from slide.engine.inprocess import Completion, SamplingParams
from slide.model.chat import chat_format
from slide.model.routing import extend_routes
from slide.model.tokenizer import chat_prompt
from slide.rl.reward import RewardRunner
from slide.rl.sample import Sample
from slide.tasks.base import Problem


def encode_prompt(tokenizer, problem: Problem, thinking: bool) -> list[int]:
    text = chat_prompt(tokenizer, [{"role": "user", "content": problem.prompt}], thinking=thinking)
    return tokenizer.encode(text, add_special_tokens=False)


FORCE_ANSWER = "</think>\n"  # inserted where a thinking response hit the length limit (force_answer)


def length_limit(spec: RolloutSpec, step: int) -> int:
    """max_new_tokens for training rollouts at `step` under the output-length schedule (length_stages)."""
    limit = spec.max_new_tokens  # single stage (no schedule); a schedule's first stage starts at step 1
    for from_step, tokens in spec.length_stages:
        if step >= from_step:
            limit = tokens
    return limit


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
    force_answer_tokens: int = 0  # > 0: thinking responses cut at the limit get `</think>` and this many more tokens
    concurrent_episodes: bool = False  # agent episodes each on their own thread (give it a BatchingEngine)

    def __post_init__(self):
        self.envs = env_factory(self.agent, self.seed, self.reward.pool, self.reward.timeout_s)

    def groups(self, problems: list[Problem], first_group: int = 0, generator: torch.Generator | None = None,
               before_turn=None) -> list[list[Sample]]:
        """One group of n rewarded samples per problem, in order; group ids count up from first_group.
        before_turn: run before each agent turn's engine call (see run_episodes)."""
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
                                    step_timeout_s=a.step_timeout_s, reward_timeout_s=self.reward.timeout_s,
                                    concurrent=self.concurrent_episodes, before_turn=before_turn)
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
        masks = [[[1] * len(c.tokens) for c in cs] for cs in outputs]
        forced = set()
        if self.force_answer_tokens and self.thinking:
            forced = self._force_answers(prompts, outputs, masks, generator)
        groups = []
        for i, (problem, prompt, completions) in enumerate(zip(problems, prompts, outputs)):
            group = []
            for j, c in enumerate(completions):
                text = tok.decode(c.tokens, skip_special_tokens=False)
                status = "forced" if (i, j) in forced else "completed" if c.finish_reason == "stop" else "truncated"
                group.append(Sample(prompt_ids=prompt, response_ids=c.tokens, loss_mask=masks[i][j],
                                    behaviour_logprobs=c.logprobs, version=c.version, problem=problem, group=0,
                                    status=status, response_text=text, routes=c.routes))
            groups.append(group)
        # one message per group to the reward workers (a verifier that hangs is killed there, never here); each
        # response scored without its stop token (the template's end token is no part of the answer)
        cut = chat_format(tok).cut
        rewards = self.reward.score([(g[0].problem, [cut(s.response_text) for s in g]) for g in groups])
        for group, values in zip(groups, rewards):
            for s, r in zip(group, values):
                s.reward = r
        return groups

    def _force_answers(self, prompts, outputs, masks, generator) -> set[tuple[int, int]]:
        """Where a completion hit the length limit still thinking, append `</think>\\n` (loss mask 0: the model
        did not sample it) and let the model answer in force_answer_tokens more. Edits outputs and masks in
        place; returns the (prompt, sample) positions it forced."""
        close = self.tokenizer.encode(FORCE_ANSWER, add_special_tokens=False)
        cut = [(i, j) for i, cs in enumerate(outputs) for j, c in enumerate(cs)
               if c.finish_reason == "length" and close[0] not in c.tokens]
        if not cut:
            return set()
        tails = self.engine.generate([prompts[i] + outputs[i][j].tokens + close for i, j in cut],
                                     replace(self.params, max_new_tokens=self.force_answer_tokens), n=1,
                                     generator=generator)
        for (i, j), [tail] in zip(cut, tails):
            c = outputs[i][j]
            tokens = c.tokens + close + tail.tokens
            routes = extend_routes(c.routes, tail.routes, len(prompts[i]) + len(tokens) - 1)  # c's own kept
            outputs[i][j] = Completion(tokens, c.logprobs + [0.0] * len(close) + tail.logprobs,
                                       tail.finish_reason, c.version, routes)
            masks[i][j] = masks[i][j] + [0] * len(close) + [1] * len(tail.tokens)
        return set(cut)


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
        source.observe(groups)
        sampler.add(groups, torch.tensor([[s.reward for s in g] for g in groups]))
        if sampler.full:
            break
        # over-sample by the observed keep rate so that the next round likely fills the batch
        keep_rate = max(len(sampler) / len(seen), 1 / 4)
        want = min(4 * groups_per_step, math.ceil(sampler.missing / keep_rate))
    batch = sampler.take(allow_short=True)
    return batch, seen, sampler.stats()
