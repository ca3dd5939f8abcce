"""Helpers shared by the tests."""

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def structured_matrix(rows: int, cols: int, seed: int, spread: float = 1.5) -> torch.Tensor:
    """Gaussian weights times log-normal row and column scales: the imbalance SINQ is built for."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, cols, generator=gen)
    row_scale = (torch.randn(rows, 1, generator=gen) * spread).exp()
    col_scale = (torch.randn(1, cols, generator=gen) * spread).exp()
    return base * row_scale * col_scale
