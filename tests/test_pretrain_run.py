"""`slide pretrain` end to end on the test-size model: two stages (truncate at 32 tokens, then best-fit at 64 with the
RoPE base raised), summary.json, and a kill -9 then --resume that equals a straight run, data positions included."""
import json
import os
import random
import signal
import subprocess
import sys
import time

from slide.pretrain.runner import TIME_KEYS

WORDS = "the a model reads code and text then learns to predict each next token of it".split()


def _corpus(path, n, seed):
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(3, 30)))}) + "\n"
                            for _ in range(n)))
    return str(path)


def _args(tmp_path):
    a, b = _corpus(tmp_path / "a.jsonl", 200, 0), _corpus(tmp_path / "b.jsonl", 200, 1)
    stages = (f"stages=[{{name: one, seq_len: 32, tokens: 512, packing: truncate, mixture: [{{name: a, path: {a}}}, "
              f"{{name: b, path: {b}, weight: 0.5}}]}}, {{name: two, seq_len: 64, tokens: 384, packing: best-fit, "
              f"rope_theta: 1000000, mixture: [{{name: b, path: {b}}}]}}]")
    return [stages, "schedule.batch_tokens=128", "schedule.batch_start_tokens=64", "schedule.batch_warmup_tokens=256",
            "schedule.warmup_tokens=128", "micro_batch_rows=2", "save_every=2", "eval.held_out_docs=2",
            "eval.needle_lengths=[64]", "eval.needle_samples=4", f"out_dir={tmp_path}", "threads=2"]


def _cli(*args):
    return [sys.executable, "-m", "slide.cli", "pretrain", *args]


def _metrics(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIME_KEYS} for line in path.read_text().splitlines()]


def test_kill_and_resume_equals_a_straight_run_and_summary_has_every_stage(tmp_path):
    args = _args(tmp_path)
    r = subprocess.run(_cli(*args, "name=straight"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    straight = tmp_path / "straight"
    summary = json.loads((straight / "summary.json").read_text())
    assert list(summary["stages"]) == ["one", "two"]
    assert set(summary["stages"]["one"]["held_out_loss"]) == {"a", "b"}
    assert set(summary["stages"]["two"]["held_out_loss"]) == {"b"}
    assert set(summary["stages"]["two"]["needle_accuracy"]) == {"64"}
    assert json.loads((straight / "final" / "config.json").read_text())["rope_parameters"]["rope_theta"] == 1e6
    rows = _metrics(straight / "metrics.jsonl")
    assert [m["rows"] for m in rows[:4]] == [2, 2, 3, 4]  # batch warmup: 64, 80, 96, 112 tokens -> rows of 32, rounded
    assert rows[0]["loss"] > rows[-1]["loss"]
    # the same run killed (SIGKILL) once its first checkpoint exists, then resumed
    p = subprocess.Popen(_cli(*args, "name=killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpts.exists() and any(ckpts.glob("step_*/state.pt"))):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert len(_metrics(tmp_path / "killed" / "metrics.jsonl")) < len(rows), "finished before the kill"
    r = subprocess.run(_cli("--resume", str(tmp_path / "killed")), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _metrics(tmp_path / "killed" / "metrics.jsonl") == rows  # docs/<source> counts: the data positions
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["stages"] == summary["stages"]
    assert (tmp_path / "killed" / "plot.png").is_file()
