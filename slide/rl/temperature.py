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
`recheck_every` steps (0: on reward plateaus), so the temperature follows the policy down as well as up. It
moves only on a difference larger than the measurement's noise (`choose_temperature`).
"""
from __future__ import annotations

import math
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


def paired_se(a: tuple, b: tuple) -> float:
    """Standard error of the difference of two signal shares measured on the same prompts (their third items:
    1/0 per prompt, a group with or without a signal); 0 when either lacks them."""
    if len(a) < 3 or len(b) < 3 or len(a[2]) != len(b[2]) or len(a[2]) < 2:
        return 0.0
    d = [x - y for x, y in zip(a[2], b[2])]
    mean = sum(d) / len(d)
    return math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))


def choose_temperature(scores: dict[float, tuple], tolerance: float, current: float | None = None,
                       z: float = 2.0) -> float:
    """The temperature to sample at, from {temperature: (signal share, sampled pass@1[, per-prompt signal])}.

    A temperature ties with the best one when its share is within `tolerance` of it, or within `z` standard errors
    of their difference on the same prompts (a share measured on 32 prompts is +-9 points at 50%: without this the
    choice follows sampling noise from one re-check to the next). Among ties the current temperature stays;
    otherwise the most accurate (sampled pass@1) is taken, the lower temperature on a tie."""
    top = max(scores, key=lambda t: (scores[t][0], -t))
    best = scores[top][0]
    near = [t for t, v in scores.items() if v[0] >= best - max(tolerance, z * paired_se(v, scores[top]))]
    if current in near:
        return current
    return max(near, key=lambda t: (scores[t][1], -t))


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
        """score(t) -> held-out sampled pass@1 (dynamic); signal(t) -> (signal share, sampled pass@1, signal per
        prompt) on training prompts (calibrate: called every recheck_every-th step, or on a plateau if that is 0)."""
        out = {"temperature": self.value}
        c = self.cfg
        if not (c.dynamic or c.calibrate) or reward_mean is None:
            return out
        plateau = self.detector.update(reward_mean)
        if c.calibrate and (step % c.recheck_every == 0 if c.recheck_every else plateau):
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
        {t: (share, pass@1, per-prompt signal)} already taken); it moves only when another is clearly better
        (choose_temperature). Its metrics."""
        scores = measured or {t: signal(t) for t in self.cfg.calibrate_grid}
        if max(v[0] for v in scores.values()) > 0:  # no signal anywhere: nothing to choose by, keep it
            self.value = choose_temperature(scores, self.cfg.signal_tolerance, current=self.value)
        return {"temperature": self.value, "temperature/calibrated": 1.0,
                **{f"temperature/signal@{t:g}": v[0] for t, v in scores.items()},
                **{f"temperature/pass@1@{t:g}": v[1] for t, v in scores.items()}}

    def state_dict(self) -> dict:
        return {"value": self.value, "detector": self.detector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
        self.detector.load_state_dict(state["detector"])
