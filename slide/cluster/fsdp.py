"""FSDP2 for a trainer rank: shard the policy, gather it back bucket by bucket, checkpoint it sharded.

    shard(model, autocast, offload=False)                  # fully_shard per decoder layer, then the root
    map_large_allocations()                                # a rank process: freed blocks go back to the system
    for bucket in gathered_buckets(model, version, "fp8", 256): ...   # every rank calls; rank 0 ships them
    save_sharded(model, opt, path) / load_sharded(model, opt, path)   # torch.distributed.checkpoint
    full = full_state_dict(model)                          # rank 0: the consolidated weights, for an HF folder

The units, and what a rank holds (N ranks, P the model's parameters): every parameter as a 1/N shard, with its
gradient shard and AdamW moments (P/N each). One unit per decoder layer: its weights gathered whole for its forward
and again for its backward (at most two layers whole at once: the next one is prefetched), its gradient whole
until reduce-scattered right after that layer's backward. The root unit holds the rest (embeddings, final norm,
head): gathered for the whole forward and backward, as FSDP does for a root, its gradient whole until the backward
ends. (The embeddings and head as units of their own, tied ones as one unit `fully_shard([embed, head])`, free
them after the forward but leave the peak where it was: the step's peak is the head's backward, where they are
whole either way; 234M benchmark model, 2026-12-03, benchmarks/RESULTS.md.) Ranks past 0 never build the whole
model: slide/cluster/loading.py; a rank's malloc returns freed blocks: map_large_allocations.

Gradients are *summed* over the ranks (divide factor 1): the trainer divides them by the update's global token
(or sequence) count itself, so any split of a batch over ranks gives the one-process update.
"""
from __future__ import annotations

import ctypes
import warnings
from pathlib import Path
from types import MethodType
from typing import Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_optimizer_state_dict, set_state_dict)
from torch.distributed.fsdp import (CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard,
                                    register_fsdp_forward_method)

from slide.model.logprobs import SCORING, chunked_logprobs
from slide.weights.buckets import Bucket, encode, encoded_nbytes, plan_buckets

SHARDED_DIR = "trainer"  # a checkpoint's sharded model and optimizer state (one file per rank)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks: each is one FSDP unit (its parameters all-gathered together, freed after)."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers found (model.model.layers) to shard")
    return list(layers)


def shard(model: torch.nn.Module, autocast: torch.dtype, offload: bool = False,
          device: torch.device | None = None) -> torch.nn.Module:
    """Shard `model` in place over the default process group: one FSDP unit per decoder layer, the rest (embeddings,
    final norm, head) in the root unit. On a GPU with bf16 training: bf16 compute, fp32 gradient reduction (FSDP2's
    MixedPrecisionPolicy); on a CPU the parameters stay fp32 and train.precision's autocast applies as in one process.
    offload: parameters, gradients and optimizer state live in host memory between uses (CPUOffloadPolicy).
    device: where it computes (default: where its parameters are; a model on the meta device needs it)."""
    on_gpu = (device or next(model.parameters()).device).type == "cuda"
    kwargs = {}
    if on_gpu and autocast != torch.float32:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=autocast, reduce_dtype=torch.float32)
    if offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum: the trainer normalises by the global token count
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    # The trainer scores tokens with the decoder and the head called apart (slide/model/logprobs.py), never the
    # model's own forward; FSDP gathers the root unit's parameters (embeddings, final norm, head) and reduces their
    # gradients only around a forward of the root. Scoring becomes one, a method FSDP hooks like forward.
    setattr(model, SCORING, MethodType(chunked_logprobs, model))
    register_fsdp_forward_method(model, SCORING)
    return model


def map_large_allocations(threshold: int = 2**20) -> bool:
    """glibc malloc: every allocation of `threshold` bytes or more gets its own mapping, returned to the system
    when freed. An FSDP rank allocates and frees each unit's gathered weights, its unsharded gradients and the
    communication buffers (MiBs each) at every forward and backward; by default glibc raises its mapping threshold
    to the largest block freed (up to 32 MiB) and serves such blocks from its heap afterwards, which that churn
    fragments: a rank's resident memory then grows ~1 GiB past its live tensors (234M benchmark model, 2026-12-03,
    benchmarks/RESULTS.md). A fixed threshold turns that adjustment off. False where there is no glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _full(tensor: torch.Tensor) -> torch.Tensor:
    full = getattr(tensor, "full_tensor", None)  # a DTensor shard: all-gathered (a collective: every rank calls)
    return full() if full is not None else tensor


@torch.no_grad()
def gathered_buckets(model: torch.nn.Module, version: int, precision: str, bucket_mb: float) -> Iterator[Bucket]:
    """The policy's weights as rollout buckets (slide/weights/buckets.py), gathered from the shards one bucket at a
    time: no rank ever holds more than one bucket's full tensors beside its shards. Every rank must iterate it to
    the end (each tensor's gather is a collective); the buckets are the same on every rank."""
    named = list(model.state_dict().items())  # DTensors: the global shapes plan the buckets, nothing is gathered
    groups = plan_buckets([encoded_nbytes(n, t, precision) for n, t in named], int(bucket_mb * 2**20))
    for index, group in enumerate(groups):
        items = [(named[i][0], encode(named[i][0], _full(named[i][1]).cpu(), precision)) for i in group]
        yield Bucket(version, index, len(groups), items)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights in host memory on rank 0 ({} on the others): what an HF folder holds."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def load_full_optimizer(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """A one-process optimizer state_dict (parameters numbered in the order of the model's trainable parameters,
    as PolicyTrainer builds its AdamW) into this rank's sharded optimizer: renamed by parameter name, then each
    rank keeps its shard of every full tensor."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    by_name = {"state": {names[i]: v for i, v in state["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, by_name, options=StateDictOptions(full_state_dict=True))


def save_sharded(model: torch.nn.Module, opt: torch.optim.Optimizer, path: Path) -> None:
    """Model and optimizer state, each rank writing its own shards into `path` (a folder every rank can reach)."""
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))


def load_sharded(model: torch.nn.Module, opt: torch.optim.Optimizer, path: Path, weights: bool = True) -> None:
    """Inverse of save_sharded at any world size (one process included): DCP reshards what each rank reads.
    weights=False: the optimizer only (the model was loaded from the checkpoint's HF folder)."""
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd} if weights else {"optim": optim_sd}
    with warnings.catch_warnings():  # one process reading a group's shards: DCP says so, as intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"] if weights else model_sd,
                   optim_state_dict=state["optim"])
