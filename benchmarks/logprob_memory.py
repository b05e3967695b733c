"""Peak memory of one training forward+backward of response log-probs with a ~150K vocabulary: the full
[batch, length, vocab] logits (SLIDE before slide/model/logprobs.py) against the chunked LM head.

    .venv/bin/python benchmarks/logprob_memory.py                 # ~1 min on 2 cores, ~6 GB of RAM at peak
    .venv/bin/python benchmarks/logprob_memory.py --batch 8 --len 1024 --vocab 151936

Each variant runs in its own process (peak RSS is per process): a 2-layer qwen2 (hidden 256, Qwen2's vocabulary
size), `--batch` sequences of `--len` tokens whose second half is the response; one forward and backward of the
response tokens' log-probs, as the trainer runs them. Reported: the peak RSS over the process's RSS after
building the model and the batch, i.e. what the step itself adds. Writes benchmarks/results/logprob_memory.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def step(variant: str, batch: int, length: int, vocab: int) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from slide.rl.trainer import response_logprobs
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    ids = torch.randint(0, vocab, (batch, length))
    attn = torch.ones_like(ids)
    R = length // 2
    targets, start = ids[:, -R:], torch.full((batch,), length - R - 1)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # noqa: E731 - GiB (Linux: KiB)
    base = rss()
    t0 = time.perf_counter()
    if variant == "full":  # the previous implementation: logits for every position, then the response rows
        logits = model(input_ids=ids, attention_mask=attn).logits.float()  # [b, L, V]
        index = (start[:, None] + torch.arange(R)[None, :])
        picked = logits.gather(1, index[:, :, None].expand(-1, -1, vocab))
        logp = torch.log_softmax(picked, dim=-1).gather(-1, targets[:, :, None]).squeeze(-1)
    else:
        logp = response_logprobs(model, ids, attn, targets, start, 1.0)
    logp.sum().backward()
    return {"variant": variant, "peak_over_start_gib": rss() - base, "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--len", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--variant", choices=["full", "chunked"], help=argparse.SUPPRESS)  # one process per variant
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "logprob_memory.json"))
    a = ap.parse_args(argv)
    if a.variant:
        print(json.dumps(step(a.variant, a.batch, a.len, a.vocab)))
        return 0
    rows = []
    for variant in ("full", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--batch", str(a.batch), "--len",
                              str(a.len), "--vocab", str(a.vocab)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{variant:>8}: +{rows[-1]['peak_over_start_gib']:.2f} GiB peak, {rows[-1]['seconds']:.1f} s", flush=True)
    logits_gib = a.batch * a.len * a.vocab * 4 / 2**30
    result = {"command": " ".join(["benchmarks/logprob_memory.py", *(argv or sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d"), "batch": a.batch, "len": a.len, "vocab": a.vocab,
              "one_fp32_logits_tensor_gib": logits_gib, "rows": rows,
              "reduction": rows[0]["peak_over_start_gib"] / max(rows[1]["peak_over_start_gib"], 1e-9)}
    print(f"one [b, L, V] fp32 tensor: {logits_gib:.2f} GiB; peak reduced {result['reduction']:.1f}x")
    Path(a.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
