"""Rollout engines, one contract: generate(prompts, SamplingParams, n, generator) -> [[Completion]] (prompt-major),
load_weights(named_tensors, version) in place, and `version`, the policy version of the weights held.

inprocess.py     InProcessEngine: batched KV-cache sampling with the HF model, in this process (the default)
vllm_engine.py   VLLMEngine: vLLM in this process (optional extra: bash scripts/setup_vllm.sh -> .venv-vllm)
batching.py      BatchingEngine: wraps either; concurrent generate calls share one engine call (async workers)
"""
import copy

ENGINES = ("inprocess", "vllm")  # the kinds make_engine builds


def make_engine(kind: str, model, pad_token_id: int, precision: str = "fp32", seed: int = 0):
    """A rollout engine of `kind` ("inprocess" | "vllm") holding a copy of `model`'s weights.

    vLLM holds bf16 weights for bf16 and fp8 rollout (FP8 pushes are dequantized on receipt; its block-FP8
    kernels load only from an FP8 checkpoint), fp32 otherwise. The caller closes it (`close_engine`)."""
    if kind == "vllm":
        from slide.engine.vllm_engine import VLLMEngine
        return VLLMEngine.from_model(model, dtype="fp32" if precision == "fp32" else "bf16", seed=seed)
    from slide.engine.inprocess import InProcessEngine
    return InProcessEngine(copy.deepcopy(model), pad_token_id=pad_token_id)


def close_engine(engine) -> None:
    """Release what an engine holds beyond memory (vLLM: its engine core and temporary checkpoint)."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()
