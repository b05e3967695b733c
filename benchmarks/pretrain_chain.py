"""Issue 24's chain result: SFT + RL task accuracy from a pre-trained model against random init at equal SFT+RL time.

    python benchmarks/pretrain_chain.py --init runs/pretrain_tiny/final                  # both arms, one after another
    python benchmarks/pretrain_chain.py --init runs/pretrain_tiny/final --arms random    # one arm (e.g. one per core)
    python benchmarks/pretrain_chain.py --out runs/chain_vs_random --table-only          # the table of finished arms
    python benchmarks/pretrain_chain.py --init ... --sft-set lr=5e-4                     # another SFT setting, both arms

Each arm is `slide demo`'s path (slide/demo.py) on the same test-size glm4_moe with the same budget: cold-start SFT
for exactly --sft-steps (demo_sft.yaml without its stop rule, so neither arm stops earlier) then GRPO for --rl-steps
(demo_rl.yaml), held-out greedy pass@1 on the demo's 200 prompts (seed 0), which the pre-training corpus never
holds (slide/pretrain/corpora.py held_out_prompts). Same architecture and steps, so equal time; the seconds are
measured and printed. Writes OUT/ARM/summary.json (the demo's), OUT/chain_vs_random.json and .png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from slide.demo import _read, run_demo


def run_arm(out: Path, arm: str, init: str | None, sft_steps: int, rl_steps: int, device: str, threads: int,
            sft_overrides: list[str]) -> None:
    sft = ["model.size=test", f"steps={sft_steps}", "stop_at_pass_rate=null", f"eval_every={max(5, sft_steps // 10)}",
           f"threads={threads}", *sft_overrides]
    rl = [f"steps={rl_steps}", f"eval_every={max(5, rl_steps // 6)}", f"save_every={rl_steps}", f"threads={threads}"]
    run_demo(str(out / arm), device=device, init=init if arm == "pretrained" else None, sft_overrides=sft,
             rl_overrides=rl)


def table(out: Path) -> dict:
    arms = {}
    for summary in sorted(out.glob("*/summary.json")):
        s = json.loads(summary.read_text())
        sft_evals = _read(Path(s["sft_dir"]) / "eval.jsonl")
        rl_evals = _read(Path(s["rl_dir"]) / "eval.jsonl")
        arms[summary.parent.name] = {
            "sft_steps": s["sft_steps"], "rl_steps": s["rl_steps"], "sft_pass@1": s["sft_pass@1"],
            "rl_pass@1": s["rl_pass@1"], "rl_pass@1_last3_mean": s["rl_pass@1_last3_mean"],
            "sft_seconds": s["sft_seconds"], "rl_seconds": s["rl_seconds"],
            "sft_curve": [(e["step"], e["summary"]["pass@1"]) for e in sft_evals],
            "rl_curve": [(e["step"], e["summary"]["pass@1"]) for e in rl_evals]}
    print("| arm | SFT steps | after SFT | RL steps | after RL (last 3 evaluations) | SFT + RL seconds |")
    print("|---|---|---|---|---|---|")
    for name, a in arms.items():
        print(f"| {name} | {a['sft_steps']} | {a['sft_pass@1']:.3f} | {a['rl_steps']} | {a['rl_pass@1']:.3f} "
              f"({a['rl_pass@1_last3_mean']:.3f}) | {a['sft_seconds'] + a['rl_seconds']:.0f} |")
    (out / "chain_vs_random.json").write_text(json.dumps(arms, indent=2))
    _plot(arms, out / "chain_vs_random.png")
    return arms


def _plot(arms: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (name, a) in enumerate(arms.items()):
        sft_end = a["sft_steps"]
        xs = [s for s, _ in a["sft_curve"]] + [sft_end + s for s, _ in a["rl_curve"]]
        ys = [p for _, p in a["sft_curve"]] + [p for _, p in a["rl_curve"]]
        ax.plot(xs, ys, "o-", color=f"C{i}", label=name)
        ax.axvline(sft_end, color="grey", ls=":", lw=1)
    ax.set_xlabel("step (SFT, then RL after the dotted line)"), ax.set_ylabel("held-out greedy pass@1")
    ax.set_ylim(0, 1), ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", help="the pre-trained HF folder (a `slide pretrain` run's final/)")
    ap.add_argument("--arms", nargs="+", default=["pretrained", "random"], choices=["pretrained", "random"])
    ap.add_argument("--sft-steps", type=int, default=200)
    ap.add_argument("--rl-steps", type=int, default=100)
    ap.add_argument("--out", default="runs/chain_vs_random")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per arm (0 = torch's default)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--sft-set", nargs="*", default=[], help="more SFT overrides for both arms, e.g. lr=5e-4")
    a = ap.parse_args()
    out = Path(a.out)
    if not a.table_only:
        if "pretrained" in a.arms and not a.init:
            ap.error("--init is required for the pretrained arm")
        for arm in a.arms:
            run_arm(out, arm, a.init, a.sft_steps, a.rl_steps, a.device, a.threads, a.sft_set)
    table(out)


if __name__ == "__main__":
    main()
