"""What both drivers log per step: rollout statistics of the sampled trajectories, and phase timers."""
from __future__ import annotations

import time
from contextlib import contextmanager

from slide.agent.episode import AgentSample, episode_stats
from slide.rl.sample import Sample


class Timer(dict):
    """timer("train") as a context adds the seconds spent to self["time/train_s"]."""

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self[f"time/{phase}_s"] = self.get(f"time/{phase}_s", 0.0) + time.perf_counter() - t0


def step_metrics(samples: list[Sample]) -> dict[str, float]:
    """reward_mean, pass_rate, response_len_mean, truncated_frac; plus agent/* episode statistics (tool-call
    success rate, turns, end reasons) when some samples are multi-turn episodes."""
    if not samples:
        return {}
    n = len(samples)
    out = {
        "reward_mean": sum(s.reward for s in samples) / n,
        "pass_rate": sum(s.reward >= 1.0 for s in samples) / n,
        "response_len_mean": sum(len(s.response_ids) for s in samples) / n,
        "truncated_frac": sum(s.status in ("truncated", "forced") for s in samples) / n,  # hit the length limit
        "forced_frac": sum(s.status == "forced" for s in samples) / n,  # ... and were forced to answer
        "level_mean": sum(s.problem.level for s in samples) / n,  # difficulty drawn (task level)
    }
    episodes = [s for s in samples if isinstance(s, AgentSample)]
    if episodes:
        out.update({f"agent/{k}": v for k, v in episode_stats([episodes]).items()})
    return out
