"""Continuous batching with per-step admission (slide/engine/continuous.py): requests that join a running batch
decode exactly as they would alone; each keeps its own sampling parameters; weights change only between rows."""
import copy

import pytest
import torch

from slide.engine.continuous import ContinuousEngine
from slide.engine.inprocess import InProcessEngine, SamplingParams

PROMPTS = [[1, 2, 4, 18, 60, 61], [1, 2, 4, 18, 70], [1, 2, 4, 18, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91]]
GREEDY = SamplingParams(temperature=0, max_new_tokens=14, stop_token_ids=(30, 40, 50))


@pytest.fixture
def engine(model, tok):
    eng = ContinuousEngine(InProcessEngine(model, tok.pad_token_id))
    yield eng
    eng.close()


def alone(model, tok, prompt, params, **kw):
    return InProcessEngine(model, tok.pad_token_id).generate([prompt], params, **kw)[0]


def test_requests_joining_a_running_batch_decode_as_alone(engine, model, tok):
    """B joins at A's 3rd step, C (two samples, another length limit) at A's 6th: the engine admits each between
    two decode steps of the running rows, and every greedy answer equals the prompt's answer decoded alone."""
    events, later = [], {}
    short = SamplingParams(temperature=0, max_new_tokens=9, stop_token_ids=GREEDY.stop_token_ids)

    def a_step(rows, tokens):
        events.append(("A", len([e for e in events if e[0] == "A"]) + 1))
        if len(events_of("A")) == 3:
            later["B"] = engine.submit([PROMPTS[1]], GREEDY, on_step=lambda r, t: events.append(("B", 0)))
        if len(events_of("A")) == 6:
            later["C"] = engine.submit([PROMPTS[2]], short, n=2, on_step=lambda r, t: events.append(("C", 0)))

    def events_of(name):
        return [e for e in events if e[0] == name]

    a = engine.generate([PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=40, min_new_tokens=40), on_step=a_step)
    b, c = later["B"].wait(), later["C"].wait()
    assert [x.tokens for x in a[0]] == [x.tokens for x in alone(model, tok, PROMPTS[0], SamplingParams(
        temperature=0, max_new_tokens=40, min_new_tokens=40))]
    assert [x.tokens for x in b[0]] == [x.tokens for x in alone(model, tok, PROMPTS[1], GREEDY)]
    ref_c = alone(model, tok, PROMPTS[2], short)[0]
    assert [x.tokens for x in c[0]] == [ref_c.tokens, ref_c.tokens] and len(c[0]) == 2
    # B, queued during A's 3rd step, was prefilled in the next pass (after A's 4th step) and decoded beside A's 5th
    first_b = events.index(("B", 0))
    assert events[first_b - 1] == ("A", 4) and events[first_b + 1:first_b + 3] == [("A", 5), ("B", 0)]
    assert engine.admissions == 3 and a[0][0].finish_reason == "length" and len(a[0][0].tokens) == 40


def test_each_request_samples_with_its_own_parameters(engine, model, tok):
    """A sampled request (T 0.7, seeded) and a greedy one decoded together: the sampled tokens' logprobs are those
    of a full forward at T 0.7, the greedy answer equals greedy alone, and the seed reproduces the samples."""
    hot = SamplingParams(temperature=0.7, max_new_tokens=12, min_new_tokens=12, stop_token_ids=GREEDY.stop_token_ids)
    first = engine.submit([PROMPTS[0], PROMPTS[2]], hot, n=2, generator=torch.Generator().manual_seed(3))
    cold = engine.submit([PROMPTS[1]], GREEDY)
    sampled, greedy = first.wait(), cold.wait()
    assert [x.tokens for x in greedy[0]] == [x.tokens for x in alone(model, tok, PROMPTS[1], GREEDY)]
    for prompt, group in zip([PROMPTS[0], PROMPTS[2]], sampled):
        for c in group:
            assert len(c.tokens) == 12  # min_new_tokens held the stop tokens back
            x = torch.tensor([prompt + c.tokens])
            logits = model(input_ids=x).logits[0, len(prompt) - 1:-1].float() / 0.7
            logits[:, list(GREEDY.stop_token_ids)] = float("-inf")  # min_new_tokens: stops are not in the distribution
            ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.tokens)[:, None]).squeeze(-1)
            assert torch.allclose(ref, torch.tensor(c.logprobs), atol=1e-4)
    again = engine.generate([PROMPTS[0], PROMPTS[2]], hot, n=2, generator=torch.Generator().manual_seed(3))
    assert [[c.tokens for c in g] for g in again] == [[c.tokens for c in g] for g in sampled]


def test_rows_stopped_by_on_step_leave_and_the_cache_shrinks(engine, model, tok):
    """The long prompt's row runs 4 steps and is stopped by its caller ("abort"); two short rows that joined it go
    on, the cache columns only the long prompt needed are trimmed, and the short rows' answers are unchanged."""
    widths, rest = [], {}
    long_prompt = PROMPTS[2] * 3  # 48 tokens: 40 columns no other row attends to
    params = SamplingParams(temperature=0, max_new_tokens=20, stop_token_ids=GREEDY.stop_token_ids)

    def stop_at_4(rows, toks):
        stop_at_4.steps += 1
        if stop_at_4.steps == 1:
            rest["pending"] = engine.submit([PROMPTS[0], PROMPTS[1]], params, on_step=lambda r, t: widths.append(
                engine._mask.shape[1]))
        return rows if stop_at_4.steps == 4 else []
    stop_at_4.steps = 0
    [[s]] = engine.generate([long_prompt], GREEDY, on_step=stop_at_4)
    out = rest["pending"].wait()
    assert s.finish_reason == "abort" and len(s.tokens) == 4
    for prompt, group in zip([PROMPTS[0], PROMPTS[1]], out):
        assert [c.tokens for c in group] == [c.tokens for c in alone(model, tok, prompt, params)]
    assert max(widths) > len(long_prompt) and widths[-1] <= len(PROMPTS[0]) + 20  # trimmed once the long row left


def test_weights_change_only_between_requests(engine, model, tok):
    """load_weights waits for the running rows (they finish on the old version), then new requests decode with the
    new weights exactly as a fresh engine over them."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    eng = ContinuousEngine(InProcessEngine(copy.deepcopy(model), tok.pad_token_id))
    loaded = {}

    def load_now(rows, toks):
        if "done" not in loaded:  # from the engine thread's callback: load in another thread, mid-request
            import threading
            loaded["done"] = threading.Thread(target=lambda: eng.load_weights(other.state_dict().items(), 7))
            loaded["done"].start()
    try:
        old = eng.generate([PROMPTS[0]], GREEDY, on_step=load_now)
        loaded["done"].join()
        new = eng.generate([PROMPTS[0]], GREEDY)
    finally:
        eng.close()
    assert old[0][0].version == 0 and new[0][0].version == 7
    assert old[0][0].tokens == alone(model, tok, PROMPTS[0], GREEDY)[0].tokens
    assert new[0][0].tokens == alone(other, tok, PROMPTS[0], GREEDY)[0].tokens


def test_a_failing_request_fails_alone_and_the_engine_serves_on(engine, model, tok):
    with pytest.raises(IndexError):
        engine.generate([[1, 2, 10**7]], GREEDY)  # a token id past the vocabulary: the prefill raises
    assert [c.tokens for c in engine.generate([PROMPTS[1]], GREEDY)[0]] == \
        [c.tokens for c in alone(model, tok, PROMPTS[1], GREEDY)]
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit([PROMPTS[1]], GREEDY)


def test_rows_that_end_at_their_first_token_leave_the_batch_untouched(engine, model, tok):
    """A request whose every row ends at its first token (max_new_tokens 1) never enters the running batch: alone,
    and while another request decodes (which goes on unchanged)."""
    one = SamplingParams(temperature=0, max_new_tokens=1)
    alone_rows = engine.generate(PROMPTS, one)
    assert [[len(c.tokens), c.finish_reason] for g in alone_rows for c in g] == [[1, "length"]] * 3
    later = {}

    def submit_once(rows, toks):
        if "short" not in later:
            later["short"] = engine.submit(PROMPTS, one, n=2)
    long = engine.generate([PROMPTS[1]], GREEDY, on_step=submit_once)
    short = later["short"].wait()
    assert [c.tokens for c in long[0]] == [c.tokens for c in alone(model, tok, PROMPTS[1], GREEDY)]
    assert [[c.tokens for c in g] for g in short] == [[g[0].tokens] * 2 for g in alone_rows]
