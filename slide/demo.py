"""The CPU demo: cold-start SFT -> GRPO -> held-out evaluation, on the demo-size tiny GLM.

    slide demo                 # 8-15 min on 2 cores; writes runs/demo/{sft,rl,summary.json,curves.png}
    slide demo --quick         # test-size model, a few steps: a smoke test of the whole path

Why RL here: SFT is stopped early on purpose (held-out greedy pass@1 0.25, inside SFT's jump: demo_sft.yaml), and
RL then trains on fresh prompts with a verifier only, no labels. Where labels are plentiful, more SFT wins
(shared/notes/learning-calibration.md), and this demo does not claim otherwise.
"""
from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from statistics import fmean

from slide.config import RLConfig, SFTConfig, dump_config, load_config
from slide.eval.table import print_before_after, print_eval
from slide.progress import StepProgress
from slide.rundir import RunDir


def _config_path(name: str) -> str:
    return str(resources.files("slide") / "configs" / name)


QUICK_SFT = ["model.size=test", "steps=30", "eval_every=10", "eval_prompts=20", "examples=200",
             "stop_at_pass_rate=null"]
QUICK_RL = ["steps=4", "eval_every=2", "data.eval_prompts=20", "rollout.prompts_per_step=4", "rollout.n=4"]


def _plot(rl_metrics: list[dict], rl_evals: list[dict], sft_evals: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps, reward = [m["step"] for m in rl_metrics], [m["reward_mean"] for m in rl_metrics]
    a.plot(steps, reward, color="C0", alpha=0.3, lw=0.8, label="train reward (batch mean)")
    w = 10  # the batch mean swings +-0.1 from step to step: a trailing mean shows the trend
    trend = [fmean(reward[max(0, i - w + 1):i + 1]) for i in range(len(reward))]
    a.plot(steps, trend, color="C0", lw=2, label=f"train reward ({w}-step mean)")
    start = sft_evals[-1:]  # RL's step 0 is the SFT checkpoint's last evaluation
    a.plot([0] * len(start) + [e["step"] for e in rl_evals], [e["summary"]["pass@1"] for e in start + rl_evals], "o-",
           color="C1", label="held-out pass@1 (greedy)")
    a.set_xlabel("RL step"), a.set_title("GRPO"), a.set_ylim(0, 1), a.legend(), a.grid(alpha=0.3)
    b.plot([e["step"] for e in sft_evals], [e["summary"]["pass@1"] for e in sft_evals], "o-", color="C2")
    b.set_xlabel("SFT step"), b.set_ylabel("held-out pass@1 (greedy)"), b.set_title("cold-start SFT")
    b.set_ylim(0, 1), b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def _readiness(rl_dir: Path) -> dict:
    """The readiness check's headline numbers (slide/rl/readiness.py), or {} when it did not run."""
    path = rl_dir / "readiness.json"
    if not path.exists():
        return {}
    report = json.loads(path.read_text())
    keep = ("greedy_pass@1", "sampled_pass@1", "chance_pass@1", "signal_share", "status", "chosen_temperature",
            "curriculum")
    return {k: report[k] for k in keep if k in report}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_demo(out: str, quick: bool = False, device: str = "auto", init: str | None = None, sft_overrides=(),
             rl_overrides=(), sft_from: str | None = None) -> dict:
    """SFT (from `init`, an HF folder, e.g. a `slide pretrain` final/; None = random init) -> RL -> eval, into `out`
    (demo configs plus `*_overrides`, e.g. another task: benchmarks/families.py). `sft_from`: an earlier demo's
    folder whose cold start (its sft/final and last held-out evaluation) RL starts from instead of a new SFT, so two
    RL settings can be compared from one cold start."""
    from slide import sft
    from slide.rl import sync
    root = Path(out)
    for i in range(2, 1000):  # never overwrite an earlier demo: runs/demo, runs/demo-2, ...
        if not (root.exists() and any(root.iterdir())):
            break
        root = Path(f"{out}-{i}")
    out = str(root)
    t0 = time.perf_counter()
    sft_cfg = load_config(SFTConfig, _config_path("demo_sft.yaml"),
                          [f"out_dir={out}", f"device={device}", *(QUICK_SFT if quick else []),
                           *([f"model.init={init}"] if init else []), *sft_overrides])
    if sft_from:
        sft_path = Path(sft_from) / sft_cfg.name
        before = _read(sft_path / "eval.jsonl")[-1]
        t_sft = json.loads((Path(sft_from) / "summary.json").read_text())["sft_seconds"]
    else:
        sft_dir = RunDir.create(out, sft_cfg.name, dump_config(sft_cfg))
        with StepProgress("1/2 cold-start SFT", sft_cfg.steps, ["loss", "eval_pass@1"]) as bar:
            before = sft.run(sft_cfg, sft_dir, progress=bar.update)
        sft_dir.close()
        sft_path, t_sft = sft_dir.path, time.perf_counter() - t0
    print_eval(before, title="after SFT (RL's starting point)")
    init = str(sft_path / "final")
    rl_cfg = load_config(RLConfig, _config_path("demo_rl.yaml"),
                         [f"out_dir={out}", f"model.init={init}", f"device={device}", *(QUICK_RL if quick else []),
                          *rl_overrides])
    rl_dir = RunDir.create(out, rl_cfg.name, dump_config(rl_cfg))
    t_rl = time.perf_counter()
    with StepProgress("2/2 GRPO", rl_cfg.steps, ["reward_mean", "eval_pass@1"]) as bar:
        after = sync.run(rl_cfg, rl_dir, progress=bar.update)
    rl_dir.close()
    t_rl = time.perf_counter() - t_rl
    print_before_after(before, after, ("SFT", "RL"), title="held-out, before and after RL")
    rl_evals = _read(rl_dir.path / "eval.jsonl")
    last3 = [e["summary"]["pass@1"] for e in rl_evals[-3:]]
    summary = {
        "sft_pass@1": before["summary"]["pass@1"],
        "rl_pass@1": after["summary"]["pass@1"],
        "rl_gain_points": round(100 * (after["summary"]["pass@1"] - before["summary"]["pass@1"]), 2),
        "rl_pass@1_last3_mean": sum(last3) / len(last3),
        "sft_steps": len(_read(sft_path / "metrics.jsonl")),
        "sft_from": sft_from,
        "sft_dir": str(sft_path), "rl_dir": str(rl_dir.path),
        "rl_steps": rl_cfg.steps,
        "sft_seconds": round(t_sft, 1),
        "rl_seconds": round(t_rl, 1),
        "readiness": _readiness(rl_dir.path),
        "total_seconds": round(time.perf_counter() - t0 + (t_sft if sft_from else 0), 1),
        "model_size": sft_cfg.model.size,
        "quick": quick,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(_read(rl_dir.path / "metrics.jsonl"), rl_evals, _read(sft_path / "eval.jsonl"), root / "curves.png")
    print(f"held-out pass@1: SFT {summary['sft_pass@1']:.3f} -> RL {summary['rl_pass@1']:.3f} "
          f"({summary['rl_gain_points']:+.1f} points) in {summary['total_seconds']:.0f} s; "
          f"see {root / 'summary.json'} and {root / 'curves.png'}")
    return summary
