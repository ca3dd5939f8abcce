"""Automatic mixed precision: choose bits per linear layer under an average-bits budget, emit an ``FqnToConfig``.

Sensitivity of a layer at b bits is the relative squared error of its output,

    E ||(W − Ŵ_b) x||² / E ||W x||² ≈ Σ_k E[x_k²] ||(W − Ŵ_b)[:, k]||² / Σ_k E[x_k²] ||W[:, k]||²

(E[x_k²] = 1 without calibration data), summed over layers as if the errors were independent. Relative,
because layers' outputs live on different scales: the absolute error sent o_proj/down_proj (small inputs
in a random Llama) to 2 bits and did worse than uniform 3 bits. Sinkhorn runs once per layer (t does not
depend on the bit width); each candidate width is then one cheap quantization with that t.

Memory is counted exactly as a ``SINQTensor`` stores it: packed codes plus the scales, zero-points and column
scale. The budget for ``average_bits`` is what the same layers would take with ``average_bits`` code bits per
weight and the same group size, so "3.5 bits" sits exactly half-way in memory between uniform 3 and 4 bits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torchao.quantization import FqnToConfig
from tqdm.auto import tqdm

from .calibration import collect_inputs, linear_blocks
from .config import SINQConfig, skip_lm_head
from .packing import packed_columns
from .quantize import quantization_error, quantize_weight

__all__ = ["MixedPrecisionPlan", "allocate_bits", "layer_errors", "plan_mixed_precision", "storage_bytes"]

CANDIDATE_BITS = (2, 3, 4, 5, 6, 8)


def storage_bytes(out_features: int, in_features: int, bits: float, group_size: int, tiling: str = "1D",
                  dtype: torch.dtype = torch.bfloat16) -> float:  # fmt: skip
    """Bytes of a SINQTensor: codes (N x ceil(K/32)*bits int32 words), s and z (N x G), t (K or B x K).

    ``bits`` may be fractional, for a budget.
    """
    item = torch.empty((), dtype=dtype).element_size()
    groups = -(-in_features // group_size)
    row_blocks = 1 if tiling == "1D" else -(-out_features // group_size)
    codes = out_features * packed_columns(in_features, 1) * bits * 4
    return codes + (2 * out_features * groups + row_blocks * in_features) * item


def layer_errors(weight: torch.Tensor, config: SINQConfig, candidate_bits, channel_weight=None) -> dict[int, float]:
    """Σ_k c_k ||(W − Ŵ_b)[:, k]||² / Σ_k c_k ||W[:, k]||² for each candidate b.

    weight (N, K); channel_weight c (K,) is E[x_k²] of the layer's inputs, or None (c = 1).
    """
    options = config.quantize_options()
    col_scale = quantize_weight(weight, **options).col_scale
    w = weight.float()
    c = torch.ones(w.shape[1], device=w.device) if channel_weight is None else channel_weight.float()
    energy = (w.square().sum(dim=0) * c).sum().clamp_min(1e-30).item()
    errors = {}
    for bits in candidate_bits:
        diff = quantization_error(weight, **(options | {"bits": bits}), col_scale=col_scale)
        errors[bits] = (diff.square().sum(dim=0) * c).sum().item() / energy
    return errors


def allocate_bits(errors: dict[str, dict[int, float]], sizes: dict[str, dict[int, float]],
                  budget: float) -> dict[str, int]:  # fmt: skip
    """Bits per layer minimising Σ errors[layer][bits] with Σ sizes[layer][bits] <= budget (greedy).

    Every layer starts at its smallest candidate; the upgrade with the largest error drop per extra byte
    that still fits is applied until none is left. Raises ValueError when even the smallest does not fit.
    """
    bits = {name: min(options) for name, options in errors.items()}
    used = sum(sizes[name][b] for name, b in bits.items())
    if used > budget:
        raise ValueError(f"the budget ({budget:.0f} bytes) is below the smallest candidate for every layer "
                         f"({used:.0f} bytes); raise average_bits or add a smaller candidate")  # fmt: skip
    while True:
        best, best_gain = None, 0.0
        for name, current in bits.items():
            for upgrade in errors[name]:
                extra = sizes[name][upgrade] - sizes[name][current]
                if upgrade <= current or used + extra > budget:
                    continue
                gain = (errors[name][current] - errors[name][upgrade]) / extra
                if gain > best_gain:
                    best, best_gain = (name, upgrade), gain
        if best is None:
            return bits
        name, upgrade = best
        used += sizes[name][upgrade] - sizes[name][bits[name]]
        bits[name] = upgrade


@dataclass
class MixedPrecisionPlan:
    """The chosen bits per layer, the config that applies them, and the memory and time it took to decide."""

    bits: dict[str, int]
    config: FqnToConfig
    bytes: float  # storage of the planned layers
    budget: float  # what uniform ``average_bits`` would take
    effective_bits: float  # 8 * bytes / weights, scales, zero-points and column scales included
    errors: dict[str, dict[int, float]]
    seconds: float


def plan_mixed_precision(
    model: torch.nn.Module,
    average_bits: float,
    config: SINQConfig | None = None,
    *,
    candidate_bits=CANDIDATE_BITS,
    tokens: torch.Tensor | None = None,
    filter_fn: Callable = skip_lm_head,
    batch_size: int = 4,
    progress: bool = True,
) -> MixedPrecisionPlan:
    """Choose bits per selected linear for an average of ``average_bits`` code bits per weight.

    ``config`` sets everything but the bits (group size, scheme, tiling, ...). With calibration ``tokens``
    (n, L) the errors are weighted by each input channel's E[x²] (one forward pass). Apply the result with
    ``quantize_(model, plan.config, filter_fn=None)`` (torchao requires filter_fn=None with an FqnToConfig;
    the plan names every layer it quantizes).
    """
    start = time.perf_counter()
    config = config or SINQConfig()
    candidate_bits = tuple(sorted(set(candidate_bits)))
    for bits in candidate_bits:
        replace(config, bits=bits)  # validates each candidate with the config's scheme
    if not isinstance(average_bits, (int, float)) or not candidate_bits[0] <= average_bits <= candidate_bits[-1]:
        raise ValueError(f"average_bits={average_bits!r} must lie between the smallest and largest candidate "
                         f"bits {candidate_bits}")  # fmt: skip
    blocks = linear_blocks(model, filter_fn)
    linears = {name: module for block in blocks.values() for name, module in block.items()}
    if not linears:
        raise ValueError("filter_fn selected no nn.Linear to quantize")
    weights = {}
    if tokens is not None:
        inputs = collect_inputs(model, tokens, linears, None, batch_size=batch_size, max_rows=0)
        weights = {name: record.sq_sum / record.count for name, record in inputs.items()}
    errors, sizes = {}, {}
    for name, module in tqdm(linears.items(), desc="bit allocation", unit="layer", disable=not progress):
        weight = module.weight.detach()
        errors[name] = layer_errors(weight, config, candidate_bits, weights.get(name))
        sizes[name] = {b: storage_bytes(*weight.shape, b, config.group_size, config.tiling, weight.dtype)
                       for b in candidate_bits}  # fmt: skip
    budget = sum(storage_bytes(*m.weight.shape, average_bits, config.group_size, config.tiling, m.weight.dtype)
                 for m in linears.values())  # fmt: skip
    bits = allocate_bits(errors, sizes, budget)
    used = sum(sizes[name][b] for name, b in bits.items())
    n_weights = sum(m.weight.numel() for m in linears.values())
    fqn_config = FqnToConfig({name: replace(config, bits=b) for name, b in bits.items()})
    return MixedPrecisionPlan(bits, fqn_config, used, budget, 8 * used / n_weights, errors, time.perf_counter() - start)
