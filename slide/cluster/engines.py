"""An engine group: N rollout engines as Ray actors behind the one-engine contract of slide/engine/.

    engines = EngineGroup(cfg, placement)
    engines.load_from(sender, sync, version)               # rollout.weight_transport=torch: over a channel
    engines.load(refs)                                     # =ray: one version's bucket refs (object store)
    groups = engines.generate(prompts, params, n=8, generator=gen)   # prompts shared out, results in order

A generate call cuts its prompts into one contiguous share per engine (the sync driver's rollout, evaluation
and agent turns all go through it unchanged). Each share samples from its own seed, drawn from the caller's
generator, so a run is reproducible (and resumes exactly) for a given number of engines. An engine actor that
dies is replaced: the new one loads the last version pushed (the trainer sends it again: in sync mode its weights
are still that version whenever the engines run) and its share is generated again, from the same seed (counted in
`engines_replaced`).
"""
from __future__ import annotations

import os
from datetime import timedelta

import ray
import torch

from slide.cluster import channel
from slide.cluster.placement import Placement
from slide.config import RLConfig
from slide.device import generator as make_generator, precision_for, resolve_device
from slide.engine import close_engine, make_engine, set_threads
from slide.engine.inprocess import Completion, SamplingParams
from slide.errors import RunStopped
from slide.model.load import load_policy
from slide.model.tokenizer import tokenizer_for
from slide.weights.buckets import WeightSync, apply_buckets
from slide.weights.transport import Channel

DEAD = channel.DEAD


class EngineActor:
    """One rollout engine (in-process or vLLM, rollout.engine) in its own process."""

    def __init__(self, cfg: dict, index: int):
        cfg = RLConfig.model_validate(cfg)
        set_threads(cfg.rollout.engine_threads)
        self.device = resolve_device("cuda" if cfg.cluster.rollout_gpus or
                                     (cfg.cluster.colocate and cfg.cluster.trainer_gpus) else "cpu")
        tok = tokenizer_for(cfg.model.init, cfg.model.tool_format)
        model = load_policy(cfg.model.init, cfg.model.size, tok, cfg.seed, device=self.device)  # the architecture
        self.engine = make_engine(cfg.rollout.engine, model, tok.pad_token_id,
                                  precision_for(cfg.rollout.precision, self.device), cfg.seed * 1009 + index,
                                  record_routes=cfg.algo.routing_replay)
        self.engine.version = -1  # nothing pushed yet: any version is newer
        self.channel: Channel | None = None

    def pid(self) -> int:
        return os.getpid()

    def version(self) -> int:
        return self.engine.version

    def load(self, refs: list) -> tuple[int, int]:
        """Apply one version's buckets, fetched from the object store one by one; returns (bytes, buckets)."""
        return apply_buckets(self.engine, (ray.get(r).to(self.device) for r in refs))

    def join(self, address: str, port: int, rank: int, size: int, join_s: float) -> None:
        """Join a new weight channel (slide/cluster/channel.py) as `rank`, leaving the one before."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.channel = Channel(address, port, rank, size, self.device, join_timeout=timedelta(seconds=join_s))

    def receive(self) -> dict:
        """One version over the channel, applied when complete (or refused: WeightSyncError, weights kept)."""
        return self.channel.receive(self.engine)

    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int, seed: int) -> list[list[Completion]]:
        return self.engine.generate(prompts, params, n, make_generator(self.device, seed))

    def weights(self) -> dict[str, torch.Tensor]:
        """The engine's weights as it holds them (tests compare them with what was sent)."""
        return {k: v.detach().cpu() for k, v in self.engine.model.state_dict().items()}

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        close_engine(self.engine)


class EngineGroup:
    """The driver's handle on the engine actors: generate, load and version, as one engine."""

    def __init__(self, cfg: RLConfig, placement: Placement):
        self.cfg, self.placement = cfg, placement
        self.transport = cfg.rollout.weight_transport
        self.actors = [self._start(i) for i in range(placement.engines)]
        self.refs: list | None = None  # the last version pushed (a replacement engine loads it)
        self.version = -1
        self.sender, self.sync, self.joined = None, None, None  # weight_transport=torch: sender, settings, channel members
        self.counts = {"engines_replaced": 0}
        ray.get([a.pid.remote() for a in self.actors])  # built: start-up stays out of the first step

    def _start(self, index: int):
        return ray.remote(EngineActor).options(max_restarts=0, **self.placement.engine(index)).remote(
            self.cfg.model_dump(mode="json"), index)

    def _restart(self, index: int) -> None:
        ray.kill(self.actors[index])
        self.actors[index] = self._start(index)
        self.counts["engines_replaced"] += 1

    def _replace(self, index: int) -> None:
        """A new actor for a dead one, holding the last version pushed."""
        self._restart(index)
        if self.sender is not None:
            self._send([index], self.version)
        elif self.refs is not None:
            ray.get(self.actors[index].load.remote(self.refs))

    def _ready(self, members: list[int]) -> None:
        """Every member alive and built (a dead one would never join a channel: the others would wait for it)."""
        for i in members:
            try:
                ray.get(self.actors[i].pid.remote())
            except DEAD:
                self._restart(i)
                ray.get(self.actors[i].pid.remote())

    def _send(self, members: list[int], version: int) -> tuple[int, int]:
        """`version` from the sender to the actors `members` over a channel of exactly them (a new one when they
        changed); an actor lost on the way (joining, or receiving) is replaced and the version sent again, up to
        3 rounds."""
        for _ in range(3):
            if self.joined != members:
                self._ready(members)
                failed = channel.connect(self.sender, [self.actors[i] for i in members])
                if failed:  # no channel: every member joins the next one
                    self.joined = None
                    for i in failed:
                        self._restart(members[i])
                    continue
                self.joined = members
            stats, lost = channel.send(self.sender, [self.actors[i] for i in members], self.sync, version)
            if not lost:
                return stats["sync/bytes"], stats["sync/buckets"]
            members = [members[i] for i in lost]
            for i in members:
                self._restart(i)
        raise RunStopped(f"engine actors {members} died at each of 3 pushes of weight version {version}; the run stops: "
                         "resume it from its last checkpoint with `slide rl --resume RUN_DIR`")

    def load_from(self, source, sync: WeightSync, version: int) -> tuple[int, int]:
        """`source`'s weights (a TrainerGroup, or a one-process policy) into every engine as `version` over a
        torch.distributed channel; returns (bytes, buckets) one engine received."""
        if self.sender is None:
            self.sender = source if hasattr(source, "open_channel") else channel.LocalSender(source)
        self.sync = sync
        moved = self._send(list(range(len(self.actors))), version)
        self.version = version
        return moved

    def load(self, refs: list) -> tuple[int, int]:
        """Every engine applies this version (an engine that died meanwhile is replaced with it); returns (bytes,
        buckets) one engine received."""
        self.refs = refs
        calls = [a.load.remote(refs) for a in self.actors]
        moved = (0, 0)
        for i, call in enumerate(calls):
            try:
                moved = ray.get(call)
            except DEAD:
                self._replace(i)
        self.version = ray.get(self.actors[0].version.remote())
        return moved

    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int = 1,
                 generator: torch.Generator | None = None) -> list[list[Completion]]:
        k = len(self.actors)
        cuts = [len(prompts) * i // k for i in range(k + 1)]
        seeds = [int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator
                                   else "cpu")) for _ in range(k)]
        calls = {i: self.actors[i].generate.remote(prompts[cuts[i]:cuts[i + 1]], params, n, seeds[i])
                 for i in range(k) if cuts[i + 1] > cuts[i]}
        out: list[list[Completion]] = []
        for i, call in calls.items():
            while True:
                try:
                    out += ray.get(call)
                    break
                except DEAD:  # replaced, then its share again from the same seed on the same weights
                    self._replace(i)
                    call = self.actors[i].generate.remote(prompts[cuts[i]:cuts[i + 1]], params, n, seeds[i])
        return out

    def pop_counts(self) -> dict[str, int]:
        counts, self.counts = self.counts, {"engines_replaced": 0}
        return counts

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        if isinstance(self.sender, channel.LocalSender):
            self.sender.close_channel()
