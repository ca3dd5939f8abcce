"""Fused GPU kernel for SINQTensor's decode-time linear, registered as the custom op ``torch.ops.sinq_ao.linear``.

``torch.library.triton_op`` makes the Triton launches visible to ``torch.compile`` (one graph, no break), and the
op runs eagerly too. The dispatcher (``kernel_supports``) sends products with at most GEMV_MAX_M activation rows to
the Triton GEMV; larger M goes to the plain PyTorch path, which Inductor turns into one fused unpack-dequantize
kernel plus a cuBLAS matmul under torch.compile: on an H100 that measured faster than our tensor-core Triton GEMM
at every M >= 16 (docs/results.md). Block sizes come from ``default_config``; there is no autotuning at first call
(the defaults come from ``benchmarks/gpu_speed.py --sweep`` runs on an H100).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

try:
    import triton

    from .triton_kernels import sinq_gemv_kernel, splitk_reduce_kernel
except ImportError:  # CPU-only installs have no Triton; the plain PyTorch path is used instead.
    triton = None

GEMV_MAX_M = 4
KERNEL_BITS = (2, 4, 8)  # one bit plane: a word holds 32 / bits whole codes
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
_REDUCE_BLOCK = 1024


class LaunchConfig(NamedTuple):
    block_n: int  # output rows per program
    block_words: int  # packed int32 words per row per K step
    split_k: int = 1  # K slices, summed by splitk_reduce_kernel
    num_warps: int = 4


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def default_config(m: int, n: int, k: int, bits: int, sm_count: int = 132) -> LaunchConfig:
    """Block sizes for an (m x k) @ (k x n) product with ``bits``-wide codes, m <= GEMV_MAX_M.

    From `benchmarks/gpu_speed.py layers --sweep` on an H100: 8 rows x 256 words with 2 warps was best or within 10%
    of the best on every Llama-shaped layer; K is split only when there are too few row blocks to fill the GPU.
    """
    block_n, block_words, num_warps = 8, 256, 2
    n_words = -(-k // 32) * bits
    programs = -(-n // block_n) * m
    split_k = max(1, min(n_words // block_words, -(-2 * sm_count // programs)))
    return LaunchConfig(block_n, block_words, split_k, num_warps)


def kernel_supports(x: torch.Tensor, bits: int, group_size: int, tiling: str, scheme: str) -> bool:
    """Whether the fused kernel handles this call (otherwise the plain PyTorch path runs)."""
    return (
        triton is not None
        and x.is_cuda
        and x.dtype in KERNEL_DTYPES
        and x.numel() <= GEMV_MAX_M * x.shape[-1]
        and bits in KERNEL_BITS
        and tiling == "1D"
        and scheme in ("asymmetric", "symmetric")
        and group_size % 32 == 0
    )


def launch(x, qdata, scale, zero_point, act_pre_scale, bias, y, bits, group_size, config=None, launcher=None):
    """Run the GEMV for x (M, K) into y (M, N); ``launcher`` wraps each kernel (``wrap_triton`` under the op)."""
    m, k = x.shape
    n = y.shape[1]
    config = config or default_config(m, n, k, bits, _sm_count(x.device))
    wrap = launcher or (lambda kernel: kernel)
    has_bias = bias is not None
    bias = bias if has_bias else y
    partial = config.split_k > 1
    out = torch.empty(config.split_k, m, n, device=x.device, dtype=torch.float32) if partial else y
    words_per_split = triton.cdiv(triton.cdiv(k, 32) * bits, config.split_k)
    wrap(sinq_gemv_kernel)[(triton.cdiv(n, config.block_n), config.split_k, m)](
        x, qdata, scale, zero_point, act_pre_scale, bias, out, n, k, x.stride(0), qdata.stride(0),
        scale.stride(0), out.stride(-2), out.stride(0), words_per_split, BITS=bits, GROUP=group_size,
        HAS_BIAS=has_bias, PARTIAL=partial, BLOCK_N=config.block_n, BLOCK_WORDS=config.block_words,
        num_warps=config.num_warps,
    )  # fmt: skip
    if partial:
        wrap(splitk_reduce_kernel)[(triton.cdiv(m * n, _REDUCE_BLOCK),)](
            out, bias, y, m, n, y.stride(0), SPLIT_K=config.split_k, HAS_BIAS=has_bias, BLOCK=_REDUCE_BLOCK,
        )  # fmt: skip
    return y


@torch.library.triton_op("sinq_ao::linear", mutates_args=())
def sinq_linear_op(
    x: torch.Tensor,
    qdata: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    act_pre_scale: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    group_size: int,
) -> torch.Tensor:
    """y = [s ⊙ (Q − z)] (t ⊙ x) + b for x (M, K) contiguous; returns (M, N) in x's dtype."""
    y = torch.empty(x.shape[0], qdata.shape[0], dtype=x.dtype, device=x.device)
    return launch(x, qdata, scale, zero_point, act_pre_scale, bias, y, bits, group_size,
                  launcher=torch.library.wrap_triton)  # fmt: skip


def fused_linear(x, qdata, scale, zero_point, act_pre_scale, bias, bits, group_size):
    """Flatten leading dims, call the op, restore them."""
    x2d = x.reshape(-1, x.shape[-1]).contiguous()
    if scale.stride() != zero_point.stride():  # the kernels index both with one row stride
        scale, zero_point = scale.contiguous(), zero_point.contiguous()
    y = torch.ops.sinq_ao.linear(x2d, qdata, scale, zero_point, act_pre_scale.to(x.dtype),
                                 None if bias is None else bias.to(x.dtype), bits, group_size)  # fmt: skip
    return y.reshape(*x.shape[:-1], qdata.shape[0])
