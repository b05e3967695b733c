"""Engine-vs-trainer logprob gap on the tiny glm4_moe, with and without rollout routing replay (R3).

    python benchmarks/routing_gap.py --init runs/demo/sft/final          # a trained demo model
    python benchmarks/routing_gap.py                                     # the demo size, random init

For each rollout precision (bf16, fp8) the policy's weights are pushed to an in-process engine as a run pushes
them (WeightSync), which samples rollout batches of the demo recipe (slide/configs/demo_rl.yaml: 16 prompts x 8,
48 tokens, temperature 1) and records their routes. The fp32 trainer then scores THE SAME samples twice, with
algo.routing_replay off and on, and the figures are its own step metrics: logprob_gap_mean, logprob_gap_frac_over
(share of tokens whose gap exceeds algo.gap_threshold), logprob_gap_max, and with replay routing_mismatch_frac (the
share of expert choices the trainer's routers would have made otherwise). Same tokens both ways, so the
difference is the replay alone. Advantages are zero: the update the metrics come from changes no weight.
Writes the table and benchmarks/results/routing_gap[_NAME].json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from slide.config import RLConfig, load_config
from slide.engine import make_engine, set_threads
from slide.rl.parts import build
from slide.rl.rollout import encode_prompt
from slide.rl.sample import Sample
from slide.rl.trainer import PolicyTrainer
from slide.weights.buckets import WeightSync

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "slide" / "configs" / "demo_rl.yaml"
KEYS = ("logprob_gap_mean", "logprob_gap_frac_over", "logprob_gap_max", "routing_mismatch_frac")


def samples_from(engine, p, prompts: int, n: int, thinking: bool) -> list[Sample]:
    problems = p.source.next(prompts)
    ids = [encode_prompt(p.tok, q, thinking) for q in problems]
    out = engine.generate(ids, p.sampling, n=n, generator=p.generator)
    return [Sample(i, c.tokens, [1] * len(c.tokens), c.logprobs, c.version, q, g, routes=c.routes)
            for g, (q, i, cs) in enumerate(zip(problems, ids, out)) for c in cs]


def measure(cfg: RLConfig, precisions: list[str], batches: int) -> dict:
    p = build(cfg)  # the demo recipe's policy, prompt source and sampling (kl_coef 0: no reference model)
    trainers = {replay: PolicyTrainer(p.policy, cfg.train, cfg.algo.model_copy(update={"routing_replay": replay}),
                                      cfg.rollout.temperature, p.tok.pad_token_id, router_bias_rate=0.0)
                for replay in (False, True)}
    result = {}
    for precision in precisions:
        engine = make_engine("inprocess", p.policy, p.tok.pad_token_id, precision, cfg.seed, record_routes=True)
        WeightSync(precision).push(p.policy, engine, version=0)
        rows = {False: [], True: []}
        for _ in range(batches):
            t0 = time.perf_counter()
            samples = samples_from(engine, p, cfg.rollout.prompts_per_step, cfg.rollout.n, cfg.rollout.thinking)
            t1 = time.perf_counter()
            for replay, trainer in trainers.items():
                rows[replay].append(trainer.step(samples))  # advantages 0: the update moves nothing
            print(f"{precision}: {len(samples)} samples, rollout {t1 - t0:.0f} s, trainer x2 "
                  f"{time.perf_counter() - t1:.0f} s", flush=True)
        for replay, stats in rows.items():
            mean = {k: sum(r[k] for r in stats) / len(stats) for k in KEYS if k in stats[0]}
            mean["logprob_gap_max"] = max(r["logprob_gap_max"] for r in stats)
            mean["tokens"] = sum(r["train_tokens"] for r in stats)  # the sampled tokens the figures are over
            result[f"{precision}/{'r3' if replay else 'no_r3'}"] = mean
        off, on = result[f"{precision}/no_r3"], result[f"{precision}/r3"]
        result[f"{precision}/r3_over_no_r3"] = {k: on[k] / off[k] if off[k] else None
                                                for k in ("logprob_gap_mean", "logprob_gap_frac_over")}
    return result


def table(result: dict, precisions: list[str], threshold: float) -> str:
    lines = [f"| rollout | routing replay | gap mean (nats) | share of tokens over {threshold} | gap max | "
             "trainer's own routers disagree | tokens |", "|---|---|---|---|---|---|---|"]
    for precision in precisions:
        for tag in ("no_r3", "r3"):
            r = result[f"{precision}/{tag}"]
            mismatch = f"{r['routing_mismatch_frac']:.2%}" if "routing_mismatch_frac" in r else "-"
            lines.append(f"| {precision} | {'on' if tag == 'r3' else 'off'} | {r['logprob_gap_mean']:.5f} | "
                         f"{r['logprob_gap_frac_over']:.3%} | {r['logprob_gap_max']:.3f} | {mismatch} | "
                         f"{r['tokens']:.0f} |")
        ratio = result[f"{precision}/r3_over_no_r3"]
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {precision} | on / off | {fmt(ratio['logprob_gap_mean'])} | "
                     f"{fmt(ratio['logprob_gap_frac_over'])} | | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", default=None, help="checkpoint to measure (default: the demo size, random init)")
    ap.add_argument("--batches", type=int, default=2, help="rollout batches per precision")
    ap.add_argument("--precisions", nargs="*", default=["bf16", "fp8"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="", help="suffix of the results file")
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides (e.g. algo.gap_threshold=0.05)")
    args = ap.parse_args()
    overrides = ["model.size=demo", "algo.kl_coef=0", f"seed={args.seed}", *args.set]
    if args.init:
        overrides.append(f"model.init={args.init}")
    cfg = load_config(RLConfig, str(CONFIG), overrides)
    set_threads(cfg.threads)
    t0 = time.perf_counter()
    result = measure(cfg, args.precisions, args.batches)
    result["config"] = {"init": args.init, "batches": args.batches, "seed": args.seed, "overrides": args.set,
                        "gap_threshold": cfg.algo.gap_threshold, "seconds": round(time.perf_counter() - t0)}
    out = ROOT / "benchmarks" / "results" / f"routing_gap{'_' + args.name if args.name else ''}.json"
    out.write_text(json.dumps(result, indent=2))
    print(table(result, args.precisions, cfg.algo.gap_threshold))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
