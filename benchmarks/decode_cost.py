"""Where the in-process engine's decode time goes on this CPU, and what the pieces cost in isolation.

    python benchmarks/decode_cost.py --model benchmarks/results/amx_s12/model_h512_l8 --dtype bf16

1. One `slide bench`-shaped generate call (8 prompts x 8 samples x 128 new tokens) under torch.profiler: the
   top operators by self time.
2. The same shapes alone: one decode attention call (batch 64, the model's heads, 70 cached keys) through each
   SDPA backend and as two plain matrix products on the packed GQA heads; one batch-64 projection
   (hidden -> 3 x hidden, the MLP's shape) and its TFLOP/s; and the memory bandwidth (a large copy), so the
   decode step can be placed against the machine's compute and bandwidth.
Timings are medians of repeated calls in one process; compare ratios, not absolute numbers across runs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoModelForCausalLM

from slide.engine import DTYPES, make_engine, set_threads
from slide.engine.inprocess import SamplingParams


def median_us(fn, repeat: int = 200) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def profile_generate(model, dtype: str, length: int) -> None:
    engine = make_engine("inprocess", model, 0, dtype)
    prompts = [[5, 6, 7, 8, 9, 10]] * 8  # "xx+yy=": the bench's prompt length
    params = SamplingParams(temperature=1.0, max_new_tokens=length, min_new_tokens=length, stop_token_ids=(1,))
    gen = torch.Generator().manual_seed(0)
    engine.generate(prompts, params, n=8, generator=gen)  # warm-up
    t = time.perf_counter()
    engine.generate(prompts, params, n=8, generator=gen)
    print(f"generate 64 x {length} tokens: {time.perf_counter() - t:.3f} s")
    with torch.profiler.profile() as prof:
        engine.generate(prompts, params, n=8, generator=gen)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def pieces(cfg, dtype: torch.dtype, keys: int = 70) -> None:
    B, H, D = 64, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    KV = cfg.num_key_value_heads
    q = torch.randn(B, H, 1, D, dtype=dtype)
    k, v = torch.randn(B, KV, keys, D, dtype=dtype), torch.randn(B, KV, keys, D, dtype=dtype)

    def packed():  # the query heads that share a key/value head as rows of one matrix product
        s = torch.matmul(q.view(B, KV, H // KV, D), k.transpose(-1, -2)) * D**-0.5
        return torch.matmul(torch.softmax(s.float(), -1).to(dtype), v)

    print(f"decode attention, batch {B}, {H} heads ({KV} key/value), {keys} keys, {dtype}:")
    for name, backend in (("flash (default)", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH)):
        with sdpa_kernel(backend):
            us = median_us(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        print(f"  sdpa {name}: {us:.0f} us")
    print(f"  two matmuls on packed heads: {median_us(packed):.0f} us")
    x = torch.randn(B, cfg.hidden_size, dtype=dtype)
    w = torch.randn(3 * cfg.hidden_size, cfg.hidden_size, dtype=dtype)
    us = median_us(lambda: F.linear(x, w))
    print(f"projection {B} x {cfg.hidden_size} -> {3 * cfg.hidden_size}: {us:.0f} us, "
          f"{2 * x.numel() * w.shape[0] / us / 1e6:.2f} TFLOP/s")
    big = torch.empty(2**26, dtype=torch.bfloat16).normal_()
    out = torch.empty_like(big)
    us = median_us(lambda: out.copy_(big), repeat=20)
    print(f"memory: copy of {big.numel() * 2 >> 20} MiB at {2 * big.numel() * 2 / us / 1e3:.1f} GB/s (read + write)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a HF causal LM folder (e.g. shared/bench/tiny_model.py's)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    set_threads(a.threads)  # no call when torch already uses that many (slide.engine)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    profile_generate(model, a.dtype, a.len)
    pieces(model.config, DTYPES[a.dtype])


if __name__ == "__main__":
    main()
