"""Weight buckets over torch.distributed: a channel of its own from one sender to the rollout engines.

    # the sender (trainer rank 0, or the one-process trainer)   # each engine process, at the same time
    ch = Channel(address, port, rank=0, size=1 + engines)         ch = Channel(address, port, rank=i, size=...)
    stats = ch.send(sync.buckets(policy, version))                stats = ch.receive(engine)

A Channel is a process group outside torch.distributed's default one (its own TCPStore; the sender hosts it), so a
trainer rank keeps its FSDP group beside it, and the engine group builds a new channel when its members change
(an engine replaced). Gloo carries host buffers; NCCL buffers on this process's current CUDA device (call
`torch.cuda.set_device` first). Per bucket and engine, three point-to-point messages: the two sizes, the header
(names, dtypes, shapes, offsets; pickled) and one flat byte buffer holding every tensor. Point to point, not one
broadcast: an engine that dies mid-push fails only its own sends (gloo reports the closed connection at once), the
sender goes on with the others, and `send` names the ranks it lost. A receiver rejecting a bucket (stale version,
wrong shape) drains the rest of the push, keeps its weights and raises. A member that dies while the channel is
being made leaves the others' joins to fail after `join_timeout` (ChannelJoinError, on every member); a sender that
dies mid-push leaves the receivers waiting until the channel's `timeout`.

Everything here also travels through the Ray object store (a Bucket pickles), which slide/cluster/weights.py
uses when `rollout.weight_transport=ray`.
"""
from __future__ import annotations

import pickle
import time
from datetime import timedelta
from typing import Iterable

import torch
import torch.distributed as dist

from slide.weights.buckets import Bucket, Engine, WeightReceiver, WeightSyncError
from slide.weights.fp8 import Fp8Weight

_ALIGN = 16  # byte offset of every tensor in the flat buffer, so that views of any dtype are aligned


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


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][-200:]


class ChannelJoinError(RuntimeError):
    """A channel was not made: a member did not join within the join timeout (it died, or never started)."""


class Channel:
    """Rank 0 sends, ranks 1..size-1 receive. Every member constructs it at about the same time: each blocks until
    all have joined, up to `join_timeout` (then ChannelJoinError); `timeout` bounds how long a receiver waits for
    the next message."""

    def __init__(self, address: str, port: int, rank: int, size: int, device: torch.device = torch.device("cpu"),
                 timeout: timedelta = timedelta(minutes=5), join_timeout: timedelta = timedelta(seconds=60)):
        self.rank, self.size, self.device = rank, size, torch.device(device)
        try:
            store = dist.TCPStore(address, port, size, is_master=rank == 0, timeout=join_timeout)
            if self.device.type == "cuda":
                self.group = dist.ProcessGroupNCCL(store, rank, size)
            else:
                self.group = dist.ProcessGroupGloo(store, rank, size, timeout)
        except dist.DistError as e:
            raise ChannelJoinError(f"weight channel {address}:{port} rank {rank} of {size}: {_first_line(e)}"
                                   ) from None

    @torch.no_grad()
    def send(self, buckets: Iterable[Bucket]) -> dict:
        """Sender: every bucket to every receiver still reachable; stats, with `lost`: {rank: error} for the
        receivers a send failed to (dead, or gone), which got nothing more of this push."""
        t0 = time.perf_counter()
        live, lost = list(range(1, self.size)), {}
        moved = count = 0
        for bucket in buckets:
            header, flat = pack(bucket, self.device)
            meta = torch.frombuffer(bytearray(pickle.dumps(header)), dtype=torch.uint8).to(self.device)
            sizes = torch.tensor([meta.numel(), flat.numel()], dtype=torch.int64, device=self.device)
            messages = [sizes, meta, flat]
            works = {}
            for r in live:  # posted to every receiver before waiting on any: they receive side by side
                try:
                    works[r] = [self.group.send([m], r, 0) for m in messages]
                except RuntimeError as e:  # gloo: the connection is known closed
                    lost[r] = _first_line(e)
            for r, sent in works.items():
                try:
                    for w in sent:
                        w.wait()
                except RuntimeError as e:
                    lost[r] = _first_line(e)
            live = [r for r in live if r not in lost]
            moved += flat.numel()
            count += 1
        return {"sync/bytes": moved, "sync/buckets": count, "sync/seconds": time.perf_counter() - t0, "lost": lost}

    def _recv(self, numel: int, dtype=torch.uint8) -> torch.Tensor:
        t = torch.empty(numel, dtype=dtype, device=self.device)
        self.group.recv([t], 0, 0).wait()
        return t

    @torch.no_grad()
    def receive(self, engine: Engine) -> dict:
        """Receiver: one push, applied to `engine` when complete; raises WeightSyncError (after draining the
        push) if it cannot be applied, with the engine's weights unchanged."""
        t0 = time.perf_counter()
        receiver, error = WeightReceiver(engine), None
        moved = count = 0
        total = None
        while total is None or count < total:  # drain the whole push, whatever happens to its buckets
            n_meta, n_flat = self._recv(2, torch.int64).cpu().tolist()
            header = pickle.loads(self._recv(n_meta).cpu().numpy().tobytes())
            flat = self._recv(n_flat)
            total = header["total"] if total is None else total
            moved += n_flat
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
        if error is not None:
            raise error
        return {"sync/bytes": moved, "sync/buckets": count, "sync/seconds": time.perf_counter() - t0}

    def close(self) -> None:
        self.group.shutdown()
