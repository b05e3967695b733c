"""The demo model's RL step cost by expert layout at (about) the same parameter count: many small experts or few wide ones.

    python benchmarks/moe_layouts.py                      # 80x128 (the demo), 32x320, 16x640, 8x1280
    python benchmarks/moe_layouts.py --layouts 80x128 16x640 --repeats 3

Each layout is the demo size (`slide.model.tiny.SIZES["demo"]`) with `n_routed_experts x moe_intermediate_size`
replaced, random init. Timed like one demo RL step: a training update (forward+backward of 128 sequences x 66
tokens in two micro-batches, then AdamW) and a generate of 16 prompts x 8 samples x 40 new tokens on the
in-process engine (fp32, the demo's precision). Layouts are interleaved `--repeats` times; the lines print the
median of each. Fewer, wider experts mean fewer small matrix products but more active parameters per token.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from moe_experts import active_params

from slide.engine import set_threads
from slide.engine.inprocess import InProcessEngine, SamplingParams
from slide.model.tiny import SIZES, build_model, glm_config
from slide.model.tokenizer import load_tokenizer


def layout(text: str) -> tuple[int, int]:
    experts, width = text.lower().split("x")
    return int(experts), int(width)


def step_times(model, tok, ids: torch.Tensor, prompts: list[list[int]]) -> tuple[float, float]:
    """(train update seconds, generate seconds) of one demo-shaped RL step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    t0 = time.perf_counter()
    for micro in ids.chunk(2):
        model(input_ids=micro).logits.float().log_softmax(-1).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    train = time.perf_counter() - t0
    engine = InProcessEngine(model, pad_token_id=tok.pad_token_id)
    params = SamplingParams(max_new_tokens=40, min_new_tokens=40, stop_token_ids=(tok.eos_token_id,))
    t0 = time.perf_counter()
    engine.generate(prompts, params, n=8, generator=torch.Generator().manual_seed(0))
    return train, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", nargs="+", default=["80x128", "32x320", "16x640", "8x1280"],
                    help="EXPERTSxWIDTH: routed experts x moe_intermediate_size")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    a = ap.parse_args()
    set_threads(a.threads)
    tok = load_tokenizer()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (128, 66), generator=g)
    prompts = [torch.randint(5, 100, (30,), generator=g).tolist() for _ in range(16)]
    models = {}
    for text in a.layouts:
        experts, width = layout(text)
        sizes = dict(SIZES["demo"], n_routed_experts=experts, moe_intermediate_size=width)
        models[text] = build_model(glm_config(tok, **sizes), seed=0)
        step_times(models[text], tok, ids[:8], prompts[:2])  # warm-up
    times: dict[str, list[tuple[float, float]]] = {t: [] for t in a.layouts}
    for _ in range(a.repeats):
        for text, model in models.items():
            times[text].append(step_times(model, tok, ids, prompts))
    for text, model in models.items():
        train = statistics.median(t for t, _ in times[text])
        gen = statistics.median(g for _, g in times[text])
        params = sum(p.numel() for p in model.parameters())
        print(f"{text:>8s}: {params / 1e6:.1f}M params, {active_params(model.config) / 1e6:.2f}M active; "
              f"train update {train:.2f} s, generate {gen:.2f} s, sum {train + gen:.2f} s", flush=True)


if __name__ == "__main__":
    main()
