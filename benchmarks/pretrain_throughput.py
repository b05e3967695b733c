"""Pre-training throughput and model FLOPs utilisation (MFU) against this machine's measured matmul peak.

    .venv/bin/python benchmarks/pretrain_throughput.py                       # fp32 and bf16, 512-token rows
    .venv/bin/python benchmarks/pretrain_throughput.py --steps 6 --rows 8 --seq 512 --dtypes bf16

The model: the 25M benchmark size (a dense Qwen2 as shared/bench/tiny_model.py builds it with --hidden 512
--layers 8: MLP 1536, 8 heads on 4 key/value heads, tied embeddings) with SLIDE's tokenizer. One step is
slide/pretrain/runner.py's train_step (truncate packing of the builtin:code corpus, Muon + AdamW, the document
mask), as `slide pretrain` runs it. The peak: a torch.matmul loop on square matrices in the same process, per dtype.

Model FLOPs per token (PaLM's accounting, causal attention halved): 6 * (weights of every matrix product, the
output head included, the embedding lookup not) + 6 * layers * seq_len * hidden. Reported: the median step after
one warm-up step.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from slide.config import load_config
from slide.pretrain.config import PretrainConfig
from slide.model.tiny import ExpertLoad
from slide.model.tokenizer import load_tokenizer
from slide.pretrain.optim import Optimizers
from slide.pretrain.packer import Packer
from slide.pretrain.runner import mixtures, train_step


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 12) -> float:
    """FLOP/s of an n x n x n torch.matmul in `dtype`: the best of `reps` timed calls after two warm-ups."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def model_25m(vocab: int) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=512, intermediate_size=1536,
                                        num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                                        tie_word_embeddings=True, max_position_embeddings=2048)).float().train()


def flops_per_token(model, seq_len: int) -> float:
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    c = model.config
    return 6 * matmul + 6 * c.num_hidden_layers * seq_len * c.hidden_size


def measure(dtype_name: str, a) -> dict:
    tok = load_tokenizer()
    cfg = load_config(PretrainConfig, None, [
        f"stages=[{{name: s, seq_len: {a.seq}, tokens: 1000000000, mixture: [{{name: code, path: 'builtin:code'}}]}}]",
        f"micro_batch_rows={a.micro}", f"corpora_dir={a.corpora}", f"precision={dtype_name}", "device=cpu"])
    mixture, _ = mixtures(cfg, tok)[0]
    model = model_25m(len(tok))
    opt = Optimizers(model, a.optimizer, 1e-3, 0.1, (0.9, 0.95))
    packer = Packer(mixture, tok, a.seq, "truncate")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    times = []
    for _ in range(a.steps + 1):
        t = time.perf_counter()
        train_step(model, ExpertLoad(model), opt, packer, a.rows, 1e-3, cfg, cfg.stages[0], dtype)
        times.append(time.perf_counter() - t)
    step = statistics.median(times[1:])
    tokens_s = a.rows * a.seq / step
    peak = matmul_peak(dtype)
    achieved = tokens_s * flops_per_token(model, a.seq)
    return {"dtype": dtype_name, "params": sum(p.numel() for p in model.parameters()), "step_s": step,
            "tokens_per_s": tokens_s, "model_tflops": achieved / 1e12, "peak_tflops": peak / 1e12,
            "mfu": achieved / peak, "steps_s": [round(x, 2) for x in times]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--optimizer", choices=["muon", "adamw"], default="muon")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--corpora", default="runs/corpora")
    a = ap.parse_args()
    print(f"threads {torch.get_num_threads()}")
    for d in a.dtypes:
        r = measure(d, a)
        print(f"{d}: {r['params'] / 1e6:.1f}M params, {a.rows} x {a.seq} tokens/step, step {r['step_s']:.2f} s "
              f"(all: {r['steps_s']}), {r['tokens_per_s']:.0f} tokens/s, model {r['model_tflops']:.3f} TFLOP/s, "
              f"matmul peak {r['peak_tflops']:.3f} TFLOP/s, MFU {100 * r['mfu']:.1f}%")


if __name__ == "__main__":
    main()
