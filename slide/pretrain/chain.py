"""The whole chain on the tiny model: staged pre-/mid-training -> cold-start SFT -> RL -> held-out evaluation.

    slide pretrain slide/configs/pretrain_tiny.yaml --chain          # SFT and RL at the demo's settings
    slide pretrain slide/configs/pretrain_tiny.yaml --chain-quick    # the demo's smoke-test settings

SFT starts from the pre-training run's final/ (`model.init`), then RL from SFT's (slide/demo.py). One report,
RUN_DIR/chain.md: a table with a row per stage (held-out loss per source and needle accuracy for the data stages,
held-out pass@1 for SFT and RL) and the plots: RUN_DIR/plot.png (data stages), RUN_DIR/chain/curves.png (SFT, RL).
"""
from __future__ import annotations

import json
from pathlib import Path


def _stage_row(name: str, s: dict) -> str:
    loss = ", ".join(f"{k} {v:.3f}" for k, v in s["held_out_loss"].items())
    needle = ", ".join(f"{k}: {v:.2f}" for k, v in s["needle_accuracy"].items()) or "-"
    return (f"| {name} | seq_len {s['seq_len']}, RoPE base {s['rope_theta']:g}, ends at {s['tokens']:,} tokens "
            f"(all stages) | {loss} | {needle} |")


def report(run: Path, pretrain: dict, demo: dict) -> Path:
    rows = [_stage_row(n, s) for n, s in pretrain["stages"].items()]
    rows.append(f"| sft | cold-start SFT, {demo['sft_steps']} steps from {pretrain['final']} | held-out pass@1 "
                f"{demo['sft_pass@1']:.3f} | - |")
    rows.append(f"| rl | GRPO, {demo['rl_steps']} steps | held-out pass@1 {demo['rl_pass@1']:.3f} "
                f"(last 3 evaluations {demo['rl_pass@1_last3_mean']:.3f}) | - |")
    text = ("# pretrain -> mid-train -> SFT -> RL -> eval\n\n| stage | what | result | needle accuracy by length |\n"
            "|---|---|---|---|\n" + "\n".join(rows) + "\n\nPlots: plot.png (data stages), chain/curves.png (SFT, RL)."
            f"\nSFT + RL took {demo['total_seconds']:.0f} s.\n")
    (run / "chain.md").write_text(text)
    (run / "chain.json").write_text(json.dumps({"pretrain": pretrain["stages"], "demo": demo}, indent=2))
    return run / "chain.md"


def run_chain(pretrain: dict, run: Path, quick: bool, device: str) -> Path:
    """After `slide pretrain` has written `pretrain` (its summary): SFT -> RL -> eval from its final model."""
    from slide.demo import run_demo
    demo = run_demo(str(run / "chain"), quick=quick, device=device, init=pretrain["final"])
    return report(run, pretrain, demo)
