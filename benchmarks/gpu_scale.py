"""The scale-out part of benchmarks/gpu_check.py: BF16 training, rollout with block-FP8 weights, in-place sync,
on a glm4_moe of >= 0.5B parameters built here (nothing downloaded).

    python benchmarks/gpu_check.py                # runs these stages after the own-checkpoint commands
    python benchmarks/gpu_check.py --skip-scale   # only the commands

Stages, each timed and reported on its own (a failing stage prints its error and the rest go on where they can):
  1. build a glm4_moe of >= 0.5B parameters (SLIDE's GLM choices, sizes from the flags), save it in bf16;
  2. an engine from that folder in bf16: generation throughput (tokens/s) and engine logprobs;
  3. one BF16-autocast GRPO update on the GPU (PolicyTrainer, fp32 master weights) on those samples;
  4. in-place sync into the bf16 engine, BF16 and FP8 payloads (WeightSync: bytes, buckets, seconds), and
     greedy tokens after the BF16 push compared with a fresh engine loaded from the updated weights;
  5. vllm: the updated weights exported as a block-FP8 checkpoint (slide.weights.export) and served by
     vLLM's own FP8 kernels: throughput, greedy agreement with the bf16 engine, and an in-place update of
     the FP8 engine with fp8 weights + weight_scale_inv, compared with a fresh FP8 engine;
     inprocess: greedy agreement of the engine holding the FP8-rounded weights with the bf16 one, and a
     block-FP8 GEMM on the model's own projection weights through torch's scaled_mm (1x128 activation
     and 128x128 weight scales, DeepSeek/GLM layout): error against bf16 and speed-up at rollout shapes.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch


def greedy(engine, prompts, n_tokens):
    from slide.engine.inprocess import SamplingParams
    params = SamplingParams(temperature=0.0, max_new_tokens=n_tokens, min_new_tokens=n_tokens)
    return [g[0].tokens for g in engine.generate(prompts, params, n=1)]


def agreement(a, b) -> float:
    """Share of sequences whose greedy tokens are identical."""
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def run_scale_stages(a, stage, kind: str, device: str) -> None:
    """The stages above, recorded through `stage` (gpu_check.py's); `kind`: "vllm" or "inprocess" engine."""
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    from slide.rl.sample import set_advantages
    from slide.config import AlgoSpec, TrainSpec
    from slide.engine import close_engine
    from slide.engine.inprocess import InProcessEngine, SamplingParams
    from slide.model.tiny import build_model, glm_config
    from slide.model.tokenizer import load_tokenizer
    from slide.rl.sample import Sample
    from slide.rl.trainer import PolicyTrainer
    from slide.tasks.base import Problem
    from slide.weights.buckets import WeightSync

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

    def make_engine(path):
        if kind == "vllm":
            from slide.engine.vllm_engine import VLLMEngine
            return VLLMEngine(path, **kw)
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device)
        return InProcessEngine(model, pad_token_id=tok.pad_token_id)

    def seeded(seed):  # vLLM draws its seeds on the CPU; the in-process engine samples where its model is
        return torch.Generator("cpu" if kind == "vllm" else device).manual_seed(seed)

    @stage("engine_bf16_generate")
    def _():
        ctx["engine"] = make_engine(work / "bf16")
        params = SamplingParams(temperature=1.0, max_new_tokens=a.len, min_new_tokens=a.len)
        ctx["engine"].generate(prompts[:4], params, n=2)  # warm-up
        sync()
        t0 = time.perf_counter()
        ctx["groups"] = ctx["engine"].generate(prompts, params, n=a.gens, generator=seeded(1))
        sync()
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
        set_advantages(groups)
        sync()
        t0 = time.perf_counter()
        stats = trainer.step(samples)
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
        from slide.weights.buckets import _wire_dtype
        sent = {n: t.to(_wire_dtype(n, t, "bf16")) for n, t in ctx["policy"].state_dict().items()}  # as pushed
        ctx["policy"].to(torch.bfloat16).save_pretrained(work / "updated")  # (the bf16 round trip rounds the policy)
        ctx["policy"].float()
        tok.save_pretrained(work / "updated")
        updated = greedy(ctx["engine"], prompts[:16], 32)
        fresh = make_engine(work / "updated")
        try:
            same = agreement(updated, greedy(fresh, prompts[:16], 32))
        finally:
            ctx.setdefault("to_close", []).append(fresh)
        if kind == "vllm":
            if same < 1.0:
                raise AssertionError(f"greedy agreement with a fresh engine {same:.2f} (stale or partial update?)")
            return {"greedy_agreement": same}
        # The proof is the weights: each engine tensor must equal the policy's as sent (bf16; the router's
        # e_score_correction_bias travels and stays in fp32). The fresh engine loads a bf16 checkpoint, which
        # rounds that bias, so on a random-init model (near-tie logits) its greedy tokens can differ: seen on the
        # H200, 15 of 16 sequences agreed before this check compared weights instead.
        mine, theirs = ctx["engine"].model.state_dict(), fresh.model.state_dict()
        wrong = [n for n, t in mine.items() if not torch.equal(t, sent[n].to(t.dtype))]
        if wrong:
            raise AssertionError(f"{len(wrong)} engine tensors differ from the policy's, e.g. {wrong[:3]}")
        return {"weights_equal_policy": len(mine), "greedy_agreement": same,
                "tensors_differing_from_fresh_bf16_engine": [n for n in theirs if not torch.equal(mine[n], theirs[n])][:3],
                "greedy_self_agreement": agreement(updated, greedy(ctx["engine"], prompts[:16], 32))}

    if kind == "inprocess":
        inprocess_fp8_stages(stage, ctx, prompts, WeightSync, device, sync)
    else:
        vllm_fp8_stages(stage, ctx, a, work, tok, kw, prompts, sync)
    for engine in [ctx.get("engine"), ctx.get("fp8"), *ctx.get("to_close", [])]:
        if engine is not None:
            close_engine(engine)


def vllm_fp8_stages(stage, ctx, a, work, tok, kw, prompts, sync):
    """Block-FP8 served by vLLM's own kernels, and an in-place FP8 update of that engine."""
    from slide.engine.inprocess import SamplingParams
    from slide.engine.vllm_engine import VLLMEngine, _reload
    from slide.weights.export import export_fp8
    from slide.weights.fp8 import is_quantizable, quantize_blockwise

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


def inprocess_fp8_stages(stage, ctx, prompts, WeightSync, device, sync):
    """The in-process engine on FP8-rounded weights, and block-FP8 GEMMs through torch's scaled_mm."""
    from slide.weights.fp8 import is_quantizable

    @torch.no_grad()
    def logits(model):  # next-token logits after each prompt (all the same length here)
        return model(input_ids=torch.tensor(prompts[:16], device=device)).logits[:, -1].float()

    def rel(x, ref):
        return ((x - ref).norm() / ref.norm()).item()

    @stage("engine_fp8_weights_logits")
    def _():
        if "engine" not in ctx:
            raise RuntimeError("no engine: stage engine_bf16_generate failed")
        exact, bf16 = logits(ctx["policy"]), logits(ctx["engine"].model)  # fp32 policy; engine at bf16 weights
        pushed = WeightSync("fp8", bucket_mb=256).push(ctx["policy"], ctx["engine"], version=2)
        fp8 = logits(ctx["engine"].model)
        return {"logits_rel_err_bf16_vs_fp32": rel(bf16, exact), "logits_rel_err_fp8_vs_fp32": rel(fp8, exact),
                "top1_agreement_fp8_vs_bf16": (fp8.argmax(-1) == bf16.argmax(-1)).float().mean().item(),
                "bytes": pushed["sync/bytes"]}

    @stage("fp8_blockwise_gemm")
    def _():
        if device != "cuda":
            raise RuntimeError("scaled_mm block-FP8 kernels need a CUDA GPU (SM90+)")
        own = max(((n, t) for n, t in ctx["policy"].state_dict().items() if is_quantizable(n, t) and t.dim() == 2),
                  key=lambda nt: nt[1].numel())
        shapes = {f"model {own[0]} M=4096": (4096, own[1]), "glm4.5-size q_proj M=8192 K=5120 N=12288":
                  (8192, torch.randn(12288, 5120, device=device) * 0.02)}
        out = {}
        for label, (m, w) in shapes.items():
            out[label] = fp8_gemm(m, w.detach().to(device), sync)
        return out


def _quantize_rows(x: torch.Tensor, block: int = 128):
    """Activations, 1x128 blocks (one scale per token per 128 columns): (q [M, K], scale_inv [M, K/128])."""
    from slide.weights.fp8 import FP8_DTYPE, FP8_MAX
    m, k = x.shape
    tiles = x.float().view(m, k // block, block)
    scale = tiles.abs().amax(-1).clamp(min=1e-12) / FP8_MAX
    return (tiles / scale[..., None]).to(FP8_DTYPE).view(m, k), scale


def fp8_gemm(m: int, w: torch.Tensor, sync) -> dict:
    """y = x @ w.T with x quantized 1x128 and w 128x128 (block FP8), via torch's scaled_mm; vs bf16.

    Several scale layouts are tried (torch releases differ); one counts only if it matches the
    float32 product of the dequantized operands (relative error < 1e-2)."""
    import torch.nn.functional as F
    from slide.weights.fp8 import dequantize_blockwise, quantize_blockwise
    n, k = w.shape
    x = torch.randn(m, k, device=w.device)
    xq, xs = _quantize_rows(x)
    wq, ws = quantize_blockwise(w.float())
    ref = (xq.float() * xs.repeat_interleave(128, 1)) @ dequantize_blockwise(wq, ws, torch.float32).T
    exact = x @ w.float().T
    a_scale = xs.t().contiguous().t()  # outer-dim-major, as the SM90 kernels read it
    pad = (-ws.shape[1]) % 4
    b_scales = {"ws.t()": ws.t(), "padded.t()": F.pad(ws, (0, pad)).t(), "ws": ws, "ws.t().contiguous()": ws.t().contiguous()}
    calls = {}
    if hasattr(F, "scaled_mm"):
        ST = F.ScalingType
        for name, sb in b_scales.items():
            calls[f"F.scaled_mm 1x128/128x128 scale_b={name}"] = (lambda sb=sb: F.scaled_mm(
                xq, wq.t(), a_scale, ST.BlockWise1x128, sb, ST.BlockWise128x128, output_dtype=torch.bfloat16))
    for name, sb in b_scales.items():
        calls[f"torch._scaled_mm scale_b={name}"] = (lambda sb=sb: torch._scaled_mm(
            xq, wq.t(), a_scale, sb, out_dtype=torch.bfloat16))
    tried, result = {}, {"m": m, "n": n, "k": k}
    for name, call in calls.items():
        try:
            y = call().float()
            err = ((y - ref).norm() / ref.norm()).item()
            tried[name] = round(err, 5)
            if err < 1e-2:
                result.update(kernel=name, rel_err_vs_dequantized=err,
                              rel_err_vs_exact=((y - exact).norm() / exact.norm()).item())
                break
        except Exception as e:  # a layout this torch does not take: try the next
            tried[name] = f"{type(e).__name__}: {str(e)[:160]}"
    result["tried"] = tried
    xb, wb = x.bfloat16(), w.bfloat16()
    result["bf16_rel_err_vs_exact"] = ((xb @ wb.T).float() - exact).norm().item() / exact.norm().item()
    flops = 2 * m * n * k
    result["bf16_tflops"] = round(flops / _time(lambda: xb @ wb.T, sync) / 1e12, 1)
    if "kernel" in result:
        result["fp8_tflops"] = round(flops / _time(calls[result["kernel"]], sync) / 1e12, 1)
        result["fp8_speedup"] = round(result["fp8_tflops"] / result["bf16_tflops"], 2)
    return result


def _time(fn, sync, reps: int = 20) -> float:
    """Median seconds of fn over reps, timed with CUDA events after 3 warm-ups."""
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]
