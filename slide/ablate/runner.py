"""Run one ablation: a shared cold-start checkpoint, then every arm x seed as `slide rl` runs, then the report.

    slide ablate token-mean                       # ~15 min on 2 cores; runs/ablate/token-mean/{report.png,report.json}
    slide ablate curriculum --seeds 0 1 2         # more seeds
    slide ablate temperature --quick              # toy size: a smoke test of the whole path

Runs go two at a time (one torch thread each) as separate processes. Re-running the same command
continues where it stopped: a finished run is kept, a killed one resumes from its last checkpoint
(`slide rl --resume`), the cold-start checkpoint is reused. A run that fails is reported as failed
with its log; the others still finish and are compared.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from slide.ablate.report import read_run, write_report
from slide.ablate.specs import ABLATIONS, BASE_TASK, RL_COMMON, Ablation
from slide.errors import UserError

# the demo's cold-start recipe (slide/configs/demo_sft.yaml) on the test-size model and arithmetic:1-4;
# measured: held-out greedy pass@1 0.32 at step 340 (L1 0.72, L2 0.52, L3 0.04, L4 0.00), ~6 CPU-minutes
BASE_SFT = ["model.size=test", f"data={BASE_TASK}", "examples=2000", "steps=600", "stop_at_pass_rate=0.3",
            "eval_every=20", "eval_prompts=100", "threads=1"]
QUICK_SFT = ["model.size=test", f"data={BASE_TASK}", "examples=200", "steps=10", "stop_at_pass_rate=null",
             "eval_every=10", "eval_prompts=10", "threads=1", "seq_len=128", "batch_tokens=1024"]
QUICK_RL = ["rollout.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=48", "algo.dynamic_sampling=false", "eval_every=2",
            "save_every=2", "data.eval_prompts=8", "threads=1", "curriculum.pool=8", "curriculum.stage2_step=3",
            "curriculum.k_small=2", "curriculum.k_large=4", "temperature.window=2", "temperature.eval_prompts=4",
            "temperature.eval_k=2"]
QUICK_STEPS = 4


def _slide(*args: str) -> list[str]:
    return [sys.executable, "-m", "slide.cli", *args]


def _done(run: Path, steps: int) -> bool:
    return (run / "checkpoints" / f"step_{steps:06d}").exists() or read_run(run)["last_step"] >= steps


def base_checkpoint(out: Path, quick: bool, device: str = "auto") -> Path:
    """The cold-start SFT checkpoint every ablation starts from (trained once, then reused)."""
    base = out / ("base-quick" if quick else "base")
    if (base / "final" / "config.json").is_file():
        return base / "final"
    if base.exists():  # an interrupted SFT: start it over (SFT has no resume)
        import shutil
        shutil.rmtree(base)
    print(f"ablate: cold-start SFT -> {base} (once; every ablation reuses it)", flush=True)
    overrides = (QUICK_SFT if quick else BASE_SFT) + [f"out_dir={out}", f"name={base.name}", f"device={device}"]
    from importlib import resources
    recipe = str(resources.files("slide") / "configs" / "demo_sft.yaml")
    if subprocess.run(_slide("sft", recipe, *overrides)).returncode != 0:
        raise UserError(f"ablate: the cold-start SFT failed (see above); {base} is left for inspection")
    return base / "final"


def _command(ablation: Ablation, arm: str, seed: int, run: Path, init: Path, data_dir: Path, quick: bool,
             device: str = "auto") -> list[str]:
    if (run / "config.yaml").is_file():
        return _slide("rl", "--resume", str(run))
    arm_overrides = [o.replace("{data}", str(data_dir)) for o in ablation.arms[arm]]
    toy = []
    if quick:  # toy sizes go after the arm's overrides, so they win; a length schedule is shrunk to fit
        toy = QUICK_RL + (["rollout.length_stages=[[1,24],[3,48]]"]
                          if any(o.startswith("rollout.length_stages") for o in arm_overrides) else [])
    steps = QUICK_STEPS if quick else ablation.steps
    return _slide("rl", *RL_COMMON, *ablation.common, *arm_overrides, *toy, f"model.init={init}", f"seed={seed}",
                  f"steps={steps}", f"out_dir={run.parent}", f"name={run.name}", f"device={device}")


def run_ablation(name: str, out: str = "runs/ablate", seeds: tuple[int, ...] = (0, 1), quick: bool = False,
                 parallel: int = 2, device: str = "auto") -> dict:
    if name not in ABLATIONS:
        raise UserError(f"ablate: unknown ablation {name!r} (allowed: {', '.join(ABLATIONS)})")
    if not seeds:
        raise UserError("ablate: --seeds needs at least one seed")
    ablation = ABLATIONS[name]
    root = Path(out)
    here = root / (name + ("-quick" if quick else ""))
    init = base_checkpoint(root, quick, device)
    data_dir = here / "data"
    ablation.prepare(data_dir, quick)
    steps = QUICK_STEPS if quick else ablation.steps
    runs = {(arm, seed): here / f"{arm}-s{seed}" for arm in ablation.arms for seed in seeds}
    todo = [key for key, run in runs.items() if not _done(run, steps)]
    print(f"ablate {name}: {len(runs)} runs ({len(runs) - len(todo)} already done), {parallel} at a time; "
          f"logs in {here}/<arm>-s<seed>.log", flush=True)
    status = {key: "done" for key in runs if key not in todo}
    active: dict[tuple, tuple[subprocess.Popen, float]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    while todo or active:
        while todo and len(active) < parallel:
            key = todo.pop(0)
            run = runs[key]
            here.mkdir(parents=True, exist_ok=True)
            log = open(here / f"{run.name}.log", "a")
            cmd = _command(ablation, key[0], key[1], run, init, data_dir, quick, device)
            active[key] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.perf_counter())
        time.sleep(1.0)
        for key, (proc, started) in list(active.items()):
            if proc.poll() is None:
                continue
            del active[key]
            status[key] = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            print(f"  {runs[key].name}: {status[key]} in {time.perf_counter() - started:.0f} s", flush=True)
    report = write_report(ablation, runs, status, here, wall_s=time.perf_counter() - t0)
    print(report["summary_line"])
    print(f"written: {here / 'report.png'}, {here / 'report.json'}")
    return report
