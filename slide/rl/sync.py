"""Colocated synchronous RL: generate -> reward -> advantages -> train -> push weights, strictly on-policy.

    slide rl slide/configs/demo_rl.yaml model.init=runs/sft/final steps=100
    slide rl --resume runs/rl            # continue a killed run; same metrics as never stopped

The trainer and the in-process engine share the process (and the CPU, or the GPU of `device`) and take turns.
With train.world_size > 1 the trainer is a group of FSDP2 ranks, with rollout.engines > 1 the engine a group of
engine actors (slide/cluster/): the loop below is the same.
"""
from __future__ import annotations

import time
from dataclasses import replace

from slide.config import RLConfig
from slide.device import memory_metrics
from slide.engine import close_engine, sleep_engine
from slide.eval.passk import eval_metrics
from slide.rl.metrics import Timer, step_metrics
from slide.rl.curriculum import successes
from slide.rl.parts import build
from slide.rl.readiness import RunReadiness
from slide.rl.rollout import Rollout, length_limit, sample_batch
from slide.rl.sample import set_advantages
from slide.rundir import RunDir
from slide.watchdog import Watchdog


def run(cfg: RLConfig, run_dir: RunDir, ckpt=None, progress=None) -> dict:
    """Train for cfg.steps steps in `run_dir` (continuing from `ckpt` if given). Returns the last eval."""
    p = build(cfg, ckpt)  # the trainer: this process, or train.world_size FSDP2 ranks (slide/cluster/)
    try:
        # colocated: at fp32 the engine reads the policy's weights, no copy (LoRA: the frozen ones, the adapted are its
        # own); rollout.engines > 1: a group of Ray actors; routing_replay: it records each token's experts
        engine = p.engine(cfg)
        try:
            with Watchdog(run_dir.path, cfg.watchdog_s) as dog:  # a stalled step ends the run with its stacks
                return _train(cfg, run_dir, p, engine, dog, progress)
        finally:
            close_engine(engine)
    finally:
        p.close()


def _train(cfg: RLConfig, run_dir: RunDir, p, engine, dog: Watchdog, progress) -> dict:
    """The RL loop: one iteration per step, with `engine` holding the rollout copy of the weights."""
    tok, trainer, gen = p.tok, p.trainer, p.generator
    p.push(engine, version=p.start)  # the engine holds rollout-precision weights from the start
    reward = p.reward_runner(cfg.rollout)
    rollout = Rollout(engine, tok, p.sampling, cfg.rollout.n, reward, cfg.rollout.thinking, cfg.agent, cfg.seed,
                      cfg.rollout.force_answer_tokens if cfg.rollout.force_answer else 0)

    ready = RunReadiness(cfg, p)  # a fresh run first checks the start gives GRPO a signal (and may act on it)
    pending = ready.before_training(run_dir, engine) if p.start == 0 else {}
    last_eval = None
    for step in range(p.start + 1, cfg.steps + 1):
        timer = Timer()
        t_step = time.perf_counter()
        dog.at_step(step, p.boundary(run_dir, step))  # on a stall: the checkpoint of step - 1, if still intact
        # 0. schedule: this step's temperature and output-length limit; a curriculum stage measures its pool
        rollout.params = replace(p.sampling, temperature=p.temperature.value,
                                 max_new_tokens=length_limit(cfg.rollout, step))
        trainer.temperature = p.temperature.value
        source = p.source  # the readiness check may have switched a curriculum on
        with timer("curriculum"):
            stage_stats = source.start_stage(step, lambda problems, k: successes(rollout, problems, k, gen))
        # 1. rollout: n samples per prompt, rewarded; dynamic sampling drops groups with no signal
        with timer("rollout"):
            batch, seen, sampling_stats = sample_batch(rollout, source, cfg.rollout.prompts_per_step,
                                                       p.dynamic_sampling, cfg.algo.max_sample_rounds, gen)
        # 2. advantages: group-normalised rewards, one value per sequence
        set_advantages(batch, cfg.algo.scale_adv_by_std)
        # 3. train (vLLM on a GPU with rollout.vllm_sleep lends the trainer its memory), 4. push the new weights
        # into the engine in place (waking it)
        sleep_engine(engine)
        samples = [s for g in batch for s in g]
        with timer("train"):
            stats = trainer.step(samples) if samples else {}
        with timer("sync"):
            pushed = p.push(engine, version=step)  # seconds: time/sync_s
        stats.update(sync_bytes=pushed["sync/bytes"], sync_buckets=pushed["sync/buckets"])
        # 5. log: every sampled trajectory, and one metrics row
        all_samples = [s for g in seen for s in g]
        run_dir.log_trajectories([s.record(step) for s in all_samples])
        metrics = step_metrics(all_samples)
        metrics.update({
            "groups_trained": len(batch), "max_new_tokens": rollout.params.max_new_tokens,
            **source.stats(), **(stage_stats or {}),
            **{f"sampling/{k}": v for k, v in sampling_stats.items()},
            **reward.pop_stats(), **stats, **getattr(engine, "pop_counts", dict)(),  # engine group replacements, vLLM's sleep
            **pending,
        })
        pending = {}
        # 6. periodic eval and checkpoint
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            with timer("eval"):
                last_eval = p.evaluate(engine, cfg, run_dir, step)
            metrics.update(eval_metrics(last_eval["summary"]))
        with timer("temperature"):  # on a reward plateau, re-pick the temperature on held-out prompts
            metrics.update(p.temperature.after_step(metrics.get("reward_mean"),
                                                    lambda t: p.score_temperature(engine, cfg, t), step,
                                                    lambda t: ready.signal(engine, t)))
        metrics["time/step_s"] = time.perf_counter() - t_step
        metrics.update(timer)
        metrics.update(memory_metrics(p.device))  # GPU only: peak and reserved memory of the step
        run_dir.log_metrics(step, metrics)
        if progress:
            progress(step, metrics)
        if step % cfg.save_every == 0 or step == cfg.steps:
            p.save(run_dir, step, p.checkpoint_state(), merged=cfg.train.lora.save_merged or step == cfg.steps)
    return last_eval
