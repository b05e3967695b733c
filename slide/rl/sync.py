"""Colocated synchronous RL: generate -> reward -> advantages -> train -> push weights, strictly on-policy.

    slide rl slide/configs/demo_rl.yaml model.init=runs/sft/final steps=100
    slide rl --resume runs/rl            # continue a killed run; same metrics as never stopped

The trainer and the in-process engine share the process (and the CPU) and take turns.
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager

import torch

from slide.algo.grpo import group_advantages
from slide.config import RLConfig, dump_config
from slide.engine.inprocess import InProcessEngine, SamplingParams
from slide.eval.passk import evaluate, verifiers
from slide.model.load import load_policy
from slide.model.tokenizer import load_tokenizer, stop_token_ids
from slide.rl.data import PromptSource, eval_problems
from slide.rl.reward import RewardRunner
from slide.rl.rollout import sample_batch
from slide.rl.trainer import PolicyTrainer
from slide.rundir import RunDir, load_state, set_rng_state
from slide.tasks import parse_task_specs


class Timer(dict):
    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self[f"time/{phase}_s"] = self.get(f"time/{phase}_s", 0.0) + time.perf_counter() - t0


def run(cfg: RLConfig, run_dir: RunDir, ckpt=None, progress=None) -> dict:
    """Train for cfg.steps steps in `run_dir` (continuing from `ckpt` if given). Returns the last eval."""
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer()
    policy = load_policy(str(ckpt / "model") if ckpt else cfg.model.init, cfg.model.size, tok, cfg.seed)
    engine = InProcessEngine(copy.deepcopy(policy), pad_token_id=tok.pad_token_id)
    ref = load_policy(cfg.model.init, cfg.model.size, tok, cfg.seed) if cfg.algo.kl_coef > 0 else None  # the initial policy
    trainer = PolicyTrainer(policy, cfg.train, cfg.algo, cfg.rollout.temperature, tok.pad_token_id,
                            cfg.model.router_bias_rate, ref_model=ref)
    train_specs = parse_task_specs(cfg.data.train)  # datasets are read once
    eval_specs = parse_task_specs(cfg.data.eval) if cfg.data.eval else train_specs
    held_out = eval_problems(eval_specs, cfg.data.eval_prompts, cfg.seed)
    source = PromptSource(train_specs, cfg.seed, held_out)
    verify = verifiers(train_specs + eval_specs)
    reward = RewardRunner(lambda p, r: verify[p.family](p, r), cfg.rollout.reward_timeout_s)
    sampling = SamplingParams(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                              max_new_tokens=cfg.rollout.max_new_tokens, stop_token_ids=tuple(stop_token_ids(tok)))
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    if ckpt is not None:
        state = load_state(ckpt)
        trainer.load_state_dict(state["trainer"])
        source.load_state_dict(state["source"])
        gen.set_state(state["generator"])
        set_rng_state(state["rng"])
        start = state["step"]
    engine.version = start

    def do_eval(step: int) -> dict:
        result = evaluate(engine, tok, held_out, verify, k=1, max_new_tokens=cfg.rollout.max_new_tokens,
                          thinking=cfg.rollout.thinking)
        run_dir.log_eval(step, result)
        return result

    last_eval = None
    for step in range(start + 1, cfg.steps + 1):
        timer = Timer()
        t_step = time.perf_counter()
        # 1. rollout: n samples per prompt, rewarded; dynamic sampling drops groups with no signal
        with timer("rollout"):
            batch, seen, sampling_stats = sample_batch(
                engine, tok, source, sampling, cfg.rollout.n, cfg.rollout.prompts_per_step, reward,
                cfg.rollout.thinking, cfg.algo.dynamic_sampling, cfg.algo.max_sample_rounds, generator=gen)
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
            engine.load_weights(policy.state_dict().items(), version=step)
        # 5. log: every sampled trajectory, and one metrics row
        all_samples = [s for g in seen for s in g]
        run_dir.log_trajectories([s.record(step) for s in all_samples])
        rewards = torch.tensor([s.reward for s in all_samples])
        metrics = {
            "reward_mean": float(rewards.mean()),
            "pass_rate": float((rewards >= 1.0).float().mean()),
            "response_len_mean": sum(len(s.response_ids) for s in all_samples) / len(all_samples),
            "truncated_frac": sum(s.status == "truncated" for s in all_samples) / len(all_samples),
            "groups_trained": len(batch),
            **{f"sampling/{k}": v for k, v in sampling_stats.items()},
            **reward.pop_stats(), **stats,
        }
        # 6. periodic eval and checkpoint
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            with timer("eval"):
                last_eval = do_eval(step)
            metrics["eval_pass@1"] = last_eval["summary"]["pass@1"]
        metrics["time/step_s"] = time.perf_counter() - t_step
        metrics.update(timer)
        run_dir.log_metrics(step, metrics)
        if progress:
            progress(step, metrics)
        if step % cfg.save_every == 0 or step == cfg.steps:
            run_dir.save_checkpoint(step, policy, tok, {
                "trainer": trainer.state_dict(), "source": source.state_dict(), "generator": gen.get_state()})
    return last_eval
