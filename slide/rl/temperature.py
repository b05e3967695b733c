"""Dynamic sampling temperature (GLM-4.5 RL lesson 3).

    temperature: {dynamic: true, candidates: [0.0, 0.1, 0.2, 0.3], tolerance: 0.01}

When the training reward plateaus, the rollout temperature is re-picked: each candidate (the current
temperature plus an offset) is scored on held-out prompts (sampled pass@1), and training continues at
the highest temperature whose score is within `tolerance` of the best one: as much exploration as the
policy can afford without losing accuracy. The trainer's logprobs follow the new temperature, so the
importance ratio still compares like with like.
"""
from __future__ import annotations

from collections import deque

from slide.config import TemperatureSpec


class PlateauDetector:
    """True when the mean of the last `window` values improves on the mean of the `window` before it by
    less than `min_delta`. After a plateau it needs two fresh windows before it can fire again."""

    def __init__(self, window: int, min_delta: float):
        self.window, self.min_delta = window, min_delta
        self.values: deque[float] = deque(maxlen=2 * window)

    def update(self, value: float) -> bool:
        self.values.append(value)
        if len(self.values) < 2 * self.window:
            return False
        old = list(self.values)[: self.window]
        new = list(self.values)[self.window:]
        if sum(new) / self.window - sum(old) / self.window < self.min_delta:
            self.values.clear()
            return True
        return False

    def state_dict(self) -> dict:
        return {"values": list(self.values)}

    def load_state_dict(self, state: dict) -> None:
        self.values.clear()
        self.values.extend(state["values"])


def pick_temperature(scores: dict[float, float], tolerance: float) -> float:
    """The highest temperature whose score is at least best - tolerance."""
    best = max(scores.values())
    return max(t for t, s in scores.items() if s >= best - tolerance)


class DynamicTemperature:
    """The rollout temperature of a run; `after_step` checks for a plateau and re-picks it.

    `score(temperature) -> held-out sampled pass@1` is called once per candidate when a plateau fires.
    """

    def __init__(self, cfg: TemperatureSpec, initial: float):
        self.cfg, self.value = cfg, initial
        self.detector = PlateauDetector(cfg.window, cfg.min_delta)

    def after_step(self, reward_mean: float | None, score) -> dict[str, float]:
        out = {"temperature": self.value}
        if not self.cfg.dynamic or reward_mean is None or not self.detector.update(reward_mean):
            return out
        scores = {round(self.value + d, 6): score(round(self.value + d, 6)) for d in self.cfg.candidates}
        self.value = pick_temperature(scores, self.cfg.tolerance)
        out.update({"temperature": self.value, "temperature/plateau": 1.0,
                    **{f"temperature/score@{t:g}": s for t, s in scores.items()}})
        return out

    def state_dict(self) -> dict:
        return {"value": self.value, "detector": self.detector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
        self.detector.load_state_dict(state["detector"])
