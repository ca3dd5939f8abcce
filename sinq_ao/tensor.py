"""``SINQTensor``: a SINQ-quantized linear weight as a torchao tensor subclass."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake
from torch.utils._python_dispatch import return_and_correct_aliasing
from torchao.utils import TorchAOBaseTensor, fill_defaults

from . import kernels, packing
from .quantize import codebook, dequantize_weight, quantize_weight
from .sinkhorn import SINKHORN_STEPS

__all__ = ["SINQTensor"]

aten = torch.ops.aten


class SINQTensor(TorchAOBaseTensor):
    """A weight W (N out-features x K in-features) stored as W ≈ s ⊙ (Q − z) ⊙ t.

    Inner tensors:
        qdata: (N, ceil(K / 32) * bits) int32, the codes Q bit-packed as described in :mod:`sinq_ao.packing`.
        scale: (N, G) group scales s, G = ceil(K / group_size), dtype = the weight's dtype.
        zero_point: (N, G) zero-points z, same dtype as ``scale``.
        act_pre_scale: the column scale t, same dtype as ``scale``; (K,) for 1D tiling (it multiplies the
            activations before the matmul), (ceil(N / group_size), K) for 2D tiling (one per row block).

    Attributes:
        bits: code width, 1..8.
        group_size: weights per group along K; a last, shorter group covers K % group_size.
        shape: logical shape, (N, K), or (K, N) when ``transposed``.
        scheme: "asymmetric", "symmetric" (uniform: dequantized as s(Q − z)t) or "nf" (NF4/NF3 codebook:
            s(codebook[Q] − z)t, see :func:`sinq_ao.quantize.codebook`).
        tiling: "1D" or "2D".
        layout_version: version of the ``qdata`` packing layout (:data:`sinq_ao.packing.LAYOUT_VERSION`).
        transposed: True for the result of ``aten.t`` (what ``mm``/``addmm`` see in a decomposed linear).
    """

    tensor_data_names = ["qdata", "scale", "zero_point", "act_pre_scale"]
    tensor_attribute_names = ["bits", "group_size", "shape", "scheme", "tiling", "layout_version", "transposed"]

    def __new__(cls, qdata, scale, zero_point, act_pre_scale, bits, group_size, shape, scheme, tiling,
                layout_version, transposed):  # fmt: skip
        return torch.Tensor._make_wrapper_subclass(
            cls, shape, dtype=scale.dtype, device=qdata.device, requires_grad=False
        )

    def __init__(self, qdata, scale, zero_point, act_pre_scale, bits, group_size, shape, scheme, tiling,
                 layout_version, transposed):  # fmt: skip
        super().__init__()
        if layout_version not in packing.READABLE_VERSIONS:
            raise ValueError(
                f"SINQTensor layout_version={layout_version!r} is not known to this sinq_ao "
                f"(it reads versions {packing.READABLE_VERSIONS}); upgrade sinq_ao or re-quantize the model"
            )
        self.transposed = transposed
        self.qdata = packing.upgrade(qdata, bits, self.in_features, layout_version)  # older checkpoints: repack once
        self.scale = scale
        self.zero_point = zero_point
        self.act_pre_scale = act_pre_scale
        self.bits = bits
        self.group_size = group_size
        self.scheme = scheme
        self.tiling = tiling
        self.layout_version = packing.LAYOUT_VERSION

    def __tensor_flatten__(self):
        """(inner tensor names, metadata). The metadata dict is built once per tensor (its attributes are not changed
        after construction): torch.compile's guards and its runtime unwrapping flatten every SINQ weight on every
        call of a compiled model; building it each time cost ~6 µs per weight and call in the guards alone on an
        H100 host (docs/results.md, "v8: where the time goes under torch.compile's CUDA graphs")."""
        metadata = self.__dict__.get("_flat_metadata")
        if metadata is None:
            metadata = self._flat_metadata = {name: getattr(self, name) for name in self.tensor_attribute_names}
        return list(self.tensor_data_names), metadata

    def _quantization_type(self) -> str:
        return (
            f"shape={tuple(self.shape)}, bits={self.bits}, group_size={self.group_size}, scheme={self.scheme}, "
            f"tiling={self.tiling}, device={self.device}"
        )

    def _stable_hash_for_caching(self) -> str:
        """Metadata key for torch.compile's AOT autograd cache (values of the inner tensors do not matter)."""
        inner = [(name, tuple(t.shape), str(t.dtype), tuple(t.stride()), t.device.type)
                 for name in self.tensor_data_names for t in [getattr(self, name)]]  # fmt: skip
        attributes = [getattr(self, name) for name in self.tensor_attribute_names]
        key = repr((type(self).__qualname__, attributes, inner))
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()

    def stored_bytes(self) -> int:
        """Bytes this weight holds: packed codes, scales, zero-points and column scales."""
        return sum(getattr(self, name).nbytes for name in self.tensor_data_names)

    @property
    def out_features(self) -> int:
        return self.shape[1] if self.transposed else self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[0] if self.transposed else self.shape[1]

    @classmethod
    def from_hp(
        cls,
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
    ) -> "SINQTensor":
        """Quantize a high-precision (N, K) weight; see :func:`sinq_ao.quantize.quantize_weight`."""
        q = quantize_weight(
            weight, bits=bits, group_size=group_size, method=method, scheme=scheme, tiling=tiling, steps=steps,
            hqq_steps=hqq_steps, col_scale=col_scale,
        )  # fmt: skip
        return cls(
            packing.pack(q.codes, bits),
            q.scale,
            q.zero_point,
            q.col_scale,
            bits,
            group_size,
            weight.shape,
            scheme,
            tiling,
            packing.LAYOUT_VERSION,
            False,
        )

    def codes(self) -> torch.Tensor:
        """The integer codes Q, (N, K) int32 (in the untransposed orientation)."""
        return packing.unpack(self.qdata, self.bits, self.in_features)

    def dequantize(self, output_dtype: torch.dtype | None = None, *, with_col_scale: bool = True) -> torch.Tensor:
        """The dense weight W, in this tensor's logical orientation; ``with_col_scale=False`` leaves t out."""
        weight = dequantize_weight(
            self.codes(),
            self.scale,
            self.zero_point,
            self.act_pre_scale if with_col_scale else None,
            self.group_size,
            output_dtype or self.dtype,
            levels=codebook(self.bits, self.scheme),
        )
        return weight.t() if self.transposed else weight


implements = SINQTensor.implements
implements_torch_function = SINQTensor.implements_torch_function


def sinq_linear(x: torch.Tensor, weight: SINQTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x Wᵀ + b for an untransposed ``weight``: the fused GPU kernels where they apply, else :func:`plain_linear`."""
    if weight.transposed:
        raise ValueError("sinq_linear expects the (out_features, in_features) weight, got a transposed SINQTensor")
    if x.shape[-1] != weight.in_features:
        raise ValueError(
            f"input has {x.shape[-1]} features but the SINQ weight expects {weight.in_features} "
            f"(weight shape {tuple(weight.shape)})"
        )
    if kernels.kernel_supports(x, weight.bits, weight.group_size, weight.tiling, weight.scheme):
        return kernels.fused_linear(x, weight.qdata, weight.scale, weight.zero_point, weight.act_pre_scale, bias,
                                    weight.bits, weight.group_size)  # fmt: skip
    if _eager(x) and kernels.format_supported(x, weight.bits, weight.group_size, weight.tiling, weight.scheme):
        # eager GPU, larger M: unpack with one kernel (PyTorch's unpack is many small ones), then cuBLAS
        dense = kernels.dequantize(weight.qdata, weight.scale, weight.zero_point, weight.bits, weight.group_size,
                                   weight.in_features, x.dtype)  # fmt: skip
        x = x * weight.act_pre_scale.to(x.dtype)
        return F.linear(x, dense, None if bias is None else bias.to(x.dtype))
    return plain_linear(x, weight, bias)


def _eager(x: torch.Tensor) -> bool:
    """Real eager execution: not traced by Dynamo, and not the fake tensors AOTAutograd traces a subclass with
    (where Inductor's fused unpack is the faster choice, and a raw Triton launch cannot run)."""
    return not torch.compiler.is_compiling() and not is_fake(x)


def plain_linear(x: torch.Tensor, weight: SINQTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The PyTorch path (CPU, and what Inductor fuses under compile): 1D tiling applies t to x, not to the weight."""
    if weight.tiling == "1D":
        x = x * weight.act_pre_scale.to(x.dtype)
        dense = weight.dequantize(x.dtype, with_col_scale=False)
    else:
        dense = weight.dequantize(x.dtype)
    return F.linear(x, dense, None if bias is None else bias.to(x.dtype))


@implements(aten.linear.default)
@implements_torch_function(F.linear)
def _(func, types, args, kwargs):
    x, weight, bias = fill_defaults(args, 3, [None])
    return sinq_linear(x, weight, bias)


@implements(aten.t.default)
def _(func, types, args, kwargs):
    self = args[0]
    new = SINQTensor(
        self.qdata, self.scale, self.zero_point, self.act_pre_scale, self.bits, self.group_size,
        torch.Size(reversed(self.shape)), self.scheme, self.tiling, self.layout_version, not self.transposed,
    )  # fmt: skip
    return return_and_correct_aliasing(func, args, kwargs, new)


def _matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight where ``weight`` is a SINQTensor, transposed (a linear) or not (a plain matmul)."""
    if weight.transposed:
        return sinq_linear(x, weight.t())
    return x @ weight.dequantize(x.dtype)


@implements(aten.mm.default)
def _(func, types, args, kwargs):
    return _matmul(args[0], args[1])


@implements(aten.addmm.default)
def _(func, types, args, kwargs):
    bias, x, weight = args[:3]
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    return beta * bias + alpha * _matmul(x, weight)


@implements(aten.slice.Tensor)
def _(func, types, args, kwargs):
    """Slice rows (dim 0) or columns (dim 1) of an untransposed weight at group boundaries."""
    self, dim, start, end, step = fill_defaults(args, 5, [0, None, None, 1])
    if self.transposed:
        raise NotImplementedError("slicing a transposed SINQTensor is not supported; slice the weight itself")
    dim = dim % 2
    size = self.shape[dim]
    start = 0 if start is None else min(max(start + size if start < 0 else start, 0), size)
    end = size if end is None else min(max(end + size if end < 0 else end, start), size)
    g = self.group_size
    qdata, scale, zero, col = self.qdata, self.scale, self.zero_point, self.act_pre_scale
    if step != 1:
        raise NotImplementedError(f"SINQTensor slicing needs step 1, got step={step}")
    if dim == 0:
        if self.tiling == "2D":
            if start % g or (end % g and end != size):
                raise ValueError(f"2D-tiled SINQTensor rows can only be sliced at multiples of group_size={g}")
            col = col[start // g : -(-end // g)]
        qdata, scale, zero = qdata[start:end], scale[start:end], zero[start:end]
        shape = (end - start, self.shape[1])
    else:
        if start % g or (end % g and end != size):
            raise ValueError(
                f"SINQTensor columns can only be sliced at multiples of group_size={g} (or at the end), "
                f"got [{start}:{end}]"
            )
        qdata = qdata[:, packing.packed_columns(start, self.bits) : packing.packed_columns(end, self.bits)]
        scale, zero = scale[:, start // g : -(-end // g)], zero[:, start // g : -(-end // g)]
        col = col[..., start:end]
        shape = (self.shape[0], end - start)
    new = SINQTensor(
        qdata, scale, zero, col, self.bits, self.group_size, torch.Size(shape), self.scheme, self.tiling,
        self.layout_version, False,
    )  # fmt: skip
    return return_and_correct_aliasing(func, args, kwargs, new)


SINQTensor.__module__ = "sinq_ao"
torch.serialization.add_safe_globals([SINQTensor])


def _mark_static(weight: torch.Tensor) -> None:
    """Mark ``weight`` and, for a torchao tensor subclass, its inner tensors as static graph inputs."""
    for tensor in [weight] + [getattr(weight, name) for name in getattr(weight, "tensor_data_names", ())]:
        torch._dynamo.mark_static_address(tensor)


def mark_static_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Mark every SINQTensor weight of ``model``, and the tensors inside it, as static inputs for torch.compile.

    ``torch.compile(mode="reduce-overhead")`` replays CUDA graphs and copies every input it does not know to be
    static into the graph's buffers before each replay; a tensor-subclass weight reaches the graph as its inner
    tensors. Measured on an H100 (docs/results.md, v2 kernels): marking every weight lifted a 4-layer
    Llama-3-8B-shaped model from 0.74x to 0.98x bf16 under reduce-overhead, but not the 32-layer one (0.71x, where a
    hand-captured CUDA graph gave 1.32x; v4 kernels: 0.82x against 1.52x), so the remaining per-replay cost is not
    (only) copying. ``quantize_(model, SINQConfig(...))`` marks the weights it makes; call this again after
    ``model.to(...)`` or loading, which make new tensors. Returns ``model``.
    """
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if isinstance(param, SINQTensor):
                _mark_static(param)
    return model
