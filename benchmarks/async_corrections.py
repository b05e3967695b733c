"""Importance corrections for stale async samples: TIS vs masked IS vs decoupled PPO at max_staleness 3.

    python benchmarks/async_corrections.py --seeds 0 1 2 --lrs 1e-4 2e-4 --out runs/async_corrections

The task of tests/test_async.py's learning test ("What is a+b?" always answered 7; the SFT start answers a+b,
so reward starts near 0.2) in async mode with 2 workers and disagg.max_staleness=3 (groups up to three versions
old are trained). Arms (each a list of `slide rl` overrides on top of the shared ones):
  tis        algo.importance=tis, one update per step (today's default: the weight capped at 2)
  mis        algo.importance=mis, one update per step (IcePop's double-sided mask, bound 2)
  tis-k2     algo.importance=tis, train.updates_per_step=2 (two mini-batch updates, clipped against the
             proximal policy, behaviour weight truncated at 2: separates the mini-batches from the weight rule)
  decoupled  algo.importance=decoupled, train.updates_per_step=2 (AReaL: clip against the proximal policy,
             tokens whose proximal/behaviour ratio exceeds 5 dropped)
Every arm runs every seed at every lr, one after the other in one process (one Ray session). Per run: the
steps and training-loop seconds (evaluation excluded) until the reward, smoothed over 4 steps, first reaches
--target; the mean reward of the first and last 4 steps; held-out greedy pass@1 at the end (20 prompts).
A run "rose" if its last-4 reward beat its first-4 by 0.15 (the test's criterion) and "collapsed" if its
last-4 reward ended below its first-4. Writes async_corrections.json (every run, then the summary per arm and
lr) after each run, so a killed benchmark keeps what it measured. --init reuses a cold-start checkpoint.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ray
import torch

ARMS = {
    "tis": ["algo.importance=tis"],
    "mis": ["algo.importance=mis"],
    "tis-k2": ["algo.importance=tis", "train.updates_per_step=2"],
    "decoupled": ["algo.importance=decoupled", "train.updates_per_step=2"],
}
COMMON = ["mode=async", "threads=1", "steps=20", "eval_every=0", "rollout.prompts_per_step=4", "rollout.n=8",
          "rollout.max_new_tokens=40", "data.eval_prompts=20", "disagg.workers=2", "disagg.max_staleness=3",
          "train.micro_batch=8"]
WINDOW = 4


def cold_start(out: Path) -> Path:
    """tests/conftest.py's sft_model: the test-size model after 60 SFT steps on arithmetic level 1."""
    from slide import sft
    from slide.config import SFTConfig, dump_config, load_config
    from slide.rundir import RunDir
    cfg = load_config(SFTConfig, None, ["data=arithmetic:1", "steps=60", "batch_tokens=2048", "seq_len=128",
                                        "lr=2e-3", "eval_prompts=40", f"out_dir={out}", "examples=300",
                                        "name=sft", "threads=1"])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    sft.run(cfg, run)
    run.close()
    return run.path / "final"


def seven_data(out: Path) -> Path:
    path = out / "seven.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {a}+{b}?", "answer": 7}) + "\n"
                            for a in range(10) for b in range(10)))
    return path


def one_run(out: Path, name: str, overrides: list[str]) -> dict:
    from slide.config import RLConfig, dump_config, load_config
    from slide.rl import async_rl
    from slide.rundir import RunDir
    cfg = load_config(RLConfig, None, [f"out_dir={out}", f"name={name}", *COMMON, *overrides])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    t0 = time.perf_counter()
    async_rl.run(cfg, run)
    run.close()
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    return {"rows": rows, "wall_s": time.perf_counter() - t0}


def summarise_run(rows: list[dict], target: float) -> dict:
    reward = [r["reward_mean"] for r in rows]
    smooth = [sum(reward[max(0, i - WINDOW + 1):i + 1]) / len(reward[max(0, i - WINDOW + 1):i + 1])
              for i in range(len(reward))]
    clock, t = 0.0, []
    for r in rows:
        clock += r["time/step_s"] - r.get("time/eval_s", 0.0)
        t.append(clock)
    hit = next((i for i in range(WINDOW - 1, len(smooth)) if smooth[i] >= target), None)
    first, last = sum(reward[:WINDOW]) / WINDOW, sum(reward[-WINDOW:]) / WINDOW
    return {"first4": first, "last4": last, "eval_pass@1": rows[-1].get("eval_pass@1"),
            "steps_to_target": None if hit is None else hit + 1, "time_to_target_s": None if hit is None else t[hit],
            "train_loop_s": t[-1], "rose": last > first + 0.15, "collapsed": last < first,
            "logprob_gap_mean_max": max(r.get("logprob_gap_mean", 0.0) for r in rows),
            "is_masked_frac_mean": sum(r.get("is_masked_frac", 0.0) for r in rows) / len(rows),
            "clipfrac_mean": sum(r.get("clipfrac", 0.0) for r in rows) / len(rows),
            "staleness_mean": sum(r["staleness_mean"] for r in rows) / len(rows)}


def summary(runs: list[dict]) -> dict:
    out = {}
    for key in sorted({(r["arm"], r["lr"]) for r in runs}):
        rs = [r for r in runs if (r["arm"], r["lr"]) == key]
        hits = [r["time_to_target_s"] for r in rs if r["time_to_target_s"] is not None]
        steps = [r["steps_to_target"] for r in rs if r["steps_to_target"] is not None]
        evals = [r["eval_pass@1"] for r in rs]
        out[f"{key[0]}@lr{key[1]}"] = {
            "runs": len(rs), "reached_target": len(hits),
            "time_to_target_s_mean": sum(hits) / len(hits) if hits else None,
            "steps_to_target_mean": sum(steps) / len(steps) if steps else None,
            "eval_pass@1_mean": sum(evals) / len(evals), "eval_pass@1": evals,
            "first4_mean": sum(r["first4"] for r in rs) / len(rs), "last4_mean": sum(r["last4"] for r in rs) / len(rs),
            "rose": sum(r["rose"] for r in rs), "collapsed": sum(r["collapsed"] for r in rs),
            "train_loop_s_mean": sum(r["train_loop_s"] for r in rs) / len(rs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", default=None, help="cold-start checkpoint (default: train tests' SFT model first)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 2e-4])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--target", type=float, default=0.5, help="reward (smoothed over 4 steps) to reach")
    ap.add_argument("--out", default="runs/async_corrections")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    init = args.init or str(cold_start(out))
    data = seven_data(out)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    result = {"common": COMMON, "arms": {a: ARMS[a] for a in args.arms}, "init": init, "target": args.target,
              "runs": []}
    for lr in args.lrs:
        for seed in args.seeds:
            for arm in args.arms:  # arms interleaved: a change in the machine's load hits all of them alike
                name = f"{arm}-lr{lr:g}-s{seed}"
                r = one_run(out, name, [f"model.init={init}", f"data.train={data}", f"seed={seed}",
                                        f"train.lr={lr}", *ARMS[arm]])
                row = {"arm": arm, "lr": lr, "seed": seed, "wall_s": r["wall_s"],
                       **summarise_run(r["rows"], args.target)}
                result["runs"].append(row)
                print(json.dumps(row), flush=True)
                result["summary"] = summary(result["runs"])
                (out / "async_corrections.json").write_text(json.dumps(result, indent=2))
    ray.shutdown()
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
