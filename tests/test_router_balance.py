"""GLM's loss-free router balance (slide.model.tiny.ExpertLoad): what it counts, and the bias update."""
import torch

from slide.model.tiny import ExpertLoad, build_model, routers, tiny_config
from slide.model.tokenizer import load_tokenizer


def test_counts_real_tokens_only_and_only_in_training_forwards():
    model = build_model(tiny_config("test", load_tokenizer()), seed=0)
    load = ExpertLoad(model)
    top_k = model.config.num_experts_per_tok
    ids = torch.tensor([[1, 2, 4, 18, 30], [1, 2, 4, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # 8 real tokens, 2 padding
    with torch.no_grad(), load.tokens(mask):
        model(input_ids=ids, attention_mask=mask)
    assert all(c.sum() == 0 for c in load.counts)  # evaluation and rollout forwards are not counted
    with load.tokens(mask):
        model(input_ids=ids, attention_mask=mask)
    assert [int(c.sum()) for c in load.counts] == [8 * top_k] * len(load.counts)
    # outside tokens() nothing is counted: that is where gradient checkpointing recomputes a layer's
    # forward during the backward pass (tests/test_rl.py checks that case end to end)
    model(input_ids=ids, attention_mask=mask)
    assert [int(c.sum()) for c in load.counts] == [8 * top_k] * len(load.counts)


def test_bias_moves_toward_under_loaded_experts_by_the_rate():
    model = build_model(tiny_config("test", load_tokenizer()), seed=0)
    load = ExpertLoad(model)
    gate = routers(model)[0]
    n = gate.num_experts
    before = gate.e_score_correction_bias.clone()
    load.counts[0].copy_(torch.tensor([3.0, 1.0] + [0.0] * (n - 2)))  # shares 3/4, 1/4, then 0s
    stats = load.update_bias(0.01)
    step = gate.e_score_correction_bias - before
    assert stats["expert_share_max"] == 0.75
    assert n > 4 and step[0] == step[1] == -0.01  # both above the mean share 1/n: pushed down
    assert torch.equal(step[2:], torch.full((n - 2,), 0.01))  # idle experts are pulled up
    assert all(c.sum() == 0 for c in load.counts[:1])  # counts reset after the update
    assert all(torch.equal(g.e_score_correction_bias, torch.zeros(n)) for g in routers(model)[1:])  # no counts
