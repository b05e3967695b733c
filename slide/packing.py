"""Packing whole documents into fixed-length rows with document-boundary attention (SFT and pre-training).

A row holds several documents side by side; each sees only itself: the attention mask is block-diagonal causal and
positions restart at 0 for every document, so a packed forward gives each document exactly what it would get alone.

    rows = best_fit(docs, seq_len)           # bins of whole documents (first_fit: the first bin with room)
    ids, labels, pos, mask, real = to_tensors(rows, seq_len, pad)

A document is (token ids, loss mask): the label of position i is token i+1, trained where token i+1 is masked in.
"""
from __future__ import annotations

import bisect

import torch

Doc = tuple[list[int], list[int]]  # (token ids, loss mask: 1 = a target token)


def first_fit(docs: list[Doc], seq_len: int) -> list[list[Doc]]:
    """Longest first, each into the first row with room (SFT's packing); a document longer than a row is cut."""
    rows: list[list[Doc]] = []
    room: list[int] = []
    for d in sorted(docs, key=lambda e: -len(e[0])):
        d = (d[0][:seq_len], d[1][:seq_len])
        i = next((r for r, free in enumerate(room) if free >= len(d[0])), None)
        if i is None:
            rows.append([]), room.append(seq_len)
            i = len(rows) - 1
        rows[i].append(d)
        room[i] -= len(d[0])
    return rows


def best_fit(docs: list[Doc], seq_len: int) -> list[list[Doc]]:
    """Best-fit decreasing: longest first, each into the row it fills most tightly (the least room that still
    fits), a new row when none has room. No document that fits a row is ever split; longer ones must be cut
    by the caller. Rows come out fullest first (ties: creation order), so a caller keeping the first k keeps the
    densest."""
    if any(len(d[0]) > seq_len for d in docs):
        raise ValueError(f"best_fit: a document is longer than seq_len={seq_len}; cut it first")
    rows: list[list[Doc]] = []
    free: list[tuple[int, int]] = []  # sorted (room, row index)
    for d in sorted(docs, key=lambda e: -len(e[0])):
        n = len(d[0])
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            rows.append([])
            room, r = seq_len, len(rows) - 1
        else:
            room, r = free.pop(at)
        rows[r].append(d)
        bisect.insort(free, (room - n, r))
    return sorted(rows, key=lambda row: -sum(len(d[0]) for d in row))


def to_tensors(rows: list[list[Doc]], seq_len: int, pad: int):
    """ids [R, L], labels [R, L] (-100 where not trained), positions [R, L], mask [R, 1, L, L] (bool) and real
    [R, L] (bool: a document's token, not padding; the router balance counts only these)."""
    R, L = len(rows), seq_len
    ids = torch.full((R, L), pad, dtype=torch.long)
    labels = torch.full((R, L), -100, dtype=torch.long)
    pos = torch.zeros((R, L), dtype=torch.long)
    doc = torch.full((R, L), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for d, (x, m) in enumerate(row):
            n = len(x)
            ids[r, at:at + n] = torch.tensor(x)
            lab = torch.tensor(x[1:] + [pad])
            keep = torch.tensor(m[1:] + [0], dtype=torch.bool)
            labels[r, at:at + n] = torch.where(keep, lab, torch.full_like(lab, -100))
            pos[r, at:at + n] = torch.arange(n)
            doc[r, at:at + n] = d
            at += n
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool))
    mask = (doc[:, :, None] == doc[:, None, :]) & causal & (doc[:, :, None] >= 0)
    mask |= torch.eye(L, dtype=torch.bool)  # padding rows attend to themselves (no NaN), never trained
    return ids, labels, pos, mask[:, None], doc >= 0


def packed_backward(model, load, packed: list, autocast: torch.dtype = torch.float32) -> tuple[float, int]:
    """Gradients of the mean cross-entropy over the target tokens of all `packed` batches (each the tensors of
    `to_tensors`, on the model's device, run on its own: gradient accumulation), exactly what one batch of all their
    documents gives, computed where the model is (autocast: bf16 = mixed precision, fp32 weights); `load` (an
    ExpertLoad) counts the documents' tokens for GLM's router balance. Returns (loss, targets)."""
    from slide.model.logprobs import token_logprobs
    device = next(model.parameters()).device
    total = sum(int((labels != -100).sum()) for _, labels, _, _, _ in packed)
    loss = 0.0
    for ids, labels, pos, mask, real in packed:
        rows, cols = (labels != -100).nonzero(as_tuple=True)  # the target tokens: the LM head runs only there
        with load.tokens(real), torch.autocast(device.type, dtype=autocast, enabled=autocast != torch.float32):
            logp = token_logprobs(model, {"input_ids": ids, "attention_mask": mask, "position_ids": pos}, rows, cols,
                                  labels[rows, cols])  # in chunks: no [rows, seq_len, vocab] tensor
        part = -logp.mean() if len(packed) == 1 else -logp.sum() / max(total, 1)  # the same mean either way
        part.backward()
        loss += float(part.detach())
    return loss, total
