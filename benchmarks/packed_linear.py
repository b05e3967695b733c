"""The in-process engine's pre-packed bf16 linears (slide/engine/packed.py) on and off, side by side.

    python benchmarks/packed_linear.py --model DIR [--prompts 8 --gens 8 --len 128 --reps 3 --threads 2]

Prints, for each of the model's linear shapes at the decode batch, the median microseconds of F.linear and of the
packed oneDNN call; then seconds per generate call with packing on and off (interleaved, same sampling seed)
and whether the two produced the same tokens and logprobs.
"""
from __future__ import annotations

import statistics
import time

import torch
from decode_cost import median_us  # benchmarks/decode_cost.py: median of repeated calls, in us
from kv_cache import workload  # benchmarks/kv_cache.py: the same command line and workload


def linear_shapes(engine, rows: int) -> None:
    shapes = sorted({(m.in_features, m.out_features, m.bias is not None) for m in engine.packed.layers})
    for k, n, bias in shapes:
        x = torch.randn(rows, 1, k).bfloat16()
        w, b = torch.randn(n, k).bfloat16(), (torch.randn(n).bfloat16() if bias else None)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        plain = median_us(lambda: torch.nn.functional.linear(x, w, b))
        fast = median_us(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], ""))
        print(f"linear {rows}x{k}->{n}{' +bias' if bias else ''}: F.linear {plain:.0f} us, packed {fast:.0f} us "
              f"({plain / fast:.2f}x)")


def main() -> None:
    a, engine, params, prompts = workload(__doc__.splitlines()[0])  # --dtype is bf16 unless asked otherwise
    if not engine.packed.enabled:
        raise SystemExit("packed linears are off here (they need bf16 and a CPU with bf16 oneDNN support)")
    linear_shapes(engine, a.prompts * a.gens)
    seconds: dict[str, list[float]] = {"packed": [], "plain": []}
    outputs = {}
    for _ in range(a.reps):
        for name in seconds:
            engine.packed.enabled = name == "packed"
            t0 = time.perf_counter()
            out = engine.generate(prompts, params, n=a.gens, generator=torch.Generator().manual_seed(0))
            seconds[name].append(time.perf_counter() - t0)
            outputs[name] = [(c.tokens, c.logprobs) for group in out for c in group]
    for name, s in seconds.items():
        print(f"{name}: " + " ".join(f"{x:.2f}" for x in s) + f" s per generate ({a.prompts}x{a.gens}x{a.len}, {a.dtype})")
    ratio = statistics.median(seconds["packed"]) / statistics.median(seconds["plain"])
    print(f"packed_linear: packed/plain median ratio {ratio:.3f}, identical tokens and logprobs: "
          f"{outputs['packed'] == outputs['plain']}")


if __name__ == "__main__":
    main()
