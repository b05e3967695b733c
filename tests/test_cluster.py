"""Scale-out on the test-size model: FSDP2 trainer ranks (gloo) and engine actors on Ray, weight sync across
processes, placement with declared GPUs, and `slide rl` with train.world_size=2 and rollout.engines=2.

One Ray session (8 CPU slots, 4 declared GPUs: placement only, everything computes on the CPU) serves the
in-process tests; every multi-process run is tiny because each process pays seconds to import and build.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import ray
import torch

from processes import descendants, named, reap
from slide.cluster.placement import Placement
from slide.cluster.trainer_group import TrainerGroup, share
from slide.config import RLConfig, dump_config, load_config
from slide.model.tokenizer import tokenizer_for
from slide.rl import async_rl, sync
from slide.rl.parts import policy_and_trainer
from slide.rl.sample import Sample, set_advantages
from slide.rundir import RunDir
from slide.weights.buckets import WeightSync, make_buckets
from slide.weights.fp8 import Fp8Weight

SMALL = ["model.size=test", "data.train=arithmetic:1", "rollout.prompts_per_step=4", "rollout.n=4",
         "rollout.max_new_tokens=16", "data.eval_prompts=8", "train.micro_batch=8", "algo.dynamic_sampling=false"]


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=8, num_gpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def config(*overrides) -> RLConfig:
    return load_config(RLConfig, None, [*SMALL, *overrides])


def batch(seed: int = 1) -> list[Sample]:
    """Three groups of four random sequences of uneven lengths, rewards 0/1 alternating (advantages +-1)."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for gi in range(3):
        group = []
        for j in range(4):
            p, r = int(torch.randint(3, 9, (1,), generator=g)), int(torch.randint(2, 12, (1,), generator=g))
            group.append(Sample(torch.randint(5, 60, (p,), generator=g).tolist(),
                                torch.randint(5, 60, (r,), generator=g).tolist(), [1] * r,
                                (-torch.rand(r, generator=g)).tolist(), 0, None, gi, reward=float(j % 2)))
        groups.append(group)
    set_advantages(groups)
    return [s for group in groups for s in group]


def test_share_is_a_token_balanced_partition():
    samples = batch()
    for size in (1, 2, 3, 5):
        parts = [share(samples, r, size) for r in range(size)]
        assert [s for p in parts for s in p] == samples  # contiguous, in order, nothing twice
        assert all(parts)
    tokens = [sum(len(s.prompt_ids) + len(s.response_ids) for s in share(samples, r, 2)) for r in range(2)]
    assert abs(tokens[0] - tokens[1]) <= max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    assert [len(share(samples[:1], r, 3)) for r in range(3)] == [1, 0, 0]  # fewer samples than ranks


def test_two_fsdp_ranks_make_the_one_process_update(ray_session):
    """2 gloo ranks, each with half of a 12-sample batch in micro-batches of 3 (so one rank runs an empty
    micro-batch to match the other's count): loss, gradient norm, token count and every updated weight equal one
    process's update on the whole batch. Tolerance: 1e-5 relative on the metrics, 1e-6 absolute on the weights
    (float sums in another order; measured 2026-12-02: 5e-7 relative, 3.4e-7 absolute)."""
    cfg = config("train.world_size=2", "train.micro_batch=3")
    samples = batch()
    torch.manual_seed(cfg.seed)
    one_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"world_size": 1})})
    policy, trainer = policy_and_trainer(one_cfg, tokenizer_for(None, "auto"), torch.device("cpu"))
    one = trainer.step(samples)
    group = TrainerGroup(cfg, placement=Placement.for_run(cfg))
    try:
        two = group.step(samples)
        assert group.updates == 1
        refs, nbytes = group.publish(1, WeightSync("fp32", 0.05))  # small buckets: several gathers
        buckets = [ray.get(r) for r in refs]
    finally:
        group.close()
        group.placement.remove()
    assert len(buckets) > 3 and nbytes == sum(b.nbytes for b in buckets)
    assert two["train_tokens"] == one["train_tokens"] == sum(len(s.response_ids) for s in samples)
    for key in ("loss", "grad_norm", "logprob_gap_mean", "expert_share_max"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    sent = {name: t for b in buckets for name, t in b.items}
    assert set(sent) == set(policy.state_dict())
    for name, tensor in policy.state_dict().items():
        torch.testing.assert_close(sent[name], tensor, rtol=0, atol=1e-6)


def test_ranks_past_zero_build_on_meta_and_make_the_full_load_update(ray_session, tmp_path):
    """From a model.init folder with a KL reference: rank 1 builds policy and reference on the meta device (no
    full tensor: 0 bytes built) and receives its shards from rank 0, which reads the folder (every byte of each
    model); its buffers (the rotary inv_freq, in no state dict) equal a normally loaded model's, and two updates
    (the second with a KL > 0: the policy has moved from the reference) equal one process's (loss, KL, gradient
    norm within 1e-5 relative; weights 1e-6 absolute, as above)."""
    tok = tokenizer_for(None, "auto")
    torch.manual_seed(7)
    init = load_config(RLConfig, None, SMALL)
    saved, _ = policy_and_trainer(init, tok, torch.device("cpu"))
    saved.save_pretrained(tmp_path / "init")
    tok.save_pretrained(tmp_path / "init")
    cfg = config("train.world_size=2", "train.micro_batch=4", f"model.init={tmp_path / 'init'}", "algo.kl_coef=0.1")
    one_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"world_size": 1})})
    policy, trainer = policy_and_trainer(one_cfg, tok, torch.device("cpu"))
    buffers = {name: b.clone() for name, b in policy.named_buffers()}
    one = [trainer.step(batch(3)), trainer.step(batch(4))]
    group = TrainerGroup(cfg, placement=Placement.for_run(cfg))
    try:
        built = [ray.get(r.built_bytes.remote()) for r in group.ranks]
        held = ray.get(group.ranks[1].buffers.remote())
        two = [group.step(batch(3)), group.step(batch(4))]
        refs, _ = group.publish(2, WeightSync("fp32", 1.0))
        sent = {name: t for r in refs for name, t in ray.get(r).items}
    finally:
        group.close()
        group.placement.remove()
    full = sum(t.numel() * t.element_size() for t in saved.state_dict().values()) + \
        sum(b.numel() * b.element_size() for b in saved.buffers())
    assert built == [[full, full], [0, 0]]
    assert any("inv_freq" in name for name in buffers) and held.keys() == buffers.keys()
    for name, b in buffers.items():
        assert torch.equal(held[name], b), name
    assert one[0]["kl"] == 0 < one[1]["kl"]
    for key in ("loss", "grad_norm", "kl"):
        assert [t[key] for t in two] == pytest.approx([o[key] for o in one], rel=1e-5), key
    for name, tensor in policy.state_dict().items():
        torch.testing.assert_close(sent[name], tensor, rtol=0, atol=1e-6)


def test_a_one_process_checkpoint_continues_in_two_ranks_and_back(ray_session, tmp_path):
    """A checkpoint written by one process (its AdamW state numbered by parameter) resumes in 2 FSDP ranks (the
    state renamed and sharded): their next update equals the one process's next update; the group's checkpoint
    (sharded, DCP) resumes in one process again with the same weights and optimizer state."""
    from slide.rundir import load_state
    cfg = config("train.world_size=2", "train.micro_batch=4")
    one_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"world_size": 1})})
    tok = tokenizer_for(None, "auto")
    torch.manual_seed(cfg.seed)
    policy, trainer = policy_and_trainer(one_cfg, tok, torch.device("cpu"))
    trainer.step(batch(1))  # AdamW has moments now
    run = RunDir.create(str(tmp_path), "one", dump_config(one_cfg), tensorboard=False)
    ckpt = run.save_checkpoint(1, policy, tok, {"trainer": trainer.state_dict()})
    expected = trainer.step(batch(2))
    group = TrainerGroup(cfg, ckpt, placement=Placement.for_run(cfg))
    try:
        group.load_state_dict(load_state(ckpt)["trainer"], ckpt)
        got = group.step(batch(2))
        back = run.write_checkpoint(2, lambda folder: {"trainer": group.save(folder)}, tok, {})
    finally:
        group.close()
        group.placement.remove()
    assert got["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    again, trainer2 = policy_and_trainer(one_cfg, tok, torch.device("cpu"), back)
    trainer2.load_state_dict(load_state(back)["trainer"], back)
    assert trainer2.updates == 2
    for name, tensor in policy.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=1e-6)
    moments = {n: trainer.opt.state[p]["exp_avg_sq"] for n, p in policy.named_parameters()}
    for n, p in again.named_parameters():
        torch.testing.assert_close(trainer2.opt.state[p]["exp_avg_sq"], moments[n], rtol=1e-5, atol=1e-12)


def held_exactly(engines, policy, version: int, precision: str) -> None:
    """Every engine actor holds `version`: the sent BF16 tensors, or the FP8 payloads' dequantization."""
    expected = {}
    for b in make_buckets(policy.state_dict().items(), version, precision, 0.05):
        for name, payload in b.items:
            expected[name] = payload.dequantize(torch.bfloat16) if isinstance(payload, Fp8Weight) else payload
    for actor in engines.actors:
        assert ray.get(actor.version.remote()) == version
        held = ray.get(actor.weights.remote())
        for name, tensor in expected.items():
            assert torch.equal(held[name], tensor.to(held[name].dtype)), name


@pytest.mark.parametrize("precision,transport", [("bf16", "torch"), ("fp8", "torch"), ("bf16", "ray")])
def test_every_engine_holds_exactly_what_was_sent_and_a_dead_one_is_replaced(ray_session, precision, transport):
    """Two engine actors, weights over a gloo channel (torch) or the object store (ray): after a push each holds
    exactly what was sent, and the version. One is killed: the next generate replaces it (on the last version) and
    still answers every prompt, the same as before the kill (each share samples from its own seed). One killed
    before a push: the push replaces it and every engine holds the new version."""
    from slide.cluster.engines import EngineGroup
    from slide.cluster.weights import push
    from slide.engine.inprocess import SamplingParams
    cfg = config("rollout.engines=2", f"rollout.precision={precision}", f"rollout.weight_transport={transport}")
    placement = Placement.for_run(cfg)
    engines = EngineGroup(cfg, placement)
    try:
        policy, _ = policy_and_trainer(cfg, tokenizer_for(None, "auto"), torch.device("cpu"))
        stats = push(WeightSync(precision, 0.05), policy, engines, version=3)
        assert engines.version == 3 and stats["sync/buckets"] > 3
        held_exactly(engines, policy, 3, precision)
        prompts = [[5, 6, 7], [8, 9], [10, 11, 12], [13]]
        params = SamplingParams(temperature=1.0, max_new_tokens=6)
        before = engines.generate(prompts, params, n=2, generator=torch.Generator().manual_seed(0))
        ray.kill(engines.actors[1])
        after = engines.generate(prompts, params, n=2, generator=torch.Generator().manual_seed(0))
        assert engines.pop_counts() == {"engines_replaced": 1}
        assert ray.get(engines.actors[1].version.remote()) == 3
        assert [[c.tokens for c in g] for g in after] == [[c.tokens for c in g] for g in before]
        assert len(after) == 4 and all(len(g) == 2 for g in after)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.01)
        ray.kill(engines.actors[0])
        push(WeightSync(precision, 0.05), policy, engines, version=4)
        assert engines.pop_counts() == {"engines_replaced": 1} and engines.version == 4
        held_exactly(engines, policy, 4, precision)
    finally:
        engines.close()
        placement.remove()


def test_an_engine_dead_while_the_channel_is_made_is_replaced_and_the_push_completes(ray_session, monkeypatch):
    """An engine actor dies after the group found it alive but before it joins the weight channel (ray.kill is
    asynchronous: this is how a kill just before a push lands). The sender's join and the other engine's fail after
    the join timeout instead of waiting forever, the dead actor is replaced, a new channel is made and every engine
    holds the version."""
    from slide.cluster import channel
    from slide.cluster.engines import DEAD, EngineGroup
    from slide.cluster.weights import push
    real, made = channel.connect, []

    def connect_after_a_death(sender, actors):
        if not made:
            ray.kill(actors[1])
            while True:  # dead for sure: its join can never come
                try:
                    ray.get(actors[1].pid.remote())
                except DEAD:
                    break
        made.append(real(sender, actors, join_s=3))
        return made[-1]

    monkeypatch.setattr(channel, "connect", connect_after_a_death)
    cfg = config("rollout.engines=2", "rollout.precision=bf16", "rollout.weight_transport=torch")
    placement = Placement.for_run(cfg)
    engines = EngineGroup(cfg, placement)
    try:
        policy, _ = policy_and_trainer(cfg, tokenizer_for(None, "auto"), torch.device("cpu"))
        push(WeightSync("bf16", 0.05), policy, engines, version=1)
        assert made == [[1], []] and engines.pop_counts() == {"engines_replaced": 1}
        held_exactly(engines, policy, 1, "bf16")
    finally:
        engines.close()
        placement.remove()


def group_of(size: int) -> TrainerGroup:
    """A trainer group of `size` stand-in ranks whose `step(role)` fails as a survivor's collective does when a
    peer dies ("fails"), exits ("dies") or returns ("lives"). Defined here so Ray ships the class by value."""
    class Peer:
        def pid(self) -> int:
            return os.getpid()

        def step(self, role: str) -> None:
            if role == "dies":
                time.sleep(1.0)  # the survivor's error reaches the driver first, as it can with gloo
                os._exit(1)
            if role == "fails":
                raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:37016")

    group = TrainerGroup.__new__(TrainerGroup)
    group.size, group.ranks = size, [ray.remote(Peer).options(max_restarts=0, num_cpus=0).remote()
                                     for _ in range(size)]
    assert len(set(ray.get([r.pid.remote() for r in group.ranks]))) == size  # every stand-in is up
    return group


def test_a_survivors_collective_error_names_the_dead_rank(ray_session):
    """Rank 0's collective fails ("Connection closed by peer") before Ray reports rank 1's death: the run still
    stops with TrainerRankDied naming rank 1, not the survivor's traceback. A rank that raises while every
    rank lives is that rank's own error."""
    from slide.cluster.trainer_group import TrainerRankDied
    group = group_of(3)
    with pytest.raises(TrainerRankDied, match=r"trainer rank 2 of 3 died \(ActorDiedError\).*slide rl --resume"):
        group._all([r.step.remote(role) for r, role in zip(group.ranks, ["fails", "lives", "dies"])])
    group = group_of(2)
    with pytest.raises(ray.exceptions.RayTaskError, match="Connection closed by peer"):
        group._all([r.step.remote(role) for r, role in zip(group.ranks, ["fails", "lives"])])
    group.close()


def test_placement_puts_roles_on_their_declared_gpus(ray_session):
    """Disaggregated: 2 trainer and 2 engine bundles, one GPU each, four different GPUs. Colocated: engine j in
    trainer rank j's bundle, on its GPU. (Ray's 4 GPUs here are declared, not real: placement only.)"""
    @ray.remote
    def gpu():
        return ray.get_gpu_ids()

    for colocate, distinct in ((False, 4), (True, 2)):
        cfg = config("train.world_size=2", "rollout.engines=2", "cluster.trainer_gpus=2", "cluster.rollout_gpus=2",
                     f"cluster.colocate={colocate}")
        place = Placement.for_run(cfg)
        try:
            trainers = [ray.get(gpu.options(**place.trainer(r)).remote()) for r in range(2)]
            engines = [ray.get(gpu.options(**place.engine(j)).remote()) for j in range(2)]
        finally:
            place.remove()
        assert len({g for ids in trainers + engines for g in ids}) == distinct
        assert (trainers == engines) == colocate


def test_a_cluster_too_small_is_one_clear_error(ray_session):
    from slide.errors import UserError
    with pytest.raises(UserError, match="could not place"):
        Placement.for_run(config("train.world_size=2", "cluster.trainer_gpus=2", "cluster.gpus_per_node=0",
                                 "rollout.engines=4", "cluster.rollout_gpus=4"), timeout_s=3)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "sync/seconds"} for r in rows]


def test_two_ranks_two_engines_sync_run_resumes_exactly_and_at_world_size_one(ray_session, tmp_path):
    """`slide rl` with train.world_size=2, rollout.engines=2: an uninterrupted run, and the same run whose trainer
    rank 1 is killed (kill -9) after its first checkpoint: the run stops with one `error:` line naming the rank
    and `--resume`, exit 1; resumed, it logs exactly the uninterrupted run's metrics, trajectories and evals.
    Then the uninterrupted run's first checkpoint resumes at train.world_size=1 (the sharded optimizer state
    read by one process) and finishes."""
    args = [*SMALL, "steps=4", "save_every=2", "eval_every=2", "train.world_size=2", "rollout.engines=2"]
    cfg = load_config(RLConfig, None, [*args, f"out_dir={tmp_path}", "name=straight"])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    sync.run(cfg, run)
    assert (run.path / "checkpoints" / "step_000004" / "trainer").is_dir()  # the sharded state (DCP)
    shutil.copytree(run.path, tmp_path / "ws1", ignore=shutil.ignore_patterns("step_000004"))

    killed = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "slide.cli", "rl", *args, f"out_dir={tmp_path}", "name=killed"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900  # a guard against a hang only: on a loaded machine step 2 took over 300 s
    while time.time() < deadline and p.poll() is None and not any(killed.glob("checkpoints/step_*/state.pt")):
        time.sleep(0.1)
    assert p.poll() is None and any(killed.glob("checkpoints/step_*/state.pt")), "no checkpoint before the kill"
    procs = descendants(p.pid)
    ranks = named(procs, "ray::TrainerRank")
    assert len(ranks) == 2, procs
    os.kill(sorted(ranks)[1], signal.SIGKILL)  # a rank (by pid order; which one does not matter)
    err = p.communicate(timeout=300)[1]
    reap(procs)
    assert p.returncode == 1, err[-3000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("error: trainer rank") and "--resume" in last, last
    assert len(read(killed / "metrics.jsonl")) < 4, "the run finished before the kill; the test proves nothing"
    r = subprocess.run([sys.executable, "-m", "slide.cli", "rl", "--resume", str(killed)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert without_time(read(killed / "metrics.jsonl")) == without_time(read(run.path / "metrics.jsonl"))
    assert read(killed / "trajectories.jsonl") == read(run.path / "trajectories.jsonl")
    assert read(killed / "eval.jsonl") == read(run.path / "eval.jsonl")

    r = subprocess.run([sys.executable, "-m", "slide.cli", "rl", "--resume", str(tmp_path / "ws1"),
                        "train.world_size=1", "rollout.engines=1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read(tmp_path / "ws1" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert rows[:2] == read(run.path / "metrics.jsonl")[:2]  # the steps before the checkpoint, untouched
    assert load_config(RLConfig, str(tmp_path / "ws1" / "config.yaml")).train.world_size == 1


def test_two_ranks_async_run_end_to_end(ray_session, tmp_path):
    """mode=async with a trainer group of 2: groups accumulate rank by rank into one update per step, the workers
    get the weights as object-store refs gathered from the shards, the eval engine from the same refs."""
    cfg = load_config(RLConfig, None, [*SMALL, "steps=3", "save_every=3", "eval_every=3", "mode=async",
                                       "disagg.workers=1", "train.world_size=2", f"out_dir={tmp_path}", "name=a"])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    result = async_rl.run(cfg, run)
    rows = read(run.path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["groups_trained"] == cfg.rollout.prompts_per_step and r["train_tokens"] > 0 for r in rows)
    assert all(r["sync_bytes"] > 0 for r in rows)
    assert 0 <= result["summary"]["pass@1"] <= 1 and [e["step"] for e in read(run.path / "eval.jsonl")] == [3]
    assert (run.path / "checkpoints" / "step_000003" / "trainer").is_dir()
