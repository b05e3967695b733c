"""Rollout engines, one contract: generate(prompts, SamplingParams, n, generator) -> [[Completion]] (prompt-major),
load_weights(named_tensors, version) in place, and `version`, the policy version of the weights held.

inprocess.py     InProcessEngine: batched KV-cache sampling with the HF model, in this process (the default)
packed.py        PackedLinears: its bf16 linears on oneDNN-packed weights on a CPU (kv_cache.py: its KV cache)
vllm_engine.py   VLLMEngine: vLLM in this process (optional extra: bash scripts/setup_vllm.sh -> .venv-vllm)
batching.py      BatchingEngine: wraps either; concurrent generate calls share one engine call (async workers)
continuous.py    ContinuousEngine: wraps InProcessEngine; requests join the running batch at the next decode step
                 (slide serve)
"""
import copy

import torch

ENGINES = ("inprocess", "vllm")  # the kinds make_engine builds
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VLLM_GPU_SHARE = 0.3  # of the GPU's memory vLLM takes beside a colocated trainer (vLLM's own default: 0.9, all)


def make_engine(kind: str, model, pad_token_id: int, precision: str = "fp32", seed: int = 0,
                share: bool = False, record_routes: bool = False, sleep_level: int = 0):
    """A rollout engine of `kind` ("inprocess" | "vllm") holding a copy of `model`'s weights.

    Both hold (and compute in) bf16 for bf16 and fp8 rollout (FP8 pushes are dequantized on receipt; vLLM's
    block-FP8 kernels load only from an FP8 checkpoint), fp32 otherwise. share=True with an in-process engine at
    fp32 (the colocated sync mode): the engine reads the policy's own weights, no copy (a push then moves
    nothing); bf16 and fp8 need the copy, in the rollout precision. The caller closes it (`close_engine`).

    A LoRA policy (a peft wrapper) is never handed over as it is: every engine gets the base architecture with the
    merged weights W + (alpha / r) B A (slide/model/lora.py), as vLLM or a worker would, and each push sends them
    merged. Running the policy's unmerged layers would decode with two extra small products per adapted layer
    per token, and the logged trainer-vs-engine gap would then measure nothing a real engine does. Shared at fp32,
    the engine still reads the policy's frozen tensors; only the adapted weights are its own.

    record_routes (algo.routing_replay): the in-process engine records each token's routed experts for the trainer
    to replay; vLLM does not expose them here, and its samples train on the trainer's own routing (counted).

    sleep_level (rollout.vllm_sleep, vLLM on a GPU only): `sleep_engine` then hands vLLM's memory to the trainer
    between rollout and the next push (slide/engine/vllm_engine.py)."""
    from slide.model.lora import has_lora, merged_model
    lora = has_lora(model)
    if kind == "vllm":
        from slide.engine.vllm_engine import VLLMEngine
        on_gpu = {"gpu_memory_utilization": VLLM_GPU_SHARE} if next(model.parameters()).is_cuda else {}
        if sleep_level and not on_gpu:
            from slide.errors import UserError
            raise UserError("rollout.vllm_sleep: vLLM's sleep mode frees GPU memory; this run's model is on the "
                            "CPU (set device=cuda, or rollout.vllm_sleep=0)")
        return VLLMEngine.from_model(merged_model(model, share=True) if lora else model,
                                     dtype=compute_dtype(precision), seed=seed, sleep_level=sleep_level, **on_gpu)
    from slide.engine.inprocess import InProcessEngine
    from slide.model.load import cast_for_compute
    if share and compute_dtype(precision) == "fp32":
        return InProcessEngine(merged_model(model, share=True) if lora else model, pad_token_id=pad_token_id,
                               record_routes=record_routes)
    own = merged_model(model) if lora else copy.deepcopy(model)
    return InProcessEngine(cast_for_compute(own, DTYPES[compute_dtype(precision)]), pad_token_id=pad_token_id,
                           record_routes=record_routes)


def set_threads(n: int) -> None:
    """Torch threads for this process. n > 0: that many; 0: torch's default (one per physical core), untouched.

    No call is made unless the count changes: an explicit torch.set_num_threads, even to the count torch already
    uses, made the CPU flash-attention decode kernel ~2x slower on this project's 2-core machines (one decode call in
    isolation 590-660 vs 310 us; inside a bf16 generate of the 25M benchmark model 0.78 vs 0.52-0.55 s of attention,
    the matrix products unchanged); OMP_NUM_THREADS set before start does not slow it."""
    if n and n != torch.get_num_threads():
        torch.set_num_threads(n)


def compute_dtype(precision: str) -> str:
    """The dtype an engine holds and computes in for rollout weights pushed at `precision`."""
    return "fp32" if precision == "fp32" else "bf16"


def sleep_engine(engine) -> None:
    """Between rollout and the trainer's step: an engine that can lend its memory to the trainer does (vLLM with
    rollout.vllm_sleep on a GPU); its next push (or generate) wakes it. Other engines: nothing."""
    sleep = getattr(engine, "sleep", None)
    if sleep is not None:
        sleep()


def close_engine(engine) -> None:
    """Release what an engine holds beyond memory (vLLM: its engine core and temporary checkpoint)."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()
