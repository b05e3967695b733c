"""A fixed-shape RL step benchmark on any local Hugging Face causal LM.

    slide bench --model DIR --prompts 8 --gens 8 --len 128 --steps 5 [--dtype bf16] [--engine vllm] [--device cuda]
    python -m slide.bench --model DIR ... --engine vllm      # the same, without the CLI

Each step: P prompts x G generations of exactly L new tokens (stop tokens suppressed), a reward,
group advantages, one GRPO update, and the weight push into the engine through the sync path
(WeightSync at the rollout dtype, in place). The same workload as shared/bench/trl_grpo.py, so the two
can be timed side by side. `--engine vllm` rolls out with slide.engine.vllm_engine (run it in
.venv-vllm: scripts/setup_vllm.sh). The last line is machine-readable:
`bench: step_s_median=... gen_tok_s=... peak_rss_mb=...`.
"""
from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import time

import torch
from transformers import AutoTokenizer

from slide.cli import add_bench_arguments
from slide.config import AlgoSpec, TrainSpec
from slide.device import generator, memory_metrics, precision_for, resolve_device, synchronize
from slide.engine import DTYPES, ENGINES, VLLM_GPU_SHARE, make_engine
from slide.engine.inprocess import SamplingParams
from slide.errors import UserError
from slide.model.load import load_model
from slide.rl.sample import Sample, set_advantages
from slide.rl.trainer import PolicyTrainer
from slide.tasks.base import Problem
from slide.weights.buckets import WeightSync


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_bench(a) -> dict:
    for name in ("prompts", "gens", "len", "steps"):
        if getattr(a, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.gens < 2:
        raise UserError("--gens must be >= 2 (GRPO needs a group)")
    kind = getattr(a, "engine", "inprocess")
    if kind not in ENGINES:
        raise UserError(f"--engine {kind!r}: allowed {', '.join(ENGINES)}")
    device = resolve_device(getattr(a, "device", "auto"))
    precision = precision_for(a.dtype, device)
    torch.manual_seed(0)
    policy = load_model(a.model, "--model", device=device)  # fp32 master weights; --dtype sets the autocast
    try:
        tok = AutoTokenizer.from_pretrained(a.model)
    except Exception as e:
        raise UserError(f"--model {a.model!r}: cannot load its tokenizer ({type(e).__name__})") from None
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    dtype = DTYPES[precision]
    if kind == "vllm":
        from slide.engine.vllm_engine import VLLMEngine
        on_gpu = {"gpu_memory_utilization": VLLM_GPU_SHARE} if device.type == "cuda" else {}
        engine = VLLMEngine(a.model, dtype=precision, **on_gpu)  # from the same folder: it starts at version 0
    else:
        engine = make_engine("inprocess", policy, pad, precision)  # rollout copy at rollout precision
    sync = WeightSync(precision=precision, bucket_mb=256)
    train = TrainSpec(lr=1e-5, micro_batch=a.prompts * a.gens, compile=getattr(a, "compile", False),
                      gradient_checkpointing=getattr(a, "grad_ckpt", False))
    trainer = PolicyTrainer(policy, train, AlgoSpec(),
                            temperature=1.0, pad_id=pad, router_bias_rate=0.0, autocast=dtype)
    params = SamplingParams(temperature=1.0, max_new_tokens=a.len, min_new_tokens=a.len,
                            stop_token_ids=tuple(t for t in [tok.eos_token_id] if t is not None))
    rng = random.Random(0)
    gen = generator(device, 0)
    times: dict[str, list[float]] = {k: [] for k in ("generate", "logprobs", "train", "sync", "step")}
    for step in range(a.steps):
        t0 = time.perf_counter()
        pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(a.prompts)]
        problems = [Problem(prompt=f"{x}+{y}=", answer=str(x + y), family="sum", level=1) for x, y in pairs]
        prompts = [tok.encode(p.prompt, add_special_tokens=False) for p in problems]
        out = engine.generate(prompts, params, n=a.gens, generator=gen)
        synchronize(device)
        t1 = time.perf_counter()
        groups = []
        for g, (p, ids, comps) in enumerate(zip(problems, prompts, out)):
            group = []
            for c in comps:
                text = tok.decode(c.tokens, skip_special_tokens=True)
                group.append(Sample(ids, c.tokens, [1] * len(c.tokens), c.logprobs, c.version, p, g,
                                    reward=float(text.strip().startswith(p.answer))))
            groups.append(group)
        set_advantages(groups)
        t2 = time.perf_counter()
        trainer.step([s for g in groups for s in g])
        synchronize(device)
        t3 = time.perf_counter()
        sync.push(policy, engine, version=step + 1)
        synchronize(device)
        t4 = time.perf_counter()
        for k, v in (("generate", t1 - t0), ("logprobs", 0.0), ("train", t3 - t2), ("sync", t4 - t3),
                     ("step", t4 - t0)):
            times[k].append(v)
        print(f"step {step + 1}: {t4 - t0:.3f} s (generate {t1 - t0:.3f}, train {t3 - t2:.3f}, sync {t4 - t3:.3f})",
              flush=True)
    steady = {k: v[1:] or v for k, v in times.items()}  # the first step warms caches, as in the TRL script
    med = {k: statistics.median(v) for k, v in steady.items()}
    tokens = a.prompts * a.gens * a.len
    result = {"step_s_median": med["step"], "gen_tok_s": tokens / med["generate"], "peak_rss_mb": _peak_rss_mb(),
              **{f"{k}_s_median": med[k] for k in ("generate", "logprobs", "train", "sync")},
              **memory_metrics(device)}
    print(f"phases (median s): generate={med['generate']:.3f} logprobs=0.000 (fused into the train forward) "
          f"train={med['train']:.3f} sync={med['sync']:.3f}  dtype={precision} engine={kind} device={device} "
          f"threads={torch.get_num_threads()} compile={train.compile} grad_ckpt={train.gradient_checkpointing}")
    gpu = f" peak_gpu_gib={result['gpu/peak_gib']:.2f}" if "gpu/peak_gib" in result else ""
    print(f"bench: step_s_median={med['step']:.3f} gen_tok_s={tokens / med['generate']:.0f} "
          f"peak_rss_mb={result['peak_rss_mb']:.0f}{gpu}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slide.bench", description=__doc__.splitlines()[0])
    add_bench_arguments(parser)
    try:
        run_bench(parser.parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
