"""Weight buckets over torch.distributed: one broadcast of a header and one of a flat byte buffer per bucket.

    # trainer, rank src                                   # each rollout engine process
    stats = broadcast_push(sync, policy, version, src=0)   stats = broadcast_receive(engine, src=0)

Works with any backend that broadcasts uint8 tensors: gloo with host buffers, NCCL with buffers on this rank's
current CUDA device (`torch.cuda.set_device` before init_process_group), picked from the group's backend.
The receivers drain every bucket of the push even after an error, then all ranks agree on the outcome
with one all_reduce, so a rejected push raises on every rank instead of hanging the sender.
(Ray needs none of this: a Bucket is picklable, so `ray.put(bucket)` / `receiver.receive(ray.get(ref))`.)
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from slide.weights.buckets import Bucket, Engine, WeightReceiver, WeightSync, WeightSyncError
from slide.weights.fp8 import Fp8Weight

_ALIGN = 16  # byte offset of every tensor in the flat buffer, so that views of any dtype are aligned


def buffer_device(group=None) -> torch.device:
    """Where this group's broadcast buffers live: the current GPU for NCCL (it moves device memory only), else
    host memory."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def pack(bucket: Bucket, device: torch.device = torch.device("cpu")) -> tuple[dict, torch.Tensor]:
    """Bucket -> (header: plain dict, flat uint8 buffer on `device` holding every tensor's bytes)."""
    tensors, entries, offset = [], [], 0
    for name, payload in bucket.items:
        parts = list(payload) if isinstance(payload, Fp8Weight) else [payload]
        fields = []
        for t in parts:
            t = t.contiguous()
            fields.append((str(t.dtype).removeprefix("torch."), tuple(t.shape), offset))
            tensors.append((offset, t.reshape(-1).view(torch.uint8)))
            offset += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
        entries.append((name, fields))
    flat = torch.zeros(offset, dtype=torch.uint8, device=device)
    for start, raw in tensors:  # copied across devices where the model is elsewhere
        flat[start:start + raw.numel()] = raw
    header = {"version": bucket.version, "index": bucket.index, "total": bucket.total, "items": entries,
              "nbytes": offset}
    return header, flat


def unpack(header: dict, flat: torch.Tensor) -> Bucket:
    """Inverse of pack; the tensors are views into `flat`."""
    items = []
    for name, fields in header["items"]:
        parts = []
        for dtype_name, shape, offset in fields:
            dtype = getattr(torch, dtype_name)
            n = torch.Size(shape).numel() * dtype.itemsize
            parts.append(flat[offset:offset + n].view(dtype).reshape(shape))
        items.append((name, Fp8Weight(*parts) if len(parts) == 2 else parts[0]))
    return Bucket(header["version"], header["index"], header["total"], items)


def _agree(failed: bool, group) -> bool:
    """True if any rank failed (every rank calls this once per push)."""
    flag = torch.tensor([int(failed)], dtype=torch.int32, device=buffer_device(group))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(flag.item())


@torch.no_grad()
def broadcast_push(sync: WeightSync, model: torch.nn.Module, version: int, src: int = 0, group=None) -> dict:
    """Sender side: broadcast `model`'s weights as `version`; raises if any receiver rejected them."""
    t0 = time.perf_counter()
    moved = count = 0
    device = buffer_device(group)
    for bucket in sync.buckets(model, version):
        header, flat = pack(bucket, device)
        dist.broadcast_object_list([header], src=src, group=group)
        dist.broadcast(flat, src=src, group=group)
        moved += flat.numel()
        count += 1
    if _agree(False, group):
        raise WeightSyncError(f"a receiver rejected version {version} (see its log); its engine kept its weights")
    return {"sync/bytes": moved, "sync/buckets": count, "sync/seconds": time.perf_counter() - t0}


@torch.no_grad()
def broadcast_receive(engine: Engine, src: int = 0, group=None) -> dict:
    """Receiver side: take one push from rank `src` and apply it to `engine` when complete."""
    t0 = time.perf_counter()
    receiver = WeightReceiver(engine)
    error: Exception | None = None
    moved = count = 0
    total = None
    while total is None or count < total:  # drain the whole push, whatever happens to its buckets
        box = [None]
        dist.broadcast_object_list(box, src=src, group=group)
        header = box[0]
        flat = torch.empty(header["nbytes"], dtype=torch.uint8, device=buffer_device(group))
        dist.broadcast(flat, src=src, group=group)
        total = header["total"] if total is None else total
        moved += flat.numel()
        count += 1
        if error is None:
            try:
                receiver.receive(unpack(header, flat))
            except WeightSyncError as e:
                error = e
    if error is None:
        try:
            receiver.finish()
        except WeightSyncError as e:
            error = e
    _agree(error is not None, group)  # tells the sender; another receiver's failure is not this one's
    if error is not None:
        raise error
    return {"sync/bytes": moved, "sync/buckets": count, "sync/seconds": time.perf_counter() - t0}
