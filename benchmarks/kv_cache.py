"""The in-process engine's KV cache: GrowingLayer (writes each token in place) against transformers'
DynamicLayer (torch.cat of the whole cache per token), side by side, interleaved, same sampling seed.

    python benchmarks/kv_cache.py --model DIR [--dtype bf16] [--prompts 8 --gens 8 --len 128 --reps 3]

Prints the seconds per generate call of each (every repetition) and checks that both produce the same tokens
and logprobs.
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoTokenizer, DynamicCache

import slide.engine.inprocess as inprocess
from slide.engine import make_engine, set_threads
from slide.engine.inprocess import SamplingParams
from slide.model.load import load_model


def workload(description: str):
    """The command line both engine A/B benchmarks share: (args, bf16-or-fp32 engine, sampling params, prompts)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--gens", type=int, default=8)
    ap.add_argument("--len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    set_threads(a.threads)  # no call when torch already uses that many (slide.engine)
    tok = AutoTokenizer.from_pretrained(a.model)
    engine = make_engine("inprocess", load_model(a.model, "--model"), tok.pad_token_id or 0, a.dtype)
    params = SamplingParams(temperature=1.0, max_new_tokens=a.len, min_new_tokens=a.len,
                            stop_token_ids=tuple(t for t in [tok.eos_token_id] if t is not None))
    prompts = [tok.encode(f"{10 + i}+{20 + i}=", add_special_tokens=False) for i in range(a.prompts)]
    return a, engine, params, prompts


def main() -> None:
    a, engine, params, prompts = workload(__doc__.splitlines()[0])
    caches = {"growing": inprocess.growing_cache, "dynamic": lambda capacity: DynamicCache()}
    seconds: dict[str, list[float]] = {k: [] for k in caches}
    outputs = {}
    for _ in range(a.reps):
        for name, factory in caches.items():
            inprocess.growing_cache = factory
            t0 = time.perf_counter()
            out = engine.generate(prompts, params, n=a.gens, generator=torch.Generator().manual_seed(0))
            seconds[name].append(time.perf_counter() - t0)
            outputs[name] = [(c.tokens, c.logprobs) for group in out for c in group]
    same = outputs["growing"] == outputs["dynamic"]
    for name, s in seconds.items():
        print(f"{name}: " + " ".join(f"{x:.2f}" for x in s) + f" s per generate ({a.prompts}x{a.gens}x{a.len}, {a.dtype})")
    print(f"kv_cache: growing/dynamic median ratio {sorted(seconds['growing'])[a.reps // 2] / sorted(seconds['dynamic'])[a.reps // 2]:.3f}, "
          f"identical tokens and logprobs: {same}")


if __name__ == "__main__":
    main()
