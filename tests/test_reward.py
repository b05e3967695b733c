"""A reward function that raises or hangs scores 0, is counted, and never stops the run."""
import time

from slide.rl.reward import RewardRunner
from slide.tasks.base import Problem

P = Problem(prompt="q", answer="1", family="f", level=1)


def test_raise_hang_and_nan_become_zero_and_are_counted():
    def flaky(problem, response):
        if response == "raise":
            raise RuntimeError("verifier bug")
        if response == "hang":
            while True:
                time.sleep(0.01)
        if response == "nan":
            return float("nan")
        return 1.0

    runner = RewardRunner(flaky, timeout_s=0.2)
    t0 = time.perf_counter()
    assert [runner(P, r) for r in ("ok", "raise", "hang", "nan", "ok")] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert time.perf_counter() - t0 < 5
    stats = runner.pop_stats()
    assert stats.pop("time/reward_s") > 0.2 and stats == {"reward_errors": 2, "reward_timeouts": 1}
    stats = runner.pop_stats()
    assert stats.pop("time/reward_s") == 0.0 and stats == {"reward_errors": 0, "reward_timeouts": 0}
