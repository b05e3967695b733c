"""A pre-training run's plot: training loss over tokens with the stage boundaries, held-out loss per source at the
end of each stage, needle accuracy by context length after each stage (plot.png in the run directory)."""
from __future__ import annotations

import json
from pathlib import Path


def plot_run(run: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    stages = json.loads((run / "summary.json").read_text())["stages"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].plot([m["tokens"] for m in metrics], [m["loss"] for m in metrics], lw=1)
    for name, s in stages.items():
        ax[0].axvline(s["tokens"], color="grey", ls=":")
        ax[0].text(s["tokens"], ax[0].get_ylim()[1], name, rotation=90, va="top", ha="right", fontsize=8)
    ax[0].set(xlabel="tokens", ylabel="training loss (nats/token)", title="training loss")
    names = list(stages)
    sources = sorted({src for s in stages.values() for src in s["held_out_loss"]})
    for src in sources:
        ax[1].plot(names, [stages[n]["held_out_loss"].get(src, float("nan")) for n in names], "o-", label=src)
    ax[1].set(xlabel="after stage", ylabel="nats/token", title="held-out loss per source")
    ax[1].legend(fontsize=8)
    for n in names:
        acc = stages[n]["needle_accuracy"]
        ax[2].plot([int(k) for k in acc], list(acc.values()), "o-", label=n)
    ax[2].set(xlabel="context length (tokens)", ylabel="accuracy", title="needle retrieval", ylim=(-0.05, 1.05))
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    out = run / "plot.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
