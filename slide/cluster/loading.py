"""A trainer rank's sharded model, with no full copy of it on ranks > 0: built on the meta device, sharded, filled.

    model, built = build_sharded(build, device, shard)    # every rank of the group at once (collectives)

Rank 0 builds the model as one process does (`build(device)`: the checkpoint read from its files, or the seeded
fresh model). Every other rank builds the same architecture on the meta device (`build(META)`: shapes, no
storage, no file read but the config), shards it (`shard(model)`: FSDP2, slide/cluster/fsdp.py), allocates only
its shards (`to_empty`) and receives the weights from rank 0 one tensor at a time, keeping its slice
(torch.distributed.checkpoint's set_model_state_dict with broadcast_from_rank0). The buffers no state dict carries
(non-persistent: rotary embeddings' inv_freq and the like) are placeholders after `to_empty`; rank 0's, computed
by its normal build, are broadcast as they are.

Memory while loading: a rank > 0 holds its shards and one full tensor in flight; rank 0 the full model and its
shards, the full copy freed when the broadcast ends. (Rank 0 streaming its checkpoint tensor by tensor would drop
that too; at 234M it is below the training peak, see benchmarks/RESULTS.md.)

A build that cannot make its model on the meta device returns it whole: LoRA (peft wraps a materialised model;
its frozen base from model.init, its adapters seeded or from the checkpoint) is built in full on every rank, the
same values everywhere, and sharded as it is, with nothing broadcast.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from slide.model.load import META


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if not t.is_meta)


def build_sharded(build: Callable[[torch.device], torch.nn.Module], device: torch.device,
                 shard: Callable[[torch.nn.Module], torch.nn.Module], offload: bool = False
                 ) -> tuple[torch.nn.Module, int]:
    """The model sharded over the default process group with rank 0's weights and buffers on every rank, and
    the bytes of full (unsharded) tensors this rank built (the whole model on rank 0; 0 on the others unless
    `build` could not use the meta device). offload: the shards live in host memory (CPUOffloadPolicy), the
    buffers on `device`."""
    rank0 = dist.get_rank() == 0
    model = build(device if rank0 else META)
    built = _bytes(model.state_dict().values()) + _bytes(model.buffers())
    meta = torch.tensor([0 if rank0 else int(any(t.is_meta for t in model.state_dict().values()))])
    dist.all_reduce(meta, op=dist.ReduceOp.MAX)  # does any rank wait for weights? (all agree: a collective)
    if not meta.item():  # every rank built the same full model (LoRA): today's path
        return shard(model), built
    full = model.state_dict() if rank0 else {}  # the unsharded tensors, alive until broadcast
    persistent = set(model.state_dict())
    model = shard(model)
    if not rank0:
        model.to_empty(device=torch.device("cpu") if offload else device)
        if offload:
            model.apply(lambda m: m._buffers.update({n: b.to(device) for n, b in m._buffers.items() if b is not None}))
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    for name, buffer in model.named_buffers():  # the same order on every rank: the module tree's
        if name not in persistent:
            dist.broadcast(buffer, src=0)
    return model, built
