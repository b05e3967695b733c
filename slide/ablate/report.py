"""An ablation's report: held-out pass@1 vs step for every arm (every seed shown, the mean in bold), a side
metric from training, and a JSON table with each arm's score (mean of the last 3 evaluations per seed).

The last-3 mean is the score because held-out accuracy of a tiny model swings by 10-20 points between
neighbouring evaluations (shared/notes/learning-calibration.md); one final number would mostly be noise.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

LAST = 3  # evaluations averaged into a run's score


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: the run resumes past it
            pass
    return rows


def read_run(run: Path) -> dict:
    metrics = _jsonl(run / "metrics.jsonl")
    evals = [(e["step"], e["summary"]["pass@1"]) for e in _jsonl(run / "eval.jsonl")]
    return {"last_step": metrics[-1]["step"] if metrics else 0, "evals": evals, "metrics": metrics}


def score(evals: list[tuple[int, float]]) -> float | None:
    return statistics.fmean(v for _, v in evals[-LAST:]) if evals else None


def _mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves))) if curves else []
    return [(s, statistics.fmean(dict(c)[s] for c in curves)) for s in steps]


def _plot(ablation, data: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (arm, seeds) in enumerate(data.items()):
        color = f"C{i}"
        for seed, run in seeds.items():
            if run["evals"]:
                a.plot(*zip(*run["evals"]), color=color, alpha=0.35, lw=1, marker=".")
            m = [(r["step"], r[ablation.side_metric]) for r in run["metrics"] if ablation.side_metric in r]
            if m:
                b.plot(*zip(*m), color=color, alpha=0.5, lw=1)
        curve = _mean_curve([r["evals"] for r in seeds.values() if r["evals"]])
        if curve:
            a.plot(*zip(*curve), color=color, lw=2.5, label=f"{arm} (mean of {len(seeds)} seeds)")
        b.plot([], [], color=color, label=arm)
    a.set(xlabel="RL step", ylabel="held-out pass@1 (greedy)", title=f"{ablation.name}: thin = seeds, bold = mean")
    b.set(xlabel="RL step", ylabel=ablation.side_metric, title=f"training: {ablation.side_metric} (per seed)")
    for ax in (a, b):
        ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.suptitle(f"paper: {ablation.finding}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _verdict(winner, expected, winner_seeds, seeds, margin) -> str:
    """'reproduced' only when the paper's arm wins on every seed; 'opposite' when the other arm does;
    'inconclusive' when the seeds disagree (the difference is inside seed-to-seed noise)."""
    if margin is None:
        return "incomplete (a run failed or has no evaluation)"
    if winner is None:
        return "inconclusive (a tie)"
    if winner_seeds is not None and winner_seeds < seeds:
        return "inconclusive (seeds disagree)"
    return "reproduced" if winner == expected else "opposite"


def write_report(ablation, runs: dict, status: dict, here: Path, wall_s: float) -> dict:
    """runs: (arm, seed) -> run dir. Writes report.png and report.json into `here`; returns the JSON."""
    data: dict[str, dict] = {}
    for (arm, seed), run in runs.items():
        data.setdefault(arm, {})[seed] = read_run(run)
    table = {}
    for arm, seeds in data.items():
        scores = {seed: score(r["evals"]) for seed, r in seeds.items()}
        ok = [v for v in scores.values() if v is not None]
        table[arm] = {"score_mean": statistics.fmean(ok) if ok else None,
                      "score_per_seed": scores,
                      "start_pass@1": statistics.fmean(r["evals"][0][1] for r in seeds.values() if r["evals"])
                      if any(r["evals"] for r in seeds.values()) else None,
                      "status": {seed: status[(arm, seed)] for seed in seeds},
                      "runs": {seed: str(runs[(arm, seed)]) for seed in seeds}}
    scored = {arm: t["score_mean"] for arm, t in table.items() if t["score_mean"] is not None}
    winner = max(scored, key=scored.get) if len(scored) == len(table) else None
    margin = (scored[winner] - min(scored.values())) if winner else None
    if margin == 0:
        winner = None  # a tie
    per_seed_agree = None
    if winner:  # the seeds on which the winner beats every other arm
        others = [a for a in table if a != winner]
        per_seed_agree = sum(all(table[winner]["score_per_seed"][s] is not None
                                 and table[o]["score_per_seed"].get(s) is not None
                                 and table[winner]["score_per_seed"][s] > table[o]["score_per_seed"][s]
                                 for o in others) for s in data[winner])
    verdict = _verdict(winner, ablation.expected, per_seed_agree, len(next(iter(data.values()))), margin)
    line = (f"ablate {ablation.name}: " + ", ".join(f"{a} {v:.3f}" for a, v in scored.items())
            + (f" -> {winner} by {margin:.3f} (wins on {per_seed_agree}/{len(data[winner])} seeds)" if winner else "")
            + f"; paper: {ablation.expected} -> {verdict}")
    report = {"ablation": ablation.name, "paper_finding": ablation.finding, "paper_winner": ablation.expected,
              "score": f"held-out pass@1, mean of the last {LAST} evaluations per seed, then over seeds",
              "arms": table, "winner": winner, "margin": margin, "winner_seeds": per_seed_agree,
              "verdict": verdict, "wall_s": wall_s,  # of this invocation (runs finished before are not re-run)
              "run_s": {f"{arm}-s{seed}": sum(r.get("time/step_s", 0.0) for r in run["metrics"])
                        for arm, seeds in data.items() for seed, run in seeds.items()},
              "summary_line": line}
    here.mkdir(parents=True, exist_ok=True)
    (here / "report.json").write_text(json.dumps(report, indent=2, default=str))
    _plot(ablation, data, here / "report.png")
    return report
