"""rollout.weight_transport=torch: an engine group's weights over a torch.distributed channel (slide/weights/transport.py).

    failed = connect(sender, actors)              # a channel of its own: the sender is rank 0, actors 1..N
    stats, lost = send(sender, actors, sync, version)   # every actor applies `version`; `lost`: those that died

The sender is a TrainerGroup (its rank 0 sends while every rank gathers the buckets from its shards) or, for a
one-process trainer, a LocalSender in the driver's process. Nothing of the model goes through the driver or the
object store. An actor that dies mid-push costs only its own sends: the others get the whole version, and the
engine group replaces the lost ones and sends them the same version on a channel of their own (slide/cluster/
engines.py). Every member joins before any sends: each call here blocks until all have; an actor that dies while
joining fails the whole channel (after the join timeout), and `connect` names the actors to replace.
"""
from __future__ import annotations

from datetime import timedelta

import ray
import torch

from slide.cluster import placement
from slide.weights.buckets import WeightSync
from slide.weights.transport import Channel, ChannelJoinError

DEAD = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)


class SenderEnd:
    """A weight channel's sending end (rank 0): what a TrainerRank and a LocalSender share. Needs `self.device`."""
    channel: Channel | None = None

    def endpoint(self) -> tuple[str, int]:
        """Where this process hosts a new weight channel (its node's address, a free port)."""
        return placement.endpoint()

    def open_channel(self, address: str, port: int, size: int, join_s: float) -> None:
        """A new weight channel to `size - 1` engines, closing the one before (a failed join leaves none)."""
        self.close_channel()
        self.channel = Channel(address, port, 0, size, self.device, join_timeout=timedelta(seconds=join_s))

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


class LocalSender(SenderEnd):
    """A one-process trainer's policy (in the driver's process) as a channel's sender."""

    def __init__(self, policy: torch.nn.Module):
        self.policy = policy
        self.device = next(policy.parameters()).device

    def send(self, sync: WeightSync, version: int) -> dict:
        return self.channel.send(sync.buckets(self.policy, version))


def connect(sender, actors: list, join_s: float = 60.0) -> list[int]:
    """A new channel: `sender` rank 0, `actors` ranks 1.. in order (they join first; the sender's join waits for
    them, up to `join_s` seconds). Returns [] when it is made; else the indices of the actors to replace: those
    that died on the way (every actor, if none did: they did not join in time)."""
    address, port = sender.endpoint()
    joins = [a.join.remote(address, port, i + 1, len(actors) + 1, join_s) for i, a in enumerate(actors)]
    made = True
    try:
        sender.open_channel(address, port, len(actors) + 1, join_s)
    except ChannelJoinError:
        made = False
    dead = []
    for i, call in enumerate(joins):
        try:
            ray.get(call)
        except DEAD:
            dead.append(i)
        except ChannelJoinError:
            pass
    if made:
        return []  # an actor dead since is lost at the first send
    return dead or list(range(len(actors)))


def send(sender, actors: list, sync: WeightSync, version: int) -> tuple[dict, list[int]]:
    """One version to every actor of the current channel; (the sender's stats, indices of the actors lost: dead, or
    cut off mid-push and killed here so that none waits out the channel's timeout). An actor that rejects the
    version (WeightSyncError) raises here."""
    calls = [a.receive.remote() for a in actors]
    stats = sender.send(sync, version)
    lost = sorted(rank - 1 for rank in stats.pop("lost"))
    for i in lost:
        ray.kill(actors[i])
    for i, call in enumerate(calls):
        try:
            ray.get(call)
        except DEAD:
            lost = sorted({*lost, i})
    return stats, lost
