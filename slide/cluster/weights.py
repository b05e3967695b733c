"""Weights from the trainer to engines when either side is Ray actors: over a torch.distributed channel to an engine
group (rollout.weight_transport=torch, slide/cluster/channel.py), else one version's buckets in the object store.

A trainer group gathers each bucket from its shards and puts it there (rank 0); a one-process trainer puts its
own. An engine group's actors each read the refs and apply the version when complete (slide/weights/buckets.py
WeightReceiver: all or nothing); an engine in the driver's process reads them here. Only refs cross the
driver, never a tensor of the model.
"""
from __future__ import annotations

import time

import ray

from slide.cluster.engines import EngineGroup
from slide.weights.buckets import WeightSync, apply_buckets


def push(sync: WeightSync, source, engine, version: int) -> dict[str, float]:
    """`source` (a TrainerGroup, or a one-process policy module) -> `engine` (an EngineGroup, or an engine in
    this process) as `version`; sync stats (bytes and buckets one engine received, seconds of the whole push)."""
    t0 = time.perf_counter()
    if isinstance(engine, EngineGroup) and engine.transport == "torch":
        moved, count = engine.load_from(source, sync, version)
        return {"sync/bytes": moved, "sync/buckets": count, "sync/seconds": time.perf_counter() - t0}
    if hasattr(source, "publish"):
        refs, _ = source.publish(version, sync)
    else:
        refs = [ray.put(b.to("cpu")) for b in sync.buckets(source, version)]
    if isinstance(engine, EngineGroup):
        moved, count = engine.load(refs)
    else:
        moved, count = apply_buckets(engine, (ray.get(r) for r in refs))
    return {"sync/bytes": moved, "sync/buckets": count, "sync/seconds": time.perf_counter() - t0}


def receive(engine, buckets: list, device) -> int:
    """Apply one version's buckets to an engine in this process (an async worker's, the evaluator's): each a
    Bucket or, from a trainer group, an object-store ref to one, moved to `device` (fp8 payloads are dequantized
    there); returns bytes."""
    return apply_buckets(engine, ((ray.get(b) if isinstance(b, ray.ObjectRef) else b).to(device) for b in buckets))[0]
