"""Peer methods that SINQ is compared with. Not SINQ: these exist for the benchmarks.

HQQ is torchao's own implementation (``_choose_qparams_and_quantize_affine_hqq``: min-max init, then proximal
iterations on the zero-point minimising an lp error, p = 0.7), applied as fake quantization: each weight is
replaced by its HQQ dequantization, which is what the quality of an HQQ checkpoint depends on.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchao.quantization.quant_primitives import _choose_qparams_and_quantize_affine_hqq

from .config import skip_lm_head

__all__ = ["hqq_fake_quantize", "hqq_quantize_"]


def hqq_fake_quantize(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """HQQ quantize-dequantize a (N, K) weight in groups of ``group_size`` along K; same shape and dtype.

    As in our quantizer, when K is not a multiple of ``group_size`` the last group of each row is shorter.
    Scales and zero-points are kept in fp16, HQQ's storage dtype.
    """
    if weight.ndim != 2:
        raise ValueError(f"HQQ needs a 2-D weight, got shape {tuple(weight.shape)}")
    n, k = weight.shape
    full = k // group_size * group_size
    pieces = []
    for start, stop in ((0, full), (full, k)):
        if stop == start:
            continue
        width = min(group_size, stop - start)
        codes, scale, zero, _ = _choose_qparams_and_quantize_affine_hqq(
            weight[:, start:stop], nbits=bits, group_size=width, axis=1, compute_dtype=torch.float16,
            device=weight.device, raw_output=True,
        )  # fmt: skip
        groups = codes.float().reshape(n, -1, width)  # (N, groups, width); scale, zero: (N, groups)
        dequantized = (groups - zero.float().unsqueeze(-1)) * scale.float().unsqueeze(-1)
        pieces.append(dequantized.reshape(n, stop - start))
    return torch.cat(pieces, dim=1).to(weight.dtype)


@torch.no_grad()
def hqq_quantize_(model: torch.nn.Module, bits: int, group_size: int,
                  filter_fn: Callable[[torch.nn.Module, str], bool] = skip_lm_head) -> torch.nn.Module:  # fmt: skip
    """Replace, in place, every weight of the ``nn.Linear``s selected by ``filter_fn`` by its HQQ fake-quant."""
    for name, module in model.named_modules():
        if filter_fn(module, name):
            try:
                module.weight.copy_(hqq_fake_quantize(module.weight, bits, group_size))
            except (ValueError, RuntimeError) as error:
                raise type(error)(f"cannot HQQ-quantize {name}: {error}") from error
    return model
