"""Rollout engines, one contract: generate(prompts, SamplingParams, n, generator) -> [[Completion]] (prompt-major),
load_weights(named_tensors, version) in place, and `version`, the policy version of the weights held.

inprocess.py     InProcessEngine: batched KV-cache sampling with the HF model, in this process (the default)
vllm_engine.py   VLLMEngine: vLLM in this process (optional extra: bash scripts/setup_vllm.sh -> .venv-vllm)
"""
