"""Scale-out: trainer ranks and rollout engines as Ray actors behind the one-process interfaces.

placement.py      start or join Ray; one placement group per job (trainer bundles, engine bundles or colocated)
collective.py     what trainer ranks agree on (metric sums, forward-pass counts); the identity in one process
fsdp.py           FSDP2 sharding, bucket-by-bucket gathering of the weights, sharded checkpoints (DCP)
loading.py        a sharded model with no full copy on ranks > 0 (built on the meta device, filled from rank 0)
rank.py           TrainerRank: one FSDP2 rank, a Ray actor holding its shard and a PolicyTrainer
trainer_group.py  TrainerGroup: train.world_size ranks behind PolicyTrainer's methods
engines.py        EngineActor, EngineGroup: rollout.engines engines behind the one-engine contract
weights.py        the weight push when either side is actors: a channel to an engine group, or the object store
channel.py        rollout.weight_transport=torch: the engine group's torch.distributed channel, its sender

The drivers (slide/rl/sync.py, async_rl.py) never import this package: slide/rl/parts.py builds a group where
the config asks for one, and a group of one is the one-process code path.
"""
