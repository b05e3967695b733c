"""Typed run configs (pydantic): YAML file + `key=value` overrides, validated at construction.

    cfg = load_config(RLConfig, "slide/configs/demo_rl.yaml", ["rollout.n=4", "steps=20"])

Every problem is reported at once, on one line, with the file and the field path and what is allowed.
Configs are frozen: derived values live elsewhere, never written back.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from slide.device import DEVICES, check_device_spec
from slide.errors import UserError

Device = Annotated[str, BeforeValidator(check_device_spec)]  # its own message for a non-string too
DEVICE_HELP = f"{DEVICES}: where the trainer, the in-process engine and sampling run (auto: CUDA when present)"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Section):
    init: str | None = Field(None, description="HF checkpoint folder to start from; None = random init at `size`")
    size: Literal["test", "demo"] = Field("test", description="tiny glm4_moe size for random init")
    router_bias_rate: float = Field(1e-3, ge=0, description="GLM loss-free balance: expert bias step per update")
    tool_format: Literal["auto", "glm", "hermes", "llama3_json"] = Field(
        "auto", description="how the model writes tool calls (slide/model/tool_formats.py): glm = GLM-4.5's XML, "
                            "hermes = Hermes/Qwen JSON in <tool_call>, llama3_json = Llama-3.1's JSON turn; "
                            "auto = the one its chat template writes")


class LoraSpec(Section):
    """LoRA adapters (peft) instead of full fine-tuning; see slide/model/lora.py."""
    rank: int = Field(0, ge=0, description="adapter rank r; 0 = off (every weight trains)")
    alpha: float = Field(16.0, gt=0, description="the update is (alpha / rank) * B @ A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input while training (peft refuses "
                                                        "it on fused MoE expert parameters)")
    target_modules: list[str] | None = Field(
        None, description="names of the modules to adapt, matched against the end of each module path; None = those "
                          "of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj the model has. On glm4_moe "
                          "(fused experts) peft maps gate/up/down_proj onto the routed experts (one adapter each); the "
                          "shared experts, the dense first layer's MLP and the router stay frozen")
    save_merged: bool = Field(True, description="write the merged full HF folder model/ (what slide eval, model.init "
                                                "and the FP8 export load) into every checkpoint; false: checkpoints "
                                                "hold the adapter (adapter/, peft's format) alone, except the last")


class TrainSpec(Section):
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (1e-4 is the robust tiny-GLM RL default)")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = Field(1.0, gt=0, description="max global grad norm")
    micro_batch: int = Field(32, ge=1, description="sequences per forward/backward pass")
    freeze_router: bool = Field(False, description="keep the MoE routers' weights fixed (no gradient), so "
                                                   "training moves the experts, not which experts a token uses")
    updates_per_step: int = Field(1, ge=1, description="optimizer updates per rollout batch: 1 = on-policy; k > 1 "
                                                       "splits the batch into k mini-batches of whole groups, "
                                                       "clipped against the weights before the first (PPO-style: "
                                                       "the rollout policy in sync mode, the proximal policy in "
                                                       "async, where the step then trains once all its groups "
                                                       "are in instead of each as it arrives)")
    warmup_steps: int = Field(0, ge=0)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="trainer compute: bf16 = autocast forward/backward, fp32 master weights and AdamW state "
                            "(GLM's BF16 training); fast where bf16 matmuls are native (GPUs, CPUs with AMX), "
                            "slower than fp32 on the tiny models here and on CPUs without native bf16; "
                            "auto = bf16 on a GPU, fp32 on the CPU")
    compile: bool = Field(False, description="torch.compile the trainer's forward/backward (dynamic shapes): fuses "
                                             "the elementwise ops and, on a CPU, runs eager attention there (the CPU "
                                             "flash-attention backward is slow in bf16); pays off on larger dense "
                                             "models (~1.6x per update on the 25M benchmark model in bf16), not on "
                                             "the tiny MoE sizes; costs ~1 min of compilation at the first update")
    gradient_checkpointing: bool = Field(False, description="recompute each layer's activations in the backward "
                                                            "pass instead of keeping them: less memory for "
                                                            "long or many sequences, about one more forward of "
                                                            "compute (TRL's GRPOTrainer default)")
    lora: LoraSpec = Field(LoraSpec(), description="train.lora.rank > 0: LoRA adapters (usually with a ~10x higher "
                                                   "train.lr); the engines get the merged weights")
    world_size: int = Field(1, ge=1, description="trainer processes: 1 = this process (no Ray, no FSDP); N > 1 = N "
                                                 "Ray actors training one FSDP2-sharded policy (slide/cluster/), "
                                                 "gloo on a CPU, NCCL on GPUs")
    offload: bool = Field(False, description="world_size > 1: parameters, gradients and optimizer state in host "
                                             "memory between uses (FSDP2 CPUOffloadPolicy)")
    rank_threads: int = Field(1, ge=1, description="world_size > 1: torch threads per trainer rank")


class RolloutSpec(Section):
    prompts_per_step: int = Field(16, ge=1, description="groups per training step")
    n: int = Field(8, ge=2, description="samples per prompt (group size)")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1)
    thinking: bool = Field(True, description="GLM thinking mode (False appends /nothink and an empty think block)")
    reward_timeout_s: float = Field(5.0, gt=0, description="a reward call slower than this is killed (with its "
                                                           "worker process), scores 0 and is counted")
    reward_workers: int = Field(2, ge=1, description="worker processes that run verifiers and environment calls "
                                                     "(slide/callpool.py), per process that rolls out")
    engine: Literal["inprocess", "vllm"] = Field(
        "inprocess", description="rollout engine: inprocess (HF model + KV cache, this process) or vllm "
                                 "(optional extra: bash scripts/setup_vllm.sh, run in .venv-vllm; mode=sync)")
    precision: Literal["auto", "fp32", "bf16", "fp8"] = Field(
        "auto", description="rollout weights as pushed to the engines: fp8 = GLM's block-wise e4m3 (128x128 blocks); "
                            "the engines compute in bf16 for bf16 and fp8 (fp8 dequantized on receipt), fp32 for fp32; "
                            "auto = bf16 on a GPU, fp32 on the CPU")
    sync_bucket_mb: float = Field(256.0, gt=0, description="weight-sync bucket size, MiB")
    engines: int = Field(1, ge=1, description="mode=sync: rollout engines; 1 = in the driver's process, N > 1 = N "
                                              "Ray actors sharing each generate call's prompts (mode=async: "
                                              "disagg.workers)")
    engine_threads: int = Field(1, ge=1, description="engines > 1: torch threads per engine actor")
    weight_transport: Literal["torch", "ray"] = Field(
        "torch", description="engines > 1: how pushes reach the engine actors: torch = a torch.distributed group of "
                             "their own with the trainer (rank 0 of a trainer group) as sender (gloo on CPUs, NCCL on "
                             "GPUs); ray = one copy in the Ray object store that every engine reads")
    vllm_sleep: int = Field(0, ge=0, le=2, description="engine=vllm colocated with the trainer on a GPU: vLLM's "
                                                       "sleep level while the trainer steps (0 off; 1 weights to "
                                                       "host memory, KV cache freed; 2 both freed, the next push "
                                                       "refills the weights); the push wakes it")
    length_stages: list[tuple[int, int]] = Field(
        [], description="output-length schedule for training rollouts: [[from_step, max_new_tokens], ...] with "
                        "growing limits; [] = single stage at max_new_tokens (evaluation always uses max_new_tokens)")
    force_answer: bool = Field(False, description="a thinking response cut at the limit gets `</think>` inserted "
                                                  "(not trained on) and force_answer_tokens more to answer")
    force_answer_tokens: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _stages_grow(self):
        steps = [s for s, _ in self.length_stages]
        if steps and (steps[0] != 1 or steps != sorted(set(steps))):
            raise ValueError("length_stages: from_step values must start at 1 and increase strictly")
        bad = [n for _, n in self.length_stages if not 1 <= n <= self.max_new_tokens]
        if bad:
            raise ValueError(f"length_stages: max_new_tokens {bad[0]} outside 1..rollout.max_new_tokens "
                             f"({self.max_new_tokens}, the full limit)")
        return self


class AlgoSpec(Section):
    scale_adv_by_std: bool = Field(True, description="GRPO: divide by group std (False: Dr.GRPO-style)")
    clip_low: float = Field(0.2, ge=0, lt=1)
    clip_high: float = Field(0.28, ge=0, description="clip-higher: upper ratio bound 1 + clip_high")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    kl_coef: float = Field(0.0, ge=0, description="k3 KL to the initial policy; GLM uses none")
    importance: Literal["tis", "mis", "decoupled", "none"] = Field(
        "tis", description="correction of the engine-vs-trainer mismatch, per token, by the ratio of the trainer's "
                           "pre-step logprobs to the engine's: tis = weight min(ratio, tis_cap); mis = masked IS "
                           "(IcePop, GLM-5's double-sided masking): weight ratio inside [1/mis_bound, mis_bound], "
                           "token dropped outside; decoupled = AReaL's decoupled PPO for stale async samples: the "
                           "clip is against the proximal policy (the trainer's weights before the step's first "
                           "update), the weight is ratio where <= decoupled_cap, token dropped above; a trust "
                           "region only with train.updates_per_step > 1 (with one update it is a masked TIS); none")
    tis_cap: float = Field(2.0, gt=0, description="truncated importance weight cap vs the engine's logprobs")
    mis_bound: float = Field(2.0, gt=1, description="mis: tokens whose engine/trainer ratio is outside "
                                                    "[1/mis_bound, mis_bound] are masked")
    decoupled_cap: float = Field(5.0, gt=1, description="decoupled: tokens whose proximal/behaviour ratio exceeds "
                                                        "this are dropped (AReaL's behav_imp_weight_cap)")
    dual_clip: float | None = Field(None, gt=1, description="dual-clip PPO: cap a negative-advantage token's loss at "
                                                            "dual_clip * |A| however far its ratio ran (None = off)")
    routing_replay: bool = Field(False, description="rollout routing replay (R3): the in-process engine records each "
                                                    "token's routed experts per MoE layer and the trainer's forward "
                                                    "routes to them (gate weights from its own router scores); "
                                                    "removes the routing part of the engine-vs-trainer mismatch. "
                                                    "Samples without routes (vLLM) route as usual, counted in "
                                                    "routing_replay_fallback")
    gap_threshold: float = Field(0.1, gt=0, description="log the share of tokens whose engine-vs-trainer logprob "
                                                        "gap exceeds this many nats (logprob_gap_frac_over)")
    dynamic_sampling: bool | Literal["auto"] = Field(
        True, description="drop groups whose rewards all agree; over-sample to refill. auto (sync mode): on when the "
                          "readiness check before step 1 finds the signal thin (under readiness.thin_share of groups), "
                          "else off; the choice is written to the run's config.yaml (async mode: auto is on)")
    max_sample_rounds: int = Field(4, ge=1, description="over-sampling rounds per step before training on fewer")


class CurriculumSpec(Section):
    """Difficulty curriculum (GLM-4.5 RL lesson 1; GLM-4.5V's RLCS). See slide/rl/curriculum.py."""
    mode: Literal["none", "rlcs", "two-stage"] = Field(
        "none", description="none: uniform over data.train; rlcs: each step re-weights a pool toward mid difficulty "
                            "from online pass rates; two-stage: a moderate pool, then an extreme pool from step "
                            "stage2_step, both measured with the current policy before the stage")
    pool: int = Field(256, ge=1, description="candidate problems held with difficulty estimates")
    target: float = Field(0.5, gt=0, lt=1, description="rlcs: the pass rate sampling weights peak at")
    width: float = Field(0.2, gt=0, description="rlcs: std of the Gaussian weight over estimated pass rate")
    prior_strength: float = Field(2.0, gt=0, description="rlcs: pseudo-trials of the (family, level) prior per problem")
    refresh_after: int = Field(4, ge=1, description="rlcs: a problem drawn this many times is replaced by a fresh one")
    moderate: tuple[float, float] = Field((0.1, 0.9), description="two-stage: stage-1 pass-rate band at k_small")
    stage2_step: int = Field(0, ge=0, description="two-stage: first step of stage 2 (extreme problems)")
    k_small: int = Field(8, ge=1, description="two-stage: samples per problem for the moderate band and pass@small = 0")
    k_large: int = Field(32, ge=2, description="two-stage: samples per problem that must include a success (pass@large > 0)")
    auto: bool = Field(False, description="with mode none: when the readiness check finds the signal thin, switch "
                                          "on rlcs (moderate difficulty, online) if the data has several levels or "
                                          "some measured prompts are moderate; recorded in the run's config.yaml")

    @model_validator(mode="after")
    def _stages(self):
        if self.mode == "two-stage" and self.stage2_step < 2:
            raise ValueError("curriculum.stage2_step must be >= 2 when mode is two-stage")
        if self.k_large <= self.k_small:
            raise ValueError(f"curriculum.k_large ({self.k_large}) must exceed k_small ({self.k_small})")
        lo, hi = self.moderate
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"curriculum.moderate {list(self.moderate)}: need 0 <= low < high <= 1")
        return self


class TemperatureSpec(Section):
    """Dynamic sampling temperature (GLM-4.5 RL lesson 3). See slide/rl/temperature.py."""
    dynamic: bool = Field(False, description="on a reward plateau, re-pick the rollout temperature on held-out data")
    candidates: list[float] = Field([0.0, 0.1, 0.2, 0.3], description="offsets added to the current temperature")
    tolerance: float = Field(0.01, ge=0, description="pick the highest candidate scoring within this of the best "
                                                     "(held-out sampled pass@1, absolute)")
    window: int = Field(8, ge=2, description="plateau: mean reward of the last `window` steps ...")
    min_delta: float = Field(0.01, ge=0, description="... improves on the window before by less than this")
    eval_prompts: int = Field(64, ge=1, description="held-out prompts scored per candidate")
    eval_k: int = Field(4, ge=1, description="samples per prompt per candidate")

    calibrate: bool = Field(False, description="pick the rollout temperature that maximises the expected share of "
                                               "groups with a reward signal (1 - p^n - (1-p)^n per prompt), measured "
                                               "on training prompts at each of calibrate_grid before step 1 and "
                                               "every recheck_every steps; it may lower as well "
                                               "as raise (slide/rl/readiness.py)")
    calibrate_grid: list[float] = Field([0.6, 0.8, 1.0, 1.2], description="calibrate: candidate temperatures")
    recheck_every: int = Field(40, ge=0, description="calibrate: re-measure every this many steps (0: on reward "
                                                     "plateaus instead)")
    signal_tolerance: float = Field(0.05, ge=0, description="calibrate: temperatures within this (or two standard "
                                                            "errors, on the same prompts) of the best signal share "
                                                            "tie: the current one stays, else the most accurate "
                                                            "(sampled pass@1) is taken")

    @model_validator(mode="after")
    def _offsets(self):
        if not self.candidates:
            raise ValueError("temperature.candidates: need a non-empty list of offsets (negative ones may lower it)")
        if not self.calibrate_grid or min(self.calibrate_grid) <= 0:
            raise ValueError("temperature.calibrate_grid: need a non-empty list of temperatures > 0")
        return self


class ReadinessSpec(Section):
    """The readiness check before RL (slide/rl/readiness.py): does sampling from the start give GRPO a signal?"""
    enabled: bool = Field(True, description="measure before step 1 of a fresh run (sync mode); logged to "
                                            "readiness.json, stderr and step 1's metrics (ready/*)")
    prompts: int = Field(32, ge=1, description="training prompts measured, rollout.n samples each "
                                                  "(at most 2 x rollout.prompts_per_step: about two steps' rollouts)")
    thin_share: float = Field(0.25, ge=0, le=1, description="below this share of groups with a reward signal the "
                                                            "signal is called thin (and curriculum.auto acts)")
    stop_if: Literal["never", "none", "thin"] = Field(
        "never", description="end a fresh run before step 1 (one error: line with the advice, exit 2; readiness.json "
                             "kept) when the check, after calibration, finds no group with a signal (none) or too few "
                             "or only by luck (thin; status chance): GRPO has nothing to learn from such a start")


class AgentSpec(Section):
    """Multi-turn episodes for agentic task families (calculator, function_call, python)."""
    max_turns: int = Field(4, ge=1, description="assistant turns per episode; past it: status truncated")
    max_tokens: int = Field(512, ge=1, description="response tokens per episode, model + environment")
    step_timeout_s: float = Field(10.0, gt=0, description="an env step slower than this becomes an error observation")
    latency_median_s: float = Field(0.0, ge=0, description="extra log-normal latency per env step (0 = none)")
    latency_sigma: float = Field(1.0, ge=0, description="log-space std of that latency (1.0: 5% of steps > 5x median)")
    latency_cap_s: float = Field(10.0, ge=0)


EVAL_IN_BACKGROUND = ("score each eval step's weights in an evaluator actor while the trainer goes on (results "
                      "logged at the step they arrive: eval_version, eval_lag_steps; slide/rl/evaluator.py); worth it "
                      "where the evaluator has a core of its own (on one shared core it slowed steps, "
                      "benchmarks/RESULTS.md 2026-12-03); False = on the trainer's path, as sync mode; CUDA runs "
                      "evaluate inline (the workers hold the GPU shares)")


class DisaggSpec(Section):
    """Disaggregated asynchronous mode (mode=async): Ray rollout workers that never wait for the trainer."""
    workers: int = Field(2, ge=1, description="rollout worker actors (each: an engine and its environments)")
    groups_per_call: int = Field(1, ge=1, description="prompt groups a worker takes per call")
    calls_per_worker: int = Field(1, ge=1, description="calls a worker runs at once; their episodes share its "
                                                       "engine (continuous batching)")
    max_staleness: int = Field(1, ge=0, description="train only on groups sampled at most this many versions back")
    sync_interval: int = Field(1, ge=1, description="push weights to the workers every this many steps")
    partial_rollout: bool = Field(False, description="on a weight push, abort multi-turn episodes between turns "
                                                     "and re-queue them (False: they finish on the old version)")
    worker_threads: int = Field(1, ge=1, description="torch threads per worker (and for the evaluator)")
    eval_in_background: bool = Field(False, description=EVAL_IN_BACKGROUND)


class ClusterSpec(Section):
    """Where Ray puts the processes of a run (slide/cluster/placement.py): one placement group per job."""
    ray_address: str | None = Field(None, description="join this Ray cluster (`auto`: the one `ray start --head` "
                                                      "started); None = start Ray on this machine")
    gpus_per_node: int = Field(0, ge=0, description="GPUs Ray declares on this machine when it starts Ray itself "
                                                    "(0 = none; on a CPU machine a number > 0 fakes them: Ray only "
                                                    "places by them, for placement tests)")
    trainer_gpus: int = Field(0, ge=0, description="GPUs for the trainer ranks (one per rank); 0 = the CPU")
    rollout_gpus: int = Field(0, ge=0, description="GPUs for the rollout engines or workers (one each); 0 = the "
                                                   "CPU or, with colocate, the trainers' GPUs")
    colocate: bool = Field(False, description="engine i shares trainer rank i's bundle (its GPU): they alternate "
                                              "(mode=sync); False = separate bundles (disaggregated)")


class DataSpec(Section):
    train: str = Field("arithmetic:2", description="task spec: FAMILY[:LEVELS],... or a .jsonl/.parquet path")
    eval: str | None = Field(None, description="held-out spec; default: same as train with other seeds")
    eval_prompts: int = Field(100, ge=1)
    reward: str | None = Field(None, description="MODULE:FUNCTION scoring the rows of JSONL/Parquet datasets, "
                                                 "(problem, response_text) -> float in [0, 1] "
                                                 "(slide/tasks/user_reward.py); None = the built-in answer check")


class RLConfig(Section):
    name: str = "rl"
    out_dir: str = "runs"
    seed: int = 0
    steps: int = Field(50, ge=1)
    eval_every: int = Field(10, ge=0, description="0 = only at the end")
    eval_chance: bool = Field(True, description="held-out evals also score each answer against another prompt's "
                              "problem (eval_chance_pass@1, eval_lucky; slide/eval/chance.py): one more verifier "
                              "call per answer (a sandbox run for code)")
    save_every: int = Field(10, ge=1)
    threads: int = Field(0, ge=0, description="torch threads; 0 = torch's default (one per physical core)")
    device: Device = Field("auto", description=DEVICE_HELP + "; async workers each resolve it (a share of the GPUs)")
    mode: Literal["sync", "async"] = Field("sync", description="sync: colocated, alternating; async: Ray workers")
    watchdog_s: float = Field(1800.0, ge=0, description="a step with no progress (no engine call, reward, trainer "
                                                        "micro-batch) for this long dumps every thread's stack, "
                                                        "checkpoints and ends the run (slide/watchdog.py); 0 = off")
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    rollout: RolloutSpec = RolloutSpec()
    agent: AgentSpec = AgentSpec()
    disagg: DisaggSpec = DisaggSpec()
    cluster: ClusterSpec = ClusterSpec()
    curriculum: CurriculumSpec = CurriculumSpec()
    temperature: TemperatureSpec = TemperatureSpec()
    readiness: ReadinessSpec = ReadinessSpec()

    @model_validator(mode="after")
    def _scale_out(self):
        if self.train.world_size > 1 and self.train.lora.rank:
            raise ValueError("train.lora with train.world_size > 1: not supported yet (LoRA trains in one process)")
        if self.train.offload and not (self.train.world_size > 1 and self.cluster.trainer_gpus):
            raise ValueError("train.offload: moves a trainer group's GPU shards to host memory; it needs "
                             "train.world_size > 1 and cluster.trainer_gpus > 0 (on a CPU they are there already)")
        if self.rollout.vllm_sleep and (self.rollout.engine != "vllm" or self.rollout.engines > 1):
            raise ValueError("rollout.vllm_sleep: for rollout.engine=vllm with rollout.engines=1 (one engine beside "
                             "the trainer in the driver's process)")
        if self.mode == "async" and self.rollout.engines > 1:
            raise ValueError("rollout.engines > 1: mode=sync only; mode=async has its rollout workers "
                             "(disagg.workers)")
        return self

    @model_validator(mode="after")
    def _staleness_covers_sync_interval(self):
        d = self.disagg
        if self.mode == "async" and d.max_staleness < d.sync_interval - 1:
            raise ValueError(f"disagg.max_staleness={d.max_staleness} is below disagg.sync_interval - 1 = "
                             f"{d.sync_interval - 1}: workers' weights lag that far between pushes, so every "
                             "group would be too stale (raise max_staleness or lower sync_interval)")
        if self.mode == "async":
            sync_only = [name for name, on in [("curriculum.mode", self.curriculum.mode != "none"),
                                               ("temperature.dynamic", self.temperature.dynamic),
                                               ("temperature.calibrate", self.temperature.calibrate),
                                               ("curriculum.auto", self.curriculum.auto),
                                               ("rollout.length_stages", bool(self.rollout.length_stages)),
                                               ("rollout.force_answer", self.rollout.force_answer),
                                               ("rollout.engine=vllm", self.rollout.engine == "vllm")] if on]
            if sync_only:
                raise ValueError(f"{', '.join(sync_only)}: supported with mode=sync only (for now)")
        return self
    algo: AlgoSpec = AlgoSpec()
    train: TrainSpec = TrainSpec()

    @model_validator(mode="after")
    def _replay_runs_eager(self):
        if self.algo.routing_replay and self.train.compile:
            raise ValueError("algo.routing_replay with train.compile: not supported (the replay hooks the routers "
                             "of the eager model); turn one off")
        return self


class SFTConfig(Section):
    name: str = "sft"
    out_dir: str = "runs"
    seed: int = 0
    data: str = Field("arithmetic:2", description="task spec to generate SFT examples from (or a .jsonl/.parquet)")
    examples: int = Field(0, ge=0, description="size of a fixed labelled pool; 0 = a fresh problem every time")
    steps: int = Field(300, ge=1)
    batch_tokens: int = Field(4096, ge=64, description="tokens per packed batch (one forward/backward)")
    grad_accum: int = Field(1, ge=1, description="packed batches per optimizer step: the loss is the mean over "
                                                 "the target tokens of all of them, as one batch grad_accum times "
                                                 "bigger would give, in the memory of one")
    seq_len: int = Field(256, ge=16, description="packed row length")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    thinking: bool = True
    eval_every: int = Field(0, ge=0, description="0 = only at the end")
    eval_prompts: int = Field(100, ge=1)
    stop_at_pass_rate: float | None = Field(None, gt=0, le=1, description="stop once greedy held-out pass@1 reaches "
                                            "this, unless the answers score as well against other prompts' "
                                            "problems (luck: eval_lucky, slide/eval/chance.py)")
    save_every: int = Field(100, ge=0, description="checkpoint every N steps (the newest two kept) for slide sft "
                                                   "--resume RUN_DIR; 0 = none (final/ at the end only)")
    threads: int = Field(0, ge=0)
    device: Device = Field("auto", description=DEVICE_HELP)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="compute: bf16 = autocast, fp32 master weights and AdamW state; auto = bf16 on a GPU, "
                            "fp32 on the CPU")
    model: ModelSpec = ModelSpec()
    lora: LoraSpec = Field(LoraSpec(), description="lora.rank > 0: LoRA adapters (usually with a higher lr); final/ "
                                                   "holds the merged model, adapter/ the adapter")


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans: only true/false. PyYAML's 1.1 rules read yes/no/on/off as booleans too, so `name=off`
    was a bool and failed; a bool field still takes them (pydantic reads "on", "off", "yes", "no")."""


_Loader.yaml_implicit_resolvers = {
    first: [r for r in rs if r[0] != "tag:yaml.org,2002:bool"]
    for first, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _set_path(tree: dict, dotted: str, value, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = _child(node, k, dotted, source)
        if not isinstance(node, (dict, list)):
            raise UserError(f"{source}: {dotted}: {k!r} is not a section")
    if isinstance(node, list):  # a list item's field, e.g. stages.0.tokens=1000
        _child(node, keys[-1], dotted, source)
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def _child(node, k: str, dotted: str, source: str):
    """node[k]: a section of a mapping (made if absent) or an item of a list by its index."""
    if isinstance(node, list):
        if not (k.isdigit() and int(k) < len(node)):
            raise UserError(f"{source}: {dotted}: {k!r} is not an index of a list of {len(node)} items")
        return node[int(k)]
    return node.setdefault(k, {})


def _format(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


def load_config(cls: type[Section], path: str | None = None, overrides: list[str] = ()) -> Section:
    """Build and validate `cls` from an optional YAML file plus `a.b=value` overrides (YAML-typed values)."""
    tree: dict = {}
    source = path or "config"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {path!r} not found")
        try:
            tree = _yaml(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise UserError(f"{path}: the top level must be a mapping of config fields")
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value (e.g. rollout.n=8)")
        key, raw = item.split("=", 1)
        try:
            value = _yaml(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        _set_path(tree, key.strip(), value, "override " + item)
    try:
        return cls.model_validate(tree)
    except ValidationError as e:
        raise UserError(_format(e, source)) from None


def dump_config(cfg: Section) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
