"""Difficulty curriculum: which training problems each step draws, from measured pass rates.

    curriculum: {mode: rlcs}                                  # online: re-weight toward mid difficulty
    curriculum: {mode: two-stage, stage2_step: 60}            # offline: moderate pool, then extreme pool

GLM-4.5 (RL lesson 1) trains on moderate problems first and then on extremely hard ones (pass@8 = 0
but pass@512 > 0, from verified pools only), so that groups keep a reward signal instead of going
all-0 or all-1. GLM-4.5V's RLCS re-weights sampling every step toward problems of mid difficulty,
judged by the current policy's pass rates. Both sources here replace `PromptSource` in the drivers
(`next(k)`, `observe(groups)`, `stats()`, `state_dict()`), and every choice is drawn from their own
seeded RNG, so a resumed run draws exactly what an uninterrupted one would.

Difficulty of a problem = its estimated pass rate under the current policy:
- online (rlcs): successes / trials from its own rollouts, shrunk toward the pass rate of its
  (family, level) so that a problem never tried starts from what its task level says;
- offline (two-stage): k samples per pool problem with the current weights before each stage.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import replace

from slide.config import CurriculumSpec
from slide.rl.data import PromptSource
from slide.tasks.base import Problem


def mid_difficulty_weights(pass_rates: list[float], target: float, width: float, floor: float = 1e-3) -> list[float]:
    """Sampling weight per problem: a Gaussian in estimated pass rate centred on `target` (plus a floor,
    so no problem is ever impossible to draw)."""
    return [floor + math.exp(-((p - target) ** 2) / (2 * width ** 2)) for p in pass_rates]


def weighted_sample(rng: random.Random, weights: list[float], k: int) -> list[int]:
    """k distinct indices drawn with probability proportional to weight (Efraimidis-Spirakis keys)."""
    keys = [rng.random() ** (1.0 / w) for w in weights]
    return sorted(range(len(weights)), key=lambda i: -keys[i])[:k]


class DifficultyTracker:
    """Pass-rate estimates per problem, shrunk toward the pass rate of the problem's (family, level)."""

    def __init__(self, prior_strength: float):
        self.strength = prior_strength
        self.problem: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # prompt -> [successes, trials]
        self.level: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0])

    def level_rate(self, family: str, level: int) -> float:
        s, n = self.level.get((family, level), (0.0, 0.0))
        return (s + 1.0) / (n + 2.0)  # Laplace: 0.5 before any evidence

    def estimate(self, p: Problem) -> float:
        s, n = self.problem.get(p.prompt, (0.0, 0.0))
        return (s + self.strength * self.level_rate(p.family, p.level)) / (n + self.strength)

    def observe(self, p: Problem, rewards: list[float]) -> None:
        wins = sum(r >= 1.0 for r in rewards)
        for cell in (self.problem[p.prompt], self.level[(p.family, p.level)]):
            cell[0] += wins
            cell[1] += len(rewards)

    def state_dict(self) -> dict:
        return {"problem": dict(self.problem), "level": dict(self.level)}

    def load_state_dict(self, state: dict) -> None:
        self.problem.clear(), self.level.clear()
        self.problem.update(state["problem"]), self.level.update(state["level"])


def level_stats(tracker: DifficultyTracker) -> dict[str, float]:
    return {f"curriculum/pass_rate/{f}/L{lv}": tracker.level_rate(f, lv) for f, lv in sorted(tracker.level)}


class RLCSSource:
    """Online curriculum: a pool of `pool` problems; each step draws k of them, weighted toward
    estimated pass rate `target`; a problem drawn `refresh_after` times makes room for a fresh one."""

    def __init__(self, base: PromptSource, cfg: CurriculumSpec):
        self.base, self.cfg = base, cfg
        self.rng = random.Random(base.rng.random())
        self.tracker = DifficultyTracker(cfg.prior_strength)
        self.pool: list[Problem] = base.next(cfg.pool)
        self.draws = [0] * len(self.pool)
        self._last: list[float] = []

    def next(self, k: int) -> list[Problem]:
        est = [self.tracker.estimate(p) for p in self.pool]
        picked = weighted_sample(self.rng, mid_difficulty_weights(est, self.cfg.target, self.cfg.width), k)
        out = [self.pool[i] for i in picked]
        self._last += [est[i] for i in picked]
        for i in picked:
            self.draws[i] += 1
            if self.draws[i] >= self.cfg.refresh_after:
                self.pool[i], self.draws[i] = self.base.next(1)[0], 0
        return out

    def start_stage(self, step: int, measure) -> None:
        return None  # online: no stages

    def observe(self, groups) -> None:
        for g in groups:
            self.tracker.observe(g[0].problem, [s.reward for s in g])

    def stats(self) -> dict[str, float]:
        est = [self.tracker.estimate(p) for p in self.pool]
        drawn, self._last = self._last, []
        return {"curriculum/drawn_est_mean": sum(drawn) / max(1, len(drawn)),
                "curriculum/pool_est_mean": sum(est) / len(est),
                "curriculum/pool_mid_frac": sum(0.2 <= e <= 0.8 for e in est) / len(est),
                **level_stats(self.tracker)}

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "rng": self.rng.getstate(), "pool": self.pool,
                "draws": self.draws, "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state["base"])
        self.rng.setstate(state["rng"])
        self.pool, self.draws = state["pool"], state["draws"]
        self.tracker.load_state_dict(state["tracker"])


def split_by_difficulty(small: list[int], large: list[int], k_small: int, k_large: int,
                        moderate: tuple[float, float]) -> tuple[list[int], list[int]]:
    """Indices of the moderate problems (pass rate at k_small inside `moderate`) and of the extreme ones
    (0 of k_small correct, but some of k_large: pass@small = 0 < pass@large). `large[i]` counts successes
    among k_large samples that include the k_small ones."""
    lo, hi = moderate
    mid = [i for i, c in enumerate(small) if lo <= c / k_small <= hi]
    extreme = [i for i, (c, c_large) in enumerate(zip(small, large)) if c == 0 and c_large > 0]
    return mid, extreme


class TwoStageSource:
    """Offline two-stage curriculum. Before stage 1 (step 1) and before stage 2 (`stage2_step`) it draws
    `pool` problems and measures them with the current policy (`measure(problems, k) -> successes`):
    stage 1 keeps the moderate ones, stage 2 the extreme ones; each step draws uniformly from the stage's
    pool. A stage whose pool comes out empty trains on the whole measured pool (logged as pool_kept 0)."""

    def __init__(self, base: PromptSource, cfg: CurriculumSpec):
        self.base, self.cfg = base, cfg
        self.rng = random.Random(base.rng.random())
        self.stage, self.pool, self.kept = 0, [], 0

    def start_stage(self, step: int, measure) -> dict[str, float] | None:
        """Measure and build the pool if `step` begins a stage not prepared yet; returns its stats."""
        stage = 2 if step >= self.cfg.stage2_step else 1
        if stage == self.stage:
            return None
        c = self.cfg
        candidates = self.base.next(c.pool)
        small = measure(candidates, c.k_small)
        large = list(small)
        if stage == 2:  # only the problems nothing solved at k_small need the expensive measurement
            zeros = [i for i, s in enumerate(small) if s == 0]
            for i, extra in zip(zeros, measure([candidates[i] for i in zeros], c.k_large - c.k_small)):
                large[i] += extra
        mid, extreme = split_by_difficulty(small, large, c.k_small, c.k_large, c.moderate)
        chosen = mid if stage == 1 else extreme
        self.stage, self.kept = stage, len(chosen)
        self.pool = [candidates[i] for i in chosen] or candidates
        return {"curriculum/stage": stage, "curriculum/pool_measured": len(candidates),
                "curriculum/pool_kept": len(chosen), "curriculum/pool_moderate": len(mid),
                "curriculum/pool_extreme": len(extreme),
                "curriculum/pool_unsolved": sum(s == 0 for s in large),
                "curriculum/pool_solved_all": sum(s == c.k_small for s in small)}

    def next(self, k: int) -> list[Problem]:
        return [self.pool[self.rng.randrange(len(self.pool))] for _ in range(k)]

    def observe(self, groups) -> None:
        pass

    def stats(self) -> dict[str, float]:
        return {"curriculum/stage": self.stage, "curriculum/pool_size": len(self.pool)}

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "rng": self.rng.getstate(), "stage": self.stage,
                "pool": self.pool, "kept": self.kept}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state["base"])
        self.rng.setstate(state["rng"])
        self.stage, self.pool, self.kept = state["stage"], state["pool"], state["kept"]


def successes(rollout, problems: list[Problem], k: int, generator) -> list[int]:
    """Correct samples out of k per problem with the rollout engine's current weights and sampling."""
    groups = replace(rollout, n=k).groups(problems, generator=generator)
    return [sum(s.reward >= 1.0 for s in g) for g in groups]


def auto_mode(share: float, thin_share: float, levels: bool, moderate_prompts: int) -> str | None:
    """curriculum.auto: the curriculum to switch on for a run whose readiness check measured `share` of groups
    with a reward signal. None while the signal is not thin; else rlcs, the online moderate-difficulty source,
    when it has something to steer by: levels (their pass rates weigh the draws from the first steps) or
    measured prompts that are moderate (0 < correct < n: per-problem pass rates will find more of them); else
    None (nothing to select from: the remedy is more SFT or another temperature). rlcs rather than two-stage:
    it measures nothing up front (two-stage samples k_small per pool problem before training) and keeps
    refreshing its pool, where two-stage's stage 1 trains on one measured pool for the whole stage."""
    if share >= thin_share or not (levels or moderate_prompts > 0):
        return None
    return "rlcs"


def make_source(cfg: CurriculumSpec, base: PromptSource):
    """The prompt source a run trains from: `base` itself (mode none), or a curriculum over it."""
    return {"none": lambda: base, "rlcs": lambda: RLCSSource(base, cfg),
            "two-stage": lambda: TwoStageSource(base, cfg)}[cfg.mode]()
