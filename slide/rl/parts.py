"""What both RL drivers build before their loop: tokenizer, policy and trainer, the prompt source and the
held-out set, verifiers and sampling parameters; restored from a checkpoint when resuming."""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from slide.config import RLConfig
from slide.device import generator, precision_for, resolve_device
from slide.engine import DTYPES, make_engine
from slide.engine.inprocess import SamplingParams
from slide.eval.passk import evaluate, verifiers
from slide.model.load import load_policy
from slide.model.lora import add_lora
from slide.model.tokenizer import stop_token_ids, tokenizer_for
from slide.rl.curriculum import make_source
from slide.rl.data import PromptSource, eval_problems
from slide.rl.reward import RewardRunner, by_family
from slide.rl.temperature import DynamicTemperature
from slide.rl.trainer import PolicyTrainer
from slide.rundir import load_state, rng_state, set_rng_state
from slide.tasks import parse_task_specs
from slide.tasks.user_reward import load_reward
from slide.watchdog import boundary_checkpoint
from slide.weights.buckets import WeightSync
from slide.tasks.base import Problem


@dataclass
class Parts:
    tok: object
    policy: torch.nn.Module
    trainer: PolicyTrainer
    held_out: list[Problem]
    source: PromptSource  # or a curriculum over it (slide/rl/curriculum.py)
    verify: dict  # family -> verify(problem, response)
    sampling: SamplingParams
    generator: torch.Generator  # the rollout sampling stream
    start: int  # the last finished step (0 for a fresh run)
    state: dict  # the checkpoint's saved state ({} for a fresh run)
    temperature: DynamicTemperature  # the rollout temperature, re-picked on reward plateaus when dynamic
    device: torch.device  # where the trainer, the in-process engine and the generator are (cfg.device resolved)
    rollout_precision: str  # cfg.rollout.precision with "auto" resolved for the device
    weight_sync: WeightSync  # how weights travel to the engines (rollout precision, bucket size)
    placement: object = None  # slide.cluster.placement.Placement when trainer ranks or engines are Ray actors
    dynamic_sampling: bool = True  # algo.dynamic_sampling, "auto" decided by the readiness check (slide/rl/readiness.py)

    def reward_runner(self, spec) -> RewardRunner:
        return reward_runner(self.verify, spec)

    def evaluate(self, engine, cfg: RLConfig, run_dir, step: int) -> dict:
        """Greedy pass@1 on the held-out problems with `engine`'s weights, logged to eval.jsonl."""
        result = held_out_eval(engine, self.tok, self.held_out, self.verify, cfg)
        run_dir.log_eval(step, result)
        return result

    def score_temperature(self, engine, cfg: RLConfig, temperature: float) -> float:
        """Held-out sampled pass@1 at `temperature` (dynamic temperature's candidates are scored by it)."""
        t = cfg.temperature
        result = evaluate(engine, self.tok, self.held_out[:t.eval_prompts], self.verify, k=t.eval_k,
                          temperature=temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                          thinking=cfg.rollout.thinking, generator=self.generator, agent=cfg.agent)
        return result["summary"]["pass@1"]

    def boundary(self, run_dir, step: int) -> Callable[[], Path | None]:
        """For the watchdog, at the start of `step`: a function that writes the checkpoint of step - 1 (exactly
        what the periodic save would have written then) if no update has changed the weights since, else
        returns None. What the step changes besides the weights (data position, RNG) is snapshot now."""
        snap = copy.deepcopy({"source": self.source.state_dict(), "generator": self.generator.get_state(),
                              "temperature": self.temperature.state_dict(), "rng": rng_state(),
                              **device_state(self.device)})
        updates = self.trainer.updates

        def save() -> Path | None:
            return boundary_checkpoint(run_dir, step - 1, lambda: self.trainer.updates != updates,
                                       lambda: self.save(run_dir, step - 1, snap))
        return save

    def checkpoint_state(self) -> dict:
        """What a checkpoint needs beyond the weights and the trainer to continue exactly (sync mode)."""
        return {"source": self.source.state_dict(), "generator": self.generator.get_state(),
                "temperature": self.temperature.state_dict(), **device_state(self.device)}

    def save(self, run_dir, step: int, state: dict, merged: bool = True) -> Path:
        """Checkpoint `step`: the weights and the trainer's state (a trainer group writes its shards and the
        consolidated HF folder itself), plus `state`."""
        if self.policy is None:
            return run_dir.write_checkpoint(step, lambda folder: {"trainer": self.trainer.save(folder)}, self.tok,
                                            state)
        return run_dir.save_checkpoint(step, self.policy, self.tok, {"trainer": self.trainer.state_dict(), **state},
                                       merged=merged)

    def engine(self, cfg: RLConfig, kind: str | None = None, group: bool = True):
        """The rollout engine of `kind` (default rollout.engine): an engine group of rollout.engines Ray actors,
        or one in this process (colocated with a one-process trainer at fp32, it reads the policy's weights).
        Its weights come with the first `push`."""
        if group and self.placement is not None and self.placement.engines:
            from slide.cluster.engines import EngineGroup
            return EngineGroup(cfg, self.placement)
        model = self.policy if self.policy is not None else \
            load_policy(cfg.model.init, cfg.model.size, self.tok, cfg.seed, device=self.device)  # a trainer group's
        return make_engine(kind or cfg.rollout.engine, model, self.tok.pad_token_id, self.rollout_precision, cfg.seed,
                           share=self.policy is not None and kind is None, record_routes=cfg.algo.routing_replay,
                           sleep_level=cfg.rollout.vllm_sleep if kind is None else 0)

    def push(self, engine, version: int) -> dict[str, float]:
        """The policy's current weights into `engine` as `version` (in place); sync stats."""
        if self.placement is None:
            return self.weight_sync.push(self.policy, engine, version)
        from slide.cluster.weights import push
        return push(self.weight_sync, self.trainer if self.policy is None else self.policy, engine, version)

    def publish(self, version: int) -> tuple[list, int]:
        """One version's buckets for Ray actors (async workers), and their bytes: host-memory buckets from a
        one-process trainer, object-store refs from a trainer group (gathered from its shards)."""
        if self.policy is None:
            return self.trainer.publish(version, self.weight_sync)
        buckets = [b.to("cpu") for b in self.weight_sync.buckets(self.policy, version)]
        return buckets, sum(b.nbytes for b in buckets)

    def close(self) -> None:
        if self.policy is None:
            self.trainer.close()
        if self.placement is not None:
            self.placement.remove()


def held_out_eval(engine, tok, held_out: list[Problem], verify: dict, cfg: RLConfig) -> dict:
    """The runs' periodic eval: greedy pass@1 on the held-out problems with `engine`'s weights, and chance (the
    same answers scored against other prompts' problems, slide/eval/chance.py; `eval_chance`) so a gain that luck
    explains says so (both drivers, and async mode's background evaluator, score through this one function)."""
    return evaluate(engine, tok, held_out, verify, k=1, max_new_tokens=cfg.rollout.max_new_tokens,
                    thinking=cfg.rollout.thinking, agent=cfg.agent, chance=cfg.eval_chance)


def sampling_params(cfg: RLConfig, tok) -> SamplingParams:
    return SamplingParams(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                          max_new_tokens=cfg.rollout.max_new_tokens, stop_token_ids=tuple(stop_token_ids(tok)))


def reward_runner(verify: dict, spec) -> RewardRunner:
    """The run's verifiers scored in the call pool under rollout spec's timeout and worker count."""
    return RewardRunner(by_family(verify), spec.reward_timeout_s, spec.reward_workers)


def device_state(device: torch.device) -> dict:
    """What a checkpoint records of the device (its generator's state only fits a generator on that kind)."""
    return {} if device.type == "cpu" else {"device": device.type}  # a CPU run's checkpoints stay as they were


def policy_and_trainer(cfg: RLConfig, tok, device: torch.device, ckpt=None, shard=None):
    """The policy (fp32 master weights; the checkpoint's, or model.init's) and its PolicyTrainer. shard: a trainer
    rank's FSDP2 loading, `shard(build, autocast) -> model`, where build(where) makes a model on `where` (the
    device, or META: the architecture with no storage); the policy and the reference are sharded before the
    optimizer is made (slide/cluster/loading.py)."""
    lora = cfg.train.lora
    autocast = DTYPES[precision_for(cfg.train.precision, device)]

    def policy(where: torch.device):
        if lora.rank:  # LoRA: the frozen base from model.init, the adapter (and router biases) from the checkpoint
            return add_lora(load_policy(cfg.model.init, cfg.model.size, tok, cfg.seed, device=device), lora,
                            cfg.seed, ckpt / "adapter" if ckpt else None)  # peft wraps a whole model: never META
        # fp32 master weights; train.precision sets the autocast
        return load_policy(str(ckpt / "model") if ckpt else cfg.model.init, cfg.model.size, tok, cfg.seed,
                           device=where)

    def reference(where: torch.device):  # the initial policy, run as the policy is (fp32 weights, the same
        return load_policy(cfg.model.init, cfg.model.size, tok, cfg.seed, device=where)  # autocast): KL 0 at first

    load = (lambda build: build(device)) if shard is None else (lambda build: shard(build, autocast))
    model = load(policy)
    ref = load(reference) if cfg.algo.kl_coef > 0 else None
    trainer = PolicyTrainer(model, cfg.train, cfg.algo, cfg.rollout.temperature, tok.pad_token_id,
                            cfg.model.router_bias_rate, ref_model=ref, autocast=autocast)
    return model, trainer


def build(cfg: RLConfig, ckpt=None) -> Parts:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # every device's global stream
    tok = tokenizer_for(cfg.model.init, cfg.model.tool_format)  # the checkpoint's own, or the built-in model's
    placement = None
    if cfg.train.world_size > 1 or (cfg.mode == "sync" and cfg.rollout.engines > 1):
        from slide.cluster.placement import Placement, start_ray
        start_ray(cfg)
        placement = Placement.for_run(cfg)  # one placement group for the job's trainer ranks and engines
    if cfg.train.world_size > 1:  # FSDP2 ranks on Ray hold the policy; the driver keeps a handle
        from slide.cluster.trainer_group import TrainerGroup
        policy, trainer = None, TrainerGroup(cfg, ckpt, placement)
    else:
        policy, trainer = policy_and_trainer(cfg, tok, device, ckpt)
    user_reward = load_reward(cfg.data.reward)
    train_specs = parse_task_specs(cfg.data.train, user_reward)  # datasets are read once
    eval_specs = parse_task_specs(cfg.data.eval, user_reward) if cfg.data.eval else train_specs
    held_out = eval_problems(eval_specs, cfg.data.eval_prompts, cfg.seed)
    source = make_source(cfg.curriculum, PromptSource(train_specs, cfg.seed, held_out))
    sampling = sampling_params(cfg, tok)
    gen = generator(device, cfg.seed)  # where the engine samples (vLLM draws its seeds from it on any device)
    temperature = DynamicTemperature(cfg.temperature, cfg.rollout.temperature)
    parts = Parts(tok, policy, trainer, held_out, source, verifiers(train_specs + eval_specs), sampling, gen, 0, {},
                  temperature, device, precision_for(cfg.rollout.precision, device),
                  WeightSync(precision_for(cfg.rollout.precision, device), cfg.rollout.sync_bucket_mb), placement,
                  cfg.algo.dynamic_sampling is True)  # auto: off until the readiness check finds the signal thin
    if ckpt is not None:
        state = load_state(ckpt)
        trainer.load_state_dict(state["trainer"], ckpt)
        source.load_state_dict(state["source"])
        if state.get("device", "cpu") == device.type:
            gen.set_state(state["generator"])
        else:  # a generator's state fits only its device kind: continue, sampling from a fresh stream
            gen.manual_seed(cfg.seed * 1_000_003 + state["step"])
            print(f"resume: {ckpt} was written on {state.get('device', 'cpu')}, this run is on {device.type}: "
                  "sampling continues from a fresh seed (not bit-exact with an uninterrupted run)",
                  file=sys.stderr, flush=True)
        if "temperature" in state:
            temperature.load_state_dict(state["temperature"])
        set_rng_state(state["rng"])
        parts.start, parts.state = state["step"], state
    return parts
