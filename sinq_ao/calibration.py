"""A-SINQ (SPEC §6): SINQ plus an AWQ-style search of a per-layer column scale on calibration activations.

For each selected ``nn.Linear`` (weight W, N x K) and its calibration inputs X (T x K):

    t_sinq = the column scale SINQ finds (Sinkhorn runs once per layer)
    a(alpha) = clamp(mu_x^alpha / (mu_w^(1 - alpha) + 1e-4), 1e-4), normalised by sqrt(max(a) min(a))
    for alpha in 0, 0.05, ..., 0.95 and for a = 1 (plain SINQ):  quantize W with t = t_sinq / a,
        score mean |X (W − Ŵ)ᵀ|                                       (L1 error of the layer output)
    keep the best t: it is the SINQTensor's ordinary column scale, so inference costs nothing extra.

mu_x is the mean |x| per input channel over all calibration tokens, mu_w the mean |W| per column. Scoring
plain SINQ too (an addition to the reference) means the search can only lower the layer's calibration error.

Activations are collected one block (an element of the model's ``nn.ModuleList`` of layers) at a time: the
calibration batches run through the model, already quantized up to that block, and the forward pass stops
when the block returns. Memory holds one block's inputs; the price is about L/2 forward passes for L blocks.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .config import SINQConfig, skip_lm_head
from .quantize import quantization_error, quantize_weight
from .tensor import SINQTensor

__all__ = ["ALPHAS", "ASINQResult", "asinq_quantize_", "calibration_tokens", "search_col_scale"]

ALPHAS = tuple(i / 20 for i in range(20))  # 0, 0.05, ..., 0.95 (SPEC §6)


class CalibrationLeakWarning(UserWarning):
    """Calibration text is (part of) the evaluation text, so perplexities measured on it are optimistic."""


def calibration_tokens(tokenizer, source=None, *, n_samples: int = 16, seq_len: int = 512) -> torch.Tensor:
    """(n_samples, seq_len) token ids to calibrate on, from ``source``.

    ``source``: a token tensor ((n, L) is used as is; 1-D ids are cut into windows), the path of a text file,
    or None: the *end* of the evaluation text (WikiText-2 test), with a :class:`CalibrationLeakWarning` —
    perplexity on that text is then no longer a held-out measure (a ``max_windows`` slice from its start
    does not overlap the calibration windows as long as the text is long enough).
    Windows are non-overlapping and evenly spaced over the text.
    """
    if isinstance(source, torch.Tensor):
        if source.dtype not in (torch.int32, torch.int64) or source.ndim not in (1, 2) or source.numel() == 0:
            raise ValueError(f"calibration tokens must be a non-empty 1-D or 2-D integer tensor, got "
                             f"{source.dtype} of shape {tuple(source.shape)}")  # fmt: skip
        if source.ndim == 2:
            return source.long()
        ids = source.long()
    else:
        if source is None:
            from .evaluate import load_eval_text

            warnings.warn(
                "no calibration text given: calibrating on the end of the evaluation text (WikiText-2 test), "
                "which leaks into any perplexity measured on it; pass a text file or token tensor instead",
                CalibrationLeakWarning,
                stacklevel=2,
            )
            text = load_eval_text()
            text = text[-min(len(text), n_samples * seq_len * 8) :]  # ~8 characters per token is plenty
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"calibration text file {path} does not exist")
            text = path.read_text(encoding="utf-8")
        ids = tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]
    windows = ids.numel() // seq_len
    if windows == 0:
        raise ValueError(f"calibration source has {ids.numel()} tokens, fewer than one window of seq_len={seq_len}")
    picks = torch.linspace(0, windows - 1, min(n_samples, windows)).round().long().unique()
    return torch.stack([ids[i * seq_len : (i + 1) * seq_len] for i in picks.tolist()])


def _alpha_scale(mean_abs_x: torch.Tensor, mean_abs_w: torch.Tensor, alpha: float) -> torch.Tensor:
    """The AWQ-style column multiplier a (K,) of SPEC §6, normalised so that max(a) min(a) = 1."""
    a = (mean_abs_x.pow(alpha) / (mean_abs_w.pow(1 - alpha) + 1e-4)).clamp_min(1e-4)
    return a / (a.max() * a.min()).sqrt()


def search_col_scale(
    weight: torch.Tensor, x: torch.Tensor, mean_abs_x: torch.Tensor, config: SINQConfig
) -> tuple[torch.Tensor, float | None, dict]:
    """SPEC §6 for one layer: weight (N, K), sample inputs x (T, K), mean |x| per channel (K,).

    Returns the column scale t of least output error ((K,) or (B, K), fp32), the winning alpha (None when
    plain SINQ won) and the L1 output error of every candidate ({alpha or None: error}).
    """
    options = config.quantize_options()
    base = quantize_weight(weight, **options).col_scale.float()
    w, x = weight.float(), x.float()
    mean_abs_w = w.abs().mean(dim=0)
    candidates = {None: base} | {alpha: base / _alpha_scale(mean_abs_x.float(), mean_abs_w, alpha) for alpha in ALPHAS}
    errors = {}
    for alpha, col_scale in candidates.items():
        error = quantization_error(weight, **options, col_scale=col_scale)
        errors[alpha] = (x @ error.T).abs().mean().item()
    best = min(errors, key=errors.get)
    return candidates[best], best, errors


class _StopForward(Exception):
    """Raised by a hook once the block being calibrated has run: the rest of the model is not needed."""


@dataclass
class _Inputs:
    """Running input statistics of one linear: sums of |x| and x² per channel, token count, a strided row sample."""

    stride: int  # 0: keep no rows
    abs_sum: torch.Tensor | float = 0.0
    sq_sum: torch.Tensor | float = 0.0
    count: int = 0
    rows: list = field(default_factory=list)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.abs_sum = self.abs_sum + x.abs().sum(dim=0)
        self.sq_sum = self.sq_sum + x.square().sum(dim=0)
        self.count += x.shape[0]
        if self.stride:
            self.rows.append(x[:: self.stride].cpu())


def linear_blocks(model: torch.nn.Module, filter_fn: Callable) -> dict[str, dict[str, torch.nn.Linear]]:
    """Selected linears grouped by their block, in model order: {block fqn: {linear fqn: module}}.

    A block is an element of the outermost ``nn.ModuleList`` above the linear (a decoder layer); a linear
    outside any such list (e.g. ``lm_head``) is a block of its own.
    """
    modules = dict(model.named_modules())
    blocks: dict[str, dict[str, torch.nn.Linear]] = {}
    for name, module in modules.items():
        if not (isinstance(module, torch.nn.Linear) and filter_fn(module, name)):
            continue
        if isinstance(module.weight, SINQTensor):
            raise ValueError(f"{name}.weight is already a SINQTensor; calibrate the original model")
        parts = name.split(".")
        block = next((".".join(parts[: i + 1]) for i in range(len(parts) - 1)
                      if isinstance(modules[".".join(parts[:i])], torch.nn.ModuleList)), name)  # fmt: skip
        blocks.setdefault(block, {})[name] = module
    return blocks


@torch.no_grad()
def collect_inputs(model, tokens: torch.Tensor, linears: dict[str, torch.nn.Linear],
                   stop_at: torch.nn.Module | None = None, *, batch_size: int = 4,
                   max_rows: int = 1024) -> dict[str, _Inputs]:  # fmt: skip
    """Run ``tokens`` (n, L) through ``model`` until ``stop_at`` has returned, recording the linears' inputs.

    Keeps every input's per-channel sums of |x| and x² over all tokens and about ``max_rows`` evenly strided
    rows (none for ``max_rows=0``). ``stop_at=None`` runs the whole model.
    """
    stride = max(1, math.ceil(tokens.numel() / max_rows)) if max_rows else 0
    inputs = {name: _Inputs(stride) for name in linears}
    hooks = [module.register_forward_pre_hook(lambda _m, args, record=inputs[name]: record.add(args[0]))
             for name, module in linears.items()]  # fmt: skip

    def stop(*_):
        raise _StopForward

    if stop_at is not None:
        hooks.append(stop_at.register_forward_hook(stop))
    device = next(model.parameters()).device
    try:
        for batch in tokens.split(batch_size):
            try:
                model(batch.to(device))
            except _StopForward:
                pass
    finally:
        for hook in hooks:
            hook.remove()
    missing = [name for name, record in inputs.items() if record.count == 0]
    if missing:
        raise ValueError(f"the calibration forward pass never reached {missing}; A-SINQ needs every selected "
                         "linear to run when the model is called on token ids")  # fmt: skip
    return inputs


@dataclass
class ASINQResult:
    """What :func:`asinq_quantize_` chose: alpha per layer (None = plain SINQ won) and the time it took."""

    alphas: dict[str, float | None]
    errors: dict[str, dict]
    seconds: float


def asinq_quantize_(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    config: SINQConfig | None = None,
    *,
    filter_fn: Callable = skip_lm_head,
    batch_size: int = 4,
    max_rows: int = 1024,
    progress: bool = True,
) -> ASINQResult:
    """Quantize the selected linears of ``model`` in place with A-SINQ, block by block, calibrated on ``tokens``.

    ``tokens`` (n, L) come from :func:`calibration_tokens`. Each block's linears are calibrated on the inputs
    they receive when every earlier block is already quantized. ``max_rows`` caps the token rows used to score
    candidates (mean |x| uses all tokens).
    """
    config = config or SINQConfig()
    if not isinstance(config, SINQConfig):
        raise TypeError(f"config must be a SINQConfig, got {type(config).__name__}")
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        raise ValueError("tokens must be an (n_samples, seq_len) tensor of token ids; see calibration_tokens()")
    start = time.perf_counter()
    modules = dict(model.named_modules())
    blocks = linear_blocks(model, filter_fn)
    if not blocks:
        raise ValueError("filter_fn selected no nn.Linear to quantize")
    alphas, errors = {}, {}
    for block, linears in tqdm(blocks.items(), desc="A-SINQ", unit="block", disable=not progress):
        inputs = collect_inputs(model, tokens, linears, modules[block], batch_size=batch_size, max_rows=max_rows)
        for name, module in linears.items():
            record = inputs.pop(name)
            weight = module.weight.detach()
            try:
                col_scale, alphas[name], errors[name] = search_col_scale(
                    weight, torch.cat(record.rows).to(weight.device), (record.abs_sum / record.count), config
                )
                quantized = SINQTensor.from_hp(weight, **config.quantize_options(), col_scale=col_scale)
            except (ValueError, TypeError) as error:
                raise type(error)(f"cannot A-SINQ-quantize {name}: {error}") from error
            module.weight = torch.nn.Parameter(quantized, requires_grad=False)
    return ASINQResult(alphas, errors, time.perf_counter() - start)
