"""Async vs sync on a tool environment with heavy-tailed latency: reward against wall-clock time, one script.

    python benchmarks/async_vs_sync.py --init runs/sft-calc/final --steps 40

Runs `slide rl slide/configs/agent_rl.yaml` twice from the same checkpoint, mode=sync then mode=async (same
seed, batch and step count), back to back, and writes async_vs_sync.png (reward and held-out pass@1 against
wall time) and async_vs_sync.json: seconds per step (mean, and the median without the first and last step),
and the time each mode's training loop (evaluations left out) needs to first reach a reward target (default:
90% of the sync run's final smoothed reward), whose ratio is the speed-up; also with the async workers'
start-up (Ray, one engine per worker: before step 1, outside the loop's clock) added; the time to 90% of sync's
gain (from its first window's mean reward to its final smoothed one; a target that still needs learning where
sync starts close to its final reward); and the time to the first
held-out evaluation at or above sync's final one (as coarse as eval_every). --sync-from / --async-from analyse
earlier runs instead of running again.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "slide" / "configs" / "agent_rl.yaml"


def run_mode(mode: str, args, out: Path) -> tuple[list[dict], list[dict], float | None]:
    reuse = args.sync_from if mode == "sync" else args.async_from
    if reuse:
        return read_run(Path(reuse), args) + (None,)
    overrides = [f"mode={mode}", f"name={mode}", f"out_dir={out}", f"model.init={args.init}", f"steps={args.steps}",
                 f"seed={args.seed}", f"threads={args.threads}", *args.set]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slide.cli", "rl", str(CONFIG), *overrides], check=True)
    return read_run(out / mode, args) + (time.perf_counter() - t0,)


def read_run(run: Path, args) -> tuple[list[dict], list[dict]]:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    if (cfg["model"]["init"], cfg["seed"], cfg["steps"]) != (args.init, args.seed, args.steps):
        print(f"error: {run}/config.yaml: init, seed and steps must match --init, --seed and --steps", file=sys.stderr)
        sys.exit(2)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    return rows, evals


def step_s(row: dict) -> float:
    """A step's seconds without its held-out evaluation (the same work in both modes, not training)."""
    return row["time/step_s"] - row.get("time/eval_s", 0.0)


def smooth(xs: list[float], k: int) -> list[float]:
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", required=True, help="cold-start checkpoint (SFT on calculator traces)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="trainer torch threads")
    ap.add_argument("--window", type=int, default=5, help="steps in the reward moving average")
    ap.add_argument("--target", type=float, default=None, help="reward target (default: 0.9 x sync's final)")
    ap.add_argument("--out", default="runs/async_vs_sync")
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides for both runs")
    ap.add_argument("--sync-from", default=None, help="an earlier run's sync directory to reuse instead of running "
                    "sync again (same --init/--seed/--steps and sync settings: its samples are the same, since "
                    "latency moves only its clock); for comparing async settings against one sync run")
    ap.add_argument("--async-from", default=None, help="an earlier run's async directory to analyse again")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"steps": args.steps, "config": str(CONFIG), "overrides": args.set, "sync_from": args.sync_from,
              "async_from": args.async_from}
    curves = {}
    for mode in ("sync", "async"):
        rows, evals, wall = run_mode(mode, args, out)
        t, clock = [], 0.0
        for r in rows:
            clock += step_s(r)
            t.append(clock)
        reward = smooth([r["reward_mean"] for r in rows], args.window)
        curves[mode] = (t, reward, evals)
        steady = sorted(step_s(r) for r in rows[1:-1]) or [t[-1] / len(t)]  # without the first and last step
        result[mode] = {"wall_s": wall, "train_loop_s": t[-1], "step_s_mean": t[-1] / len(t),
                        "step_s_median_steady": steady[len(steady) // 2],
                        "worker_start_s": rows[0].get("time/worker_start_s", 0.0),  # async: before step 1
                        "final_reward_smoothed": reward[-1],
                        "final_eval_pass@1": evals[-1]["summary"]["pass@1"] if evals else None}
    target = args.target if args.target is not None else 0.9 * result["sync"]["final_reward_smoothed"]
    result["reward_target"] = target
    # where sync starts high, 90% of its final reward is near its start: also the time to 90% of sync's gain,
    # from its first window's mean to its final smoothed reward
    sync_reward = curves["sync"][1]
    result["gain_target"] = sync_reward[args.window - 1] + 0.9 * (sync_reward[-1] - sync_reward[args.window - 1])
    for mode, (t, reward, _) in curves.items():
        hit = next((ti for ti, r in zip(t, reward) if r >= target), None)
        result[mode]["time_to_target_s"] = hit  # training loop only: the clock starts at step 1
        result[mode]["time_to_target_incl_start_s"] = hit + result[mode]["worker_start_s"] if hit else None
        result[mode]["time_to_gain_target_s"] = next((ti for ti, r in list(zip(t, reward))[args.window - 1:]
                                                      if r >= result["gain_target"]), None)
    # held-out: the first evaluation at or above sync's final one (coarse: evaluations are eval_every apart)
    eval_target = result["sync"]["final_eval_pass@1"]
    result["eval_target"] = eval_target
    for mode, (t, _, evals) in curves.items():
        hit = next((t[e["step"] - 1] for e in evals if eval_target is not None and e["summary"]["pass@1"] >= eval_target),
                   None)
        result[mode]["time_to_eval_target_s"] = hit
    for key in ("time_to_target_s", "time_to_target_incl_start_s", "time_to_gain_target_s", "time_to_eval_target_s"):
        s, a = result["sync"][key], result["async"][key]
        result[f"speedup_{key.removesuffix('_s')}"] = (s / a) if s and a else None
    for key in ("step_s_mean", "step_s_median_steady"):
        result[f"speedup_{key}"] = result["sync"][key] / result["async"][key]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, (t, reward, evals) in curves.items():
        ax1.plot(t, reward, label=mode)
        ts = {i + 1: ti for i, ti in enumerate(t)}
        ax2.plot([ts[e["step"]] for e in evals], [e["summary"]["pass@1"] for e in evals], marker="o", label=mode)
    ax1.axhline(target, color="gray", ls=":", label="target")
    ax1.axhline(result["gain_target"], color="gray", ls="--", label="90% of sync's gain")
    ax1.set(xlabel="wall time (s)", ylabel=f"reward (mean of {args.window} steps)", title="training reward")
    ax2.set(xlabel="wall time (s)", ylabel="held-out pass@1 (greedy)", title="held-out")
    for ax in (ax1, ax2):
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "async_vs_sync.png", dpi=110)
    (out / "async_vs_sync.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
