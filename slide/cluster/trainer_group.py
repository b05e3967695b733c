"""A trainer group: train.world_size FSDP2 ranks (Ray actors, slide/cluster/rank.py) behind PolicyTrainer's methods.

    trainer = TrainerGroup(cfg, ckpt)        # the ranks start in the run's placement group and shard the policy
    stats = trainer.step(samples)            # each rank trains on its share; the update is the whole batch's
    refs = trainer.publish(version, sync)    # the weights, gathered bucket by bucket, in the Ray object store
    trainer.send(sync, version)              # ... or over rank 0's weight channel to an engine group
    state = trainer.save(folder)             # sharded model+optimizer (DCP) and a consolidated HF folder

The drivers call it as they call a PolicyTrainer. A batch is shared out in contiguous, token-balanced parts;
every rank sums its gradients and metric sums with the others, so the update equals one process's on the
whole batch (up to float summation order). A rank that dies ends the run: TrainerRankDied names it and the
last checkpoint to resume from (the survivors' collectives cannot go on without it).
"""
from __future__ import annotations

import ray

from slide.cluster.placement import Placement, endpoint, start_ray
from slide.cluster.rank import TrainerRank
from slide.config import RLConfig
from slide.errors import RunStopped
from slide.rl.sample import Sample
from slide.weights.buckets import WeightSync

DEAD = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)


class TrainerRankDied(RunStopped):
    """A trainer rank's process is gone; the run ends and resumes from its last checkpoint."""


def share(samples: list[Sample], rank: int, size: int) -> list[Sample]:
    """Rank `rank`'s contiguous part of `samples`, cut where the running token count crosses rank/size of the
    total (each rank trains about as many tokens). The same cuts on every call: the group's split is a partition."""
    tokens = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    total, cuts, acc = sum(tokens), [0], 0
    for i, t in enumerate(tokens):
        acc += t
        while len(cuts) < size and acc * size >= total * len(cuts):
            cuts.append(i + 1)
    cuts += [len(samples)] * (size + 1 - len(cuts))
    return samples[cuts[rank]:cuts[rank + 1]]


class TrainerGroup:
    def __init__(self, cfg: RLConfig, ckpt=None, placement: Placement | None = None):
        start_ray(cfg)
        self.placement = placement or Placement.for_run(cfg)
        self.size = cfg.train.world_size
        address, port = endpoint()
        remote = ray.remote(TrainerRank)
        self.ranks = [remote.options(max_restarts=0, **self.placement.trainer(r)).remote(
            cfg.model_dump(mode="json"), r, self.size, address, port, str(ckpt) if ckpt else None)
            for r in range(self.size)]
        self._all([r.pid.remote() for r in self.ranks])
        self._temperature = cfg.rollout.temperature

    def _all(self, calls: list):
        """Wait for one call on every rank; a dead rank is TrainerRankDied at once (the others, stuck in a
        collective that waits for it, are stopped). A rank whose collective fails because a peer died (gloo's
        "Connection closed by peer", often seen before Ray reports the death) is the dead peer's error too."""
        pending = list(calls)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except DEAD as e:
                self._stop(calls.index(done[0]), e)
            except ray.exceptions.RayTaskError:
                dead = self._find_dead()
                if dead is None:
                    raise
                self._stop(*dead)
        return ray.get(calls)

    def _find_dead(self, timeout_s: float = 30.0) -> tuple[int, Exception] | None:
        """The first rank whose process is gone (its ping fails once Ray has seen it die), or None if none has
        within `timeout_s` (a rank still busy in a collective does not answer its ping: it is not counted)."""
        pings = [r.pid.remote() for r in self.ranks]
        ray.wait(pings, num_returns=len(pings), timeout=timeout_s)
        for rank, ping in enumerate(pings):
            try:
                ray.get(ping, timeout=0)
            except DEAD as e:
                return rank, e
            except ray.exceptions.GetTimeoutError:
                pass
        return None

    def _stop(self, rank: int, e: Exception):
        self.close()
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        cause = lines[-1][:200] if "creation task" in str(e) else type(e).__name__  # its __init__ raised
        raise TrainerRankDied(f"trainer rank {rank} of {self.size} died ({cause}); the run stops: resume it "
                              "from its last checkpoint with `slide rl --resume RUN_DIR`") from None

    def _each(self, method: str, *args) -> list:
        return self._all([getattr(r, method).remote(*args) for r in self.ranks])

    def _shared(self, method: str, samples: list[Sample]) -> list:
        return self._all([getattr(r, method).remote(share(samples, i, self.size)) for i, r in enumerate(self.ranks)])

    # PolicyTrainer's methods (every rank returns the same metrics: they are summed over the group)
    def step(self, samples: list[Sample]) -> dict[str, float]:
        return self._shared("step", samples)[0]

    def begin_update(self) -> None:
        self._each("begin_update")

    def accumulate(self, samples: list[Sample]) -> None:
        self._shared("accumulate", samples)

    def finish_update(self) -> dict[str, float]:
        return self._each("finish_update")[0]

    @property
    def updates(self) -> int:
        return self._all([self.ranks[0].updates.remote()])[0]

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if value != self._temperature:
            self._each("set_temperature", value)
            self._temperature = value

    def load_state_dict(self, state: dict, ckpt) -> None:
        self._each("load_state", state, str(ckpt))

    # weights out, checkpoints
    def publish(self, version: int, sync: WeightSync) -> tuple[list, int]:
        """One version's buckets in the Ray object store (refs, in order), gathered from the shards; their bytes."""
        return self._each("publish", version, sync.precision, sync.bucket_mb)[0]

    def endpoint(self) -> tuple[str, int]:
        """Where rank 0 hosts a weight channel."""
        return self._all([self.ranks[0].endpoint.remote()])[0]

    def open_channel(self, address: str, port: int, size: int, join_s: float) -> None:
        """Rank 0 opens a weight channel to `size - 1` engines (slide/cluster/channel.py)."""
        self._all([self.ranks[0].open_channel.remote(address, port, size, join_s)])

    def send(self, sync: WeightSync, version: int) -> dict:
        """One version over rank 0's channel, gathered from the shards; the channel's stats."""
        return self._each("send", version, sync.precision, sync.bucket_mb)[0]

    def save(self, folder) -> dict:
        """Write `folder`/trainer (every rank's shards) and `folder`/model (rank 0); returns the trainer state."""
        return self._each("save", str(folder))[0]

    def close(self) -> None:
        for r in self.ranks:
            ray.kill(r)

