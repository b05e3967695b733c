"""Dynamic sampling: keep only groups whose rewards differ, since a constant group has zero advantage.

The rollout loop over-samples in rounds and feeds each round to a `DynamicSampler` until it is full.
Groups are opaque objects here; only their [G, n] reward tensor is inspected.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

TOL = 1e-9  # rewards closer than this count as equal

DROP_REASONS = ("all_correct", "all_wrong", "all_equal", "surplus")


def informative(rewards: Tensor) -> Tensor:
    """[G, n] rewards -> [G] bool, True where a group's rewards are not all equal (within 1e-9)."""
    rewards = rewards.double()  # [G, n]
    spread = rewards.max(dim=-1).values - rewards.min(dim=-1).values  # [G]
    return spread > TOL  # [G]


def _drop_reason(group_rewards: Tensor) -> str:
    """Why an uninformative group is dropped: all 1.0 -> all_correct, all 0.0 -> all_wrong, else all_equal."""
    value = float(group_rewards[0])
    if abs(value - 1.0) <= TOL:
        return "all_correct"
    if abs(value) <= TOL:
        return "all_wrong"
    return "all_equal"


class DynamicSampler:
    """Accumulates informative groups over over-sampling rounds until `target` groups are held.

    With keep_all=True (dynamic sampling off) every group is kept. `take()` returns exactly `target`
    groups, oldest first, and discards the rest (counted as "surplus") so that the next batch is
    sampled fresh from the current policy. Counters cover the batch being built; after `take()` they
    still describe the batch just taken, and the next `add()` starts new ones.
    """

    def __init__(self, target: int, keep_all: bool = False) -> None:
        if target < 1:
            raise ValueError(f"target must be >= 1, got {target}")
        self.target = target
        self.keep_all = keep_all
        self._groups: list[Any] = []
        self._taken = False
        self._reset_stats()

    def _reset_stats(self) -> None:
        self._rounds = 0
        self._seen = 0
        self._kept = 0
        self._dropped = {reason: 0 for reason in DROP_REASONS}

    def add(self, groups: list, rewards: Tensor) -> None:
        """Offer one round of groups with their rewards [G, n]; keeps the informative ones (all if keep_all)."""
        if rewards.dim() != 2 or rewards.shape[0] != len(groups):
            raise ValueError(f"rewards must be [G, n] with G={len(groups)} groups, got shape {tuple(rewards.shape)}")
        if self._taken:  # first add after a take(): a new batch starts
            self._reset_stats()
            self._taken = False
        self._rounds += 1
        self._seen += len(groups)
        keep = torch.ones(len(groups), dtype=torch.bool) if self.keep_all else informative(rewards)  # [G]
        for group, group_rewards, ok in zip(groups, rewards, keep.tolist()):
            if ok:
                self._groups.append(group)
                self._kept += 1
            else:
                self._dropped[_drop_reason(group_rewards)] += 1

    @property
    def full(self) -> bool:
        """True once at least `target` groups are held."""
        return len(self._groups) >= self.target

    @property
    def missing(self) -> int:
        """How many more groups are needed to be full (0 when full)."""
        return max(0, self.target - len(self._groups))

    def __len__(self) -> int:
        return len(self._groups)

    def take(self, allow_short: bool = False) -> list:
        """Exactly `target` groups, oldest first; the surplus is discarded. Raises if not full, unless
        allow_short (the caller ran out of over-sampling rounds and trains on what it has)."""
        if not self.full and not allow_short:
            raise RuntimeError(f"DynamicSampler holds {len(self._groups)} groups, needs {self.target}")
        batch, surplus = self._groups[: self.target], self._groups[self.target :]
        self._dropped["surplus"] += len(surplus)
        self._groups = []
        self._taken = True
        return batch

    def stats(self) -> dict[str, int]:
        """Flat counters for logging: rounds, seen, kept (accepted, surplus included), dropped_<reason>."""
        out = {"rounds": self._rounds, "seen": self._seen, "kept": self._kept}
        out.update({f"dropped_{reason}": n for reason, n in self._dropped.items()})
        return out
