"""Block-wise FP8 (e4m3) weights: one float32 scale per 128x128 block, as vLLM and SGLang read them.

    q, scale_inv = quantize_blockwise(w)        # w [out, in] -> q float8_e4m3fn [out, in],
                                                #   scale_inv float32 [ceil(out/128), ceil(in/128)]
    w_hat = dequantize_blockwise(q, scale_inv)  # w_hat[i, j] = q[i, j] * scale_inv[i // 128, j // 128]

This is the layout of a checkpoint with `quantization_config.weight_block_size = [128, 128]`: the tensor
`<name>` holds q and `<name>_scale_inv` holds scale_inv (the name says "inverse" because the kernels
multiply by it). Each block's scale is its absolute maximum / 448 (the largest e4m3 value), so the block's
largest element maps to +-448 and is exact. Edge blocks of shapes that are not multiples of 128 are
smaller (padded logically, not in memory). Stacked expert tensors [E, out, in] quantize each expert's
matrix on its own: scale_inv is then [E, ceil(out/128), ceil(in/128)].

Error: e4m3 keeps 3 mantissa bits, so rounding x = w / scale to the nearest e4m3 value costs at most half
a step, 2^(floor(log2 |x|) - 4) (never below the subnormal step's half, 2^-10). Per element:
|w_hat - w| <= scale * 2^(max(floor(log2 |x|), -6) - 4), i.e. <= 2^-4 |w| for normal values and at most
amax / 28 anywhere in the block (x in [256, 448] has step 32). `error_bound` computes it exactly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BLOCK = 128
FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_DTYPE = torch.float8_e4m3fn

# Linear weights that go to FP8: attention q/k/v/o, the dense first layer's MLP, shared experts
# (all [out, in]), and the routed experts, which transformers 5 fuses into [E, 2I, H] and [E, H, I]
# tensors (on disk they are per expert, `mlp.experts.<e>.gate_proj.weight`: the first pattern).
# Embeddings, norms, the router (`mlp.gate.weight`, `e_score_correction_bias`), biases and lm_head stay.
_LINEAR = re.compile(r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$")
_FUSED_EXPERTS = re.compile(r"\.experts\.(gate_up_proj|down_proj)$")


def is_quantizable(name: str, tensor: torch.Tensor) -> bool:
    """True for the linear projection weights that FP8 rollout quantizes; False for everything that stays."""
    if not tensor.is_floating_point():
        return False
    if _LINEAR.search(name):
        return tensor.dim() == 2
    if _FUSED_EXPERTS.search(name):
        return tensor.dim() == 3
    return False


@dataclass(frozen=True, eq=False)  # tensors have no truth value: compare q and scale_inv yourself
class Fp8Weight:
    """One quantized weight: q float8_e4m3fn [..., out, in] and scale_inv float32 [..., R, C] (R, C blocks).

    Unpacks like a pair (`q, scale_inv = w`) and pickles (ray.put, broadcast_object_list) through a uint8
    view: torch 2.13 cannot unpickle float8 tensors directly.
    """

    q: torch.Tensor
    scale_inv: torch.Tensor

    def __iter__(self):
        return iter((self.q, self.scale_inv))

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @property
    def nbytes(self) -> int:
        return self.q.numel() * self.q.element_size() + self.scale_inv.numel() * self.scale_inv.element_size()

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return dequantize_blockwise(self.q, self.scale_inv, dtype)

    def __reduce__(self):
        return _fp8_from_bits, (self.q.view(torch.uint8), self.scale_inv)


def _fp8_from_bits(bits: torch.Tensor, scale_inv: torch.Tensor) -> Fp8Weight:
    return Fp8Weight(bits.view(FP8_DTYPE), scale_inv)


def scale_shape(shape: torch.Size | tuple[int, ...], block: int = BLOCK) -> tuple[int, ...]:
    """The scale_inv shape for a weight of `shape` [..., out, in]: [..., ceil(out/block), ceil(in/block)]."""
    *lead, rows, cols = shape
    return (*lead, -(-rows // block), -(-cols // block))


def _expand(scale: torch.Tensor, rows: int, cols: int, block: int) -> torch.Tensor:
    """[..., R, C] per-block values -> [..., rows, cols] per-element values."""
    return scale.repeat_interleave(block, -2)[..., :rows, :].repeat_interleave(block, -1)[..., :cols]


def _tiles(x: torch.Tensor, block: int) -> torch.Tensor:
    """[..., rows, cols] -> [..., R, block, C, block], zero-padded (a copy) only if a dim is not a multiple."""
    *lead, rows, cols = x.shape
    n_r, n_c = -(-rows // block), -(-cols // block)
    if rows % block or cols % block:
        x = F.pad(x, (0, n_c * block - cols, 0, n_r * block - rows))
    return x.reshape(*lead, n_r, block, n_c, block)


def _untile(tiles: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of _tiles: [..., R, block, C, block] -> [..., rows, cols], contiguous."""
    *lead, n_r, block, n_c, _ = tiles.shape
    return tiles.reshape(*lead, n_r * block, n_c * block)[..., :rows, :cols].contiguous()


@torch.no_grad()
def quantize_blockwise(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., out, in] float -> (q float8_e4m3fn [..., out, in], scale_inv float32 [..., R, C]).

    An all-zero block gets scale 1 (q = 0, exact). Raises ValueError on inf/NaN: a diverged weight must
    not be shipped to the rollout engines as a silently saturated one.
    """
    if w.dim() < 2 or not w.is_floating_point():
        raise ValueError(f"quantize_blockwise: need a float tensor [..., out, in], got {w.dtype} {tuple(w.shape)}")
    rows, cols = w.shape[-2:]
    tiles = _tiles(w.float(), block)  # zero padding never changes a block's absolute maximum
    amax = tiles.abs().amax(dim=(-3, -1))  # [..., R, C]; inf or NaN anywhere in a block propagates here
    if not torch.isfinite(amax).all():
        raise ValueError(f"quantize_blockwise: weight {tuple(w.shape)} contains inf or NaN")
    # floor at the smallest normal float32 so that x / scale stays finite for denormal-only blocks
    scale = torch.where(amax > 0, amax / FP8_MAX, 1.0).clamp(min=torch.finfo(torch.float32).tiny)
    x = (tiles / scale[..., :, None, :, None]).clamp_(-FP8_MAX, FP8_MAX)
    return _untile(x.to(FP8_DTYPE), rows, cols), scale


@torch.no_grad()
def dequantize_blockwise(q: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                         block: int = BLOCK) -> torch.Tensor:
    """(q [..., out, in], scale_inv [..., R, C]) -> q * scale_inv per block, in `dtype` (computed in float32)."""
    if tuple(scale_inv.shape) != scale_shape(q.shape, block):
        raise ValueError(f"dequantize_blockwise: scale_inv {tuple(scale_inv.shape)} does not fit weight "
                         f"{tuple(q.shape)} with {block}x{block} blocks (want {scale_shape(q.shape, block)})")
    rows, cols = q.shape[-2:]
    tiles = _tiles(q.float(), block).mul_(scale_inv.float()[..., :, None, :, None])
    return _untile(tiles, rows, cols).to(dtype)


def error_bound(w: torch.Tensor, scale_inv: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Per-element bound on |dequantize_blockwise(quantize_blockwise(w), float32) - w| (float32, w's shape).

    Half an e4m3 step at x = w / scale: scale * 2^(e - 4), e = max(floor(log2 |x|), -6) (below 2^-6 the
    subnormal step 2^-9 applies), plus a few float32 roundings (division, product): 2^-22 |w|.
    """
    rows, cols = w.shape[-2:]
    scale = _expand(scale_inv.float(), rows, cols, block)
    x = (w.float() / scale).abs()
    _, exp = torch.frexp(x)  # x = m * 2^exp, m in [0.5, 1): floor(log2 x) = exp - 1
    e = torch.where(x > 0, exp - 1, -6).clamp(min=-6)
    half_step = torch.exp2(e.float() - 4)
    return scale * half_step + w.float().abs() * 2.0 ** -22
