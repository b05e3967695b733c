"""The verifiable-task contract: a family generates problems at a difficulty level and verifies responses.

A `Problem` carries everything a rollout, an SFT example and a verifier need. A `Task` is any object
with the attributes and methods of the Protocol below (no registration, no base class).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Problem:
    prompt: str  # the user turn's text, without chat-template tokens
    answer: str  # the reference final answer (for countdown: the target, any valid expression wins)
    family: str  # task family name, e.g. "arithmetic", "countdown", or a dataset's name
    level: int  # difficulty level, 1 = easiest
    reasoning: str = ""  # a short reasoning trace for cold-start SFT (goes inside <think>...</think>)
    solution: str = ""  # the final answer text the SFT target ends with (after </think>)
    meta: dict = field(default_factory=dict)  # family-specific data the verifier needs (JSON-serialisable)

    @property
    def key(self) -> tuple[str, str]:
        """What makes two problems the same one (held-out splits, distinct samples): the question and its answer.
        The text alone is not enough where an environment holds the facts: lookup's "What costs fig in total?"
        has a new price in every episode (keyed by text, its 12 one-item questions were all held out and
        training never saw level 1)."""
        return self.prompt, self.answer


class Task(Protocol):
    name: str
    levels: tuple[int, ...]  # the levels this family can generate

    def generate(self, rng: random.Random, level: int) -> Problem:
        """A fresh problem at `level`, drawn only from `rng` (same rng state -> same problem)."""

    def verify(self, problem: Problem, response: str) -> float:
        """Reward in [0, 1] for the model's full response text (reasoning included). Never raises on any string."""
