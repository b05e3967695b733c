"""Rollout workers for the async mode: Ray actors, each an in-process engine plus its environments.

A worker runs up to `disagg.calls_per_worker` calls at once (`rollout(problems, first_group)` -> rewarded
groups), on threads of one actor. Every agent episode of every call runs on its own thread and its turns go
through one BatchingEngine: whichever episodes are ready to write (not waiting on a tool) share one engine
call, so a slow tool delays only its own episode and the engine still sees batches.

Weights load between engine calls (never inside one). A push is queued behind the calls already sent; with
one call per worker an episode therefore finishes on the weights it started with, with more a push can land
between two turns of an episode in flight (each token records its version; the driver masks turns
older than max_staleness).
With partial_rollout, a push runs at once (its own concurrency group), and a call whose weights changed
under it aborts at its next turn and returns None, so the driver re-queues its problems on the new weights.
"""
from __future__ import annotations

import os
import time

import ray
import torch

from slide.config import RLConfig
from slide.device import generator, precision_for, resolve_device
from slide.engine import DTYPES, compute_dtype, set_threads
from slide.engine.batching import BatchingEngine
from slide.engine.inprocess import InProcessEngine
from slide.eval.passk import verifiers
from slide.model.load import cast_for_compute, load_policy
from slide.model.tokenizer import tokenizer_for
from slide.rl.parts import reward_runner, sampling_params
from slide.cluster.weights import receive
from slide.weights.buckets import Bucket
from slide.rl.rollout import Rollout
from slide.tasks import parse_task_specs
from slide.tasks.user_reward import load_reward
from slide.tasks.base import Problem


class Aborted(Exception):
    """A weight push arrived during a partial_rollout call."""


class RolloutWorker:
    def __init__(self, index: int, cfg: dict, buckets: list[Bucket], device: str = "cpu"):
        cfg = RLConfig.model_validate(cfg)
        set_threads(cfg.disagg.worker_threads)  # no call when torch already uses that many (slide.engine)
        self.device = resolve_device(device)  # the driver's device kind: "cuda" is the GPU Ray gave this actor
        precision = precision_for(cfg.rollout.precision, self.device)  # as the driver resolved it
        tok = tokenizer_for(cfg.model.init, cfg.model.tool_format)
        model = load_policy(cfg.model.init, cfg.model.size, tok, cfg.seed)  # the architecture; weights follow
        model = cast_for_compute(model, DTYPES[compute_dtype(precision)]).to(self.device)  # as make_engine's
        engine = InProcessEngine(model, pad_token_id=tok.pad_token_id, record_routes=cfg.algo.routing_replay)
        self.engine = BatchingEngine(engine)  # loads never overlap a generate call
        self.load_weights(buckets)
        self.partial = cfg.disagg.partial_rollout
        self.reward = reward_runner(verifiers(parse_task_specs(cfg.data.train, load_reward(cfg.data.reward))),
                                    cfg.rollout)
        self.rollout_ = Rollout(self.engine, tok, sampling_params(cfg, tok), cfg.rollout.n, self.reward,
                                cfg.rollout.thinking, cfg.agent, seed=cfg.seed * 1009 + index, concurrent_episodes=True)
        self.generator = generator(self.device, cfg.seed * 1009 + index)

    def pid(self) -> int:
        return os.getpid()

    def load_weights(self, buckets: list) -> int:
        """Apply one version's buckets (rollout.precision: fp8 payloads are dequantized here, on this worker's
        device), each a Bucket or, from a trainer group, an object-store ref to one; returns bytes."""
        return receive(self.engine, buckets, self.device)

    def rollout(self, problems: list[Problem], first_group: int):
        """(groups, counts: reward failures and engine batches/rows since the last call returned), or None when
        a weight push aborted the call (partial_rollout)."""
        started = self.engine.version

        def abort_if_pushed() -> None:
            if self.partial and self.engine.version != started:
                raise Aborted

        try:
            groups = self.rollout_.groups(problems, first_group, self.generator, before_turn=abort_if_pushed)
        except Aborted:
            return None
        return groups, self.reward.pop_stats() | self.engine.pop_counts()


class PartialRolloutWorker(RolloutWorker):
    """partial_rollout: pushes run in their own thread (concurrency group), beside the call in flight."""

    @ray.method(concurrency_group="push")
    def load_weights(self, buckets: list[Bucket]) -> int:
        return super().load_weights(buckets)


def gpu_share(device: str, workers: int) -> float:
    """The GPUs a worker asks Ray for: none on the CPU; on CUDA an equal share of this machine's GPUs, at most
    one (on one GPU, every worker and the trainer share it). Ray then shows the actor its GPU as cuda:0."""
    if device != "cuda":
        return 0.0
    return min(1.0, torch.cuda.device_count() / workers)


def start_worker(index: int, cfg: RLConfig, buckets_ref, device: str = "cpu"):
    """A named actor `slide-rollout-<index>`: calls run one at a time, a push waits for the calls sent before
    it; with partial_rollout a push runs at once (between two engine calls) and aborts the call in flight.
    device: the driver's device kind ("cpu" or "cuda"); the worker resolves it on its own GPU share."""
    cls, extra = RolloutWorker, {}
    if cfg.disagg.partial_rollout:
        cls, extra = PartialRolloutWorker, {"concurrency_groups": {"push": 1}}
    remote = ray.remote(**extra)(cls) if extra else ray.remote(cls)  # concurrency groups: not an .options() key
    gpus = gpu_share(device, cfg.disagg.workers)
    actor = remote.options(name=f"slide-rollout-{index}", max_restarts=0, num_cpus=cfg.disagg.worker_threads,
                           max_concurrency=cfg.disagg.calls_per_worker, **({"num_gpus": gpus} if gpus else {}))
    return actor.remote(index, cfg.model_dump(mode="json"), buckets_ref, device)


class WorkerPool:
    """The driver's view of the workers: one call in flight per worker, dead workers replaced, their
    problems re-queued, weights pushed through the Ray object store (one put, every worker reads it) as the
    buckets of WeightSync at rollout.precision."""

    def __init__(self, cfg: RLConfig, buckets: list[Bucket], device: str = "cpu"):
        self.cfg, self.device = cfg, device
        self.buckets_ref = ray.put(buckets)
        self.workers = [start_worker(i, cfg, self.buckets_ref, device) for i in range(cfg.disagg.workers)]
        self.in_flight: dict = {}  # ObjectRef -> (worker index, problems, the actor it was sent to)
        self.requeue: list[Problem] = []  # problems to hand out again before fresh ones
        self.counts = {"workers_replaced": 0, "calls_aborted": 0}

    def wait_ready(self) -> float:
        """Block until every worker has built its engine (a worker that died starting is replaced later, on
        its first call); returns the seconds waited, so start-up stays out of the first step's clock."""
        t0 = time.perf_counter()
        refs = [w.pid.remote() for w in self.workers]
        ray.wait(refs, num_returns=len(refs))  # never raises: a failed start is handled like any dead worker
        return time.perf_counter() - t0

    def idle(self) -> list[int]:
        """Workers with room for another call, once per free slot, round-robin ([0, 1, 0, 1] when all are free):
        calls_per_worker + 1 calls each, so one is queued while the others run and a worker never waits for
        the driver to collect a result."""
        depth = self.cfg.disagg.calls_per_worker + 1
        load = [0] * len(self.workers)
        for w, _, _ in self.in_flight.values():
            load[w] += 1
        return [i for d in range(depth) for i, n in enumerate(load) if n + d < depth]

    def groups_out(self) -> int:
        return sum(len(problems) for _, problems, _ in self.in_flight.values())

    def submit(self, worker: int, problems: list[Problem], first_group: int) -> None:
        actor = self.workers[worker]
        self.in_flight[actor.rollout.remote(problems, first_group)] = (worker, problems, actor)

    def next_result(self, timeout_s: float | None = None):
        """(worker, groups, reward stats) of the next finished call; None if nothing finished in time or the
        call produced nothing (its worker died and was replaced, or a push aborted it: problems re-queued)."""
        done, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=timeout_s)
        if not done:
            return None
        worker, problems, actor = self.in_flight.pop(done[0])
        try:
            out = ray.get(done[0])
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
            if self.workers[worker] is actor:  # its other queued call fails too: replace it once
                self.workers[worker] = start_worker(worker, self.cfg, self.buckets_ref, self.device)
                self.counts["workers_replaced"] += 1
            self.requeue += problems
            return None
        if out is None:
            self.counts["calls_aborted"] += 1
            self.requeue += problems
            return None
        return worker, *out

    def push(self, buckets: list) -> None:
        """Send one version's buckets (Buckets, or object-store refs to them) to every worker; they apply them
        between calls."""
        self.buckets_ref = ray.put(buckets)
        for w in self.workers:
            w.load_weights.remote(self.buckets_ref)  # queued behind the calls already sent

    def outstanding(self) -> list[Problem]:
        """Problems handed out but not returned: saved with a checkpoint, re-queued on resume."""
        return self.requeue + [p for _, problems, _ in self.in_flight.values() for p in problems]

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
