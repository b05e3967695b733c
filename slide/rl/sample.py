"""One trajectory record: the exact token ids the engine sampled, a loss mask, a status."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from slide.algo.grpo import group_advantages
from slide.tasks.base import Problem


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    loss_mask: list[int]  # per response token: 1 = model-generated (trained), 0 = tool/environment
    behaviour_logprobs: list[float]  # the engine's logprob of each response token
    version: int  # policy version that sampled it
    problem: Problem
    group: int  # samples of one prompt share a group id
    reward: float = 0.0
    advantage: float = 0.0  # set from the group's rewards before training (slide.algo.grpo.group_advantages)
    status: str = "completed"  # completed | truncated | aborted | failed
    response_text: str = ""
    token_versions: list[int] = field(default_factory=list)  # per response token where turns span versions
    # algo.routing_replay: the engine's routed experts of prompt + response[:-1], [moe layers, positions, top_k]
    # uint8 (slide/model/routing.py); None = not recorded (the trainer routes such a sample itself)
    routes: torch.Tensor | None = None

    def versions(self) -> list[int]:
        """The policy version that sampled each response token (environment tokens: the turn before's)."""
        return self.token_versions or [self.version] * len(self.response_ids)

    def record(self, step: int) -> dict:
        """The JSON row persisted for every trajectory."""
        p = self.problem
        return {"step": step, "group": self.group, "version": self.version, "family": p.family, "level": p.level,
                "prompt": p.prompt, "answer": p.answer, "response": self.response_text, "reward": self.reward,
                "status": self.status, "response_len": len(self.response_ids)}


def set_advantages(groups: list[list[Sample]], scale_by_std: bool = True) -> None:
    """Each sample's advantage from its group's rewards (GRPO: reward minus the group mean, over the std). The
    value travels on the sample, to whichever process trains it."""
    if not groups:
        return
    adv = group_advantages(torch.tensor([[s.reward for s in g] for g in groups]), scale_by_std)
    for g, row in zip(groups, adv.tolist()):
        for s, a in zip(g, row):
            s.advantage = a
