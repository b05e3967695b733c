"""FP8 vs BF16 rollout weights on the demo recipe: held-out pass@1 and the engine-vs-trainer mismatch.

    python benchmarks/fp8_rollout.py --init runs/demo/sft/final --steps 40

Runs `slide rl slide/configs/demo_rl.yaml` from one cold-start checkpoint with rollout.precision=bf16,
then =fp8 (same seed), and writes fp8_rollout.png (logprob gap mean/max and held-out pass@1 per step, both
runs) and fp8_rollout.json (final and last-3-eval pass@1, mean gaps, bytes per sync). The trainer stays
fp32 on this CPU; only what the engine receives changes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "slide" / "configs" / "demo_rl.yaml"
PRECISIONS = ("bf16", "fp8")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", required=True, help="cold-start checkpoint (e.g. the demo's sft/final)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/fp8_rollout")
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides for both runs")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs, result = {}, {"steps": args.steps, "init": args.init, "overrides": args.set}
    for precision in PRECISIONS:
        subprocess.run([sys.executable, "-m", "slide.cli", "rl", str(CONFIG), f"rollout.precision={precision}",
                        f"name={precision}", f"out_dir={out}", f"model.init={args.init}", f"steps={args.steps}",
                        f"seed={args.seed}", *args.set], check=True)
        rows, evals = read(out / precision / "metrics.jsonl"), read(out / precision / "eval.jsonl")
        runs[precision] = (rows, evals)
        trained = [r for r in rows if "logprob_gap_mean" in r]
        result[precision] = {
            "final_pass@1": evals[-1]["summary"]["pass@1"],
            "last3_pass@1": sum(e["summary"]["pass@1"] for e in evals[-3:]) / len(evals[-3:]),
            "logprob_gap_mean": sum(r["logprob_gap_mean"] for r in trained) / max(1, len(trained)),
            "logprob_gap_max": max((r["logprob_gap_max"] for r in trained), default=0.0),
            "logprob_gap_frac_over": sum(r["logprob_gap_frac_over"] for r in trained) / max(1, len(trained)),
            "sync_bytes": rows[-1]["sync_bytes"],
        }
    result["fp8_minus_bf16_last3_pass@1"] = result["fp8"]["last3_pass@1"] - result["bf16"]["last3_pass@1"]
    result["fp8_over_bf16_bytes"] = result["fp8"]["sync_bytes"] / result["bf16"]["sync_bytes"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for precision, (rows, evals) in runs.items():
        trained = [r for r in rows if "logprob_gap_mean" in r]
        axes[0].plot([r["step"] for r in trained], [r["logprob_gap_mean"] for r in trained], label=precision)
        axes[1].plot([r["step"] for r in trained], [r["logprob_gap_max"] for r in trained], label=precision)
        axes[2].plot([e["step"] for e in evals], [e["summary"]["pass@1"] for e in evals], marker="o", label=precision)
    for ax, title in zip(axes, ("mean |logprob gap| (nats)", "max |logprob gap| (nats)", "held-out pass@1")):
        ax.set(xlabel="step", title=title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fp8_rollout.png", dpi=110)
    (out / "fp8_rollout.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
