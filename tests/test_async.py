"""Async mode end to end on the test-size model: the staleness bound, a worker killed mid-run, partial rollout
aborting multi-turn episodes, kill -9 and resume through the CLI, and learning with stale samples.

One Ray session serves the in-process runs; every run is small (2 workers, a few prompts, a few steps) because
each one pays a few seconds to start its worker processes. Each run's problems are audited: every problem the
prompt source handed out was rolled out (trajectories.jsonl) or is outstanding in the final checkpoint.
"""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter, defaultdict

import pytest
import ray
import torch

from slide.config import RLConfig, dump_config, load_config
from slide.model.chat import chat_format
from slide.model.tokenizer import load_tokenizer
from slide.rl import async_rl
from slide.rl.data import PromptSource, eval_problems
from slide.rundir import RunDir
from slide.tasks import parse_task_specs
from processes import descendants, reap

SMALL = ["data.train=arithmetic:1", "rollout.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=16",
         "data.eval_prompts=4", "eval_every=0", "train.micro_batch=8", "algo.dynamic_sampling=false"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sft_init(one_torch_thread, request):
    """conftest's sft_model, built on one torch thread if this module is the first to need it (a session fixture
    requested directly is built before any module fixture; on two threads and two busy cores it took 20-260 s)."""
    return request.getfixturevalue("sft_model")[0]


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    """An HF folder that calls the calculator tool, if clumsily: at temperature 0.7 about 40% of its episodes
    reach a second turn (the arithmetic sft_model never writes a tool call, so no push could abort one).
    seq_len 700: the tools system prompt alone is ~450 tokens, a whole example 636-639."""
    from slide import sft
    from slide.config import SFTConfig
    out = tmp_path_factory.mktemp("sft-tools")
    cfg = load_config(SFTConfig, None, ["data=calculator:1", "steps=80", "batch_tokens=1200", "seq_len=700",
                                        "lr=5e-3", "warmup_steps=5", "examples=16", "thinking=false",
                                        "eval_prompts=2", "threads=1", f"out_dir={out}"])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    sft.run(cfg, run)
    return run.path / "final"


def run_async(out, name, *overrides, progress=None):
    cfg = load_config(RLConfig, None, [f"out_dir={out}", f"name={name}", "mode=async", "threads=1", *overrides])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    async_rl.run(cfg, run, progress=progress)
    run.close()
    return cfg, run.path


def kill_at(at: int, actor: str, killed: list):
    """A progress callback that kills the named actor once step `at` is logged (noted in `killed`)."""
    def kill(step, metrics):
        if step == at:
            ray.kill(ray.get_actor(actor))
            killed.append(step)
    return kill


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def state_at(path, step):
    return torch.load(path / "checkpoints" / f"step_{step:06d}" / "state.pt", weights_only=False)


def check_rows(cfg, rows):
    """Every step logged once, in order, each a full batch within the staleness bound."""
    assert [r["step"] for r in rows] == list(range(1, cfg.steps + 1))
    assert rows[0]["time/worker_start_s"] > 0  # workers were up before the first step's clock started
    for r in rows:
        assert r["groups_trained"] == cfg.rollout.prompts_per_step, r
        assert r["staleness_max"] <= cfg.disagg.max_staleness, r
    batches = [r["engine_batch_rows_mean"] for r in rows if "engine_batch_rows_mean" in r]
    assert batches and all(b >= 1 for b in batches)  # the workers' engines reported their batches


def audit(cfg, path) -> int:
    """Assert that no problem was lost: the prompts the source drew (replayed up to its position in the final
    checkpoint) are exactly those rolled out or outstanding. Returns how many handed-out groups never came back
    (worker died, call aborted, or in flight at a kill) and were handed out again."""
    rows, traj, state = read(path / "metrics.jsonl"), read(path / "trajectories.jsonl"), state_at(path, cfg.steps)
    specs = parse_task_specs(cfg.data.train)
    eval_specs = parse_task_specs(cfg.data.eval) if cfg.data.eval else specs
    source = PromptSource(specs, cfg.seed, eval_problems(eval_specs, cfg.data.eval_prompts, cfg.seed))
    drawn = []
    while source.rng.getstate() != state["source"]["rng"]:
        drawn += source.next(1)
        assert len(drawn) < 10_000, "the source's saved position is not reachable from its seed"
    outstanding = {x["prompt"] for x in state["outstanding"]}
    assert {p.prompt for p in drawn} == {t["prompt"] for t in traj} | outstanding
    groups = {t["group"] for t in traj}
    assert max(groups) < state["next_group"]
    # group ids are handed out once per call: each is logged, in flight at the end, or lost and re-queued
    return state["next_group"] - len(groups) - len(state["outstanding"])


def test_on_policy_run_survives_a_worker_kill(sft_init, ray_session, tmp_path):
    """max_staleness=0: every trained group was sampled by the policy the step starts from. Worker 0 is killed
    at step 2: a replacement starts, its in-flight problems are handed out again, and every step still trains a
    full batch. Two calls run at once per worker (their generate calls share engine batches)."""
    killed = []
    cfg, path = run_async(tmp_path, "onpolicy", f"model.init={sft_init}", *SMALL, "steps=5", "disagg.workers=2",
                          "disagg.calls_per_worker=2", "disagg.max_staleness=0",
                          progress=kill_at(2, "slide-rollout-0", killed))
    rows, traj = read(path / "metrics.jsonl"), read(path / "trajectories.jsonl")
    assert killed == [2]
    check_rows(cfg, rows)
    # strictly on-policy, checked against the trajectories: each step logged a full batch of groups of version
    # step - 1, and no group is from a policy newer than the one its step started from
    groups = defaultdict(set)
    for t in traj:
        assert t["version"] <= t["step"] - 1, t
        groups[t["step"], t["version"]].add(t["group"])
    for r in rows:
        assert r["staleness_max"] == 0
        assert len(groups[r["step"], r["step"] - 1]) >= cfg.rollout.prompts_per_step, r["step"]
    # every logged group was trained, dropped as stale, or is still buffered (dynamic sampling is off)
    logged = {t["group"] for t in traj}
    assert len(logged) == sum(r["groups_trained"] + r["dropped_stale"] for r in rows) + rows[-1]["buffer_groups"]
    # the kill: one replacement, and the dead worker's problems were handed out again
    assert [r["workers_replaced"] for r in rows[:2]] == [0, 0]
    assert rows[-1]["workers_replaced"] == 1
    assert audit(cfg, path) >= 1


def test_partial_rollout_aborts_multi_turn_calls_on_push(tool_model, ray_session, tmp_path):
    """partial_rollout with a push every step: a push that lands while an episode waits on its tool aborts the
    call before its next turn; the call's problems are re-queued, none is lost.

    The calls fed right after a batch run while the trainer trains (~1-2 s), then the push lands. A fixed 1.5 s
    tool latency puts most of them in their tool step at that moment, and temperature 0.7 makes the tool model
    reach a second turn in nearly every group (26 of 64 episodes, 16 of 16 groups; 12 and 10 at temperature 1).
    Calibration (2026-11-29): calls_aborted after 3 steps was 2, 3, 4, 4 for seeds 0-3 (two pushes counted).
    With calls_per_worker=2 it was 2, 0, 3, 3 for seeds 0-3: two concurrent calls finish sooner, so fewer
    are mid-episode when the push lands; this test keeps one call per worker.
    """
    cfg, path = run_async(tmp_path, "partial", f"model.init={tool_model}", "data.train=calculator:1",
                          "rollout.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=96",
                          "rollout.temperature=0.7", "rollout.thinking=false", "agent.max_turns=2",
                          "agent.latency_median_s=1.5", "agent.latency_sigma=0", "disagg.partial_rollout=true",
                          "disagg.sync_interval=1", "disagg.max_staleness=1", "algo.dynamic_sampling=false",
                          "steps=3", "eval_every=0", "data.eval_prompts=2", "train.micro_batch=8")
    rows = read(path / "metrics.jsonl")
    check_rows(cfg, rows)
    assert rows[-1]["calls_aborted"] >= 1, [r["calls_aborted"] for r in rows]
    assert rows[-1]["workers_replaced"] == 0
    audit(cfg, path)  # aborted calls' problems were rolled out again or are outstanding


def test_kill_and_resume_through_the_cli(sft_init, tmp_path):
    """kill -9 right after the first checkpoint; `slide rl --resume` finishes the run: steps continue where the
    checkpoint left off, workers restart on its version, its outstanding problems are rolled out, and every group
    finished before the kill is trained after the resume or counted as dropped (groups.jsonl): none vanish.
    Evals every step in the background evaluator: eval.jsonl ends complete, each version once (or counted
    skipped), the checkpoint's own pending version scored again after the resume."""
    args = [f"model.init={sft_init}", *SMALL, "steps=6", "save_every=2", "eval_every=1", "mode=async",
            "disagg.workers=2", "disagg.eval_in_background=true",
            "disagg.max_staleness=1", "threads=1", f"out_dir={tmp_path}", "name=killed"]
    path = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "slide.cli", "rl", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    deadline = time.time() + 240
    # killed once a checkpoint is written and a finished group waits on disk beyond it (trained in a lost update,
    # or not yet trained): the groups a kill used to lose
    while time.time() < deadline and p.poll() is None and not (any(path.glob("checkpoints/step_*/state.pt"))
                                                               and any(path.glob("groups/*.pt"))):
        time.sleep(0.05)
    assert p.poll() is None, p.stderr.read().decode()[-3000:]
    ray_procs = descendants(p.pid)  # its Ray cluster: gcs_server, raylet, agents, workers
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stderr.close()
    orphans = reap(ray_procs)
    if orphans:
        warnings.warn(f"kill -9 of an async driver left {len(orphans)} Ray processes running: {orphans}")
    done = len(read(path / "metrics.jsonl"))
    assert done < 6, "the run finished before it was killed; the test proves nothing"
    finished = {t["group"] for t in read(path / "trajectories.jsonl")}  # delivered before the kill
    pending = {int(f.stem) for f in (path / "groups").glob("*.pt")}  # on disk, not consumed by a checkpoint
    assert pending and pending <= finished
    cfg = load_config(RLConfig, str(path / "config.yaml"))
    ckpt = state_at(path, 2)
    r = subprocess.run([sys.executable, "-m", "slide.cli", "rl", "--resume", str(path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows, traj = read(path / "metrics.jsonl"), read(path / "trajectories.jsonl")
    check_rows(cfg, rows)  # steps 1-2 from before the kill, 3-6 after: numbered on, full batches, bounded
    # workers restarted on the checkpoint's weights
    assert all(t["version"] >= 2 for t in traj if t["step"] > 2 and t["group"] not in finished)
    # every finished group: trained or dropped exactly once, and logged once (restored ones re-logged)
    ledger = read(path / "groups.jsonl")
    outcomes = {r["group"]: r["outcome"] for r in ledger}
    assert len(outcomes) == len(ledger) and finished <= set(outcomes)
    assert sum(r["outcome"] == "trained" for r in ledger) == cfg.steps * cfg.rollout.prompts_per_step
    assert all(n == cfg.rollout.n for n in Counter(t["group"] for t in traj).values())
    assert {int(f.stem) for f in (path / "groups").glob("*.pt")} == {t["group"] for t in traj} - set(outcomes)
    # the checkpoint's outstanding problems (handed out before the kill) were rolled out again or delivered
    rolled = {t["prompt"] for t in traj if t["step"] > 2} | {x["prompt"] for x in state_at(path, 6)["outstanding"]}
    outstanding = {x["prompt"] for x in ckpt["outstanding"]}
    assert outstanding <= rolled
    if not outstanding:  # the workers had all delivered (or waited on max_staleness) when the checkpoint was taken:
        # seen once on one core shared with other jobs (2026-12-03); every other property above still held
        warnings.warn("the step-2 checkpoint had no outstanding problems: their re-roll went unchecked this run")
    assert audit(cfg, path) >= 0
    from test_evaluator import check_eval_log
    check_eval_log(cfg, path)  # no eval version lost or logged twice across the kill
    assert ckpt["eval_pending"] in ([], [2])  # only the checkpoint's own version can still be out


def test_reward_rises_with_stale_samples(sft_init, ray_session, tmp_path):
    """The JSONL "answer 7" task of test_rl.py in async mode: training on groups up to one version old lifts the
    reward from the SFT start at lr 2e-4, where the TIS cap alone has collapsed runs, with decoupled PPO's trust
    region (algo.importance=decoupled, two mini-batch updates per step clipped against the proximal policy).

    Calibration with decoupled PPO (2026-12-02, 2-core AMD EPYC, the test's config and seed; timing changes which
    groups make a batch, so a seed does not fix the run; 42-165 s a run beside other jobs): the reward rose in
    12 of 12 runs, mean of steps 1-4 -> last 4: 0.13 -> 0.83, 0.22 -> 0.84, 0.17 -> 0.66, 0.18 -> 0.80,
    0.19 -> 0.92, 0.19 -> 0.69, 0.15 -> 0.86, 0.18 -> 0.71, 0.16 -> 0.78, 0.23 -> 0.78, 0.16 -> 0.71,
    0.15 -> 0.77; held-out greedy pass@1 >= 0.75 in 11 of 12 (one run 0.05: its sampled reward rose to 0.66
    but the greedy answer had not switched yet). clipfrac 1-4% per step, decoupled_cap dropped 0-0.5% of
    tokens. TIS alone at lr 2e-4, same config and day: 3 of 3 rose (0.21 -> 0.77, 0.19 -> 0.72, 0.09 -> 0.71).
    Earlier records of TIS alone: lr 2e-4 failed 2 of 9 runs on a 2-core Intel with AMX (2026-11-30; one
    collapse at step 8, 0.44 -> 0.05, held-out 0.0), 0 of 3 here (2026-11-29); lr 3e-4 to 6e-4 failed 1 of 3 to
    3 of 9, collapsing to reward ~0 right after logprob_gap_mean (stale behaviour policy vs trainer) reached
    1-1.7 nats/token; so lr 1e-4 was used until now. The async benchmark (benchmarks/async_corrections.py,
    max_staleness 3) compares the corrections over seeds.
    """
    data = tmp_path / "seven.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a}+{b}?", "answer": 7}) + "\n"
                            for a in range(10) for b in range(10)))
    cfg, path = run_async(tmp_path, "seven", f"model.init={sft_init}", f"data.train={data}", "steps=20",
                          "eval_every=0", "rollout.prompts_per_step=4", "rollout.n=8", "rollout.max_new_tokens=40",
                          "train.lr=2e-4", "data.eval_prompts=20", "seed=1", "disagg.workers=2",
                          "disagg.max_staleness=1", "algo.importance=decoupled", "train.updates_per_step=2")
    rows = read(path / "metrics.jsonl")
    check_rows(cfg, rows)
    assert any(r["staleness_max"] == 1 for r in rows)  # it did train on samples of the previous policy
    assert all(r["updates"] == 2 for r in rows) and sum(r["clipfrac"] for r in rows) > 0  # the trust region bound
    first = sum(r["reward_mean"] for r in rows[:4]) / 4
    last = sum(r["reward_mean"] for r in rows[-4:]) / 4
    assert last > first + 0.15, (first, last)
    # held-out prompts of the same dataset, greedy; the SFT start answers a+b, i.e. 7 on 8 of the 100 prompts.
    # Seen: 0.75-1.0 in 11 of 12 calibration runs, 0.05 in one (timing decides which groups train); 0.4 is five
    # times the start.
    assert rows[-1]["eval_pass@1"] >= 0.4
    assert audit(cfg, path) == 0  # no worker died, nothing aborted: every handed-out group came back


def test_rewards_that_hold_the_gil_never_stall_the_workers(sft_init, ray_session, tmp_path):
    """A user's reward (tests/adversarial.py) that computes 11^889789789 for a third of the responses and feeds
    the rest through math-verify as corpus entries: the workers' call pools kill the hangs at the timeout, every
    step trains, and each hang is counted once."""
    from adversarial import pick
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i}+{i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(1, 9)))
    # 3 s: at 1 s a normal math-verify call once timed out on a loaded machine (9 timeouts counted for 8 hangs)
    cfg, path = run_async(tmp_path, "gil", f"model.init={sft_init}", *SMALL, "steps=3", f"data.train={data}",
                          "data.reward=tests.adversarial:score", "rollout.reward_timeout_s=3")
    rows, traj = read(path / "metrics.jsonl"), read(path / "trajectories.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["groups_trained"] == 2 for r in rows)
    cut = chat_format(load_tokenizer()).cut  # rewards score the response without its stop token
    hangs = sum(pick(cut(t["response"])) is None for t in traj)
    assert hangs > 0 and sum(r["reward_timeouts"] for r in rows) == hangs
    assert sum(v for r in rows for k, v in r.items() if k.startswith("reward_rejected/")) > 0
