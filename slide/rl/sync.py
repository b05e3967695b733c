"""Colocated synchronous RL: generate -> reward -> advantages -> train -> push weights, strictly on-policy.

    slide rl slide/configs/demo_rl.yaml model.init=runs/sft/final steps=100
    slide rl --resume runs/rl            # continue a killed run; same metrics as never stopped

The trainer and the in-process engine share the process (and the CPU, or the GPU of `device`) and take turns.
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from slide.algo.grpo import group_advantages
from slide.config import RLConfig
from slide.device import memory_metrics
from slide.engine import close_engine, make_engine
from slide.rl.metrics import Timer, step_metrics
from slide.rl.curriculum import successes
from slide.rl.parts import build
from slide.rl.rollout import Rollout, length_limit, sample_batch
from slide.rundir import RunDir
from slide.watchdog import Watchdog
from slide.weights.buckets import WeightSync


def run(cfg: RLConfig, run_dir: RunDir, ckpt=None, progress=None) -> dict:
    """Train for cfg.steps steps in `run_dir` (continuing from `ckpt` if given). Returns the last eval."""
    p = build(cfg, ckpt)
    # colocated: at fp32 the engine reads the policy's weights, no copy (LoRA: the frozen ones; the adapted weights
    # are its own, merged at each push); routing_replay: it records each token's experts for the trainer
    engine = make_engine(cfg.rollout.engine, p.policy, p.tok.pad_token_id, p.rollout_precision, cfg.seed,
                         share=True, record_routes=cfg.algo.routing_replay)
    try:
        with Watchdog(run_dir.path, cfg.watchdog_s) as dog:  # a stalled step ends the run with its stacks
            return _train(cfg, run_dir, p, engine, dog, progress)
    finally:
        close_engine(engine)


def _train(cfg: RLConfig, run_dir: RunDir, p, engine, dog: Watchdog, progress) -> dict:
    """The RL loop: one iteration per step, with `engine` holding the rollout copy of the weights."""
    tok, policy, trainer, source, gen = p.tok, p.policy, p.trainer, p.source, p.generator
    weight_sync = WeightSync(p.rollout_precision, cfg.rollout.sync_bucket_mb)
    weight_sync.push(policy, engine, version=p.start)  # the engine holds rollout-precision weights from the start
    reward = p.reward_runner(cfg.rollout)
    rollout = Rollout(engine, tok, p.sampling, cfg.rollout.n, reward, cfg.rollout.thinking, cfg.agent, cfg.seed,
                      cfg.rollout.force_answer_tokens if cfg.rollout.force_answer else 0)

    last_eval = None
    for step in range(p.start + 1, cfg.steps + 1):
        timer = Timer()
        t_step = time.perf_counter()
        dog.at_step(step, p.boundary(run_dir, step))  # on a stall: the checkpoint of step - 1, if still intact
        # 0. schedule: this step's temperature and output-length limit; a curriculum stage measures its pool
        rollout.params = replace(p.sampling, temperature=p.temperature.value,
                                 max_new_tokens=length_limit(cfg.rollout, step))
        trainer.temperature = p.temperature.value
        with timer("curriculum"):
            stage_stats = source.start_stage(step, lambda problems, k: successes(rollout, problems, k, gen))
        # 1. rollout: n samples per prompt, rewarded; dynamic sampling drops groups with no signal
        with timer("rollout"):
            batch, seen, sampling_stats = sample_batch(rollout, source, cfg.rollout.prompts_per_step,
                                                       cfg.algo.dynamic_sampling, cfg.algo.max_sample_rounds, gen)
        # 2. advantages: group-normalised rewards, one value per sequence
        advantages = {}
        if batch:
            adv = group_advantages(torch.tensor([[s.reward for s in g] for g in batch]), cfg.algo.scale_adv_by_std)
            advantages = {id(s): float(a) for g, row in zip(batch, adv) for s, a in zip(g, row)}
        # 3. train, 4. push the new weights into the engine in place
        samples = [s for g in batch for s in g]
        with timer("train"):
            stats = trainer.step(samples, advantages) if samples else {}
        with timer("sync"):
            pushed = weight_sync.push(policy, engine, version=step)  # seconds: time/sync_s
        stats.update(sync_bytes=pushed["sync/bytes"], sync_buckets=pushed["sync/buckets"])
        # 5. log: every sampled trajectory, and one metrics row
        all_samples = [s for g in seen for s in g]
        run_dir.log_trajectories([s.record(step) for s in all_samples])
        metrics = step_metrics(all_samples)
        metrics.update({
            "groups_trained": len(batch), "max_new_tokens": rollout.params.max_new_tokens,
            **source.stats(), **(stage_stats or {}),
            **{f"sampling/{k}": v for k, v in sampling_stats.items()},
            **reward.pop_stats(), **stats,
        })
        # 6. periodic eval and checkpoint
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            with timer("eval"):
                last_eval = p.evaluate(engine, cfg, run_dir, step)
            metrics["eval_pass@1"] = last_eval["summary"]["pass@1"]
        with timer("temperature"):  # on a reward plateau, re-pick the temperature on held-out prompts
            metrics.update(p.temperature.after_step(metrics.get("reward_mean"),
                                                    lambda t: p.score_temperature(engine, cfg, t)))
        metrics["time/step_s"] = time.perf_counter() - t_step
        metrics.update(timer)
        metrics.update(memory_metrics(p.device))  # GPU only: peak and reserved memory of the step
        run_dir.log_metrics(step, metrics)
        if progress:
            progress(step, metrics)
        if step % cfg.save_every == 0 or step == cfg.steps:
            run_dir.save_checkpoint(step, policy, tok, p.checkpoint_state(),
                                    merged=cfg.train.lora.save_merged or step == cfg.steps)
    return last_eval
