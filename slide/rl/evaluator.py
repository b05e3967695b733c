"""Async mode's periodic eval, off the trainer's path: an evaluator actor scores pushed weight versions while the
trainer goes on (disagg.eval_in_background; slime refuses evaluation in its fully-async mode).

    evals = make_evaluator(cfg, p)            # BackgroundEval (a Ray actor), or InlineEval (this process)
    evals.submit(step, buckets)               # this step's weights (the buckets p.publish made), never waited for
    metrics.update(evals.collect(run_dir, step, wait_below=0))   # log what has finished; returns eval_* metrics

The actor builds its engine as the rollout workers do (the architecture from model.init, the weights from the
buckets through the object store) and scores greedy pass@1 through the same function as the inline eval
(slide/rl/parts.py held_out_eval), so a version scores the same either way. eval.jsonl rows are keyed by the
version scored (`step`) and carry `logged_at`, the step whose metrics show the result (`eval_pass@1`,
`eval_chance_pass@1`, `eval_lucky`, `eval_version`, `eval_lag_steps`).

Bounded: one eval runs, one waits; a newer version replaces the waiting one (counted in `eval_skipped`).
Failures are data: an evaluator that dies is replaced and its version scored again (`eval_failures`); after
MAX_DEATHS deaths in a row evaluation falls back to inline (`eval_inline`); an eval that raises loses only its
version (`eval_failures`, and a line on stderr).
Checkpoints: the driver waits for every version older than the checkpoint before writing it; the checkpoint's
own version, if still pending, is saved (`pending()`) and scored again on resume from the checkpoint's weights
(its row, if it arrived before a kill, is dropped with the rows logged after the checkpoint).
"""
from __future__ import annotations

import sys
import time
from collections import Counter

import ray

from slide.cluster.weights import receive
from slide.config import RLConfig
from slide.device import precision_for, resolve_device
from slide.engine import close_engine, make_engine, set_threads
from slide.eval.passk import eval_metrics, verifiers
from slide.model.load import load_policy
from slide.model.tokenizer import tokenizer_for
from slide.rl.parts import held_out_eval
from slide.tasks import parse_task_specs
from slide.tasks.base import Problem
from slide.tasks.user_reward import load_reward

MAX_DEATHS = 3  # evaluator deaths in a row before evaluation moves onto the trainer's path
DEAD = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)


class Evaluator:
    """The actor: an in-process engine at rollout.precision and the run's verifiers, scoring one version a call."""

    def __init__(self, cfg: dict, held_out: list[Problem], device: str = "cpu"):
        cfg = RLConfig.model_validate(cfg)
        set_threads(cfg.disagg.worker_threads)
        self.cfg, self.held_out, self.device = cfg, held_out, resolve_device(device)
        self.tok = tokenizer_for(cfg.model.init, cfg.model.tool_format)
        model = load_policy(cfg.model.init, cfg.model.size, self.tok, cfg.seed, device=self.device)  # the architecture
        self.engine = make_engine("inprocess", model, self.tok.pad_token_id,
                                  precision_for(cfg.rollout.precision, self.device), cfg.seed)
        user_reward = load_reward(cfg.data.reward)
        specs = parse_task_specs(cfg.data.train, user_reward)
        self.verify = verifiers(specs + (parse_task_specs(cfg.data.eval, user_reward) if cfg.data.eval else []))

    def evaluate(self, buckets: list, version: int) -> tuple[int, dict, float]:
        """(version, eval result, seconds including the weight load) for one version's buckets."""
        t0 = time.perf_counter()
        receive(self.engine, buckets, self.device)
        return version, held_out_eval(self.engine, self.tok, self.held_out, self.verify, self.cfg), \
            time.perf_counter() - t0


class InlineEval:
    """Evaluation on the trainer's path (sync mode's way): an engine in this process, scored at submit."""

    def __init__(self, cfg: RLConfig, p):
        self.cfg, self.p = cfg, p
        self.engine = p.engine(cfg, kind="inprocess", group=False)  # the trainer's weights as the workers get them
        self.done: list = []
        self.counts = Counter()
        self.last: dict | None = None

    def submit(self, version: int, buckets: list | ray.ObjectRef | None = None) -> None:
        """Score `version`: its buckets (or an object-store ref to them), or (None) the trainer's weights now."""
        t0 = time.perf_counter()
        if isinstance(buckets, ray.ObjectRef):
            buckets = ray.get(buckets)
        if buckets is None:
            self.p.push(self.engine, version=version)
        else:
            receive(self.engine, buckets, self.p.device)
        result = held_out_eval(self.engine, self.p.tok, self.p.held_out, self.p.verify, self.cfg)
        self.done.append((version, result, time.perf_counter() - t0))

    def poll(self, wait_below: int = 0) -> list:
        done, self.done = self.done, []
        return done

    def pending(self) -> list[int]:
        return []

    def resume(self, pending: list[int], start: int, buckets: list) -> None:
        """Score again the versions a checkpoint saved as pending: its own (start), from its weights; an older
        one (only a watchdog's checkpoint can leave one) is gone with its weights, and said so."""
        lost = [v for v in pending if v != start]
        if lost:
            print(f"resume: the evals of versions {lost} were pending at the checkpoint; their weights are gone, "
                  "they are not scored", file=sys.stderr, flush=True)
        if start in pending:
            self.submit(start, buckets)

    def collect(self, run_dir, step: int, wait_below: int = 0) -> dict:
        """Log the evals finished by now (waiting for every version < wait_below) to eval.jsonl; the step's
        eval metrics: the newest result's pass@1 (and chance), version and lag, the evaluator's seconds, and the
        counts."""
        done = sorted(self.poll(wait_below), key=lambda r: r[0])
        out = dict(self.counts)  # skipped, failed, fallen back: counted this step
        self.counts.clear()
        for version, result, seconds in done:
            run_dir.log_eval(version, result | {"logged_at": step})
            self.last = result
            out.update({**eval_metrics(result["summary"]), "eval_version": version,
                        "eval_lag_steps": step - version, "time/evaluator_s": seconds})
        return out

    def close(self) -> None:
        close_engine(self.engine)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BackgroundEval(InlineEval):
    """The driver's handle on the evaluator actor: submit and poll never block (poll waits only for versions
    below wait_below, before a checkpoint or at the end)."""

    def __init__(self, cfg: RLConfig, p):
        self.cfg, self.p = cfg, p
        self.actor = self._start()
        self.running = None  # (result ref, version, buckets ref)
        self.queued = None  # (version, buckets ref): the newest version not yet started
        self.deaths, self.fallback = 0, None  # InlineEval once the actor died MAX_DEATHS times in a row
        self.counts = Counter()
        self.last = None

    def _start(self):
        return ray.remote(Evaluator).options(name="slide-evaluator", max_restarts=0,
                                             num_cpus=self.cfg.disagg.worker_threads).remote(
            self.cfg.model_dump(mode="json"), self.p.held_out, self.p.device.type)

    def submit(self, version: int, buckets: list | ray.ObjectRef | None = None) -> None:
        """Queue `version` (its buckets, a ref to them already in the object store, e.g. the workers' push, or
        None: published now from the trainer), replacing a waiting older one."""
        if buckets is None:
            buckets = self.p.publish(version)[0]
        if self.fallback is not None:
            return self.fallback.submit(version, buckets)
        self._queue(version, buckets if isinstance(buckets, ray.ObjectRef) else ray.put(buckets))

    def _queue(self, version: int, ref) -> None:
        if self.queued is not None:
            self.counts["eval_skipped"] += 1
        self.queued = (version, ref)
        self._next()

    def _next(self) -> None:
        """Start the waiting version if none runs."""
        if self.running is None and self.queued is not None:
            (version, ref), self.queued = self.queued, None
            self.running = (self.actor.evaluate.remote(ref, version), version, ref)

    def poll(self, wait_below: int = 0) -> list:
        """(version, result, seconds) of the evals finished by now, every version < wait_below included."""
        out = []
        while self.running is not None:
            call, version, ref = self.running
            if not ray.wait([call], timeout=None if version < wait_below else 0)[0]:
                break
            self.running = None
            try:
                out.append(ray.get(call))
                self.deaths = 0
            except DEAD as e:
                self._died(version, ref, e)
            except ray.exceptions.RayTaskError as e:  # the eval raised: this version is lost, the actor lives
                self.counts["eval_failures"] += 1
                print(f"evaluator: the eval of version {version} failed, not scored: {e.cause!r}", file=sys.stderr,
                      flush=True)
            self._next()
        return out + (self.fallback.poll() if self.fallback is not None else [])

    def _died(self, version: int, ref, error) -> None:
        """A dead evaluator: replaced, and its version queued again (unless a newer one waits); after MAX_DEATHS
        in a row, every version from now on is scored inline."""
        self.counts["eval_failures"] += 1
        self.deaths += 1
        ray.kill(self.actor)
        print(f"evaluator: died scoring version {version} ({type(error).__name__}); "
              + ("replaced" if self.deaths < MAX_DEATHS else "evaluating inline from now on"),
              file=sys.stderr, flush=True)
        if self.deaths >= MAX_DEATHS:
            self.fallback, self.counts["eval_inline"] = InlineEval(self.cfg, self.p), 1
            waiting = [(version, ref)] + ([self.queued] if self.queued is not None else [])
            self.queued = None
            for v, r in waiting:
                self.fallback.submit(v, ray.get(r))
            return
        self.actor = self._start()
        if self.queued is None:
            self.queued = (version, ref)
        else:
            self.counts["eval_skipped"] += 1

    def pending(self) -> list[int]:
        """Versions submitted and not yet logged (saved with a checkpoint)."""
        return ([self.running[1]] if self.running else []) + ([self.queued[0]] if self.queued else [])

    def close(self) -> None:
        ray.kill(self.actor)
        if self.fallback is not None:
            self.fallback.close()


def make_evaluator(cfg: RLConfig, p) -> InlineEval:
    """The async driver's evaluation: an evaluator actor (disagg.eval_in_background, CPU runs), else inline."""
    if cfg.disagg.eval_in_background and p.device.type == "cpu":
        return BackgroundEval(cfg, p)
    return InlineEval(cfg, p)
