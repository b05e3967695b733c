"""Weight sync: bucket boundaries, version stamps, stale/partial detection, engine parity, the gloo channel."""
import copy
import os
import pickle
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp

from slide.engine.inprocess import InProcessEngine, SamplingParams
from slide.model.tiny import build_model, tiny_config
from slide.model.tokenizer import load_tokenizer
from slide.weights.buckets import (KEEP_FP32, Bucket, IncompleteSyncError, StaleVersionError, WeightReceiver,
                                   WeightSync, WeightSyncError, encode, encoded_nbytes, make_buckets,
                                   payload_nbytes, plan_buckets)
from slide.weights.fp8 import Fp8Weight, error_bound, is_quantizable, quantize_blockwise
from slide.weights.transport import Channel, pack, unpack

MB = 2**20
PROMPTS = [[1, 2, 4, 18, 60, 61], [1, 2, 4, 18, 70], [1, 2, 4, 18, 80, 81, 82, 83]]
GREEDY = SamplingParams(temperature=0, max_new_tokens=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are too small to split: with 2 intra-op threads and another process busy on
    one of the 2 cores, a greedy generation here took 2.5-3.5 s instead of 0.04 s (OpenMP waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- bucket planning (pure) ------------------------------------------------------------------------

def test_plan_buckets_boundaries():
    assert plan_buckets([10, 10, 10], 20) == [range(0, 2), range(2, 3)]
    assert plan_buckets([5, 5, 5, 5], 10) == [range(0, 2), range(2, 4)]  # exact fill stays in one bucket
    assert plan_buckets([3, 50, 3], 10) == [range(0, 1), range(1, 2), range(2, 3)]  # oversized: alone
    assert plan_buckets([50], 10) == [range(0, 1)]
    assert plan_buckets([1] * 1000, 100) == [range(i, i + 100) for i in range(0, 1000, 100)]
    assert plan_buckets([], 10) == []


def named_tensors():
    g = torch.Generator().manual_seed(0)
    return ([(f"layers.{i}.self_attn.q_proj.weight", torch.randn(64, 64, generator=g)) for i in range(6)]
            + [("big.mlp.down_proj.weight", torch.randn(512, 512, generator=g)),  # 1 MiB fp32: over the cap
               ("norm.weight", torch.ones(64)), ("mlp.gate.e_score_correction_bias", torch.zeros(8)),
               ("steps", torch.tensor([3]))])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp8"])
def test_make_buckets_stamps_and_never_drops(precision):
    named = named_tensors()
    cap = 0.05  # MiB: several small tensors per bucket, the big one alone
    buckets = list(make_buckets(named, version=7, precision=precision, bucket_mb=cap))
    assert [b.index for b in buckets] == list(range(len(buckets))) and len(buckets) > 2
    assert all(b.version == 7 and b.total == len(buckets) for b in buckets)
    assert [n for b in buckets for n, _ in b.items] == [n for n, _ in named]
    assert all(b.nbytes <= cap * MB or len(b.items) == 1 for b in buckets)
    payloads = dict(item for b in buckets for item in b.items)
    for name, t in named:
        p = payloads[name]
        assert payload_nbytes(p) == encoded_nbytes(name, t, precision)
        if precision == "fp8" and is_quantizable(name, t):
            assert isinstance(p, Fp8Weight) and p.shape == t.shape
        elif not t.is_floating_point():
            assert p.dtype == t.dtype
        else:
            want = torch.float32 if precision == "fp32" or name.endswith(KEEP_FP32) else torch.bfloat16
            assert p.dtype == want and torch.equal(p, t.to(want))


def test_bucket_pickles_and_packs():
    bucket = next(make_buckets(named_tensors(), 3, "fp8", bucket_mb=100))
    for back in (pickle.loads(pickle.dumps(bucket)), unpack(*pack(bucket))):  # ray.put / broadcast
        assert (back.version, back.index, back.total) == (3, 0, 1)
        for (n1, p1), (n2, p2) in zip(bucket.items, back.items):
            assert n1 == n2 and type(p1) is type(p2)
            for a, b in zip(*(list(p) if isinstance(p, Fp8Weight) else [p] for p in (p1, p2))):
                assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_weight_sync_validates_config():
    with pytest.raises(ValueError, match="precision 'fp16'.*bucket_mb 0"):
        WeightSync("fp16", 0)


# -- receiver: versions and completeness -----------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def config(tok):
    return tiny_config("test", tok)


def perturbed(model, seed):
    """A copy of `model` with every float tensor moved by ~10% of its scale (and the router bias changed)."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * (0.1 * t.std().nan_to_num(0) + 1e-3))
    return model


@pytest.fixture(scope="module")
def base(config):
    return build_model(config, seed=0)


def snapshot(engine):
    return {n: t.clone() for n, t in engine.model.state_dict().items()}


def same_weights(engine, snap):
    return all(torch.equal(t, snap[n]) for n, t in engine.model.state_dict().items())


def test_stale_bucket_rejected_engine_unchanged(base):
    engine = InProcessEngine(copy.deepcopy(base))
    engine.version = 5
    before = snapshot(engine)
    buckets = list(make_buckets(perturbed(base, 1).state_dict().items(), 4, "fp32", bucket_mb=1))
    with pytest.raises(StaleVersionError, match="version 4 is older than the engine's weights \\(version 5\\)"):
        WeightReceiver(engine).receive(buckets[0])
    assert engine.version == 5 and same_weights(engine, before)


def test_partial_set_detected_nothing_applied(base):
    engine = InProcessEngine(copy.deepcopy(base))
    before = snapshot(engine)
    buckets = list(make_buckets(perturbed(base, 1).state_dict().items(), 1, "bf16", bucket_mb=1))
    assert len(buckets) >= 3
    receiver = WeightReceiver(engine)
    for b in buckets[:-1]:  # the last bucket is lost
        assert receiver.receive(b) is False
    with pytest.raises(IncompleteSyncError, match=f"missing \\[{len(buckets) - 1}\\]"):
        receiver.finish()
    # a new version arriving while one is half received drops the half one
    receiver.receive(buckets[0])
    newer = next(make_buckets(base.state_dict().items(), 2, "bf16", bucket_mb=1))
    with pytest.raises(IncompleteSyncError, match="version 1 is incomplete"):
        receiver.receive(newer)
    receiver.receive(buckets[0])
    with pytest.raises(WeightSyncError, match="received twice"):
        receiver.receive(buckets[0])
    assert engine.version == 0 and same_weights(engine, before)


def test_unknown_missing_or_misshapen_tensors_rejected_before_any_copy(base):
    engine = InProcessEngine(copy.deepcopy(base))
    before = snapshot(engine)
    named = list(perturbed(base, 1).state_dict().items())
    cases = [(named[:-1], IncompleteSyncError, "lacks 1 of the engine's tensors"),
             (named + [("model.extra.weight", torch.zeros(2))], WeightSyncError, "no such weight"),
             ([(n, t[:1] if t.dim() == 2 else t) for n, t in named], WeightSyncError, "do not fit")]
    for items, error, message in cases:
        with pytest.raises(error, match=message):
            WeightReceiver(engine).receive(Bucket(1, 0, 1, items))
    assert engine.version == 0 and same_weights(engine, before)


# -- end to end: engine after a push == engine built from the trainer's weights ---------------------

def fresh_engine(model_like, state):
    model = copy.deepcopy(model_like)
    model.load_state_dict(state)
    return InProcessEngine(model)


def tokens(engine):
    return [[c.tokens for c in g] for g in engine.generate(PROMPTS, GREEDY)]


def expected_state(trainer, precision):
    """What the engine must hold after a push at `precision`: the trainer's weights through the codec."""
    out = {}
    for name, t in trainer.state_dict().items():
        p = encode(name, t, precision)
        out[name] = p.dequantize(torch.float32) if isinstance(p, Fp8Weight) else p.to(t.dtype)
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp8"])
def test_push_matches_engine_built_from_trainer_weights(base, precision):
    trainer = perturbed(base, 1)
    engine = InProcessEngine(copy.deepcopy(base))  # holds version 0 = the unperturbed weights
    stats = WeightSync(precision, bucket_mb=0.5).push(trainer, engine, version=1)
    assert engine.version == 1 and stats["sync/buckets"] > 3 and stats["sync/bytes"] > 0
    want = expected_state(trainer, precision)
    got = engine.model.state_dict()
    assert all(torch.equal(got[n], want[n]) for n in want)
    if precision == "fp8":  # within the codec bound of the trainer's weights, bf16 rounding elsewhere
        for name, t in trainer.state_dict().items():
            if is_quantizable(name, t):
                _, s = quantize_blockwise(t)
                assert ((got[name] - t).abs() <= error_bound(t, s)).all(), name
            elif t.is_floating_point():
                assert torch.allclose(got[name], t, rtol=2**-8, atol=0), name
    out = tokens(engine)
    assert out == tokens(fresh_engine(base, want))  # for fp32, want == the trainer's own weights
    if precision == "fp32":
        assert out != tokens(InProcessEngine(base))  # and the test can tell the old weights apart

    # a push of an older policy is refused and leaves version 1 in place
    with pytest.raises(StaleVersionError):
        WeightSync(precision, bucket_mb=0.5).push(base, engine, version=0)
    assert engine.version == 1 and all(torch.equal(t, want[n]) for n, t in engine.model.state_dict().items())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp8"])
def test_engines_hold_pushed_weights_in_their_compute_dtype(base, precision):
    """The sync mode's engine (make_engine) and an async rollout worker (built from a push's buckets; the plain
    class, no Ray) hold exactly what a push at `precision` carries, in bf16 for bf16 and fp8 (fp32 for fp32),
    with glm4_moe's router weight and correction bias kept fp32 as transformers keeps them; both then
    generate the same tokens and take the next version's push."""
    from slide.config import RLConfig
    from slide.engine import make_engine
    from slide.rl.worker import RolloutWorker
    trainer, later = perturbed(base, 1), perturbed(base, 2)
    engine = make_engine("inprocess", base, pad_token_id=0, precision=precision)
    sync = WeightSync(precision, bucket_mb=0.5)
    sync.push(trainer, engine, version=3)
    cfg = RLConfig.model_validate({"rollout": {"precision": precision}, "threads": 1}).model_dump(mode="json")
    worker = RolloutWorker(0, cfg, list(sync.buckets(trainer, 3)))
    compute = torch.float32 if precision == "fp32" else torch.bfloat16
    for e in (engine, worker.engine):
        state = e.model.state_dict()
        assert e.version == 3
        for name, t in trainer.state_dict().items():
            kept = name.endswith(("mlp.gate.weight", "e_score_correction_bias"))
            assert state[name].dtype == (torch.float32 if kept or not t.is_floating_point() else compute), name
            payload = encode(name, t, precision)
            want = payload.dequantize(state[name].dtype) if isinstance(payload, Fp8Weight) else payload.to(state[name].dtype)
            assert torch.equal(state[name], want), name
    assert tokens(engine) == [[c.tokens for c in g] for g in worker.engine.generate(PROMPTS, GREEDY)]
    assert worker.load_weights(list(sync.buckets(later, 4))) > 0 and worker.engine.version == 4
    with pytest.raises(StaleVersionError):
        worker.load_weights(list(sync.buckets(trainer, 3)))


# -- torch.distributed (gloo): a Channel from one sender to two engines, 3 processes --------------------

def _channel_member(rank: int, port: int, died):
    torch.set_num_threads(1)
    ch = Channel("127.0.0.1", port, rank, 3, timeout=timedelta(seconds=60))
    config = tiny_config("test", load_tokenizer())
    base = build_model(config, seed=0)
    trainer = perturbed(base, 1)  # every process builds it: the engines use it only to check what arrived
    if rank == 0:
        fp32 = ch.send(WeightSync("fp32", 1.0).buckets(trainer, 1))
        fp8 = ch.send(WeightSync("fp8", 1.0).buckets(trainer, 2))
        assert fp32["lost"] == fp8["lost"] == {} and fp8["sync/bytes"] < 0.3 * fp32["sync/bytes"]
        assert ch.send(WeightSync("bf16", 1.0).buckets(trainer, 1))["lost"] == {}  # stale: the engines refuse it
        later = perturbed(base, 2)
        died.wait(60)  # engine 2 is gone: the push still reaches engine 1, and names the one it lost
        stats = ch.send(WeightSync("fp32", 0.05).buckets(later, 3))
        assert list(stats["lost"]) == [2] and stats["sync/buckets"] > 3, stats
    else:
        engine = InProcessEngine(copy.deepcopy(base))
        stats = ch.receive(engine)
        assert engine.version == 1 and stats["sync/buckets"] > 1
        assert all(torch.equal(engine.model.state_dict()[n], t) for n, t in trainer.state_dict().items())
        ch.receive(engine)
        want = expected_state(trainer, "fp8")
        assert engine.version == 2 and all(torch.equal(engine.model.state_dict()[n], want[n]) for n in want)
        with pytest.raises(StaleVersionError):
            ch.receive(engine)
        assert engine.version == 2 and all(torch.equal(engine.model.state_dict()[n], want[n]) for n in want)
        if rank == 2:
            died.set()
            os._exit(0)  # an engine process that dies before the next push, its connections closed
        ch.receive(engine)
        later = perturbed(base, 2)
        assert engine.version == 3 and all(torch.equal(engine.model.state_dict()[n], t) for n, t in later.state_dict().items())
    ch.close()


def test_channel_sends_every_engine_the_version_and_survives_a_dead_engine():
    from slide.cluster.placement import free_port
    died = mp.get_context("fork").Event()
    # fork, not spawn: the children inherit the imported modules instead of importing torch and transformers
    # again (~5 s each); each sets 1 intra-op thread first, which is what makes forking after torch safe
    ctx = mp.start_processes(_channel_member, args=(free_port(), died), nprocs=3, join=False, start_method="fork")
    while not ctx.join():
        pass
