"""One trainer rank of a TrainerGroup: a Ray actor holding its FSDP2 shard of the policy and a PolicyTrainer.

Every method is called on all ranks at once by the group (slide/cluster/trainer_group.py): each one runs
collectives (the forward's all-gathers, the backward's reduce-scatters, the metric sums), so a rank that
skipped a call would leave the others waiting.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import ray
import torch
import torch.distributed as dist

from slide.cluster import fsdp
from slide.cluster.channel import SenderEnd
from slide.cluster.loading import build_sharded
from slide.config import RLConfig
from slide.device import resolve_device
from slide.engine import set_threads
from slide.model.tokenizer import tokenizer_for
from slide.rl.sample import Sample
from slide.weights.buckets import Bucket
from slide.weights.transport import Channel

COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # a peer that died: the survivors' collectives fail after this


class TrainerRank(SenderEnd):
    def __init__(self, cfg: dict, rank: int, world: int, address: str, port: int, ckpt: str | None = None):
        from slide.rl.parts import policy_and_trainer
        cfg = RLConfig.model_validate(cfg)
        set_threads(cfg.train.rank_threads)
        fsdp.map_large_allocations()  # before any weight is allocated
        self.rank, self.world = rank, world
        self.device = resolve_device("cuda" if cfg.cluster.trainer_gpus else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # the GPU Ray gave this actor is its cuda:0
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", init_method=f"tcp://{address}:{port}",
                                rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
        torch.manual_seed(cfg.seed)  # the global stream as in one process (fresh weights: rank 0 builds them)
        self.tok = tokenizer_for(cfg.model.init, cfg.model.tool_format)
        self.built = []  # bytes of full tensors this rank built per model loaded (policy, reference): 0 on ranks > 0
        self.channel: Channel | None = None  # rank 0: the weight channel to the engines (weight_transport=torch)

        def shard(build, autocast):
            model, built = build_sharded(build, self.device, lambda m: fsdp.shard(m, autocast, cfg.train.offload,
                                                                                  self.device), cfg.train.offload)
            self.built.append(built)
            return model
        self.policy, self.trainer = policy_and_trainer(cfg, self.tok, self.device, Path(ckpt) if ckpt else None,
                                                       shard=shard)

    def pid(self) -> int:
        return os.getpid()

    def built_bytes(self) -> list[int]:
        """Bytes of full tensors this rank built for each model it loaded (policy, then the reference if any)."""
        return self.built

    def buffers(self) -> dict[str, torch.Tensor]:
        """The policy's buffers, non-persistent ones included (what a state dict leaves out), for checks."""
        return {name: b.clone() for name, b in self.policy.named_buffers()}

    # training: the PolicyTrainer's methods on this rank's share of the samples
    def step(self, samples: list[Sample]) -> dict:
        return self.trainer.step(samples)

    def begin_update(self) -> None:
        self.trainer.begin_update()

    def accumulate(self, samples: list[Sample]) -> None:
        self.trainer.accumulate(samples)

    def finish_update(self) -> dict:
        return self.trainer.finish_update()

    def updates(self) -> int:
        return self.trainer.updates

    def set_temperature(self, temperature: float) -> None:
        self.trainer.temperature = temperature

    # weights out
    def publish(self, version: int, precision: str, bucket_mb: float) -> tuple[list, int] | None:
        """The policy's buckets gathered from every rank's shards, one at a time; rank 0 puts each into the Ray
        object store as soon as it is whole and returns (their refs, their bytes) (the others None). The object
        store, not a rank, holds the version for the engines to read."""
        refs, moved = [], 0
        for bucket in fsdp.gathered_buckets(self.policy, version, precision, bucket_mb):
            if self.rank == 0:
                refs.append(ray.put(bucket))
                moved += bucket.nbytes
        return (refs, moved) if self.rank == 0 else None

    def send(self, version: int, precision: str, bucket_mb: float) -> dict | None:
        """Every rank gathers the buckets from the shards (as `publish`); rank 0 sends each over its channel as soon
        as it is whole and returns the channel's stats (the others None). A lost engine never stops the gathering:
        the ranks stay in step."""
        buckets = fsdp.gathered_buckets(self.policy, version, precision, bucket_mb)
        if self.rank == 0:
            return self.channel.send(buckets)
        for _ in buckets:
            pass
        return None

    def load_state(self, state: dict, ckpt: str) -> None:
        self.trainer.load_state_dict(state, Path(ckpt))

    def save(self, folder: str) -> dict | None:
        """Write this rank's shards of model and optimizer into `folder`/trainer, and (rank 0) the consolidated
        Hugging Face folder `folder`/model: the weights gathered into its host memory, what export, evaluation
        and a resume read. Returns rank 0's trainer state for state.pt (the others None)."""
        fsdp.save_sharded(self.policy, self.trainer.opt, Path(folder) / fsdp.SHARDED_DIR)
        full = fsdp.full_state_dict(self.policy)
        if self.rank != 0:
            return None
        self.policy.save_pretrained(Path(folder) / "model", state_dict=full, safe_serialization=True)
        state = self.trainer.state_dict()
        del state["optimizer"]  # sharded in folder/trainer instead (PolicyTrainer.load_state_dict reads it there)
        return state

    def close(self) -> None:
        self.close_channel()
        if dist.is_initialized():
            dist.destroy_process_group()


def bucket_refs(refs: list) -> list[Bucket]:
    """The buckets behind `publish`'s refs, fetched one by one (for an engine in the driver's process)."""
    return [ray.get(r) for r in refs]
