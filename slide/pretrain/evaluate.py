"""What each stage bought: held-out loss per source and needle retrieval by context length.

Held-out loss: mean cross-entropy (nats per token) over the held-out documents of a source (its first
`eval.held_out_docs`, never trained on), each cut to the stage's seq_len, packed whole (slide/packing.py).
Needle accuracy: fresh key-value documents of exactly the asked context length (slide/pretrain/corpora.py's
format, from an RNG of their own); a document counts as retrieved when the model's greedy choice is right at every
token of the answer, given the document (teacher-forced exact match; chance is 1 in 100 for two digits).
"""
from __future__ import annotations

import random

import torch

from slide.model.logprobs import token_logprobs
from slide.packing import first_fit, to_tensors
from slide.pretrain.corpora import needle_doc
from slide.pretrain.packer import encode

NEEDLE_SALT = 4_242_421  # eval needles never come from the training corpus' stream


def _run(model, rows, seq_len: int, pad: int, autocast: torch.dtype, micro: int):
    """(forward arguments, labels) per micro-batch of `rows` packed, on the model's device, inside autocast."""
    device = next(model.parameters()).device
    for i in range(0, len(rows), micro):
        ids, labels, pos, mask, _ = (t.to(device) for t in to_tensors(rows[i:i + micro], seq_len, pad))
        with torch.autocast(device.type, dtype=autocast, enabled=autocast != torch.float32):
            yield {"input_ids": ids, "attention_mask": mask, "position_ids": pos}, labels


@torch.no_grad()
def held_out_loss(model, tok, docs: list[str], seq_len: int, autocast=torch.float32, micro: int = 16) -> float:
    """Mean next-token cross-entropy over all tokens of `docs` (each cut to `seq_len`)."""
    rows = first_fit([(ids[:seq_len], [1] * min(len(ids), seq_len)) for ids in (encode(tok, d) for d in docs)],
                     seq_len)
    total, count = 0.0, 0
    for inputs, labels in _run(model, rows, seq_len, tok.pad_token_id, autocast, micro):
        r, c = (labels != -100).nonzero(as_tuple=True)
        logp = token_logprobs(model, inputs, r, c, labels[r, c])
        total, count = total - float(logp.sum()), count + len(logp)
    return total / max(count, 1)


@torch.no_grad()
def needle_accuracy(model, tok, length: int, samples: int, seed: int, autocast=torch.float32,
                    micro: int = 8) -> float:
    """Share of `samples` key-value documents of `length` tokens whose answer the model gets exactly right."""
    rng = random.Random(seed + NEEDLE_SALT + length)
    docs = []
    for _ in range(samples):
        doc, answer = needle_doc(rng, length)
        q = tok.encode(doc, add_special_tokens=False)
        a = tok.encode(answer, add_special_tokens=False)
        docs.append((q + a, [0] * len(q) + [1] * len(a)))  # labels only on the answer's tokens
    L = max(len(d[0]) for d in docs)
    right = 0
    for inputs, labels in _run(model, [[d] for d in docs], L, tok.pad_token_id, autocast, micro):
        logits = model(**inputs).logits  # [b, L, V]: rows are short and few
        hit = (logits.argmax(-1) == labels) | (labels == -100)  # [b, L]
        right += int(hit.all(dim=1).sum())
    return right / samples


def evaluate_stage(model, tok, held_out: dict[str, list[str]], seq_len: int, needle_lengths: list[int],
                   needle_samples: int, seed: int, autocast=torch.float32, micro: int = 16) -> dict:
    """{"held_out_loss": {source: nats/token}, "needle_accuracy": {length: share}} for the model as it is now."""
    was = model.training
    model.eval()
    out = {"held_out_loss": {name: held_out_loss(model, tok, docs, seq_len, autocast, micro)
                             for name, docs in held_out.items()},
           "needle_accuracy": {str(n): needle_accuracy(model, tok, n, needle_samples, seed, autocast)
                               for n in needle_lengths}}
    model.train(was)
    return out
