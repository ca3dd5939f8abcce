"""Weight quantization: W ≈ s ⊙ (Q − z) ⊙ t (SPEC §1, §4, §5).

``quantize_weight`` turns a float (N, K) weight into integer codes Q (N, K), group scales s and zero-points z
(N, G) with G = ceil(K / group_size), and column scales t: (K,) for 1D tiling, (ceil(N / group_size), K) for
2D tiling. It knows nothing of tensor subclasses or models.

Ragged shapes: when K (or, for 2D tiling, N) is not a multiple of ``group_size``, the last group along it is
shorter (its own, narrower tile). No padding is applied and every weight is quantized with the configured
group size; the stored scale tensors simply have a last column covering fewer weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .packing import SUPPORTED_BITS
from .sinkhorn import SINKHORN_STEPS, sinkhorn_normalize

METHODS = ("sinq", "rtn")
SCHEMES = ("asymmetric", "symmetric")
TILINGS = ("1D", "2D")
_MIN_RANGE = 1e-4  # floor on a group's (max - min), SPEC §5


class QuantizedWeight(NamedTuple):
    codes: torch.Tensor  # (N, K) int32 in [0, 2**bits)
    scale: torch.Tensor  # (N, G) group scales s, in the storage dtype
    zero_point: torch.Tensor  # (N, G) zero-points z (integer-valued for uniform schemes), storage dtype
    col_scale: torch.Tensor  # (K,) for 1D tiling, (B, K) with B = ceil(N / group_size) for 2D; storage dtype


def check_options(*, bits: int, group_size: int, method: str, scheme: str, tiling: str) -> None:
    """Raise ValueError naming the first invalid quantization option."""
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits!r} is not supported; choose one of {SUPPORTED_BITS}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or group_size % 32:
        raise ValueError(f"group_size={group_size!r} must be a positive multiple of 32 (e.g. 32, 64, 128)")
    for name, value, allowed in (("method", method, METHODS), ("scheme", scheme, SCHEMES), ("tiling", tiling, TILINGS)):
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not supported; choose one of {allowed}")


def check_weight(weight: torch.Tensor) -> None:
    """Raise ValueError if ``weight`` cannot be quantized: not 2-D, not floating point, empty, or not finite."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError(f"weight is empty (shape {tuple(weight.shape)})")
    bad = (~torch.isfinite(weight)).sum().item()  # one host sync, at quantization time only
    if bad:
        raise ValueError(
            f"weight contains {bad} NaN/Inf value(s) out of {weight.numel()}; "
            "fix or drop this layer before quantizing"
        )


def _spans(size: int, block: int) -> list[tuple[int, int, int]]:
    """(start, stop, tile_length) of the run of full blocks and of the shorter tail, if any."""
    full = size // block * block
    spans = [(0, full, block)] if full else []
    if size > full:
        spans.append((full, size, size - full))
    return spans


def group_params(groups: torch.Tensor, bits: int, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point of every group (the last axis) of ``groups``; shapes groups.shape[:-1]."""
    max_code = 2**bits - 1
    if scheme == "asymmetric":
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scale = (high - low).clamp_min(_MIN_RANGE) / max_code
        zero = -(low / scale).round()
    else:  # symmetric: fixed mid-point zero
        half = max(2 ** (bits - 1) - 1, 1)
        scale = groups.abs().amax(dim=-1).clamp_min(_MIN_RANGE) / half
        zero = torch.full_like(scale, 2 ** (bits - 1))
    return scale, zero


def expand_groups(params: torch.Tensor, group_size: int, in_features: int) -> torch.Tensor:
    """Per-group parameters (N, G) -> per-weight (N, K)."""
    return params.repeat_interleave(group_size, dim=-1)[..., :in_features]


def expand_col_scale(col_scale: torch.Tensor, group_size: int, out_features: int) -> torch.Tensor:
    """Column scales (K,) or per-row-block (B, K) -> a tensor broadcastable to (N, K)."""
    if col_scale.ndim == 1:
        return col_scale
    return col_scale.repeat_interleave(group_size, dim=0)[:out_features]


def quantize_weight(
    weight: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int = 64,
    method: str = "sinq",
    scheme: str = "asymmetric",
    tiling: str = "1D",
    steps: int = SINKHORN_STEPS,
) -> QuantizedWeight:
    """Quantize a 2-D float weight (N, K) on its own device, computing in fp32 (SPEC §3-§5).

    ``method="sinq"`` normalises each tile with :func:`sinkhorn_normalize` before group-wise quantization;
    ``method="rtn"`` quantizes the raw weight (same storage, t = 1). Scales are rounded to the weight's dtype
    *before* the codes are computed, so the stored parameters reproduce the codes' intent exactly.
    """
    check_options(bits=bits, group_size=group_size, method=method, scheme=scheme, tiling=tiling)
    check_weight(weight)
    n, k = weight.shape
    w = weight.float()
    row_block = n if tiling == "1D" else group_size
    n_row_blocks = -(-n // row_block)
    scale = w.new_empty(n, -(-k // group_size))
    zero = torch.empty_like(scale)
    col_scale = w.new_empty(n_row_blocks, k)

    for r0, r1, tile_rows in _spans(n, row_block):
        for c0, c1, tile_cols in _spans(k, group_size):
            nb, ng = (r1 - r0) // tile_rows, (c1 - c0) // tile_cols
            tiles = w[r0:r1, c0:c1].reshape(nb, tile_rows, ng, tile_cols).transpose(1, 2)  # (nb, ng, R, C)
            if method == "sinq":
                tiles, row_factors, col_factors = sinkhorn_normalize(tiles, steps)
            else:
                row_factors = tiles.new_ones(tiles.shape[:-1])
                col_factors = tiles.new_ones(tiles.shape[:-2] + tiles.shape[-1:])
            tile_scale, tile_zero = group_params(tiles, bits, scheme)  # (nb, ng, R)
            g0 = c0 // group_size
            scale[r0:r1, g0 : g0 + ng] = (tile_scale * row_factors).transpose(1, 2).reshape(r1 - r0, ng)
            zero[r0:r1, g0 : g0 + ng] = tile_zero.transpose(1, 2).reshape(r1 - r0, ng)
            b0 = r0 // row_block
            col_scale[b0 : b0 + nb, c0:c1] = col_factors.reshape(nb, c1 - c0)

    dtype = weight.dtype
    # A scale that underflows the storage dtype would divide by zero below; the smallest normal is harmless.
    scale = scale.to(dtype).clamp_min(torch.finfo(dtype).tiny)
    zero = zero.to(dtype)
    col_scale = col_scale.to(dtype)
    if tiling == "1D":
        col_scale = col_scale.squeeze(0)

    t = expand_col_scale(col_scale.float(), group_size, n)
    s = expand_groups(scale.float(), group_size, k)
    z = expand_groups(zero.float(), group_size, k)
    codes = (w / t / s + z).round().clamp(0, 2**bits - 1).to(torch.int32)
    return QuantizedWeight(codes, scale, zero, col_scale)


def dequantize_weight(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    col_scale: torch.Tensor | None,
    group_size: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """W = s ⊙ (Q − z) ⊙ t, computed in ``dtype`` (default: the scale's dtype); shape (N, K).

    ``col_scale=None`` leaves t out, for callers that apply it to the activations instead.
    """
    dtype = dtype or scale.dtype
    n, k = codes.shape
    s = expand_groups(scale.to(dtype), group_size, k)
    z = expand_groups(zero_point.to(dtype), group_size, k)
    weight = (codes.to(dtype) - z) * s
    if col_scale is None:
        return weight
    return weight * expand_col_scale(col_scale.to(dtype), group_size, n)
