"""An environment whose calls run in the call pool's worker processes, so that none of them can stall the run.

    env = IsolatedEnv(CalculatorEnv(), shared_pool(), step_timeout_s=10, reward_timeout_s=5)
    env.reset(problem); env.step(call)      # each: env sent to a worker, called there, its new state back

The episode runner bounds each env call with a thread, which cannot stop a call that holds the GIL (a tool or
a reward that hands model text to sympy). Here the env object travels to a worker with every call and comes
back with its new state; a call past its timeout kills the worker and raises `CallTimeout`, leaving the env
as it was before the call. An env must therefore be picklable (by cloudpickle, which also takes a script's own
classes); one that is not, or that sets `isolate = False` because it bounds its own work (PythonEnv: model code runs in the
bwrap sandbox), is called in the runner's threads as before. Incidents counted inside a call with
`slide.callpool.note` (guard rejections) come back and are popped by the runner with `pop_notes`.
"""
from __future__ import annotations

import logging
from collections import Counter

from slide.callpool import CallPool, NotSendable, call_method
from slide.tasks.base import Problem

log = logging.getLogger(__name__)


class CallTimeout(TimeoutError):
    """The call overran its timeout; its worker was killed."""


class IsolatedEnv:
    def __init__(self, env, pool: CallPool, step_timeout_s: float, reward_timeout_s: float):
        self.env, self.pool = env, pool
        self.step_timeout_s, self.reward_timeout_s = step_timeout_s, reward_timeout_s
        self.notes: Counter = Counter()
        self.isolate = getattr(env, "isolate", True)

    @property
    def tools(self) -> list[dict]:
        return self.env.tools

    def reset(self, problem: Problem) -> list[dict]:
        return self._call("reset", self.step_timeout_s, problem)

    def step(self, call: dict):
        return self._call("step", self.step_timeout_s, call)

    def reward(self, problem: Problem, response: str) -> float:
        return self._call("reward", self.reward_timeout_s, problem, response)

    def pop_notes(self) -> dict[str, int]:
        out = dict(self.notes)
        self.notes.clear()
        return out

    def _call(self, name: str, timeout_s: float, *args):
        if not self.isolate:
            return getattr(self.env, name)(*args)
        try:
            o = self.pool.call(call_method, self.env, name, *args, timeout_s=timeout_s)
        except NotSendable as e:  # the env (or an argument) cannot be pickled
            log.warning("environment %s cannot be sent to worker processes (%s: %s): calling it in threads, "
                        "where a call that holds the GIL can stall the run", type(self.env).__name__,
                        type(e).__name__, e)
            self.isolate = False
            return getattr(self.env, name)(*args)
        self.notes.update(o.notes)
        if o.status == "timeout":
            raise CallTimeout(f"{name} timed out after {timeout_s:g} s")
        if o.status == "raised":
            raise o.value
        value, self.env = o.value
        return value
