"""Where one RL training step of the demo-size model goes, at one thread (torch profiler; issue 25's step time).

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/rl_step_profile.py [RL_CONFIG [key=value ...]]

The batch has the family benchmark's shape (16 groups of 8, prompts 25-35 and responses 30-70 tokens, random
tokens: the time does not depend on them); two warm-up steps, then one profiled. RL_CONFIG (default: the demo's
RL config) sets the model and the training settings.
"""
from __future__ import annotations

import random
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from slide.config import RLConfig, load_config
from slide.model.tokenizer import tokenizer_for
from slide.rl.parts import policy_and_trainer
from slide.rl.sample import Sample, set_advantages


def batch(groups: int = 16, n: int = 8, seed: int = 0) -> list[Sample]:
    g = random.Random(seed)
    out = []
    for gi in range(groups):
        group = []
        for j in range(n):
            p, r = g.randint(25, 35), g.randint(30, 70)
            group.append(Sample([g.randint(5, 60) for _ in range(p)], [g.randint(5, 60) for _ in range(r)], [1] * r,
                                [-1.0] * r, 0, None, gi, reward=float(j % 2)))
        out.append(group)
    set_advantages(out)
    return [s for group in out for s in group]


def main() -> None:
    torch.set_num_threads(1)
    args = sys.argv[1:]
    cfg = load_config(RLConfig, args[0] if args else "slide/configs/demo_rl.yaml", args[1:])
    tok = tokenizer_for(cfg.model.init, cfg.model.tool_format)
    _, trainer = policy_and_trainer(cfg, tok, torch.device("cpu"))
    samples = batch()
    for _ in range(2):
        t = time.perf_counter()
        trainer.step(samples)
        print(f"warm-up step {time.perf_counter() - t:.2f} s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        trainer.step(samples)
        print(f"profiled step {time.perf_counter() - t:.2f} s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
