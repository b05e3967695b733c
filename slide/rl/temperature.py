"""Dynamic sampling temperature (GLM-4.5 RL lesson 3).

    temperature: {dynamic: true, candidates: [0.0, 0.1, 0.2, 0.3], tolerance: 0.01}

When the training reward plateaus, the rollout temperature is re-picked: each candidate (the current
temperature plus an offset) is scored on held-out prompts (sampled pass@1), and training continues at
the highest temperature whose score is within `tolerance` of the best one: as much exploration as the
policy can afford without losing accuracy. The trainer's logprobs follow the new temperature, so the
importance ratio still compares like with like. Offsets may be negative: the temperature may go down too.

    temperature: {calibrate: true, calibrate_grid: [0.6, 0.8, 1.0, 1.2], recheck_every: 40}

Calibration instead scores each temperature of the grid by what GRPO needs from a group of n samples:
a reward signal (not all n rewards equal). For a prompt with pass rate p that happens with probability
1 - p^n - (1-p)^n; a temperature is worth the mean of that over training prompts (`expected_signal_share`).
It is measured before step 1 (the readiness check, slide/rl/readiness.py) and re-measured every
`recheck_every` steps and on a plateau, so the temperature follows the policy down as well as up.
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


def expected_signal_share(pass_rates: list[float], n: int) -> float:
    """Mean over prompts of the chance that n samples disagree: 1 - p^n - (1-p)^n for pass rate p."""
    return sum(1.0 - p ** n - (1.0 - p) ** n for p in pass_rates) / max(1, len(pass_rates))


def curve_scores(curves: dict[float, list[float]], n: int) -> dict[float, tuple[float, float]]:
    """temperature -> (expected signal share, mean pass rate) for per-prompt pass-rate curves."""
    return {t: (expected_signal_share(ps, n), sum(ps) / max(1, len(ps))) for t, ps in curves.items()}


def choose_temperature(scores: dict[float, tuple[float, float]], tolerance: float) -> float:
    """The temperature to sample at, from {temperature: (signal share, sampled pass@1)}: the most accurate among
    those whose share is within `tolerance` of the best share (ties: the lower temperature, closer to greedy)."""
    best = max(share for share, _ in scores.values())
    near = [(acc, -t) for t, (share, acc) in scores.items() if share >= best - tolerance]
    return -max(near)[1]


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

    def after_step(self, reward_mean: float | None, score, step: int = 0, signal=None) -> dict[str, float]:
        """score(t) -> held-out sampled pass@1 (dynamic); signal(t) -> (signal share, sampled pass@1) on training
        prompts (calibrate: called at every recheck_every-th step and on a plateau)."""
        out = {"temperature": self.value}
        c = self.cfg
        if not (c.dynamic or c.calibrate) or reward_mean is None:
            return out
        plateau = self.detector.update(reward_mean)
        if c.calibrate and (plateau or (c.recheck_every and step % c.recheck_every == 0)):
            return {**out, **self.calibrate(signal), "temperature/plateau": float(plateau)}
        if not plateau or not c.dynamic:
            return out
        temps = [round(self.value + d, 6) for d in c.candidates if self.value + d > 0]
        scores = {t: score(t) for t in temps}
        self.value = pick_temperature(scores, c.tolerance)
        out.update({"temperature": self.value, "temperature/plateau": 1.0,
                    **{f"temperature/score@{t:g}": s for t, s in scores.items()}})
        return out

    def calibrate(self, signal, measured: dict | None = None) -> dict[str, float]:
        """Re-pick the temperature from signal(t) at each grid temperature (or from `measured`, the same
        {t: (share, pass@1)} already taken); its metrics."""
        scores = measured or {t: signal(t) for t in self.cfg.calibrate_grid}
        if max(share for share, _ in scores.values()) > 0:  # no signal anywhere: nothing to choose by, keep it
            self.value = choose_temperature(scores, self.cfg.signal_tolerance)
        return {"temperature": self.value, "temperature/calibrated": 1.0,
                **{f"temperature/signal@{t:g}": s for t, (s, _) in scores.items()},
                **{f"temperature/pass@1@{t:g}": a for t, (_, a) in scores.items()}}

    def state_dict(self) -> dict:
        return {"value": self.value, "detector": self.detector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
        self.detector.load_state_dict(state["detector"])
