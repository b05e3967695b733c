"""Log-probabilities of chosen tokens without a [batch, length, vocab] tensor: the LM head runs in chunks.

    logp = token_logprobs(model, {"input_ids": ids, "attention_mask": attn}, rows, cols, targets)   # [N]

A causal LM's forward returns logits for every position: [b, L, V] floats, 4 bytes each in fp32, before
log_softmax makes a second copy and autograd keeps both. With a 150K vocabulary that is the largest tensor of
a training step by far (64 sequences x 1024 tokens: 39 GB). Here the decoder runs without its head; the hidden
states of only the positions that are scored (the response tokens, the SFT targets) are gathered, and the head
(+ temperature, log_softmax, gather) runs over `CHUNK_BYTES` of logits at a time, each chunk recomputed in the
backward pass instead of kept (activation checkpointing), so peak memory holds one chunk's logits, not all.

Models whose head is more than a linear map (final logit soft-capping, a logit scale) take the plain path:
the full forward, then the same gather.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from slide.model.lora import unwrap

SCORING = "slide_scoring"  # a sharded model's method running chunked_logprobs as an FSDP forward
CHUNK_BYTES = 64 * 2**20  # fp32 logits per chunk: 109 positions of a 150K vocabulary, all of a small one


def token_logprobs(model, inputs: dict, rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor,
                   temperature: float = 1.0, base=None) -> torch.Tensor:
    """log softmax(logits[rows, cols] / temperature)[targets] for N chosen positions: [N] fp32.

    inputs: the model's forward arguments (input_ids [b, L], attention_mask, position_ids...); rows, cols,
    targets: [N] (the logits at (rows[i], cols[i]) predict targets[i]). base: the decoder to run (e.g. a
    compiled model.base_model); default model.base_model. A peft wrapper runs as its inner model, whose adapted
    layers are peft's own (a PeftModel's base_model is the tuner, whose forward includes the head)."""
    model = unwrap(model)
    scoring = getattr(model, SCORING, None)
    if scoring is not None:  # an FSDP2 root (slide/cluster/fsdp.py): the same computation, inside its hooks
        return scoring(inputs, rows, cols, targets, temperature, base)
    return chunked_logprobs(model, inputs, rows, cols, targets, temperature, base)


def chunked_logprobs(model, inputs: dict, rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor,
                     temperature: float = 1.0, base=None) -> torch.Tensor:
    """token_logprobs' computation on an unwrapped causal LM."""
    head = model.get_output_embeddings()
    if not _plain_head(model, head):
        logits = model(**inputs).logits[rows, cols].float()  # [N, V]
        return torch.log_softmax(logits / temperature, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    hidden = (base if base is not None else model.base_model)(**inputs).last_hidden_state[rows, cols]  # [N, H]
    chunk = max(1, CHUNK_BYTES // (4 * head.weight.shape[0]))

    def piece(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = head(h).float() / temperature  # [n, V]
        return logits.gather(-1, t[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    if len(hidden) <= chunk:
        return piece(hidden, targets)
    grad = torch.is_grad_enabled() and hidden.requires_grad
    parts = [checkpoint(piece, hidden[i:i + chunk], targets[i:i + chunk], use_reentrant=False) if grad
             else piece(hidden[i:i + chunk], targets[i:i + chunk]) for i in range(0, len(hidden), chunk)]
    return torch.cat(parts)


def _plain_head(model, head) -> bool:
    config = model.config
    return (isinstance(head, torch.nn.Linear) and getattr(config, "final_logit_softcapping", None) is None
            and getattr(config, "logit_scale", None) is None and hasattr(model, "base_model")
            and model.base_model is not model)
