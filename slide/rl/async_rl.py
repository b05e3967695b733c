"""Disaggregated asynchronous RL: rollout workers (Ray actors) never wait for the trainer, and the trainer
takes finished groups sampled at most `max_staleness` policy versions ago.

    slide rl slide/configs/agent_rl.yaml mode=async disagg.workers=4 disagg.max_staleness=1
    slide rl --resume runs/agent-rl      # workers restart on the checkpoint's weights and version

The diff from sync.py: rollout happens in worker processes, continuously; the trainer's step begins by
collecting finished groups (stale ones dropped, counted) instead of generating them; weights go out every
`sync_interval` steps through the Ray object store; the importance ratio uses the behaviour policy's
logprobs recorded by the engine, truncated (TIS), so stale samples are corrected as far as the cap allows.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections import Counter

import ray
import torch

from slide.algo.grpo import group_advantages
from slide.config import RLConfig
from slide.engine.inprocess import InProcessEngine
from slide.rl.metrics import Timer, step_metrics
from slide.rl.parts import build
from slide.rl.worker import WorkerPool
from slide.rundir import RunDir
from slide.tasks.base import Problem


def group_version(group) -> int:
    return min(s.version for s in group)  # an episode spanning versions counts as its oldest


def start_ray(cfg: RLConfig) -> None:
    """Join the configured cluster, or start Ray on this machine with one CPU slot per worker thread."""
    if ray.is_initialized():
        return
    d = cfg.disagg
    # address "local": a new Ray on this machine, never a cluster someone started with `ray start` / RAY_ADDRESS
    local = {} if d.ray_address else {"num_cpus": d.workers * d.worker_threads}
    ray.init(address=d.ray_address or "local", include_dashboard=False, log_to_driver=False,
             configure_logging=False, **local)


def run(cfg: RLConfig, run_dir: RunDir, ckpt=None, progress=None) -> dict:
    """Train for cfg.steps steps in `run_dir` (continuing from `ckpt` if given). Returns the last eval."""
    p = build(cfg, ckpt)
    tok, policy, trainer, source, d = p.tok, p.policy, p.trainer, p.source, cfg.disagg
    eval_engine = InProcessEngine(copy.deepcopy(policy), pad_token_id=tok.pad_token_id)
    start_ray(cfg)
    pool = WorkerPool(cfg, policy.state_dict(), version=p.start)
    startup_s = pool.wait_ready()  # logged with the first step, outside its clock
    pool.requeue = [Problem(**x) for x in p.state.get("outstanding", [])]  # handed out before the kill
    next_group = p.state.get("next_group", 0)
    P = cfg.rollout.prompts_per_step
    ready: list = []  # finished groups with a reward signal, not yet trained on
    last_eval = None

    def feed() -> None:
        """Give idle workers work, but no more groups out than the next max(1, max_staleness) steps use: a group
        queued behind more would be too stale when its turn came (a weight push also waits behind queued calls)."""
        nonlocal next_group
        for w in pool.idle():
            if len(ready) + pool.groups_out() >= P * max(1, d.max_staleness):
                return
            k = d.groups_per_call
            problems, pool.requeue = pool.requeue[:k], pool.requeue[k:]
            problems += source.next(k - len(problems))
            pool.submit(w, problems, next_group)
            next_group += len(problems)

    try:
        for step in range(p.start + 1, cfg.steps + 1):
            timer, dropped, reward_stats = Timer(), Counter(), Counter()
            t_step = time.perf_counter()
            version = step - 1  # the policy this step's update starts from
            seen = []
            # 1. collect finished groups until a batch is ready; drop groups too stale to train on
            with timer("wait"):
                while True:
                    fresh = [g for g in ready if version - group_version(g) <= d.max_staleness]
                    dropped["stale"] += len(ready) - len(fresh)
                    ready = fresh
                    if len(ready) >= P:
                        break
                    if not ready and dropped["no_signal"] >= 4 * cfg.algo.max_sample_rounds * P:
                        break  # nothing has a reward signal: log the step, skip the update (never hang)
                    feed()
                    result = pool.next_result()
                    if result is None:
                        continue
                    _, groups, stats = result
                    reward_stats.update(stats)
                    seen += [s for g in groups for s in g]
                    run_dir.log_trajectories([s.record(step) for g in groups for s in g])
                    for g in groups:
                        if cfg.algo.dynamic_sampling and len({s.reward for s in g}) == 1:
                            dropped["no_signal"] += 1
                        else:
                            ready.append(g)
            batch, ready = ready[:P], ready[P:]
            if d.max_staleness > 0:
                feed()  # the workers keep generating while we train (on-policy: only after the push)
            # 2. advantages, 3. train on the behaviour policy's samples (TIS against their recorded logprobs)
            stats = {}
            if batch:
                adv = group_advantages(torch.tensor([[s.reward for s in g] for g in batch]), cfg.algo.scale_adv_by_std)
                advantages = {id(s): float(a) for g, row in zip(batch, adv) for s, a in zip(g, row)}
                with timer("train"):
                    stats = trainer.step([s for g in batch for s in g], advantages)
            # 4. push weights every sync_interval steps; workers apply them between calls
            if step % d.sync_interval == 0:
                with timer("sync"):
                    stats["sync_bytes"] = pool.push(policy.state_dict(), version=step)
            # 5. log
            staleness = [version - group_version(g) for g in batch] or [0]
            metrics = step_metrics(seen or [s for g in batch for s in g])
            metrics.update({
                "groups_trained": len(batch), "staleness_mean": sum(staleness) / len(staleness),
                "staleness_max": max(staleness), "dropped_stale": dropped["stale"],
                "dropped_no_signal": dropped["no_signal"], "buffer_groups": len(ready),
                "groups_in_flight": pool.groups_out(), **pool.counts, **reward_stats, **stats,
            })
            if reward_stats["engine_batches"]:  # the workers' mean engine batch (sequences) behind this step's groups
                metrics["engine_batch_rows_mean"] = reward_stats["engine_rows"] / reward_stats["engine_batches"]
            # 6. periodic eval (on the trainer's weights) and checkpoint
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                with timer("eval"):
                    eval_engine.load_weights(policy.state_dict().items(), version=step)
                    last_eval = p.evaluate(eval_engine, cfg, run_dir, step)
                metrics["eval_pass@1"] = last_eval["summary"]["pass@1"]
            metrics["time/step_s"] = time.perf_counter() - t_step
            metrics.update(timer)
            if step == p.start + 1:
                metrics["time/worker_start_s"] = startup_s
            run_dir.log_metrics(step, metrics)
            if progress:
                progress(step, metrics)
            if step % cfg.save_every == 0 or step == cfg.steps:
                outstanding = pool.outstanding() + [g[0].problem for g in ready]
                run_dir.save_checkpoint(step, policy, tok, {
                    "trainer": trainer.state_dict(), "source": source.state_dict(), "generator": p.generator.get_state(),
                    "outstanding": [dataclasses.asdict(x) for x in outstanding], "next_group": next_group})
    finally:
        pool.shutdown()
    return last_eval
