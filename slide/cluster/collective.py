"""What a trainer rank agrees on with the others: sums and maxima of its metrics, the count of forward passes.

Every function is the identity in one process (no process group initialised), so the single-process trainer
calls them unconditionally and a group of one is today's code path. In an FSDP2 group every rank must run the
same collectives in the same order: each forward and backward all-gathers and reduce-scatters parameters, so
ranks that run different numbers of micro-batches would wait on each other forever (`passes`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def distributed() -> bool:
    return world()[1] > 1


def _reduce(values: list[float], op) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=op)
    return t.cpu().tolist()


def all_sum(values: dict[str, float], maxima: tuple[str, ...] = ()) -> dict[str, float]:
    """`values` summed over the ranks, except the keys in `maxima` (their maximum). In float64, so a token
    count stays exact."""
    if not distributed():
        return dict(values)
    keys = list(values)
    summed = _reduce([float(values[k]) for k in keys], dist.ReduceOp.SUM)
    peak = _reduce([float(values[k]) for k in keys], dist.ReduceOp.MAX)
    return {k: (p if k in maxima else s) for k, s, p in zip(keys, summed, peak)}


def all_sum_tensors(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (the experts' token counts: every rank then moves its router
    biases, a replicated buffer, by the same amount)."""
    if not distributed() or not tensors:
        return
    flat = torch.cat([t.reshape(-1).double() for t in tensors])
    flat = flat.cuda() if dist.get_backend() == "nccl" else flat
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for t, part in zip(tensors, flat.cpu().split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def passes(count: int) -> int:
    """The number of forward passes every rank runs this round: the largest of the ranks' own counts (a rank
    with fewer pads with empty micro-batches, which add nothing to the loss or the gradients)."""
    if not distributed():
        return count
    return int(_reduce([float(count)], dist.ReduceOp.MAX)[0])


def fewest(count: int) -> int:
    """The smallest of the ranks' counts (the mini-batch updates of a step: every rank must run as many)."""
    if not distributed():
        return count
    return int(_reduce([float(count)], dist.ReduceOp.MIN)[0])


def scalar(value) -> float:
    """A Python float from a tensor that may be a DTensor (the gradient norm of sharded parameters is one,
    replicated on every rank)."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)
