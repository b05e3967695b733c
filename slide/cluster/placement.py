"""Where a run's processes go: Ray, started here or joined, and one placement group per job.

    start_ray(cfg)                      # cluster.ray_address=auto joins `ray start --head`'s cluster
    place = Placement.for_run(cfg)      # bundles: trainer ranks first, then engines (none when colocated)
    actor_cls.options(**place.trainer(i)).remote(...)
    actor_cls.options(**place.engine(j)).remote(...)
    address, port = endpoint()          # where this process can host a torch.distributed rendezvous

Colocated (cluster.colocate): engine j lives in trainer rank j's bundle (its GPU), and they take turns as the
sync driver alternates rollout and training. Disaggregated: engines get bundles of their own. A bundle asks for
`GPU: 1` when the role has GPUs (cluster.trainer_gpus / rollout_gpus), else CPUs only. On a CPU machine,
cluster.gpus_per_node declares GPUs Ray does not have, so placement can be tested anywhere (the processes then
still compute on the CPU: `device` decides that, not Ray).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from slide.config import RLConfig
from slide.errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def endpoint() -> tuple[str, int]:
    """This process's node address and a free port there: where it can host a torch.distributed rendezvous (a
    trainer group's, rank 0 of it; a weight channel's, its sender)."""
    return ray.util.get_node_ip_address(), free_port()


def cpus_needed(cfg: RLConfig) -> int:
    """Ray CPU slots this run's actors take (a local Ray declares this many: logical slots, not cores)."""
    trainers = cfg.train.world_size * cfg.train.rank_threads if cfg.train.world_size > 1 else 0
    engines = cfg.rollout.engines * cfg.rollout.engine_threads if cfg.rollout.engines > 1 and cfg.mode == "sync" \
        else 0
    workers = (cfg.disagg.workers + cfg.disagg.eval_in_background) * cfg.disagg.worker_threads \
        if cfg.mode == "async" else 0  # the rollout workers and the evaluator
    return max(1, trainers + engines + workers)


def start_ray(cfg: RLConfig) -> None:
    """Join cluster.ray_address, or start Ray on this machine with the CPU slots the run needs (and the GPUs of
    cluster.gpus_per_node, declared). Never a cluster someone started unless the config names it."""
    if ray.is_initialized():
        return
    c = cfg.cluster
    local = {} if c.ray_address else {"num_cpus": cpus_needed(cfg),
                                      **({"num_gpus": c.gpus_per_node} if c.gpus_per_node else {})}
    try:
        ray.init(address=c.ray_address or "local", include_dashboard=False, log_to_driver=False,
                 configure_logging=False, **local)
    except ConnectionError as e:
        raise UserError(f"cluster.ray_address={c.ray_address!r}: no Ray cluster there ({e}); start one with "
                        "`ray start --head` or leave cluster.ray_address unset") from None


@dataclass
class Placement:
    """One placement group holding every trainer rank's and engine's bundle."""
    group: object  # ray.util.placement_group.PlacementGroup
    trainers: int
    engines: int
    colocate: bool
    trainer_cpus: int  # CPU slots each trainer rank takes from its bundle
    engine_cpus: int

    @classmethod
    def for_run(cls, cfg: RLConfig, trainers: int | None = None, engines: int | None = None,
                timeout_s: float = 120.0) -> "Placement":
        """Reserve the bundles (blocks until Ray has them; a cluster too small for them is a one-line error)."""
        c = cfg.cluster
        trainers = cfg.train.world_size if trainers is None else trainers
        if engines is None:  # engine actors: sync mode with rollout.engines > 1 (one engine runs in the driver)
            engines = cfg.rollout.engines if cfg.mode == "sync" and cfg.rollout.engines > 1 else 0
        if c.colocate and engines > trainers:
            raise UserError(f"cluster.colocate: rollout.engines={engines} > train.world_size={trainers}; colocated "
                            "engine j shares trainer rank j's bundle")
        bundles = [cls._bundle(cfg.train.rank_threads + (cfg.rollout.engine_threads if c.colocate and i < engines
                                                         else 0), c.trainer_gpus) for i in range(trainers)]
        if not c.colocate:
            bundles += [cls._bundle(cfg.rollout.engine_threads, c.rollout_gpus) for _ in range(engines)]
        group = placement_group(bundles, strategy="PACK")
        ready, _ = ray.wait([group.ready()], timeout=timeout_s)
        if not ready:
            remove_placement_group(group)
            raise UserError(f"cluster: Ray could not place {len(bundles)} bundles {bundles} in {timeout_s:.0f} s "
                            f"(available: {ray.available_resources()}); lower train.world_size / rollout.engines "
                            "or add nodes")
        return cls(group, trainers, engines, c.colocate, cfg.train.rank_threads, cfg.rollout.engine_threads)

    @staticmethod
    def _bundle(cpus: int, gpus: int) -> dict:
        return {"CPU": cpus, **({"GPU": 1} if gpus else {})}

    def _options(self, index: int, cpus: int, gpu: float) -> dict:
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index)
        return {"scheduling_strategy": strategy, "num_cpus": cpus, **({"num_gpus": gpu} if gpu else {})}

    def bundle_gpus(self, index: int) -> int:
        return int(self.group.bundle_specs[index].get("GPU", 0))

    def trainer(self, rank: int) -> dict:
        """.options() for trainer rank `rank`: its bundle (with an engine beside it, half of the GPU each)."""
        gpus = self.bundle_gpus(rank)
        return self._options(rank, self.trainer_cpus, gpus * (0.5 if self.colocate and rank < self.engines else 1.0))

    def engine(self, index: int) -> dict:
        """.options() for engine `index`: trainer rank `index`'s bundle when colocated, else its own."""
        bundle = index if self.colocate else self.trainers + index
        gpus = self.bundle_gpus(bundle)
        return self._options(bundle, self.engine_cpus, gpus * (0.5 if self.colocate else 1.0))

    def remove(self) -> None:
        remove_placement_group(self.group)
