"""Rewards per second through the call pool vs a thread per call (the path before the pool), and the share of a
demo RL step that scoring through the pool costs.

    .venv/bin/python benchmarks/reward_pool.py                      # ~2 min on 2 cores
    .venv/bin/python benchmarks/reward_pool.py --samples 1024 --steps 10 --model runs/demo/sft/final

1. Throughput on the demo's prompts (arithmetic:2): `--samples` responses, each a GLM response whose final
   answer is the reference (half) or the reference plus one (half). Three verifiers: math-verify
   (math_verify_equal), the demo's own (Arithmetic.verify: exact numbers), and a dataset row's default
   (exact, then math-verify). Thread path: `bounded_call` per sample, in order (what RewardRunner did before
   the pool). Pool: RewardRunner.score, one message per group of 8 over `--workers` processes. Both warm.
2. The demo's RL (slide/configs/demo_rl.yaml: 16 prompts x 8 samples, 48 new tokens, demo-size model; random
   init unless --model) for `--steps` steps through the sync driver: the rewards' wall time (time/reward_s) over
   the step's (time/step_s), first step excluded (the pool's start-up).
Writes benchmarks/results/reward_pool.json.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from slide.rl.reward import ByFamily, RewardRunner, bounded_call
from slide.tasks import Arithmetic
from slide.tasks.answer import final_answer, math_verify_equal


def math_verify_reward(problem, response: str) -> float:
    return 1.0 if math_verify_equal(final_answer(response), problem.answer) else 0.0


def responses(n: int, seed: int = 0):
    task, rng = Arithmetic(), random.Random(seed)
    out = []
    for i in range(n // 8):
        p = task.generate(rng, 2)
        texts = [f"<think>{p.reasoning}</think>{p.answer if j % 2 == 0 else int(p.answer) + 1}<|endoftext|>"
                 for j in range(8)]
        out.append((p, texts))
    return out


def throughput(name: str, fn, groups, workers: int) -> dict:
    flat = [(p, r) for p, rs in groups for r in rs]
    runner = RewardRunner(ByFamily({"arithmetic": fn}), timeout_s=10.0, workers=workers)
    runner.score(groups[:2])  # warm: workers up, function sent
    bounded_call(fn, *flat[0], timeout_s=10.0)  # and the thread path's imports
    t0 = time.perf_counter()
    threaded = [bounded_call(fn, p, r, timeout_s=10.0)[1] for p, r in flat]
    t_thread = time.perf_counter() - t0
    t0 = time.perf_counter()
    pooled = [x for g in runner.score(groups) for x in g]
    t_pool = time.perf_counter() - t0
    assert threaded == pooled, f"{name}: the two paths disagree"
    row = {"verifier": name, "samples": len(flat), "thread_per_s": len(flat) / t_thread,
           "pool_per_s": len(flat) / t_pool, "pool_vs_thread": t_thread / t_pool}
    print(f"{name:>12}: thread {row['thread_per_s']:8.0f}/s  pool {row['pool_per_s']:8.0f}/s  "
          f"(pool {row['pool_vs_thread']:.2f}x the thread path's rate)", flush=True)
    return row


def demo_share(steps: int, model: str | None) -> dict:
    from slide.config import RLConfig, dump_config, load_config
    from slide.rl import sync
    from slide.rundir import RunDir
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as out:
        overrides = [f"out_dir={out}", f"steps={steps}", "eval_every=0", f"save_every={steps + 1}",
                     "data.eval_prompts=16", "model.size=demo"] + ([f"model.init={model}"] if model else [])
        cfg = load_config(RLConfig, str(root / "slide/configs/demo_rl.yaml"), overrides)
        run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
        sync.run(cfg, run)
        rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()][1:]
    share = [r["time/reward_s"] / r["time/step_s"] for r in rows]
    out = {"steps_measured": len(rows), "step_s_median": statistics.median(r["time/step_s"] for r in rows),
           "reward_s_median": statistics.median(r["time/reward_s"] for r in rows),
           "reward_share_median": statistics.median(share), "reward_share_max": max(share),
           "samples_per_step": cfg.rollout.prompts_per_step * cfg.rollout.n, "model": model or "random init (demo)"}
    print(f"demo RL step: {out['step_s_median']:.2f} s median, rewards {out['reward_s_median'] * 1000:.1f} ms "
          f"({100 * out['reward_share_median']:.2f}% median, {100 * out['reward_share_max']:.2f}% max)", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="demo RL steps (the first is not counted)")
    ap.add_argument("--model", default=None, help="a demo checkpoint; default: random init at demo size")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "reward_pool.json"))
    a = ap.parse_args(argv)
    groups = responses(a.samples)
    dataset = lambda p, r: Arithmetic().verify(p, r) or math_verify_reward(p, r)  # noqa: E731 - auto's order
    rows = [throughput("math-verify", math_verify_reward, groups, a.workers),
            throughput("exact", Arithmetic().verify, groups, a.workers),
            throughput("auto", dataset, groups, a.workers)]
    result = {"command": " ".join(["benchmarks/reward_pool.py", *(argv or sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d"), "throughput": rows, "demo_step": demo_share(a.steps, a.model)}
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
