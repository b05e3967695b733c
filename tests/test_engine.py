"""The in-process engine: logprob parity with a full forward, stops, shapes, in-place weight updates."""
import copy

import pytest
import torch

from slide.engine.inprocess import InProcessEngine, SamplingParams, sample_token
from slide.engine.packed import PackedLinears
from slide.model.tokenizer import stop_token_ids


PROMPTS = [[1, 2, 4, 18, 60, 61], [1, 2, 4, 18, 70], [1, 2, 4, 18, 80, 81, 82, 83]]


def full_forward_logprobs(model, prompt, tokens, temperature):
    x = torch.tensor([prompt + tokens])
    logits = model(input_ids=x).logits[0, len(prompt) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


def test_logprobs_match_full_forward(model, tok):
    eng = InProcessEngine(model, tok.pad_token_id)
    params = SamplingParams(temperature=0.7, max_new_tokens=20, stop_token_ids=tuple(stop_token_ids(tok)))
    out = eng.generate(PROMPTS, params, n=3, generator=torch.Generator().manual_seed(0))
    assert [len(g) for g in out] == [3, 3, 3]
    for prompt, group in zip(PROMPTS, out):
        for c in group:
            ref = full_forward_logprobs(model, prompt, c.tokens, 0.7)
            assert torch.allclose(ref, torch.tensor(c.logprobs), atol=1e-4)
            assert len(c.logprobs) == len(c.tokens) <= 20
            if c.finish_reason == "stop":
                assert c.tokens[-1] in stop_token_ids(tok)
            else:
                assert len(c.tokens) == 20 and not set(c.tokens) & set(stop_token_ids(tok))


def test_min_new_tokens_and_seeded_determinism(model, tok):
    eng = InProcessEngine(model, tok.pad_token_id)
    params = SamplingParams(max_new_tokens=12, min_new_tokens=12, stop_token_ids=tuple(stop_token_ids(tok)))
    a = eng.generate(PROMPTS, params, n=2, generator=torch.Generator().manual_seed(5))
    b = eng.generate(PROMPTS, params, n=2, generator=torch.Generator().manual_seed(5))
    assert all(len(c.tokens) == 12 for g in a for c in g)
    assert [[c.tokens for c in g] for g in a] == [[c.tokens for c in g] for g in b]


def test_greedy_equals_tiny_top_p(model, tok):
    eng = InProcessEngine(model, tok.pad_token_id)
    greedy = eng.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
    nucleus = eng.generate(PROMPTS, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=10),
                           generator=torch.Generator().manual_seed(1))
    assert [g[0].tokens for g in greedy] == [g[0].tokens for g in nucleus]


def test_batched_equals_one_by_one(model, tok):
    """Left padding and finished-row compaction must not change greedy outputs."""
    eng = InProcessEngine(model, tok.pad_token_id)
    params = SamplingParams(temperature=0, max_new_tokens=15, stop_token_ids=(30, 40, 50))
    batched = [g[0].tokens for g in eng.generate(PROMPTS, params)]
    single = [eng.generate([p], params)[0][0].tokens for p in PROMPTS]
    assert batched == single


def test_sample_token_top_p_keeps_only_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    params = SamplingParams(temperature=1.0, top_p=0.75)  # nucleus = {0, 1}: 0.5 < 0.75 <= 0.8
    g = torch.Generator().manual_seed(0)
    seen = {int(sample_token(logits, params, g)[0]) for _ in range(200)}
    assert seen == {0, 1}
    tok, lp = sample_token(logits, SamplingParams(temperature=0), None)
    assert int(tok) == 0 and abs(float(lp) - torch.log(torch.tensor(0.5)).item()) < 1e-6


def test_load_weights_in_place_matches_fresh_engine(model, tok):
    trained = copy.deepcopy(model)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    eng = InProcessEngine(copy.deepcopy(model), tok.pad_token_id)
    params = SamplingParams(temperature=0, max_new_tokens=12)
    before = [g[0].tokens for g in eng.generate(PROMPTS, params)]
    ptrs = {n: p.data_ptr() for n, p in eng.model.named_parameters()}
    moved = eng.load_weights(trained.state_dict().items(), version=7)
    assert eng.version == 7 and moved > 0
    assert ptrs == {n: p.data_ptr() for n, p in eng.model.named_parameters()}  # in place, no reload
    fresh = InProcessEngine(trained, tok.pad_token_id)
    after = [g[0].tokens for g in eng.generate(PROMPTS, params)]
    assert after == [g[0].tokens for g in fresh.generate(PROMPTS, params)]
    assert after != before
    out = eng.generate(PROMPTS[:1], params)
    assert out[0][0].version == 7
    with pytest.raises(KeyError):
        eng.load_weights([("no.such.weight", torch.zeros(1))], version=8)


def test_load_weights_accepts_tied_embeddings():
    """A model with tied input/output embeddings lists lm_head.weight in its state dict only once as a parameter."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    src, dst = Qwen2ForCausalLM(cfg), Qwen2ForCausalLM(cfg)
    eng = InProcessEngine(dst)
    eng.load_weights(src.state_dict().items(), version=1)
    assert torch.equal(dst.lm_head.weight, src.lm_head.weight)


def test_growing_kv_cache_equals_concatenation_without_copying_per_token():
    """GrowingLayer returns exactly what DynamicLayer's torch.cat would, through batch_select_indices, crop and a
    growth past its capacity, and writes a decode step's token in place (same buffer, no copy of the cache)."""
    from transformers.cache_utils import DynamicLayer

    from slide.engine.kv_cache import GrowingLayer
    g = torch.Generator().manual_seed(0)
    grow, ref = GrowingLayer(capacity=6), DynamicLayer()

    def step(m):
        rows = grow.keys.shape[0] if grow.is_initialized else 3
        k, v = torch.randn(rows, 2, m, 4, generator=g), torch.randn(rows, 2, m, 4, generator=g)
        got, want = grow.update(k, v), ref.update(k, v)
        assert all(torch.equal(a, b) for a, b in zip(got, want))

    step(4)  # prefill: 4 of 6
    buffer = grow._k.data_ptr()
    step(1), step(1)  # 6 of 6: written in place
    assert grow._k.data_ptr() == buffer and grow.keys.data_ptr() == buffer
    step(1)  # 7 > 6: grows (to 14) once
    assert grow._k.shape[-2] == 14 and grow.get_seq_length() == 7
    for layer in (grow, ref):
        layer.batch_select_indices(torch.tensor([0, 2]))
        layer.crop(-2)
    step(1), step(1)
    assert grow.keys.shape == (2, 2, 7, 4) and grow.get_seq_length() == ref.get_seq_length() == 7


@pytest.mark.skipif(not PackedLinears(torch.nn.Linear(2, 2).bfloat16()).enabled, reason="no bf16 oneDNN on this CPU")
def test_packed_bf16_linears_follow_in_place_weight_changes_and_leave_no_trace(model, tok):
    """bf16 on a CPU the engine's linears run on oneDNN-packed weights inside generate only: the same answers as
    F.linear up to bf16 rounding, repacked after load_weights, and outside generate nn.Linear's own forward
    (autograd included)."""
    from slide.model.load import cast_for_compute
    eng = InProcessEngine(cast_for_compute(copy.deepcopy(model), torch.bfloat16), tok.pad_token_id)
    assert eng.packed.enabled and len(eng.packed.layers) >= 4 * 4  # q, k, v, o of every layer at least
    layer = eng.packed.layers[0]
    x = torch.randn(5, 3, layer.in_features).bfloat16()
    with eng.packed.active(batch_hint=5):
        with eng.packed.active(batch_hint=5):  # another thread's generate, say
            assert "forward" in vars(layer)
        assert "forward" in vars(layer)  # still packed until the last caller leaves
        packed = layer(x)
    assert "forward" not in vars(layer)  # nn.Linear.forward again
    assert torch.allclose(packed.float(), layer(x).float(), rtol=1e-2, atol=1e-2)
    # generate's logprobs = a full bf16 forward's up to bf16 rounding, before and after an in-place update
    params = SamplingParams(temperature=1.0, max_new_tokens=8, min_new_tokens=8)
    trained = copy.deepcopy(model)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for version in (0, 1):
        if version:
            eng.load_weights(cast_for_compute(trained, torch.bfloat16).state_dict().items(), version=1)
        out = eng.generate(PROMPTS[:1], params, generator=torch.Generator().manual_seed(0))[0][0]
        with torch.no_grad():
            ref = full_forward_logprobs(eng.model, PROMPTS[0], out.tokens, 1.0)
        assert (ref - torch.tensor(out.logprobs)).abs().max() < 0.05
    layer.weight.requires_grad_(True)
    assert torch.autograd.grad(layer(x).float().sum(), layer.weight)[0].shape == layer.weight.shape


def test_set_threads_calls_torch_only_to_change_the_count(monkeypatch):
    """An explicit torch.set_num_threads, even to the current count, slowed the CPU flash-attention decode kernel 2x;
    set_threads(0) leaves torch's default alone and set_threads(n) calls torch only when n differs."""
    from slide.engine import set_threads
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    now = torch.get_num_threads()
    set_threads(0)
    set_threads(now)
    assert calls == []
    set_threads(now + 1)
    assert calls == [now + 1]


def test_on_step_sees_every_token_and_stops_the_rows_it_names(model, tok):
    """The streaming hook (slide serve): flat prompt-major rows, each sampled token once, named rows end at once
    ("abort") and the others decode as without the hook; through BatchingEngine each caller sees its own rows."""
    from slide.engine.batching import BatchingEngine
    eng = InProcessEngine(model, tok.pad_token_id)
    params = SamplingParams(temperature=0, max_new_tokens=10, min_new_tokens=10)
    plain = eng.generate(PROMPTS[:2], params, n=2)
    seen: dict[int, list[int]] = {}

    def on_step(rows, tokens):
        for r, t in zip(rows, tokens):
            seen.setdefault(r, []).append(t)
        return [r for r in rows if r == 1 and len(seen[1]) == 3]
    out = eng.generate(PROMPTS[:2], params, n=2, on_step=on_step)
    flat = [c for g in out for c in g]
    assert [c.tokens for c in flat] == [seen[r] for r in range(4)]
    assert len(flat[1].tokens) == 3 and flat[1].finish_reason == "abort"
    assert [c.tokens for i, c in enumerate(flat) if i != 1] == [c.tokens for i, c in enumerate(
        [c for g in plain for c in g]) if i != 1]
    mine: list[int] = []
    [[c]] = BatchingEngine(eng).generate([PROMPTS[2]], params, on_step=lambda rows, toks: mine.extend(rows))
    assert mine == [0] * 10 and len(c.tokens) == 10
