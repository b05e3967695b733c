"""oneDNN pre-packed weights for the in-process engine's bf16 linear layers on a CPU.

A bf16 `F.linear` on a CPU runs oneDNN's matmul, which re-lays-out (packs) the weight for the matrix
units on every call: at decode sizes (64 rows x 512 -> 1536) a large part of the call. Packing each weight
once per weight version and calling oneDNN's linear on the packed copy is 1.1-1.6x faster per call and the
engine's generate ~0.9x the time (25M benchmark model, bf16, AMX; `benchmarks/packed_linear.py`). The
numbers agree with F.linear to bf16 rounding (the bias is added inside the kernel: one rounding, not two):
over 64 x 64 sampled tokens of that model, logprobs differ by 0.001 nats on average (max 0.014).

    packed = PackedLinears(model)     # nothing to do (enabled False) off a CPU, in fp32, or without bf16 oneDNN
    with packed.active(batch_hint=64):
        model(...)                     # nn.Linear layers run on packed weights, repacked when changed in place

Only inside `active()`: a model shared with a trainer never trains through these forwards. A weight changed
in place (the engine's load_weights, or anything else) is noticed by its tensor version counter and repacked.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch


def _bf16_onednn() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # a build without the op
        return False


class PackedLinears:
    def __init__(self, model):
        self.layers = [m for m in model.modules() if type(m) is torch.nn.Linear
                       and m.weight.device.type == "cpu" and m.weight.dtype == torch.bfloat16]
        self.enabled = bool(self.layers) and _bf16_onednn()
        self._packed: list[torch.Tensor | None] = [None] * len(self.layers)  # oneDNN-layout copies
        self._keys: list[tuple[int, int] | None] = [None] * len(self.layers)  # (data_ptr, version) when packed
        self._lock, self._depth = threading.Lock(), 0  # generate calls inside active() right now

    def _refresh(self, batch_hint: int) -> None:
        """Pack every layer whose weight changed (in place, or replaced) since it was last packed."""
        for i, m in enumerate(self.layers):
            key = (m.weight.data_ptr(), m.weight._version)
            if self._keys[i] != key:
                self._packed[i] = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch_hint)
                self._keys[i] = key

    def _forward(self, i: int):
        layer, packed = self.layers[i], self._packed[i]

        def forward(x: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, layer.bias, "none", [], "")
        return forward

    @contextmanager
    def active(self, batch_hint: int):
        """Within: every bf16 nn.Linear of the model computes with its packed weight (no autograd). Re-entrant and
        thread-safe: the first caller in packs and installs the forwards, the last one out removes them."""
        if not self.enabled:
            yield
            return
        with self._lock:
            if self._depth == 0:
                self._refresh(batch_hint)
                for i, m in enumerate(self.layers):
                    m.forward = self._forward(i)  # an instance attribute shadows nn.Linear.forward
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for m in self.layers:
                        del m.forward  # back to nn.Linear.forward
