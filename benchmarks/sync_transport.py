"""Seconds per weight push to an engine group: a torch.distributed channel (gloo) against Ray's object store.

    python benchmarks/sync_transport.py                          # demo size, 2 engine actors, bf16, 3 pushes each
    python benchmarks/sync_transport.py --size test --engines 2 --precision fp8 --repeats 5

A one-process policy in this process pushes to `rollout.engines` in-process engine actors (slide/cluster/engines.py),
through both `rollout.weight_transport` settings, alternating, so load on the machine hits both alike. Seconds: the
whole push as the sync driver times it (encode, move, apply in every engine), median of `repeats`, after one
warm-up push each (the channel's first push also builds the channel). Bytes: what one engine received.
"""
from __future__ import annotations

import argparse
import statistics

import ray
import torch

from slide.cluster.engines import EngineGroup
from slide.cluster.placement import Placement
from slide.cluster.weights import push
from slide.config import RLConfig, load_config
from slide.rl.parts import policy_and_trainer
from slide.model.tokenizer import tokenizer_for
from slide.weights.buckets import WeightSync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="demo")
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp8"])
    ap.add_argument("--bucket-mb", type=float, default=64.0)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    ray.init(num_cpus=2 * (a.engines + 1), include_dashboard=False, log_to_driver=False)  # a placement group each
    groups, version = {}, 0
    for transport in ("torch", "ray"):
        cfg = load_config(RLConfig, None, [f"model.size={a.size}", f"rollout.engines={a.engines}",
                                           f"rollout.precision={a.precision}", f"rollout.weight_transport={transport}"])
        groups[transport] = EngineGroup(cfg, Placement.for_run(cfg))
    policy, _ = policy_and_trainer(cfg, tokenizer_for(None, "auto"), torch.device("cpu"))
    sync = WeightSync(a.precision, a.bucket_mb)
    seconds = {t: [] for t in groups}
    moved = {}
    for i in range(a.repeats + 1):
        for transport, engines in groups.items():
            version += 1
            stats = push(sync, policy, engines, version)
            moved[transport] = stats["sync/bytes"]
            if i:  # the first push of each is a warm-up
                seconds[transport].append(stats["sync/seconds"])
    params = sum(t.numel() for t in policy.state_dict().values())
    print(f"size {a.size} ({params / 1e6:.1f}M parameters), {a.engines} engines, {a.precision}, "
          f"{a.bucket_mb:g} MiB buckets, median of {a.repeats}")
    for transport, s in seconds.items():
        print(f"  {transport:<6} {moved[transport] / 2**20:8.1f} MiB  {statistics.median(s):7.3f} s  "
              f"(all: {', '.join(f'{x:.3f}' for x in s)})")
    for engines in groups.values():
        engines.close()
    ray.shutdown()


if __name__ == "__main__":
    main()
