"""Continuous batching for a rollout worker: many threads ask for completions, one engine call serves them all.

    engine = BatchingEngine(InProcessEngine(model))
    # from any number of threads (one per agent episode, say):
    [[c]] = engine.generate([ids], params, n=1, generator=g)

A caller's request waits in a queue; the first caller to find the engine free becomes the leader: it takes
every request queued at that moment, runs them as ONE engine.generate call, hands each caller its rows, and
leaves the engine to the next leader. While a batch runs, new requests pile up and form the next batch, so
the batch size follows how many episodes are ready to write (not waiting on a tool), with no timer and no
extra thread.

Requests in one batch must share their sampling parameters except max_new_tokens: the batch runs to the
largest, and each caller's completions are cut back to its own (finish_reason "length" where cut). Requests
with other parameters wait for a later batch. The generator of the batch's first request is used. An
exception in the engine call is raised in every caller of that batch. A caller's on_step (StepCallback, e.g. a
server streaming tokens) sees its own rows only, numbered as in its own call; the engine gets a callback only when
some caller in the batch has one. load_weights takes the engine the same
way, so a weight load never overlaps a generate call: it lands between two batches. (A server, whose requests
arrive one by one, wants them to join a running batch instead: ContinuousEngine, continuous.py.)
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import torch

from slide.engine.inprocess import Completion, SamplingParams, StepCallback


@dataclass
class _Request:
    prompts: list[list[int]]
    params: SamplingParams
    n: int
    generator: torch.Generator | None
    on_step: StepCallback | None = None
    done: bool = False
    result: list[list[Completion]] | None = None
    error: BaseException | None = None


def _cut(c: Completion, limit: int) -> Completion:
    if len(c.tokens) <= limit:
        return c
    routes = None if c.routes is None else c.routes[:, :c.routes.shape[1] - (len(c.tokens) - limit)]
    return Completion(c.tokens[:limit], c.logprobs[:limit], "length", c.version, routes)


class EngineWrapper:
    """What a wrapper passes through from the engine it wraps (`self.engine`)."""

    @property
    def version(self) -> int:
        return self.engine.version

    @property
    def model(self):
        """The wrapped engine's model: what a WeightReceiver checks a push against."""
        return self.engine.model


class BatchingEngine(EngineWrapper):
    """Wraps an engine (generate, load_weights, version) so that concurrent generate calls share batches and
    never overlap a weight load."""

    def __init__(self, engine):
        self.engine = engine
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._busy = False  # a leader's batch or a weight load holds the engine
        self.batches = 0  # engine calls made
        self.requests = 0  # generate calls served
        self.rows = 0  # sequences generated (rows / batches: the mean engine batch)

    def load_weights(self, named_tensors, version: int) -> int:
        with self._cond:
            while self._busy:
                self._cond.wait()
            self._busy = True
        try:
            return self.engine.load_weights(named_tensors, version)
        finally:
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int = 1,
                 generator: torch.Generator | None = None, on_step: StepCallback | None = None
                 ) -> list[list[Completion]]:
        request = _Request(prompts, params, n, generator, on_step)
        with self._cond:
            self._queue.append(request)
        while True:
            with self._cond:
                while not request.done and self._busy:
                    self._cond.wait()  # woken when a leader (or a weight load) finishes
                if request.done:
                    break
                self._busy = True
            try:
                with self._cond:
                    batch = self._take()
                self._run(batch)
            finally:
                self._release()
        if request.error is not None:
            raise request.error
        return request.result

    def pop_counts(self) -> dict[str, int]:
        """Engine calls and rows since the last pop (each counted once, however many callers pop)."""
        with self._cond:
            out = {"engine_batches": self.batches, "engine_rows": self.rows}
            self.batches = self.rows = 0
        return out

    def _take(self) -> list[_Request]:
        """The queued requests that can share one call with the oldest (called under the lock)."""
        key = replace(self._queue[0].params, max_new_tokens=0)
        batch = [r for r in self._queue if r.n == self._queue[0].n and replace(r.params, max_new_tokens=0) == key]
        self._queue = [r for r in self._queue if not any(r is b for b in batch)]
        return batch

    def _run(self, batch: list[_Request]) -> None:
        params = replace(batch[0].params, max_new_tokens=max(r.params.max_new_tokens for r in batch))
        step = {"on_step": _fan_out(batch)} if any(r.on_step for r in batch) else {}
        try:
            out = self.engine.generate([p for r in batch for p in r.prompts], params, n=batch[0].n,
                                       generator=batch[0].generator, **step)
            start = 0
            for r in batch:
                rows = out[start:start + len(r.prompts)]
                r.result = [[_cut(c, r.params.max_new_tokens) for c in row] for row in rows]
                start += len(r.prompts)
        except BaseException as e:  # every caller of this batch sees the engine's error
            for r in batch:
                r.error = e
        self.batches += 1
        self.requests += len(batch)
        self.rows += sum(len(r.prompts) * r.n for r in batch)
        for r in batch:
            r.done = True  # read by the waiters under the lock, after the leader's notify_all


def _fan_out(batch: list[_Request]) -> StepCallback:
    """One engine callback for a batch: each request's on_step gets its own rows (renumbered from 0) and tokens."""
    spans, start = [], 0
    for r in batch:
        size = len(r.prompts) * r.n
        spans.append((r, start, start + size))
        start += size

    def on_step(rows: list[int], tokens: list[int]) -> list[int]:
        halt: list[int] = []
        for r, lo, hi in spans:
            if r.on_step is None:
                continue
            mine = [(row - lo, t) for row, t in zip(rows, tokens) if lo <= row < hi]
            if mine:
                halt += [lo + row for row in r.on_step([m[0] for m in mine], [m[1] for m in mine]) or ()]
        return halt
    return on_step
