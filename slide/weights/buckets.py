"""Bucketed, versioned weight sync from the trainer to a rollout engine.

    sync = WeightSync(precision="fp8", bucket_mb=256)
    stats = sync.push(policy, engine, version=step)  # {"sync/bytes": ..., "sync/buckets": ..., "sync/seconds": ...}

The sender cuts the model's named tensors, in state_dict order, into buckets of at most `bucket_mb`
(a bigger tensor travels alone, never split). Each bucket carries (version, index, total), so a receiver can
refuse a version older than the engine's and notice a missing or duplicated bucket. The receiver holds the
buckets of one version and applies them in one go when the set is complete: the engine's version changes
only then, a generation never sees two versions' weights, and a broken push leaves the engine as it was.

Payloads by precision:
    "fp32"  every float tensor as float32 (bit-exact with an fp32 trainer)
    "bf16"  every float tensor as bfloat16
    "fp8"   linear weights (fp8.is_quantizable) as Fp8Weight (q, scale_inv), the rest as bfloat16
In all three the router's `e_score_correction_bias` stays float32: routing is a discontinuous function of
it (top-k), and it costs 4 bytes per expert. FP8 payloads are dequantized into the engine's dtype on apply.

A Bucket is a plain dataclass of tensors and picklable (Fp8Weight pickles through a uint8 view), so it can go
through ray.put / ray.get unchanged; transport.py sends the same buckets by torch.distributed broadcast.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol

import torch

from slide.model.lora import rollout_state_dict
from slide.weights.fp8 import Fp8Weight, is_quantizable, quantize_blockwise, scale_shape

PRECISIONS = ("fp32", "bf16", "fp8")
KEEP_FP32 = ("e_score_correction_bias",)  # name suffixes sent as float32 whatever the precision

Payload = torch.Tensor | Fp8Weight


class WeightSyncError(RuntimeError):
    """A push that cannot be applied: unknown name, wrong shape, malformed bucket."""


class StaleVersionError(WeightSyncError):
    """A bucket older than the weights the engine already holds."""


class IncompleteSyncError(WeightSyncError):
    """A version whose bucket set (or set of tensor names) is incomplete."""


class Engine(Protocol):
    """What a receiver needs from a rollout engine: its version and load_weights, plus the tensors it expects,
    from `weight_specs()` if it has one (slide.engine.vllm_engine.VLLMEngine) or else read off its `model`, an
    HF module with the trainer's state_dict names (slide.engine.inprocess.InProcessEngine)."""

    version: int  # policy version of the weights it holds

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> int:
        """Copy the tensors into the model in place, then set self.version = version."""

    # optional: def weight_specs(self) -> dict[str, tuple[torch.Size, torch.dtype]]
    #   every tensor a push must carry: state_dict name -> (shape, dtype FP8 payloads are dequantized to)


def expected_weights(engine: Engine) -> tuple[dict[str, tuple[torch.Size, torch.dtype]], set[str]]:
    """(name -> (shape, dtype) of every tensor the engine accepts, the names a complete push must carry)."""
    if hasattr(engine, "weight_specs"):
        specs = engine.weight_specs()
        return specs, set(specs)
    model = engine.model
    own = dict(model.named_parameters(remove_duplicate=False))  # tied weights under every name
    own.update(model.named_buffers())  # non-persistent buffers are accepted, never required
    return {n: (t.shape, t.dtype) for n, t in own.items()}, set(model.state_dict())


@dataclass
class Bucket:
    version: int  # policy version (trainer step) of every tensor in it
    index: int  # 0 .. total - 1
    total: int  # buckets in this version's push
    items: list[tuple[str, Payload]]  # state_dict names

    @property
    def nbytes(self) -> int:
        return sum(payload_nbytes(p) for _, p in self.items)

    def to(self, device) -> "Bucket":
        """The same bucket with its tensors on `device` (host memory for the Ray object store); tensors already
        there are not copied."""
        def move(p: Payload) -> Payload:
            return Fp8Weight(p.q.to(device), p.scale_inv.to(device)) if isinstance(p, Fp8Weight) else p.to(device)
        return Bucket(self.version, self.index, self.total, [(name, move(p)) for name, p in self.items])


def payload_nbytes(payload: Payload) -> int:
    if isinstance(payload, Fp8Weight):
        return payload.nbytes
    return payload.numel() * payload.element_size()


def _wire_dtype(name: str, tensor: torch.Tensor, precision: str) -> torch.dtype | None:
    """The dtype a tensor travels in; None for an Fp8Weight."""
    if not tensor.is_floating_point():
        return tensor.dtype
    if precision == "fp32" or name.endswith(KEEP_FP32):
        return torch.float32
    if precision == "fp8" and is_quantizable(name, tensor):
        return None
    return torch.bfloat16


def encode(name: str, tensor: torch.Tensor, precision: str) -> Payload:
    """The payload for one named tensor at `precision`."""
    dtype = _wire_dtype(name, tensor, precision)
    if dtype is None:
        try:
            return Fp8Weight(*quantize_blockwise(tensor))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return tensor.detach().to(dtype)


def encoded_nbytes(name: str, tensor: torch.Tensor, precision: str) -> int:
    """Size of encode(name, tensor, precision) in bytes, from the shape alone (no quantization)."""
    dtype = _wire_dtype(name, tensor, precision)
    if dtype is None:  # 1 byte per element + one float32 scale per block
        return tensor.numel() + 4 * torch.Size(scale_shape(tensor.shape)).numel()
    return tensor.numel() * dtype.itemsize


def plan_buckets(sizes: list[int], cap_bytes: int) -> list[range]:
    """Contiguous index ranges, each summing to at most cap_bytes unless it is a single item.

    Greedy in order; a tensor larger than the cap gets a range of its own.
    """
    groups, start, used = [], 0, 0
    for i, n in enumerate(sizes):
        if i > start and used + n > cap_bytes:
            groups.append(range(start, i))
            start, used = i, 0
        used += n
    if sizes:
        groups.append(range(start, len(sizes)))
    return groups


def make_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], version: int, precision: str = "bf16",
                 bucket_mb: float = 256.0) -> Iterator[Bucket]:
    """Buckets of one version, encoded lazily: at most one bucket's payloads exist at a time.

    fp32 payloads of fp32 tensors are the model's own tensors (no copy): apply or serialize a bucket
    before the next optimizer step.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: allowed {', '.join(PRECISIONS)}")
    named = list(named_tensors)
    if not named:
        raise ValueError("make_buckets: no tensors to sync")
    groups = plan_buckets([encoded_nbytes(n, t, precision) for n, t in named], int(bucket_mb * 2**20))
    for index, group in enumerate(groups):
        items = [(named[i][0], encode(*named[i], precision)) for i in group]
        yield Bucket(version, index, len(groups), items)


class WeightReceiver:
    """Collects the buckets of one version for an engine and applies them once the set is complete.

    receive(bucket) -> True when that bucket completed its version (now applied, engine.version updated).
    A version equal to the engine's is accepted (a re-push of the same policy).
    Raises StaleVersionError for a bucket older than the engine's version, IncompleteSyncError when a new
    version starts before the pending one is complete (the pending one is dropped, never applied), and
    WeightSyncError for a duplicate or malformed bucket or a tensor the engine cannot take.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._clear()

    def _clear(self) -> None:
        self.version: int | None = None  # version being collected
        self.total = 0
        self.parts: dict[int, list[tuple[str, Payload]]] = {}

    @property
    def pending(self) -> bool:
        return self.version is not None

    def _missing(self) -> list[int]:
        return [i for i in range(self.total) if i not in self.parts]

    def receive(self, bucket: Bucket) -> bool:
        where = f"bucket {bucket.index}/{bucket.total} of version {bucket.version}"
        if bucket.version < self.engine.version:
            raise StaleVersionError(f"{where} is older than the engine's weights (version {self.engine.version}); "
                                    "push the current policy instead")
        if self.pending and bucket.version != self.version:
            old, got, missing = self.version, len(self.parts), self._missing()
            self._clear()
            raise IncompleteSyncError(f"version {old} is incomplete: {got} of {got + len(missing)} buckets arrived "
                                      f"(missing {missing[:8]}) before {where}; nothing of version {old} was applied")
        if bucket.total < 1 or not 0 <= bucket.index < bucket.total or (self.pending and bucket.total != self.total):
            raise WeightSyncError(f"{where}: malformed (index/total disagree with the pending set of {self.total})")
        if bucket.index in self.parts:
            raise WeightSyncError(f"{where}: received twice")
        self.version, self.total = bucket.version, bucket.total
        self.parts[bucket.index] = bucket.items
        if len(self.parts) < self.total:
            return False
        version, items = self.version, [item for i in range(self.total) for item in self.parts[i]]
        self._clear()
        self._apply(items, version)
        return True

    def finish(self) -> None:
        """Call when the sender is done: raises IncompleteSyncError if a version is half received."""
        if self.pending:
            version, got, missing = self.version, len(self.parts), self._missing()
            self._clear()
            raise IncompleteSyncError(f"version {version} is incomplete: {got} of {got + len(missing)} buckets "
                                      f"arrived (missing {missing[:8]}); nothing of it was applied")

    def _apply(self, items: list[tuple[str, Payload]], version: int) -> None:
        own, required = expected_weights(self.engine)
        # validate everything before touching any weight: a bad push must leave the engine as it was
        bad = [f"{n!r}: engine has no such weight" for n, _ in items if n not in own]
        bad += [f"{n!r}: shape {tuple(p.shape)}, engine has {tuple(own[n][0])}"
                for n, p in items if n in own and p.shape != own[n][0]]  # copy_ would broadcast silently
        if bad:
            raise WeightSyncError(f"version {version}: {len(bad)} tensor(s) do not fit the engine: {'; '.join(bad[:5])}")
        missing = sorted(required - {n for n, _ in items})
        if missing:
            raise IncompleteSyncError(f"version {version}: the push lacks {len(missing)} of the engine's tensors "
                                      f"(e.g. {missing[:3]}); nothing was applied")

        def decoded():
            for name, payload in items:
                yield name, payload.dequantize(own[name][1]) if isinstance(payload, Fp8Weight) else payload

        self.engine.load_weights(decoded(), version=version)


@dataclass(frozen=True)
class WeightSync:
    """How weights travel: `precision` "fp32" | "bf16" | "fp8", in buckets of at most `bucket_mb` MiB."""

    precision: str = "bf16"
    bucket_mb: float = 256.0

    def __post_init__(self):
        errors = []
        if self.precision not in PRECISIONS:
            errors.append(f"precision {self.precision!r}: allowed {', '.join(PRECISIONS)}")
        if not self.bucket_mb > 0:
            errors.append(f"bucket_mb {self.bucket_mb!r}: must be > 0")
        if errors:
            raise ValueError("WeightSync: " + "; ".join(errors))

    def buckets(self, model: torch.nn.Module, version: int) -> Iterator[Bucket]:
        """`model`'s weights as an engine takes them: a LoRA policy's merged, under the base model's names (every
        tensor, at every push: the adapted weights changed, the rest travels too, so any engine or worker gets a
        complete version; a colocated fp32 engine shares those and copies nothing for them)."""
        return make_buckets(rollout_state_dict(model).items(), version, self.precision, self.bucket_mb)

    @torch.no_grad()
    def push(self, model: torch.nn.Module, engine: Engine, version: int) -> dict[str, float]:
        """In-process push of `model`'s weights into `engine` as `version`; returns sync stats."""
        t0 = time.perf_counter()
        moved, count = apply_buckets(engine, self.buckets(model, version))
        return {"sync/bytes": moved, "sync/buckets": count, "sync/seconds": time.perf_counter() - t0}


def apply_buckets(engine: Engine, buckets: Iterable[Bucket]) -> tuple[int, int]:
    """Receive one version's buckets into `engine` (applied in one go once complete); returns (bytes, buckets)."""
    receiver = WeightReceiver(engine)
    moved = count = 0
    for bucket in buckets:
        moved += bucket.nbytes
        count += 1
        receiver.receive(bucket)
    receiver.finish()
    return moved, count
