"""Forward+backward time of a glm4_moe checkpoint under each of transformers' experts implementations.

    python benchmarks/moe_experts.py --model runs/demo/sft/final --batch 128 --len 80 --threads 2

transformers 5 picks `grouped_mm` by default where it can dispatch (it can on this CPU); `eager` loops over
the experts hit in Python, `batched_mm` gathers one weight matrix per token. Prints one line per
implementation (median of 3 timed steps after a warm-up) and the achieved GFLOP/s on the active parameters
(6 x active params x tokens), which says how far the trainer is from this CPU's matrix rate.
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM

from slide.engine import set_threads


def active_params(config) -> int:
    """Parameters a token touches: attention, the dense layers' MLP, shared + top-k routed experts, embeddings."""
    h, layers = config.hidden_size, config.num_hidden_layers
    head = config.head_dim if getattr(config, "head_dim", None) else h // config.num_attention_heads
    attn = h * head * (config.num_attention_heads * 2 + config.num_key_value_heads * 2)
    dense = 3 * h * config.intermediate_size
    moe = 3 * h * config.moe_intermediate_size * (config.num_experts_per_tok + config.n_shared_experts)
    k = config.first_k_dense_replace
    return layers * attn + k * dense + (layers - k) * moe + 2 * config.vocab_size * h


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a glm4_moe HF folder (e.g. the demo's SFT checkpoint)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--len", type=int, default=80)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    set_threads(a.threads)  # no call when torch already uses that many (slide.engine)
    ids = torch.randint(5, 100, (a.batch, a.len), generator=torch.Generator().manual_seed(0))
    for impl in ("grouped_mm", "eager", "batched_mm"):
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, experts_implementation=impl)
        times = []
        for _ in range(4):  # the first is a warm-up
            t0 = time.perf_counter()
            model(input_ids=ids).logits.float().log_softmax(-1).mean().backward()
            times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        step = sorted(times[1:])[1]
        flops = 6 * active_params(model.config) * ids.numel()
        print(f"{impl:10s} fwd+bwd {step:.3f} s  {ids.numel() / step:,.0f} tok/s  {flops / step / 1e9:.1f} GFLOP/s "
              f"(active params {active_params(model.config) / 1e6:.2f}M)", flush=True)


if __name__ == "__main__":
    main()
