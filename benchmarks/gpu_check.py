"""One-GPU check: SLIDE's commands on `device=cuda` with a user's own checkpoint, then the scale-out path.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json     # a CUDA machine: ~5-10 min
    python benchmarks/gpu_check.py --skip-scale                                # only the commands (~3 min)
    python benchmarks/gpu_check.py --cpu-dry-run --skip-scale                  # no GPU: the same on the CPU

Without CUDA (and without --cpu-dry-run) it says so in one line, records {"gpu": null, ...} and exits 0: CI never
has a GPU. Otherwise every stage is timed and reported on its own (a failing stage prints its error and the rest
go on), then a PASS/FAIL table; exit status 1 if any stage failed.

Part 1, the commands, each as a user runs it (`python -m slide.cli ...`, device=cuda) on a small checkpoint with
its own tokenizer (tests/own_checkpoint.py: byte-level BPE trained here, ChatML template, qwen2):
  sft          slide sft: bf16 autocast (precision=auto), fp32 master weights; loss falls, GPU memory logged
  eval         slide eval --device cuda --dtype bf16 on the SFT model
  rl_bf16      slide rl, 3 steps, bf16 rollout (rollout.precision=auto) and bf16 training; the engine-vs-trainer
               logprob gap; checkpoints hold the CUDA RNG state and the device
  rl_resume    the run resumed from its step-2 checkpoint (a copy): step 3 again; whether it equals the
               uninterrupted step 3 is reported (bit-exact needs deterministic kernels: not asserted)
  rl_fp8       rollout.precision=fp8 (block-FP8 pushes, dequantized into the bf16 engine on the GPU)
  rl_async     mode=async, 2 Ray workers sharing the GPU (each resolves its device on its GPU share)
  rl_fsdp      train.world_size=2 (FSDP2 on NCCL, one GPU per rank; SKIP on one GPU) and rollout.engines=2
  rl_vllm      rollout.engine=vllm, bf16 (only where vllm is installed; else SKIP)
  rl_vllm_sleep  the same with rollout.vllm_sleep=1: GPU memory vLLM frees for each training step, sleep/wake s
  serve        benchmarks/serve_load.py at demo size: `slide serve` on the GPU, and vLLM's OpenAI server with its
               GLM-4.5 tool-call and reasoning parsers where vllm is installed (requests/s, time to first token)
Part 2, the scale-out stages of benchmarks/gpu_scale.py (a ~0.65B glm4_moe: BF16 update, FP8/BF16 in-place
sync, FP8 kernels; vLLM's where installed, `--engine`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # slide, and the own-checkpoint builder the tests use

STAGES: dict[str, dict] = {}


def stage(name):
    """Run the decorated function now as one stage; record its result dict, its error, or a skip."""
    def wrap(fn):
        t0 = time.perf_counter()
        try:
            result = fn() or {}
            STAGES[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), **result}
        except Skip as e:
            STAGES[name] = {"ok": None, "skipped": str(e)}
        except Exception as e:  # a diagnostic script: report and go on
            traceback.print_exc()
            STAGES[name] = {"ok": False, "seconds": round(time.perf_counter() - t0, 2),
                            "error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"[{name}] {json.dumps(STAGES[name])}", flush=True)
        return STAGES[name]
    return wrap


class Skip(Exception):
    """A stage that cannot run here (vllm not installed)."""


def slide(*args: str, timeout_s: int = 600) -> None:
    """`python -m slide.cli ARGS` as a user runs it; raises with the end of its output if it fails."""
    r = subprocess.run([sys.executable, "-m", "slide.cli", *args], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"slide {' '.join(args[:2])} exited {r.returncode}: {(r.stderr or r.stdout)[-600:]}")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def command_stages(work: Path, device: str, vllm_version: str | None) -> None:
    """Part 1: sft, eval, rl (bf16, resumed, fp8, async, vLLM) through the CLI on `device`."""
    from own_checkpoint import build

    from slide.rundir import load_state
    own = build(work / "own-qwen2-chatml")
    on = f"device={device}"
    rl = ["data.train=arithmetic:1", "rollout.prompts_per_step=8", "rollout.n=8", "rollout.max_new_tokens=48",
          "data.eval_prompts=32", "eval_every=0", "save_every=1", "steps=3", "algo.dynamic_sampling=false", on,
          f"out_dir={work}/runs"]

    def run_rl(name: str, *extra: str) -> dict:
        slide("rl", f"name={name}", f"model.init={work}/runs/sft/final", *rl, *extra)
        m = rows(work / "runs" / name / "metrics.jsonl")
        gpu = [r["gpu/peak_gib"] for r in m if "gpu/peak_gib" in r]
        if device == "cuda" and len(gpu) != len(m):
            raise AssertionError("metrics lack gpu/peak_gib: the run did not compute on the GPU")
        return {"steps": len(m), "reward_mean": [round(r["reward_mean"], 3) for r in m],
                "logprob_gap_max": max(r.get("logprob_gap_max", 0.0) for r in m),
                "step_s": round(m[-1]["time/step_s"], 2), "peak_gpu_gib": round(max(gpu), 2) if gpu else None}

    @stage("sft")
    def _():
        slide("sft", "data=arithmetic:1", "steps=40", "batch_tokens=2048", "seq_len=128", "lr=2e-3",
              "eval_prompts=32", "examples=300", on, f"out_dir={work}/runs")
        m = rows(work / "runs" / "sft" / "metrics.jsonl")
        first, last = sum(r["loss"] for r in m[:5]) / 5, sum(r["loss"] for r in m[-5:]) / 5
        if not last < first:
            raise AssertionError(f"SFT loss did not fall: {first:.3f} -> {last:.3f}")
        return {"loss_first5": round(first, 3), "loss_last5": round(last, 3), "pass@1": m[-1].get("eval_pass@1"),
                "peak_gpu_gib": max((round(r["gpu/peak_gib"], 2) for r in m if "gpu/peak_gib" in r), default=None)}

    @stage("eval")
    def _():
        out = work / "eval.json"
        slide("eval", "--model", f"{work}/runs/sft/final", "--data", "arithmetic:1", "--prompts", "32",
              "--device", device, "--dtype", "bf16", "--out", str(out))
        return {"pass@1": json.loads(out.read_text())["summary"]["pass@1"]}

    @stage("rl_bf16")
    def _():
        out = run_rl("rl_bf16")
        state = load_state(work / "runs" / "rl_bf16" / "checkpoints" / "step_000002")
        if device == "cuda" and not ("cuda" in state["rng"] and state.get("device") == "cuda"):
            raise AssertionError(f"a CUDA run's checkpoint lacks the CUDA RNG or the device: {sorted(state)}")
        return out

    @stage("rl_resume")
    def _():
        done, again = work / "runs" / "rl_bf16", work / "runs" / "rl_resume"
        shutil.copytree(done, again)
        shutil.rmtree(again / "checkpoints" / "step_000003")
        slide("rl", "--resume", str(again))
        a, b = rows(done / "metrics.jsonl")[-1], rows(again / "metrics.jsonl")[-1]
        if b["step"] != 3:
            raise AssertionError(f"the resumed run ended at step {b['step']}, not 3")
        keys = ("reward_mean", "loss", "grad_norm")
        return {"step3_equal_uninterrupted": all(a[k] == b[k] for k in keys),
                **{f"{k}_uninterrupted_vs_resumed": [a[k], b[k]] for k in keys}}

    stage("rl_fp8")(lambda: run_rl("rl_fp8", "rollout.precision=fp8"))
    stage("rl_async")(lambda: run_rl("rl_async", "mode=async", "disagg.workers=2", "save_every=3"))

    @stage("rl_fsdp")
    def _():  # NCCL needs one GPU per rank (two ranks on one GPU is refused)
        if device == "cuda" and torch.cuda.device_count() < 2:
            raise Skip(f"train.world_size=2 on NCCL needs 2 GPUs, this machine has {torch.cuda.device_count()}")
        gpus = ["cluster.trainer_gpus=2", "cluster.rollout_gpus=0"] if device == "cuda" else []
        return run_rl("rl_fsdp", "train.world_size=2", "rollout.engines=2", "save_every=3", *gpus)

    @stage("rl_vllm")
    def _():
        if vllm_version is None:
            raise Skip("vllm is not installed")
        return run_rl("rl_vllm", "rollout.engine=vllm", "save_every=3")

    @stage("rl_vllm_sleep")
    def _():  # vLLM lends its GPU memory to the trainer between rollout and push (rollout.vllm_sleep=1)
        if vllm_version is None or device != "cuda":
            raise Skip("vllm is not installed" if vllm_version is None else "vLLM has no sleep mode on a CPU")
        out = run_rl("rl_vllm_sleep", "rollout.engine=vllm", "rollout.vllm_sleep=1", "save_every=3")
        m = rows(work / "runs" / "rl_vllm_sleep" / "metrics.jsonl")
        freed = [r.get("engine/sleep_freed_gib", 0.0) for r in m]
        if min(freed) <= 0:
            raise AssertionError(f"sleep freed no GPU memory at some step: {freed}")
        return {**out, "sleep_freed_gib": [round(f, 2) for f in freed],
                "sleep_s": [round(r["engine/sleep_s"], 2) for r in m], "wake_s": [round(r["engine/wake_s"], 2) for r in m]}

    @stage("serve")
    def _():  # slide serve on the device, beside vLLM's OpenAI server with its GLM-4.5 parsers where installed
        out = work / "serve_load.json"
        vllm = ["--vllm", sys.executable, "--glm-parsers"] if vllm_version else []
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--size", "demo", "--out",
                        str(out), *vllm], check=True, timeout=1200, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        return {"rows": [{k: r[k] for k in ("server", "clients", "requests_per_s", "ttft_median_s")}
                         for r in json.loads(out.read_text())["rows"]]}


def print_table(title: str) -> None:
    print(f"\n{title}\n{'stage':<28} {'result':<6} {'s':>7}  details")
    for name, s in STAGES.items():
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[s["ok"]]
        details = s.get("error") or s.get("skipped") or json.dumps(
            {k: v for k, v in s.items() if k not in ("ok", "seconds")})
        print(f"{name:<28} {verdict:<6} {s.get('seconds', 0):>7.1f}  {details[:160]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--experts", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--gens", type=int, default=8)
    ap.add_argument("--len", type=int, default=256)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--engine", choices=("auto", "vllm", "inprocess"), default="auto",
                    help="scale stages' rollout engine: vllm where installed (auto), else SLIDE's in-process engine")
    ap.add_argument("--skip-commands", action="store_true", help="only part 2 (the scale-out stages)")
    ap.add_argument("--skip-scale", action="store_true", help="only part 1 (the commands on the own checkpoint)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="no GPU: run the same stages on the CPU with small sizes, to check the script itself "
                         "(no 0.5B minimum; the scale stages' FP8 kernels need AMX there)")
    a = ap.parse_args(argv)

    result = {"gpu": None, "stages": STAGES, "args": vars(a)}
    try:
        import vllm
        result["vllm"] = vllm.__version__
    except ImportError:
        result["vllm"] = None
    cuda = torch.cuda.is_available()
    kind = a.engine if a.engine != "auto" else ("vllm" if result["vllm"] else "inprocess")
    if not cuda and not a.cpu_dry_run:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
        result["skipped"] = f"no CUDA GPU (torch.cuda.is_available() is False; torch {torch.__version__}, {build})"
        print(f"gpu_check: skipped: {result['skipped']}; nothing run (--cpu-dry-run checks the script on the CPU)")
        return _write(result, a.out)
    device = "cuda" if cuda else "cpu"
    result["gpu"] = torch.cuda.get_device_name(0) if cuda else "cpu dry run"
    result["engine"], result["torch"] = kind, torch.__version__
    work = Path(tempfile.mkdtemp(prefix="slide-gpu-check-"))
    if not a.skip_commands:
        command_stages(work, device, result["vllm"])
    if not a.skip_scale:
        if kind == "vllm" and result["vllm"] is None:
            STAGES["scale"] = {"ok": None, "skipped": "--engine vllm: vllm is not installed"}
        else:
            from gpu_scale import run_scale_stages
            run_scale_stages(a, stage, kind, device)
    print_table(f"gpu_check on {result['gpu']} (torch {torch.__version__}, vllm {result['vllm']}): "
                f"{sum(s['ok'] is True for s in STAGES.values())}/{len(STAGES)} PASS")
    return _write(result, a.out)


def _write(result: dict, out: str | None) -> int:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any(s.get("ok") is False for s in STAGES.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
