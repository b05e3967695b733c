"""Rewards that never stall or kill a run: an exception, a NaN or a timeout scores 0 and is counted.

A reward function is any callable `(problem, response_text) -> float`. Every call runs in the call pool's
worker processes (slide/callpool.py), one message per group of samples: a call that overruns `timeout_s` is
killed with its worker, which is replaced, and the rest of its group is scored on the replacement. A thread
cannot do this: sympy computing 11^889789789 holds the GIL, and the thread waiting for it never wakes.
Answers that would expand enormously are refused before sympy sees them (slide/tasks/guard.py) and counted
by reason. Code rewards run their tests in the bwrap sandbox inside the worker, as before.

    reward = RewardRunner(verify, timeout_s=5.0)
    reward.score([(problem, ["42", "11^889789789"])])   # [[1.0, 0.0]]
    reward.pop_stats()   # {"reward_errors": 0, "reward_timeouts": 0, "reward_rejected/huge_power": 1,
                         #  "time/reward_s": 0.003}
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from typing import Any, Callable

from slide.callpool import CallPool, NotSendable, Outcome, shared_pool
from slide.tasks.base import Problem

RewardFn = Callable[[Problem, str], float]
log = logging.getLogger(__name__)


def bounded_call(fn: Callable, *args, timeout_s: float) -> tuple[str, Any]:
    """Run fn(*args) in a daemon thread: ("ok", value), ("raised", exception) or ("timeout", None). Only for
    calls that cannot hold the GIL for long (their work is in the call pool or a sandbox): a thread cannot
    interrupt one that does. A call that times out is abandoned, never joined."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # an env bug is data, not a crash
            box["raised"] = e

    t = threading.Thread(target=target, daemon=True, name="slide-bounded-call")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return "timeout", None
    return ("raised", box["raised"]) if "raised" in box else ("ok", box.get("value"))


class ByFamily:
    """(problem, response) -> float(verify[problem.family](problem, response)): the verifiers of a run as one
    picklable reward function (sent to each pool worker once). The value becomes a plain float in the worker:
    whatever a verifier returns (a sympy number, say) is never rebuilt in the run's process."""

    def __init__(self, verify: dict[str, Callable]):
        self.verify = verify

    def __call__(self, problem: Problem, response: str) -> float:
        return float(self.verify[problem.family](problem, response))


_by_family: dict[int, ByFamily] = {}


def by_family(verify: dict[str, Callable]) -> ByFamily:
    """One ByFamily per verify dict (held, so its id stays its own): every evaluation of a run reuses the
    function its workers already have, instead of pickling the verifiers (a whole dataset) again."""
    fn = _by_family.get(id(verify))
    if fn is None or fn.verify is not verify:
        if len(_by_family) >= 8:
            _by_family.pop(next(iter(_by_family)))
        fn = _by_family[id(verify)] = ByFamily(verify)
    return fn


class RewardRunner:
    """Scores responses with `fn` in the call pool and counts failures and guard rejections (reset by
    `pop_stats`). `workers` sizes the process's shared pool unless `pool` is given."""

    def __init__(self, fn: RewardFn, timeout_s: float, workers: int = 2, pool: CallPool | None = None):
        self.fn, self.timeout_s = fn, timeout_s
        self.pool = pool or shared_pool(workers)
        self.pool.start()  # its imports overlap the caller's start-up
        self.counts: Counter = Counter()
        self.in_process = False  # fn cannot be pickled: scored in threads (warned once)
        self.seconds = 0.0  # wall time in score() since the last pop_stats
        self._lock = threading.Lock()

    def __call__(self, problem: Problem, response: str) -> float:
        return self.score([(problem, [response])])[0][0]

    def score(self, groups: list[tuple[Problem, list[str]]]) -> list[list[float]]:
        """Rewards per group, in order; each group is one message to one worker, groups spread over the pool."""
        t0 = time.perf_counter()
        batches = [[(problem, r) for r in responses] for problem, responses in groups]
        if not self.in_process:
            try:
                outcomes = self.pool.batches(self.fn, batches, self.timeout_s)
            except NotSendable as e:
                log.warning("reward function %r cannot be sent to worker processes (%s: %s): scoring it in "
                            "threads, where a call that holds the GIL can stall the run", self.fn,
                            type(e).__name__, e)
                self.in_process = True
        if self.in_process:
            outcomes = [[Outcome(*bounded_call(self.fn, *args, timeout_s=self.timeout_s)) for args in b]
                        for b in batches]
        values = [[self._value(o) for o in group] for group in outcomes]
        with self._lock:
            self.seconds += time.perf_counter() - t0
        return values

    def _value(self, o: Outcome) -> float:
        with self._lock:
            self.counts.update({f"reward_{k}" if not k.startswith("reward") else k: v for k, v in o.notes.items()})
            if o.status == "timeout":
                self.counts["reward_timeouts"] += 1
                return 0.0
            try:
                value = float(o.value) if o.status == "ok" else math.nan
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):  # raised, or not a finite number: a verifier bug is data, not a crash
                self.counts["reward_errors"] += 1
                return 0.0
            return value

    def pop_stats(self) -> dict[str, float]:
        """Failure and rejection counts, and time/reward_s (wall seconds spent scoring), since the last call."""
        with self._lock:
            out = {"reward_errors": 0, "reward_timeouts": 0, **self.counts, "time/reward_s": self.seconds}
            self.counts.clear()
            self.seconds = 0.0
        return out
