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
SCHEMES = ("asymmetric", "symmetric", "nf")
TILINGS = ("1D", "2D")
_MIN_RANGE = 1e-4  # floor on a group's (max - min), SPEC §5

# NormalFloat codebooks (SPEC §5): NF4 is QLoRA's 16 levels, NF3 the reference's 8; both span [-1, 1] and hold 0.
NF_CODEBOOKS = {
    4: (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
        -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
        0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0),
    3: (-1.0, -0.5350227355957031, -0.2469314038753510, 0.0, 0.1833375245332718, 0.3819939494132996,
        0.6229856610298157, 1.0),
}  # fmt: skip
HQQ_LP_NORM = 0.7  # the lp error the HQQ-style zero-point refinement minimises (SPEC §5)


class QuantizedWeight(NamedTuple):
    codes: torch.Tensor  # (N, K) int32 in [0, 2**bits)
    scale: torch.Tensor  # (N, G) group scales s, in the storage dtype
    zero_point: torch.Tensor  # (N, G) zero-points z (integer-valued for uniform schemes without HQQ), storage dtype
    col_scale: torch.Tensor  # (K,) for 1D tiling, (B, K) with B = ceil(N / group_size) for 2D; storage dtype


def check_options(*, bits: int, group_size: int, method: str, scheme: str, tiling: str, hqq_steps: int = 0) -> None:
    """Raise ValueError naming the first invalid quantization option."""
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits!r} is not supported; choose one of {SUPPORTED_BITS}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or group_size % 32:
        raise ValueError(f"group_size={group_size!r} must be a positive multiple of 32 (e.g. 32, 64, 128)")
    for name, value, allowed in (("method", method, METHODS), ("scheme", scheme, SCHEMES), ("tiling", tiling, TILINGS)):
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not supported; choose one of {allowed}")
    if scheme == "nf" and bits not in NF_CODEBOOKS:
        raise ValueError(f"scheme='nf' has codebooks for bits {tuple(NF_CODEBOOKS)} (NF4, NF3), not bits={bits}")
    if scheme == "symmetric" and bits < 2:
        raise ValueError("scheme='symmetric' needs bits >= 2 (a 1-bit symmetric code has no positive level)")
    if isinstance(hqq_steps, bool) or not isinstance(hqq_steps, int) or hqq_steps < 0:
        raise ValueError(f"hqq_steps={hqq_steps!r} must be a non-negative integer (0 turns the refinement off)")
    if hqq_steps and scheme == "symmetric":
        raise ValueError("hqq_steps refines the zero-point, which scheme='symmetric' fixes; use 'asymmetric' or 'nf'")


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
    elif scheme == "symmetric":  # fixed mid-point zero
        half = 2 ** (bits - 1) - 1
        scale = groups.abs().amax(dim=-1).clamp_min(_MIN_RANGE) / half
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:  # nf: shift by the group mean, scale by max |A - mean|, so the group spans the codebook's [-1, 1]
        mean = groups.mean(dim=-1)
        scale = (groups - mean.unsqueeze(-1)).abs().amax(dim=-1).clamp_min(_MIN_RANGE / 2)
        zero = -mean / scale
    return scale, zero


def codebook(bits: int, scheme: str) -> torch.Tensor | None:
    """The levels codes index, (2**bits,) float32, for scheme "nf"; None for the uniform schemes (level = code)."""
    return torch.tensor(NF_CODEBOOKS[bits], dtype=torch.float32) if scheme == "nf" else None


def encode(x: torch.Tensor, bits: int, scheme: str) -> torch.Tensor:
    """Code of the level nearest to each value of ``x`` (in code units, i.e. W / t / s + z); int32, x's shape."""
    levels = codebook(bits, scheme)
    if levels is None:
        return x.round().clamp(0, 2**bits - 1).to(torch.int32)
    levels = levels.to(x.device)
    return torch.bucketize(x.contiguous(), (levels[1:] + levels[:-1]) / 2).to(torch.int32)


def level_values(codes: torch.Tensor, levels: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The value each code stands for, in ``dtype``: the code itself (uniform) or ``levels[code]`` (NF)."""
    if levels is None:
        return codes.to(dtype)
    return levels.to(device=codes.device, dtype=dtype)[codes]


def _residual(x: torch.Tensor, zero: torch.Tensor, bits: int, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Levels chosen for groups ``x`` (..., g) in code units with zero-points (...,), and x − (level − z)."""
    values = level_values(encode(x + zero.unsqueeze(-1), bits, scheme), codebook(bits, scheme), x.dtype)
    return values, x - values + zero.unsqueeze(-1)


def lp_error(x: torch.Tensor, zero: torch.Tensor, bits: int, scheme: str, p: float = HQQ_LP_NORM) -> torch.Tensor:
    """Σ_g |x − (level(Q) − z)|^p per group, Q = encode(x + z): the objective of the HQQ refinement; (...,).

    ``x`` (..., g) are groups in code units (divided by their scale), ``zero`` (...,) their zero-points.
    """
    return _residual(x, zero, bits, scheme)[1].abs().pow(p).sum(dim=-1)


def refine_zero_point(
    x: torch.Tensor, zero: torch.Tensor, bits: int, scheme: str, steps: int,
    *, p: float = HQQ_LP_NORM, beta: float = 10.0, kappa: float = 1.01,
) -> torch.Tensor:  # fmt: skip
    """HQQ-style proximal refinement of the zero-points (...,) of groups ``x`` (..., g), given in code units.

    Each step shrinks the residual with the lp (p < 1) proximal operator and refits z to what is left; the
    scale stays fixed, and working in code units makes ``beta`` independent of the weight's magnitude.
    Returns, per group, the zero of lowest :func:`lp_error` among the start and all iterates (the reference
    keeps the last iterate, which can be worse than where it started).
    """
    values, residual = _residual(x, zero, bits, scheme)
    best_zero, best_loss = zero, residual.abs().pow(p).sum(dim=-1)
    for _ in range(steps):
        magnitude = residual.abs().clamp_min(1e-12)
        shrunk = residual.sign() * (magnitude - magnitude.pow(p - 1) / beta).relu()
        zero = (values - x + shrunk).mean(dim=-1)
        beta *= kappa
        values, residual = _residual(x, zero, bits, scheme)
        loss = residual.abs().pow(p).sum(dim=-1)
        better = loss < best_loss
        best_zero, best_loss = torch.where(better, zero, best_zero), torch.where(better, loss, best_loss)
    return best_zero


def _check_col_scale(col_scale: torch.Tensor, shape: tuple[int, int], tiling: str) -> torch.Tensor:
    """A given column scale as (B, K) float32, after checking its shape and that it is finite and positive."""
    expected = (shape[1],) if tiling == "1D" else shape
    if tuple(col_scale.shape) != expected:
        raise ValueError(f"col_scale has shape {tuple(col_scale.shape)}; {tiling} tiling of this weight needs {expected}")
    col_scale = col_scale.float().reshape(shape)
    if not bool((torch.isfinite(col_scale) & (col_scale > 0)).all()):  # one host sync, at quantization time only
        raise ValueError("col_scale must be finite and positive everywhere")
    return col_scale


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
    hqq_steps: int = 0,
    col_scale: torch.Tensor | None = None,
) -> QuantizedWeight:
    """Quantize a 2-D float weight (N, K) on its own device, computing in fp32 (SPEC §3-§5).

    ``method="sinq"`` normalises each tile with :func:`sinkhorn_normalize` before group-wise quantization;
    ``method="rtn"`` quantizes the raw weight (same storage, t = 1). ``hqq_steps > 0`` then refines each
    group's zero-point with :func:`refine_zero_point`. A given ``col_scale`` t ((K,) for 1D, (B, K) for 2D)
    replaces the normalisation: W / t is quantized (row factors fold into the group scales either way, so
    this reproduces SINQ from its own t; A-SINQ and the bit allocator use it to run Sinkhorn once).
    Scales are rounded to the weight's dtype *before* the codes are computed, so the stored parameters
    reproduce the codes' intent exactly.
    """
    check_options(bits=bits, group_size=group_size, method=method, scheme=scheme, tiling=tiling, hqq_steps=hqq_steps)
    check_weight(weight)
    n, k = weight.shape
    w = weight.float()
    row_block = n if tiling == "1D" else group_size
    n_row_blocks = -(-n // row_block)
    given_col_scale = None if col_scale is None else _check_col_scale(col_scale, (n_row_blocks, k), tiling)
    scale = w.new_empty(n, -(-k // group_size))
    zero = torch.empty_like(scale)
    col_scale = w.new_empty(n_row_blocks, k)

    for r0, r1, tile_rows in _spans(n, row_block):
        for c0, c1, tile_cols in _spans(k, group_size):
            nb, ng = (r1 - r0) // tile_rows, (c1 - c0) // tile_cols
            tiles = w[r0:r1, c0:c1].reshape(nb, tile_rows, ng, tile_cols).transpose(1, 2)  # (nb, ng, R, C)
            b0 = r0 // row_block
            row_factors = tiles.new_ones(tiles.shape[:-1])
            if given_col_scale is not None:
                col_factors = given_col_scale[b0 : b0 + nb, c0:c1].reshape(nb, ng, tile_cols)
                tiles = tiles / col_factors.unsqueeze(-2)
            elif method == "sinq":
                tiles, row_factors, col_factors = sinkhorn_normalize(tiles, steps)
            else:
                col_factors = tiles.new_ones(tiles.shape[:-2] + tiles.shape[-1:])
            tile_scale, tile_zero = group_params(tiles, bits, scheme)  # (nb, ng, R)
            if hqq_steps:
                tile_zero = refine_zero_point(tiles / tile_scale.unsqueeze(-1), tile_zero, bits, scheme, hqq_steps)
            g0 = c0 // group_size
            scale[r0:r1, g0 : g0 + ng] = (tile_scale * row_factors).transpose(1, 2).reshape(r1 - r0, ng)
            zero[r0:r1, g0 : g0 + ng] = tile_zero.transpose(1, 2).reshape(r1 - r0, ng)
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
    codes = encode(w / t / s + z, bits, scheme)
    return QuantizedWeight(codes, scale, zero, col_scale)


def dequantize_weight(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    col_scale: torch.Tensor | None,
    group_size: int,
    dtype: torch.dtype | None = None,
    *,
    levels: torch.Tensor | None = None,
) -> torch.Tensor:
    """W = s ⊙ (Q − z) ⊙ t, or s ⊙ (levels[Q] − z) ⊙ t for NF codes, in ``dtype`` (default: the scale's); (N, K).

    ``col_scale=None`` leaves t out, for callers that apply it to the activations instead. ``levels`` is
    :func:`codebook` of the scheme the codes were made with (None for the uniform schemes).
    """
    dtype = dtype or scale.dtype
    n, k = codes.shape
    s = expand_groups(scale.to(dtype), group_size, k)
    z = expand_groups(zero_point.to(dtype), group_size, k)
    weight = (level_values(codes, levels, dtype) - z) * s
    if col_scale is None:
        return weight
    return weight * expand_col_scale(col_scale.to(dtype), group_size, n)


def quantization_error(weight: torch.Tensor, *, bits: int, group_size: int, scheme: str, **options) -> torch.Tensor:
    """W − Ŵ in fp32, (N, K), for ``quantize_weight(weight, bits=..., group_size=..., scheme=..., **options)``
    (NF codes decoded with their codebook): what A-SINQ and the bit allocator score their candidates with."""
    q = quantize_weight(weight, bits=bits, group_size=group_size, scheme=scheme, **options)
    return weight.float() - dequantize_weight(*q, group_size, torch.float32, levels=codebook(bits, scheme))
