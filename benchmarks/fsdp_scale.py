"""One trainer process against two FSDP2 ranks (gloo) on the same batch: step time and per-rank memory.

    .venv/bin/python benchmarks/fsdp_scale.py                 # ~4 min on 2 idle cores
    .venv/bin/python benchmarks/fsdp_scale.py --steps 5 --layers 8 --grad-ckpt
    .venv/bin/python benchmarks/fsdp_scale.py --hidden 1024 --layers 16 --batch 8 --micro-batch 2 --steps 2

The model: a dense Qwen2 of ~27M parameters (hidden 512, MLP 1536, 8 heads on 4 key/value heads, 32K vocabulary,
tied embeddings; --layers 4, as benchmarks/lora_vs_full.py; --hidden and --layers scale it), built here with a
fixed seed. One step = PolicyTrainer.step on 32 sequences of 64 prompt + 64 response tokens, micro-batches of 8, fp32, as `slide rl`
runs it: one process on the whole batch, or each of 2 ranks on its half with the policy sharded by
slide/cluster/fsdp.py (fully_shard per decoder layer, gradients summed, AdamW on the shards), one torch thread per
process either way (2 ranks = 2 cores, 1 process = 1 core: the per-core cost is what the ratio compares).
Ray only places the ranks, so they are started here with torch.multiprocessing.

Reported per variant: the median step time after one warm-up; per rank, the peak RSS over its RSS after building
the model and the batch (what training adds: gradients, AdamW state, activations, communication buffers) and the
bytes of its parameters, gradients and AdamW moments (its shards, for FSDP). Writes
benchmarks/results/fsdp_scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rank(rank: int, world: int, a, port: int, out) -> None:
    import torch
    import torch.distributed as dist
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from slide.config import AlgoSpec, TrainSpec
    from slide.rl.sample import Sample
    from slide.rl.trainer import PolicyTrainer
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    vocab = 32000
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=a.hidden, intermediate_size=3 * a.hidden,
                                         num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64,
                                         num_key_value_heads=a.hidden // 128, tie_word_embeddings=True))
    if world > 1:
        from slide.cluster.fsdp import shard
        model = shard(model, torch.float32)
    trainer = PolicyTrainer(model, TrainSpec(lr=1e-5, micro_batch=a.micro_batch, gradient_checkpointing=a.grad_ckpt),
                            AlgoSpec(), 1.0, 0, 0.0)
    gen = torch.Generator().manual_seed(0)
    samples = [Sample(prompt_ids=torch.randint(1, vocab, (64,), generator=gen).tolist(),
                      response_ids=torch.randint(1, vocab, (64,), generator=gen).tolist(), loss_mask=[1] * 64,
                      behaviour_logprobs=[-10.0] * 64, version=0, problem=None, group=i // 8,
                      advantage=1.0 if i % 2 else -1.0)
               for i in range(a.batch)]
    mine = samples[len(samples) * rank // world:len(samples) * (rank + 1) // world]
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # noqa: E731 - GiB (Linux: KiB)
    base = rss()
    times = []
    for _ in range(a.steps + 1):  # the first is a warm-up
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        trainer.step(mine)
        times.append(time.perf_counter() - t0)

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    state = [local(p) for p in model.parameters()]
    state += [local(p.grad) for p in model.parameters() if p.grad is not None]
    state += [local(t) for s in trainer.opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
    out.put({"rank": rank, "step_s": times[1:], "peak_over_start_gib": rss() - base,
             "model_state_gib": sum(t.numel() * t.element_size() for t in state) / 2**30})
    if world > 1:
        dist.destroy_process_group()


def measure(world: int, a) -> list[dict]:
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, world, a, port, out)) for r in range(world)]
    for p in procs:
        p.start()
    rows = sorted((out.get() for _ in procs), key=lambda r: r["rank"])
    for p in procs:
        p.join()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512, help="hidden size (MLP 3x, heads of 64, key/value heads of 128)")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--grad-ckpt", action="store_true", help="train.gradient_checkpointing: activations recomputed "
                                                              "in the backward, so the model state dominates memory")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fsdp_scale.json"))
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = {"command": " ".join(["benchmarks/fsdp_scale.py", *(argv or sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d"), "variants": {}}
    for world in (1, 2):
        rows = measure(world, a)
        result["variants"][world] = {
            "step_s_median": statistics.median(max(r["step_s"][i] for r in rows) for i in range(a.steps)),
            "peak_over_start_gib": max(r["peak_over_start_gib"] for r in rows),
            "model_state_gib": max(r["model_state_gib"] for r in rows), "ranks": rows}
    one, two = result["variants"][1], result["variants"][2]
    print(f"{'processes':>9} | {'step s (median)':>15} | {'peak +GiB / rank':>16} | "
          f"{'params+grads+AdamW GiB / rank':>29}")
    for world, v in result["variants"].items():
        print(f"{world:>9} | {v['step_s_median']:>15.3f} | {v['peak_over_start_gib']:>16.3f} | "
              f"{v['model_state_gib']:>29.4f}")
    result["memory_ratio"] = two["peak_over_start_gib"] / max(one["peak_over_start_gib"], 1e-9)
    result["state_ratio"] = two["model_state_gib"] / one["model_state_gib"]
    result["speedup"] = one["step_s_median"] / two["step_s_median"]
    print(f"2 ranks: {result['speedup']:.2f}x the step speed, {result['memory_ratio']:.2f}x the added memory per "
          f"rank, {result['state_ratio']:.2f}x the model state per rank")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
