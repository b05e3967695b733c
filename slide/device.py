"""Where a command computes: `device: auto | cpu | cuda | cuda:N`, and what follows from it.

    device = resolve_device(cfg.device)              # torch.device; a UserError (exit 2) if CUDA is absent
    train_precision = precision_for(cfg.train.precision, device)    # "auto": bf16 on a GPU, fp32 on the CPU

auto is the first CUDA GPU when torch sees one, else the CPU. Nothing here touches CUDA unless a CUDA
device was asked for (or auto found one): on a CPU machine torch.cuda is never initialised, and the CPU path
is exactly what it was before devices existed (fp32, CPU generators, the same RNG streams).
"""
from __future__ import annotations

import re

import torch

from slide.errors import UserError

DEVICES = "auto | cpu | cuda | cuda:N"
_SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_spec(spec: str) -> str:
    """The config validator: `spec` if it names a device (without asking whether it exists), else ValueError."""
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise ValueError(f"{spec!r} is not a device (allowed: {DEVICES})")
    return spec


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch.device `spec` names, checked against this machine: cuda:N past the GPUs torch sees, or CUDA on a
    machine (or torch build) without it, is a UserError naming the problem."""
    try:
        check_device_spec(spec)
    except ValueError as e:
        raise UserError(f"device: {e}") from None
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if spec == "auto":
        return torch.device("cuda", 0) if available else torch.device("cpu")
    if not available:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
        raise UserError(f"device: {spec!r} requested but torch.cuda.is_available() is False (this torch build: "
                        f"{torch.__version__}, {build}); use device=cpu or auto")
    index, count = int(spec.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        raise UserError(f"device: {spec!r} requested but torch sees {count} CUDA device(s) "
                        f"(cuda:0..cuda:{count - 1}; CUDA_VISIBLE_DEVICES renumbers them)")
    return torch.device("cuda", index)


def precision_for(precision: str, device: torch.device) -> str:
    """A precision setting with "auto" resolved: bf16 on a GPU (native bf16 matmuls), fp32 on the CPU (bf16 is
    slower there without AMX, and the CPU tests compare fp32 runs bit for bit). Others pass through."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded sampling stream on `device` (torch.multinomial needs its generator where its tensor is); on the
    CPU the same stream as torch.Generator().manual_seed(seed)."""
    return torch.Generator(device=device).manual_seed(seed)


def memory_metrics(device: torch.device) -> dict[str, float]:
    """GPU memory since the last call ({"gpu/peak_gib", "gpu/reserved_gib"}; peak counter reset); {} on the CPU."""
    if device.type != "cuda":
        return {}
    out = {"gpu/peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
           "gpu/reserved_gib": torch.cuda.memory_reserved(device) / 2**30}
    torch.cuda.reset_peak_memory_stats(device)
    return out


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (before reading a clock); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_device_arguments(parser, dtype: bool = True) -> None:
    """`--device` (and `--dtype`, the weights' dtype as loaded) for the commands that load a model to run it."""
    parser.add_argument("--device", default="auto", help=f"{DEVICES} (auto: CUDA when present)")
    if dtype:
        parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                            help="weights as loaded and computed (auto: bf16 on a GPU, fp32 on the CPU)")
