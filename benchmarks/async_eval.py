"""Async mode's held-out eval inline vs in the background evaluator: what the trainer pays per step.

    taskset -c 1 python benchmarks/async_eval.py --out /tmp/async-eval --steps 8 --repeats 2

Runs `slide rl` in async mode at the size of tests/test_async.py (arithmetic level 1, 2 prompts x 4 samples,
16 new tokens, 4 held-out prompts, 2 workers) with an eval every step, the two arms alternated
(disagg.eval_in_background=false, then true) from the same fresh test-size model and seed, and writes
async_eval.json: per arm and run, the trainer's mean `time/eval_s` per step, the mean `time/step_s` (steps 2..N-1:
the first has the workers' warm-up, the last waits for the outstanding evals), the wall time of the whole run,
the evaluator's own seconds per eval, the evals logged and skipped, and the mean eval lag in steps.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SIZE = ["data.train=arithmetic:1", "rollout.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=16",
        "data.eval_prompts=4", "train.micro_batch=8", "algo.dynamic_sampling=false", "model.size=test",
        "disagg.workers=2", "threads=1", "eval_every=1"]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def run_arm(background: bool, name: str, args) -> dict:
    out = Path(args.out)
    overrides = [f"out_dir={out}", f"name={name}", "mode=async", f"steps={args.steps}", f"save_every={args.steps}",
                 f"seed={args.seed}", f"disagg.eval_in_background={str(background).lower()}", *SIZE]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slide.cli", "rl", *overrides], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (out / name / "eval.jsonl").read_text().splitlines()]
    middle = rows[1:-1]
    return {"background": background, "wall_s": wall,
            "trainer_eval_s_per_step": mean([r.get("time/eval_s", 0.0) for r in rows]),
            "step_s_mean_middle": mean([r["time/step_s"] for r in middle]),
            "last_step_s": rows[-1]["time/step_s"],
            "evaluator_s_per_eval": mean([r["time/evaluator_s"] for r in rows if "time/evaluator_s" in r]),
            "evals_logged": len(evals), "evals_skipped": sum(r.get("eval_skipped", 0) for r in rows),
            "eval_lag_steps_mean": mean([e.get("logged_at", e["step"]) - e["step"] for e in evals]),
            "final_pass@1": evals[-1]["summary"]["pass@1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if Path(args.out).exists() and any(Path(args.out).iterdir()):
        print(f"error: --out {args.out!r} is not empty", file=sys.stderr)
        sys.exit(2)
    runs = []
    for i in range(args.repeats):
        for background in (False, True):
            runs.append(run_arm(background, f"{'bg' if background else 'inline'}-{i}", args))
            print(json.dumps(runs[-1]), flush=True)
    Path(args.out, "async_eval.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
