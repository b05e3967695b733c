"""Disaggregated asynchronous RL: rollout workers (Ray actors) never wait for the trainer, and the trainer
trains on tokens sampled at most `max_staleness` policy versions ago.

    slide rl slide/configs/agent_rl.yaml mode=async disagg.workers=4 disagg.max_staleness=1
    slide rl --resume runs/agent-rl      # workers restart on the checkpoint's weights and version

The diff from sync.py: rollout happens in worker processes, continuously; the trainer's step collects
finished groups instead of generating them (the turns of an episode older than the bound are masked, a
group with no fresh token left is dropped; both counted), and trains on each as it arrives (one optimizer
update per step, its gradient accumulated group by group, so training overlaps the wait for the step's
later groups), or, with train.updates_per_step = k > 1, once all the step's groups are in: the proximal
logprobs (the trainer's weights now) are computed once, then k mini-batch updates each clip against them
(AReaL's decoupled PPO with algo.importance=decoupled: a trust region for stale samples); the workers are
fed up to (max_staleness + 1) x prompts_per_step groups ahead of the trainer, as AReaL bounds its rollouts;
weights go out every `sync_interval` steps through the Ray object store; the importance ratio uses the
behaviour policy's logprobs recorded by the engine (truncated by default, TIS; algo.importance), so stale
samples are corrected as far as the cap allows. Finished groups are on disk until a checkpoint covers them
(slide/rl/group_store.py): a killed run trains them first on resume, or counts them dropped; groups.jsonl says
what became of every group. Periodic evals run inline (the default), or, with disagg.eval_in_background, in an
evaluator actor beside the trainer (slide/rl/evaluator.py: each eval step's weights are scored while training
goes on, logged at the step the result arrives).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections import Counter


from slide.config import RLConfig
from slide.device import memory_metrics
from slide.cluster.placement import start_ray
from slide.rl.evaluator import make_evaluator
from slide.rl.group_store import GroupStore
from slide.rl.metrics import Timer, step_metrics
from slide.rl.parts import build, device_state
from slide.rl.sample import set_advantages
from slide.rl.worker import WorkerPool
from slide.rundir import RunDir, rng_state
from slide.watchdog import Watchdog, beat, boundary_checkpoint
from slide.tasks.base import Problem


def group_version(group) -> int:
    """The oldest policy version among the group's trained tokens (an episode's turns may span versions)."""
    trained = [v for s in group for v, m in zip(s.versions(), s.loss_mask) if m]
    return min(trained) if trained else min(s.version for s in group)


def drop_stale_turns(group, oldest: int) -> int:
    """Take the turns sampled before version `oldest` out of the loss (they stay in the context of the later
    turns, which train); returns the tokens taken out. A slow multi-turn episode whose first turn is too stale
    still trains on its fresh turns, so the bound does not discard the episodes that wait longest on tools."""
    masked = 0
    for s in group:
        if s.version >= oldest:  # its oldest turn is fresh (the common case): nothing to scan
            continue
        for i, v in enumerate(s.versions()):
            if v < oldest and s.loss_mask[i]:
                s.loss_mask[i], masked = 0, masked + 1
    return masked


def run(cfg: RLConfig, run_dir: RunDir, ckpt=None, progress=None) -> dict:
    """Train for cfg.steps steps in `run_dir` (continuing from `ckpt` if given). Returns the last eval."""
    start_ray(cfg)
    p = build(cfg, ckpt)  # the trainer: this process, or train.world_size FSDP2 ranks (slide/cluster/)
    try:
        return _train(cfg, run_dir, p, progress)
    finally:
        p.close()


def _train(cfg: RLConfig, run_dir: RunDir, p, progress) -> dict:
    trainer, source, d = p.trainer, p.source, cfg.disagg
    buckets = p.publish(p.start)[0]
    pool = WorkerPool(cfg, buckets, p.device.type)
    evals = make_evaluator(cfg, p)  # an actor scoring pushed versions beside the trainer (or inline, in this process)
    evals.resume(p.state.get("eval_pending", []), p.start, buckets)  # the checkpoint's own eval, if still pending
    startup_s = pool.wait_ready()  # logged with the first step, outside its clock
    store = GroupStore(run_dir.path / "groups")
    restored = store.restore(p.state.get("consumed", []))  # finished before the kill, never trained: first in line
    ready: list = [g for _, g in restored]  # finished groups with a reward signal, not yet trained on
    run_dir.log_trajectories([s.record(at) for at, g in restored if at > p.start for s in g])  # truncated rows
    # handed out before the kill and not delivered: generated again
    pool.requeue = without([Problem(**x) for x in p.state.get("outstanding", [])], [g[0].problem for g in ready])
    # ids go on past any restored group: one handed out after the checkpoint and finished before the kill keeps its id
    next_group = max([p.state.get("next_group", 0)] + [g[0].group + 1 for _, g in restored])
    P = cfg.rollout.prompts_per_step
    step, dropped, reward_stats, seen = p.start, Counter(), Counter(), []  # the step's, for collect()

    def consume(groups: list, outcome: str) -> None:
        store.consumed([g[0].group for g in groups])
        run_dir.log_groups([{"step": step, "group": g[0].group, "outcome": outcome} for g in groups])

    def feed(taken: int) -> None:
        """Give idle workers work while the groups out, ready and already trained this step stay under
        (max_staleness + 1) x prompts_per_step (AReaL's bound): taken in order, every group then trains within
        max_staleness versions of the one it started on; only one overtaken by later groups can be too stale."""
        nonlocal next_group
        for w in pool.idle():
            if len(ready) + pool.groups_out() + taken >= P * (d.max_staleness + 1):
                return
            k = d.groups_per_call
            problems, pool.requeue = pool.requeue[:k], pool.requeue[k:]
            problems += source.next(k - len(problems))
            pool.submit(w, problems, next_group)
            next_group += len(problems)

    def collect(timeout_s: float | None) -> bool:
        """Take the next finished call's groups into `ready` (waiting up to timeout_s; None = until one ends),
        logging its trajectories and counting this step's worker statistics; False if none finished."""
        result = pool.next_result(timeout_s)
        if result is None:
            return False
        beat()  # progress: a worker delivered
        _, groups, stats = result
        store.put(step, groups)  # on disk before anything else sees them
        reward_stats.update(stats)
        seen.extend(s for g in groups for s in g)
        run_dir.log_trajectories([s.record(step) for g in groups for s in g])
        for g in groups:
            if cfg.algo.dynamic_sampling and len({s.reward for s in g}) == 1:
                dropped["no_signal"] += 1
                consume([g], "no_signal")
            else:
                ready.append(g)
        return True

    def state() -> dict:
        """A checkpoint's state besides the weights: problems handed out are re-queued on resume, finished groups
        come back from the store (less those consumed by now)."""
        return {"source": copy.deepcopy(source.state_dict()), "generator": p.generator.get_state(),
                "outstanding": [dataclasses.asdict(x) for x in pool.outstanding()], "next_group": next_group,
                "consumed": list(store.since), "eval_pending": evals.pending(), **device_state(p.device)}

    def boundary(step: int):
        """For the watchdog: writes step - 1's checkpoint (state as of now) unless an update has happened since."""
        snap, updates = state() | {"rng": rng_state()}, trainer.updates
        return lambda: boundary_checkpoint(run_dir, step - 1, lambda: trainer.updates != updates, lambda:
                                           p.save(run_dir, step - 1, snap))

    with pool, evals, Watchdog(run_dir.path, cfg.watchdog_s) as dog:  # a stalled step ends the run with its stacks
        for step in range(p.start + 1, cfg.steps + 1):
            timer, dropped, reward_stats, batch, seen, buckets = Timer(), Counter(), Counter(), [], [], None
            t_step = time.perf_counter()
            dog.at_step(step, boundary(step))
            version = step - 1  # the policy this step's update starts from
            # 1-3. one update: train on groups as they finish (gradients accumulated group by group, so the trainer
            # computes while the workers still write this step's later groups); k updates: train once all are in
            # (trainer.step: proximal logprobs, then k mini-batch updates). Drop stale groups.
            stream = cfg.train.updates_per_step == 1
            if stream:
                trainer.begin_update()
            while len(batch) < P:
                feed(len(batch))
                while collect(timeout_s=0):  # everything finished by now, without waiting
                    feed(len(batch))
                oldest = version - d.max_staleness
                for g in ready:
                    dropped["stale_tokens"] += drop_stale_turns(g, oldest)
                # dropped: no fresh token left (or, resumed, sampled by weights too far past the checkpoint's)
                keep = [oldest <= group_version(g) <= version + d.max_staleness for g in ready]
                dropped["stale"] += keep.count(False)
                consume([g for g, k in zip(ready, keep) if not k], "stale")
                ready = [g for g, k in zip(ready, keep) if k]
                if ready:
                    take = min(P - len(batch), max(1, cfg.train.micro_batch // cfg.rollout.n))
                    groups, ready = ready[:take], ready[take:]
                    consume(groups, "trained")
                    set_advantages(groups, cfg.algo.scale_adv_by_std)
                    if stream:
                        with timer("train"):  # the behaviour policy's samples, corrected against their logprobs
                            trainer.accumulate([s for g in groups for s in g])
                    batch += groups
                elif dropped["no_signal"] >= 4 * cfg.algo.max_sample_rounds * P:
                    break  # nothing has a reward signal: log the step, skip the update (never hang)
                else:
                    with timer("wait"):
                        collect(timeout_s=None)
            stats = {}
            if batch:
                with timer("train"):
                    stats = trainer.finish_update() if stream else trainer.step([s for g in batch for s in g])
            # 4. push weights every sync_interval steps; workers apply them between calls
            if step % d.sync_interval == 0:
                with timer("sync"):
                    buckets, stats["sync_bytes"] = p.publish(step)
                    pool.push(buckets)
            # 5. log
            staleness = [version - group_version(g) for g in batch] or [0]
            metrics = step_metrics(seen or [s for g in batch for s in g])
            metrics.update({
                "groups_trained": len(batch), "staleness_mean": sum(staleness) / len(staleness),
                "staleness_max": max(staleness), "dropped_stale": dropped["stale"],
                "masked_stale_tokens": dropped["stale_tokens"],
                "dropped_no_signal": dropped["no_signal"], "buffer_groups": len(ready),
                "groups_in_flight": pool.groups_out(), **pool.counts, **reward_stats, **stats,
            })
            if reward_stats["engine_batches"]:  # the workers' mean engine batch (sequences) behind this step's groups
                metrics["engine_batch_rows_mean"] = reward_stats["engine_rows"] / reward_stats["engine_batches"]
            # 6. periodic eval of this step's weights (background: scored while training goes on; logged when in,
            # every older version before a checkpoint, all at the end), and checkpoint
            saving = step % cfg.save_every == 0 or step == cfg.steps
            with timer("eval"):
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                    # the buckets pushed this step, if it pushed: the workers' copy in the object store, not a second
                    evals.submit(step, pool.buckets_ref if buckets is not None else None)
                metrics.update(evals.collect(run_dir, step, wait_below=step + (step == cfg.steps) if saving else 0))
            metrics["time/step_s"] = time.perf_counter() - t_step
            metrics.update(timer)
            metrics.update(memory_metrics(p.device))  # GPU only: the trainer's (the driver's) peak and reserved
            if step == p.start + 1:
                metrics["time/worker_start_s"] = startup_s
            run_dir.log_metrics(step, metrics)
            if progress:
                progress(step, metrics)
            if saving:
                p.save(run_dir, step, state(), merged=cfg.train.lora.save_merged or step == cfg.steps)
                store.checkpointed()
    return evals.last


def without(problems: list[Problem], taken: list[Problem]) -> list[Problem]:
    """`problems` less one equal problem per item of `taken` (a multiset difference, order kept)."""
    out = list(problems)
    for t in taken:
        if t in out:
            out.remove(t)
    return out
