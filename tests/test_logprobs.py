"""Chunked log-probabilities equal the full-logits ones, values and gradients, with and without chunking."""
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from slide.model import logprobs
from slide.model.logprobs import token_logprobs


def full(model, ids, rows, cols, targets, temperature):
    logits = model(input_ids=ids).logits.float()[rows, cols]
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def test_chunked_equals_full_logits_with_gradients(monkeypatch):
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    ids = torch.randint(0, 1000, (3, 12))
    rows, cols = torch.tensor([0, 0, 1, 2, 2, 2, 1]), torch.tensor([3, 4, 0, 9, 10, 11, 5])
    targets = torch.randint(0, 1000, (7,))
    want = full(model, ids, rows, cols, targets, 0.7)
    (g_want,) = torch.autograd.grad(want.sum(), model.lm_head.weight)
    for chunk_bytes in (logprobs.CHUNK_BYTES, 4 * 1000 * 2):  # one chunk; chunks of 2 positions (checkpointed)
        monkeypatch.setattr(logprobs, "CHUNK_BYTES", chunk_bytes)
        got = token_logprobs(model, {"input_ids": ids}, rows, cols, targets, 0.7)
        (g_got,) = torch.autograd.grad(got.sum(), model.lm_head.weight)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-6)
