"""``SINQConfig``: the torchao workflow config that turns ``nn.Linear`` weights into ``SINQTensor``s."""

from __future__ import annotations

import types
from dataclasses import dataclass
from functools import partial

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization.transform_module import register_quantize_module_handler

from .quantize import check_options
from .sinkhorn import SINKHORN_STEPS
from .tensor import SINQTensor, _mark_static

__all__ = ["SINQConfig", "sinq_config", "skip_lm_head"]


@dataclass
class SINQConfig(AOBaseConfig):
    """Weight-only SINQ quantization for ``torchao.quantization.quantize_``.

    Args:
        bits: code width, 1..8 (2, 3, 4, 5, 6, 8 are the usual choices).
        group_size: weights per scale/zero-point group along in_features; a positive multiple of 32.
        tiling: "1D" (tiles of all rows x group_size columns; t is one activation pre-scale) or "2D"
            (group_size x group_size tiles; t per row block, applied to the weight).
        method: "sinq" (Sinkhorn-normalised, the default) or "rtn" (plain round-to-nearest, same storage).
        scheme: "asymmetric" (default), "symmetric" (bits >= 2) or "nf" (NormalFloat codebook; bits 4 = NF4,
            bits 3 = NF3).
        steps: Sinkhorn iterations (SPEC §3 fixes 16).
        hqq_steps: HQQ-style proximal refinement steps of the zero-points after normalisation (0 = off,
            20 is HQQ's choice); each group keeps its best iterate. Not with scheme="symmetric".

    Like every torchao config, ``quantize_(model, SINQConfig())`` quantizes each ``nn.Linear`` it is given,
    ``lm_head`` included; pass ``filter_fn=sinq_ao.skip_lm_head`` to keep the output head in high precision
    (as the SINQ paper and the Hugging Face path do).
    """

    bits: int = 4
    group_size: int = 64
    tiling: str = "1D"
    method: str = "sinq"
    scheme: str = "asymmetric"
    steps: int = SINKHORN_STEPS
    hqq_steps: int = 0

    def __post_init__(self):
        check_options(bits=self.bits, group_size=self.group_size, method=self.method, scheme=self.scheme,
                      tiling=self.tiling, hqq_steps=self.hqq_steps)  # fmt: skip
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps={self.steps!r} must be a non-negative integer")

    def quantize_options(self) -> dict:
        """The keyword arguments of :func:`sinq_ao.quantize.quantize_weight` this config stands for."""
        return dict(bits=self.bits, group_size=self.group_size, method=self.method, scheme=self.scheme,
                    tiling=self.tiling, steps=self.steps, hqq_steps=self.hqq_steps)  # fmt: skip


def sinq_config(**kwargs) -> SINQConfig:
    """Lowercase convenience: ``sinq_config(bits=3)`` is ``SINQConfig(bits=3)``."""
    return SINQConfig(**kwargs)


def skip_lm_head(module: torch.nn.Module, fqn: str) -> bool:
    """A ``quantize_`` filter: every ``nn.Linear`` except the output head (``lm_head``)."""
    return isinstance(module, torch.nn.Linear) and fqn.split(".")[-1] != "lm_head"


def _extra_repr(module: torch.nn.Module, *, original, parameter_name: str) -> str:
    return f"{original()}, {parameter_name}=SINQTensor({getattr(module, parameter_name)._quantization_type()})"


@register_quantize_module_handler(SINQConfig)
def _sinq_transform(module: torch.nn.Module, config: SINQConfig, *, parameter_name: str = "weight"):
    weight = getattr(module, parameter_name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{module!r} has no tensor parameter {parameter_name!r} to quantize with SINQ")
    if isinstance(weight, SINQTensor):
        raise ValueError(f"{module!r}.{parameter_name} is already a SINQTensor; quantize the original model")
    try:
        quantized = SINQTensor.from_hp(weight.detach(), **config.quantize_options())
    except (ValueError, TypeError) as error:
        raise type(error)(f"cannot SINQ-quantize {module!r}.{parameter_name}: {error}") from error
    parameter = torch.nn.Parameter(quantized, requires_grad=False)
    _mark_static(parameter)  # CUDA-graph replays must not copy the weight (see mark_static_weights)
    setattr(module, parameter_name, parameter)
    module.extra_repr = types.MethodType(
        partial(_extra_repr, original=module.extra_repr, parameter_name=parameter_name), module
    )
    return module
