"""One trainer process against two FSDP2 ranks (gloo) on the same batch: step time and per-rank memory.

    .venv/bin/python benchmarks/fsdp_scale.py                 # ~4 min on 2 idle cores
    .venv/bin/python benchmarks/fsdp_scale.py --steps 5 --layers 8 --grad-ckpt
    .venv/bin/python benchmarks/fsdp_scale.py --hidden 1024 --layers 16 --batch 8 --micro-batch 2 --steps 2

The model: a dense Qwen2 of ~27M parameters (hidden 512, MLP 1536, 8 heads on 4 key/value heads, 32K vocabulary,
tied embeddings; --layers 4, as benchmarks/lora_vs_full.py; --hidden and --layers scale it), built here with a
fixed seed and saved as a Hugging Face folder (safetensors, in a temporary folder) that both variants load: one
process with from_pretrained, the ranks as a trainer rank does (slide/cluster/loading.py: rank 0 reads the folder,
rank 1 builds on the meta device and receives its shards). One step = PolicyTrainer.step on 32 sequences of 64
prompt + 64 response tokens, micro-batches of 8, fp32, as `slide rl` runs it: one process on the whole batch, or
each of 2 ranks on its half with the policy sharded by slide/cluster/fsdp.py (fully_shard per decoder layer,
gradients summed, AdamW on the shards; the ranks' malloc set as a trainer rank's, by map_large_allocations), one
torch thread per process either way (2 ranks = 2 cores, 1 process = 1 core: the per-core cost is what the ratio
compares).
Ray only places the ranks, so they are started here with torch.multiprocessing.

Reported per variant: the median step time after one warm-up; per rank, its peak RSS over its RSS after the
imports (the process's whole life: loading and training; "peak"), the peak RSS over the peak reached by loading
the model and building the batch (what training adds beyond it: gradients, AdamW state, activations, communication
buffers; "training"; a rank that loaded a full copy hides part of training under that copy's high-water mark),
and the bytes of its parameters, gradients and AdamW moments (its shards, for FSDP). The goal (issue 21) is the
peak per rank <= 0.6x one process's. Writes benchmarks/results/fsdp_scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss() -> tuple[float, float]:
    """(current, peak) resident memory of this process, GiB (Linux /proc)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 2**20, int(status["VmHWM"].split()[0]) / 2**20


def _rank(rank: int, world: int, a, folder: str, port: int, out) -> None:
    import torch
    import torch.distributed as dist

    from slide.config import AlgoSpec, TrainSpec
    from slide.model.load import load_model, load_policy
    from slide.rl.sample import Sample
    from slide.rl.trainer import PolicyTrainer
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    start = _rss()[0]  # the interpreter, torch, transformers: the same in every variant
    if world > 1:  # as a trainer rank loads: rank 0 reads the folder, the others build on the meta device
        from slide.cluster.fsdp import map_large_allocations, shard
        from slide.cluster.loading import build_sharded
        map_large_allocations()  # as a trainer rank does (slide/cluster/rank.py)
        model, built = build_sharded(lambda where: load_policy(folder, "test", None, 0, device=where)
                                    if where.type == "meta" else load_model(folder),
                                    torch.device("cpu"), lambda m: shard(m, torch.float32))
    else:  # as one process loads
        model = load_model(folder)
        built = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    loaded_peak = _rss()[1] - start
    trainer = PolicyTrainer(model, TrainSpec(lr=1e-5, micro_batch=a.micro_batch, gradient_checkpointing=a.grad_ckpt),
                            AlgoSpec(), 1.0, 0, 0.0)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    samples = [Sample(prompt_ids=torch.randint(1, vocab, (64,), generator=gen).tolist(),
                      response_ids=torch.randint(1, vocab, (64,), generator=gen).tolist(), loss_mask=[1] * 64,
                      behaviour_logprobs=[-10.0] * 64, version=0, problem=None, group=i // 8,
                      advantage=1.0 if i % 2 else -1.0)
               for i in range(a.batch)]
    mine = samples[len(samples) * rank // world:len(samples) * (rank + 1) // world]
    base = _rss()[1]
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
    peak = _rss()[1]
    out.put({"rank": rank, "step_s": times[1:], "peak_over_start_gib": peak - base, "peak_gib": peak - start,
             "load_peak_gib": loaded_peak, "built_gib": built / 2**30,
             "model_state_gib": sum(t.numel() * t.element_size() for t in state) / 2**30})
    if world > 1:
        dist.destroy_process_group()


def save_model(a, folder: str) -> None:
    """The benchmark model, seeded, as a Hugging Face folder (safetensors) that both variants load."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=32000, hidden_size=a.hidden, intermediate_size=3 * a.hidden,
                                         num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64,
                                         num_key_value_heads=a.hidden // 128, tie_word_embeddings=True))
    model.save_pretrained(folder, safe_serialization=True)


def measure(world: int, a, folder: str) -> list[dict]:
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, world, a, folder, port, out)) for r in range(world)]
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
    with tempfile.TemporaryDirectory() as folder:
        save_model(a, folder)
        for world in (1, 2):
            rows = measure(world, a, folder)
            result["variants"][world] = {
                "step_s_median": statistics.median(max(r["step_s"][i] for r in rows) for i in range(a.steps)),
                **{k: max(r[k] for r in rows) for k in ("peak_over_start_gib", "peak_gib", "model_state_gib")},
                "ranks": rows}
    one, two = result["variants"][1], result["variants"][2]
    print(f"{'processes':>9} | {'step s (median)':>15} | {'peak +GiB / rank':>16} | {'training +GiB / rank':>20} | "
          f"{'params+grads+AdamW GiB / rank':>29}")
    for world, v in result["variants"].items():
        print(f"{world:>9} | {v['step_s_median']:>15.3f} | {v['peak_gib']:>16.3f} | "
              f"{v['peak_over_start_gib']:>20.3f} | {v['model_state_gib']:>29.4f}")
    result["peak_ratio"] = two["peak_gib"] / one["peak_gib"]
    result["memory_ratio"] = two["peak_over_start_gib"] / max(one["peak_over_start_gib"], 1e-9)
    result["state_ratio"] = two["model_state_gib"] / one["model_state_gib"]
    result["speedup"] = one["step_s_median"] / two["step_s_median"]
    print(f"2 ranks: {result['speedup']:.2f}x the step speed, {result['peak_ratio']:.2f}x the peak memory per rank "
          f"({result['memory_ratio']:.2f}x what training adds), {result['state_ratio']:.2f}x the model state per rank")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
