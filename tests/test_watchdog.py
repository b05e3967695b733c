"""The watchdog: a stalled step dumps every thread's stack, writes the checkpoint of the last finished step,
prints one line and exits 3; a stall that holds the GIL is dumped by faulthandler; beats keep a run alive; a
run stopped by it resumes to the metrics of a run never stopped."""
import json
import os
import subprocess
import sys
from pathlib import Path

from slide.watchdog import EXIT_STALLED

ROOT = Path(__file__).resolve().parents[1]


def run_script(tmp_path, body: str, timeout=60):
    script = tmp_path / "run.py"
    script.write_text("import sys, threading, time\nfrom pathlib import Path\n"
                      "from slide.watchdog import Watchdog, beat\nrun = Path(sys.argv[1])\n" + body)
    return subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_stalled_step_dumps_checkpoints_and_exits(tmp_path):
    r = run_script(tmp_path, """
def save():
    (run / "saved").write_text("step 6")
    return run / "checkpoints" / "step_000006"
def stuck_in_rollout():
    threading.Event().wait()
with Watchdog(run, stall_s=1.0, grace_s=60) as dog:
    dog.at_step(7, save)
    stuck_in_rollout()
""")
    assert r.returncode == EXIT_STALLED, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: step 7 made no progress for ") and "step_000006 written" in line
    assert f"slide rl --resume {tmp_path}" in line
    assert (tmp_path / "saved").read_text() == "step 6"
    dump = (tmp_path / "stall-step7.txt").read_text()
    assert "stuck_in_rollout" in dump and "slide-watchdog" in dump


def test_a_stall_that_holds_the_gil_is_dumped_by_faulthandler(tmp_path):
    r = run_script(tmp_path, """
def holds_the_gil():
    return pow(11, 889789789)
with Watchdog(run, stall_s=1.0, grace_s=1.0) as dog:
    dog.at_step(2)
    holds_the_gil()
""")
    assert r.returncode == 1 and "Timeout" in (tmp_path / "stall-stacks.txt").read_text()
    assert "holds_the_gil" in (tmp_path / "stall-stacks.txt").read_text()


def test_beats_keep_a_slow_step_alive(tmp_path):
    r = run_script(tmp_path, """
with Watchdog(run, stall_s=1.0, grace_s=1.0) as dog:
    dog.at_step(1)
    for _ in range(15):
        time.sleep(0.2)
        beat()
print("done")
""")
    assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr
    assert not list(tmp_path.glob("stall-*"))


ONCE = '''"""A reward that hangs (holding the GIL) once, after `after` calls, if the file `armed` exists."""
import os
from pathlib import Path

HERE = Path(__file__).parent


def score(problem, response):
    with open(HERE / "calls", "a") as f:  # one byte per call; O_APPEND: atomic across the pool's workers
        f.write("x")
    if os.path.getsize(HERE / "calls") > {after} and (HERE / "armed").exists():
        (HERE / "armed").unlink()
        pow(11, 889789789)
    return float(problem.answer in response)
'''


def test_a_run_stopped_by_the_watchdog_resumes_as_if_never_stopped(sft_model, tmp_path):
    """Step 3's rollout hangs in a reward call (reward timeout 120 s, watchdog 30 s: longer than any phase of
    these steps takes on a 2-core machine running a few other jobs, where 3 s once fired in step 3's generate,
    before the hang, and 15 s at a load average of 15): the run ends with status 3 and the checkpoint of step 2;
    resumed with a patient watchdog (watchdog_s may change on resume), it ends with the metrics and trajectories
    of a run never stopped."""
    rows = "".join(json.dumps({"prompt": f"What is {i}+{i}?", "answer": str(2 * i)}) + "\n" for i in range(1, 9))
    args = [f"model.init={sft_model[0]}", "steps=4", "save_every=10", "eval_every=0", "rollout.prompts_per_step=2",
            "rollout.n=4", "rollout.max_new_tokens=16", "train.micro_batch=8", "algo.dynamic_sampling=false",
            "data.eval_prompts=4", "data.reward=oncehang:score", "rollout.reward_timeout_s=120", "watchdog_s=30",
            "readiness.enabled=false"]  # the hang is armed by a count of the steps' reward calls
    for name in ("straight", "stalled"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "oncehang.py").write_text(ONCE.replace("{after}", str(2 * 2 * 4)))  # 2 steps' calls
        (tmp_path / name / "rows.jsonl").write_text(rows)
    (tmp_path / "stalled" / "armed").touch()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(where: Path, *extra: str) -> subprocess.CompletedProcess:
        """`slide rl` in a fresh process, as both runs are (an in-process run can differ in the last bits: torch's
        thread state is whatever earlier tests left)."""
        cmd = [sys.executable, "-m", "slide.cli", "rl", *extra]
        return subprocess.run(cmd, cwd=where, capture_output=True, text=True, timeout=300, env=env)

    straight, stalled = tmp_path / "straight", tmp_path / "stalled"
    r = cli(straight, *args, f"out_dir={straight}", "name=run", "threads=2", f"data.train={straight / 'rows.jsonl'}")
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli(stalled, *args, f"out_dir={stalled}", "name=run", "threads=2", f"data.train={stalled / 'rows.jsonl'}")
    assert r.returncode == EXIT_STALLED, r.stderr[-3000:]
    assert "error: step 3 made no progress" in r.stderr and not (stalled / "armed").exists()
    assert [p.name for p in (stalled / "run" / "checkpoints").glob("step_*")] == ["step_000002"]
    assert "score" in (stalled / "run" / "stall-step3.txt").read_text()  # the reward call the step waited on
    r = cli(stalled, "--resume", str(stalled / "run"), "watchdog_s=600")
    assert r.returncode == 0, r.stderr[-3000:]

    def read(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    def metrics(path):
        return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in read(path / "metrics.jsonl")]

    assert metrics(stalled / "run") == metrics(straight / "run")
    assert read(stalled / "run" / "trajectories.jsonl") == read(straight / "run" / "trajectories.jsonl")
