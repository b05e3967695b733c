"""LoRA against full fine-tuning on the same checkpoint: time and peak memory of one RL training step.

    .venv/bin/python benchmarks/lora_vs_full.py                   # ~3 min on 2 idle cores
    .venv/bin/python benchmarks/lora_vs_full.py --rank 16 --steps 7

The checkpoint: a 4-layer qwen2 (hidden 512, MLP 1536, 8 heads on 4 key/value heads, a 32K vocabulary, tied
embeddings: ~27M parameters), built here with a fixed seed. One step = PolicyTrainer.step on 16 sequences of
64 prompt + 64 response tokens (micro-batches of 8): the response log-probs, the GRPO loss, backward, clipping and
AdamW, as `slide rl` runs it; full = every weight trains, LoRA = train.lora.rank adapters on the attention and MLP
projections (the default). Each variant runs in its own process (peak RSS is per process). Reported: the median
step time over --steps steps after one warm-up in each of --repeat processes per variant (alternating), the peak RSS
over the process's RSS after building the model and the batch, i.e. what training adds (gradients, AdamW state,
activations), and the bytes of the gradients and AdamW moments alone (what LoRA removes). Writes
benchmarks/results/lora_vs_full.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(variant: str, rank: int, steps: int) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from slide.config import AlgoSpec, LoraSpec, TrainSpec
    from slide.model.lora import add_lora
    from slide.rl.sample import Sample
    from slide.rl.trainer import PolicyTrainer
    torch.manual_seed(0)
    vocab = 32000
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True))
    params = sum(p.numel() for p in model.parameters())
    lora = LoraSpec(rank=rank if variant == "lora" else 0, alpha=2 * rank)
    model = add_lora(model, lora, seed=0)
    trainer = PolicyTrainer(model, TrainSpec(lr=1e-4, micro_batch=8, lora=lora), AlgoSpec(), 1.0, 0, 0.0)
    trainable = sum(p.numel() for g in trainer.opt.param_groups for p in g["params"])
    gen = torch.Generator().manual_seed(0)
    samples = [Sample(prompt_ids=torch.randint(1, vocab, (64,), generator=gen).tolist(),
                      response_ids=torch.randint(1, vocab, (64,), generator=gen).tolist(), loss_mask=[1] * 64,
                      behaviour_logprobs=[-10.0] * 64, version=0, problem=None, group=i // 8) for i in range(16)]
    for i, s in enumerate(samples):
        s.advantage = 1.0 if i % 2 else -1.0
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # noqa: E731 - GiB (Linux: KiB)
    base = rss()
    times = []
    for _ in range(steps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        trainer.step(samples)
        times.append(time.perf_counter() - t0)
    state = [t for s in trainer.opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
    state += [p.grad for g in trainer.opt.param_groups for p in g["params"] if p.grad is not None]
    return {"variant": variant, "params": params, "trainable": trainable, "step_s_median": statistics.median(times[1:]),
            "step_s": times[1:], "peak_over_start_gib": rss() - base,
            "grads_and_adam_gib": sum(t.numel() * t.element_size() for t in state) / 2**30}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2, help="processes per variant, alternating")
    ap.add_argument("--variant", choices=["full", "lora"], help=argparse.SUPPRESS)  # one process per variant
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "lora_vs_full.json"))
    a = ap.parse_args(argv)
    if a.variant:
        print(json.dumps(run(a.variant, a.rank, a.steps)))
        return 0
    runs = []
    for _ in range(a.repeat):  # the two variants alternate, so a machine whose speed drifts slows both alike
        for variant in ("full", "lora"):
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--rank", str(a.rank), "--steps",
                                  str(a.steps)], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for variant in ("full", "lora"):
        mine = [r for r in runs if r["variant"] == variant]
        rows.append({**mine[0], "step_s_median": statistics.median(s for r in mine for s in r["step_s"]),
                     "step_s": [s for r in mine for s in r["step_s"]],
                     "peak_over_start_gib": max(r["peak_over_start_gib"] for r in mine)})
    print(f"{'variant':>8} | {'trainable':>11} | {'step s (median)':>15} | {'peak +GiB':>9} | {'grads+AdamW GiB':>15}")
    for r in rows:
        name = r["variant"] if r["variant"] == "full" else f"lora r={a.rank}"
        print(f"{name:>8} | {r['trainable']:>11,} | {r['step_s_median']:>15.3f} | {r['peak_over_start_gib']:>9.3f} | "
              f"{r['grads_and_adam_gib']:>15.4f}")
    full, lora = rows
    result = {"command": " ".join(["benchmarks/lora_vs_full.py", *(argv or sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d"), "rank": a.rank, "rows": rows,
              "speedup": full["step_s_median"] / lora["step_s_median"],
              "memory_ratio": full["peak_over_start_gib"] / max(lora["peak_over_start_gib"], 1e-9)}
    print(f"LoRA: {result['speedup']:.2f}x faster per step, {result['memory_ratio']:.2f}x less added memory")
    Path(a.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
