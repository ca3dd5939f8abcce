"""Sinkhorn-style dual-scale normalisation of weight tiles (SPEC §2-§3).

Everything here is batched: a tensor of shape (..., R, C) is a batch of R x C tiles, each normalised on its
own, all at once, with a fixed number of steps and no data-dependent control flow (no host sync).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

try:
    from .kernels.sinkhorn_kernel import MAX_TILE_COLUMNS, sinkhorn_factors
except ImportError:  # CPU-only installs have no Triton; the PyTorch path below is used everywhere.
    sinkhorn_factors = None

SINKHORN_STEPS = 16
_STD_CLAMP = (1e-3, 1e3)
_STEP_CLAMP = (0.7, 2.0)
_LOG_CLIP = (-0.3, 10.0)


class Normalized(NamedTuple):
    """Result of :func:`sinkhorn_normalize`; ``tiles ≈ normalized * row_factors[..., :, None] * col_factors[..., None, :]``."""

    normalized: torch.Tensor  # (..., R, C) float32
    row_factors: torch.Tensor  # (..., R) float32, exp(u*)
    col_factors: torch.Tensor  # (..., C) float32, exp(v*)


def row_col_std(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unbiased standard deviation of every row (..., R) and every column (..., C) of each tile.

    A tile with a single column (row) has no spread along it; its row (column) std is 0, not NaN.
    """
    rows, cols = tiles.shape[-2:]
    if tiles.device.type == "cpu":  # torch.std's CPU kernel is ~15x slower than these plain reductions
        return _two_pass_std(tiles, -1, cols), _two_pass_std(tiles, -2, rows)
    row_std = tiles.std(dim=-1, correction=1 if cols > 1 else 0)
    col_std = tiles.std(dim=-2, correction=1 if rows > 1 else 0)
    return row_std, col_std


def _two_pass_std(tiles: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """The same unbiased std (0 for a single element) by the two-pass formula: mean first, then squared deviations."""
    deviations = tiles - tiles.mean(dim=dim, keepdim=True)
    return (deviations.square().sum(dim=dim) / max(n - 1, 1)).sqrt()


def _imbalance(row_std: torch.Tensor, col_std: torch.Tensor) -> torch.Tensor:
    high = torch.maximum(row_std.amax(dim=-1), col_std.amax(dim=-1))
    low = torch.minimum(row_std.amin(dim=-1), col_std.amin(dim=-1))
    return high / low.clamp_min(1e-12)


def imbalance(tiles: torch.Tensor) -> torch.Tensor:
    """max / min over all row and column stds of each tile (SPEC §2); shape (...,)."""
    return _imbalance(*row_col_std(tiles.float()))


def _log_step(std: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    return (std.clamp(*_STD_CLAMP) / tau.unsqueeze(-1)).clamp(*_STEP_CLAMP).log()


def sinkhorn_normalize(tiles: torch.Tensor, steps: int = SINKHORN_STEPS) -> Normalized:
    """Normalise each R x C tile of ``tiles`` (..., R, C) by row and column factors, in fp32 (SPEC §3).

    Rows and columns are updated together from the same state; the first rise of the imbalance freezes the
    state for good, and the state of lowest imbalance seen (ties: the later one) is returned. On the GPU one
    Triton kernel runs all steps (sinq_ao.kernels.sinkhorn_kernel); CPU tensors, tiles wider than
    MAX_TILE_COLUMNS and tiles of one row or column take the PyTorch path, which is the reference. (A single row
    or column has no spread along it, so the imbalance is max std / 1e-12 and the first rise is decided by rounding
    noise: on an H100 the kernel's approximate exp/log froze such a tile at another step than the reference.)
    """
    tiles = tiles.float()
    kernel = tiles.is_cuda and sinkhorn_factors is not None
    if kernel and min(tiles.shape[-2:]) > 1 and tiles.shape[-1] <= MAX_TILE_COLUMNS:
        row_factors, col_factors = sinkhorn_factors(tiles, steps, _STD_CLAMP, _STEP_CLAMP, _LOG_CLIP)
    else:
        row_factors, col_factors = _reference_factors(tiles, steps)
    normalized = tiles / row_factors.unsqueeze(-1) / col_factors.unsqueeze(-2)
    return Normalized(normalized, row_factors, col_factors)


def _reference_factors(tiles: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row factors exp(u*) (..., R) and column factors exp(v*) (..., C) of float32 ``tiles``, in plain PyTorch."""
    row_std, col_std = row_col_std(tiles)
    tau = torch.minimum(row_std.clamp(*_STD_CLAMP).amin(dim=-1), col_std.clamp(*_STD_CLAMP).amin(dim=-1)) + 1e-6
    u = tiles.new_zeros(tiles.shape[:-1])
    v = tiles.new_zeros(tiles.shape[:-2] + tiles.shape[-1:])
    best_u, best_v = u, v
    best_imbalance = _imbalance(row_std, col_std)
    frozen = torch.zeros_like(best_imbalance, dtype=torch.bool)
    for _ in range(steps):
        scaled = tiles / u.exp().unsqueeze(-1) / v.exp().unsqueeze(-2)
        row_std, col_std = row_col_std(scaled)
        current = _imbalance(row_std, col_std)
        improved = current <= best_imbalance
        best_imbalance = torch.where(improved, current, best_imbalance)
        best_u = torch.where(improved.unsqueeze(-1), u, best_u)
        best_v = torch.where(improved.unsqueeze(-1), v, best_v)
        frozen = frozen | ~improved  # after the update above, "not improved" is exactly "rose above the best"
        keep = frozen.unsqueeze(-1)
        u = torch.where(keep, u, (u + _log_step(row_std, tau)).clamp(*_LOG_CLIP))
        v = torch.where(keep, v, (v + _log_step(col_std, tau)).clamp(*_LOG_CLIP))
    return best_u.exp(), best_v.exp()
