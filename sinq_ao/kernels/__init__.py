"""Fused GPU kernels for SINQTensor's linear, registered as the custom op ``torch.ops.sinq_ao.linear``.

``torch.library.triton_op`` makes the Triton launches visible to ``torch.compile`` (one graph, no break), and the
op runs eagerly too. The dispatcher (``kernel_supports``) sends products with up to FUSED_MAX_M activation rows to
the op, which runs the CUDA-core GEMV for one or two rows (decode), the register-operand tensor-core kernel
(``sinq_mma_kernel``) for up to MMA_MAX_M rows where the format allows, the many-row kernel (``sinq_tile_kernel``)
for 4-bit products of more than TILE_MIN_M rows with many output tiles (``tile_preferred``), and the older
tensor-core kernel otherwise up to FUSED_MAX_M rows; larger M goes to the plain PyTorch path, which Inductor turns into one fused unpack-dequantize
kernel plus a cuBLAS matmul under torch.compile (on an H100 that was faster than the tensor-core kernel from
M = 1024, about even at 256: docs/results.md). Block sizes come from ``default_config`` / ``default_mma_config`` /
``default_gemm_config`` / ``default_tile_config``; there is no autotuning at first call (the defaults come from
``benchmarks/gpu_speed.py --sweep`` runs on an H100).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch

from ..packing import SUPPORTED_BITS, bit_planes, packed_columns

try:
    import triton

    from .triton_kernels import (
        dequantize_kernel,
        mma_activations_kernel,
        sinq_gemm_kernel,
        sinq_gemv_group_kernel,
        sinq_gemv_kernel,
        sinq_mma_kernel,
        sinq_tile_kernel,
        splitk_reduce_kernel,
        tile_activations_kernel,
    )
except ImportError:  # CPU-only installs have no Triton; the plain PyTorch path is used instead.
    triton = None

GEMV_MAX_M = 2  # the dispatcher's GEMV range (M = 2: 1.1-1.5x faster than sinq_mma_kernel; at 3-4 mixed)
GEMV_MAX_BLOCK_M = 4  # activation rows per GEMV program when the GEMV is asked for several
FUSED_MAX_M = 256  # above this many activation rows, unpack the weight once and use cuBLAS (measured faster)
PRESCALE_MIN_BLOCK_M = 64  # from this block height, t ⊙ x is computed once by the caller, not in every program
KERNEL_BITS = (2, 4, 8)  # one bit plane, a word holds 32 / bits whole codes: the many-row kernel's widths
GEMV_BITS = SUPPORTED_BITS  # the GEMV, the older tensor-core kernel and the unpack kernel: codes of several planes too
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
MMA_BITS = (2, 4)  # the register-operand kernel: a 16-bit half holds whole codes and a group >= 16 halves
MMA_MAX_M = 16  # the dispatcher's range for it (M = 3..16 where the format allows); the older tensor-core kernel
# above (measured on an H100: faster than it up to 16 on the shapes, even in sum at 32, slower at 64)
TILE_MIN_M = 128  # sinq_tile_kernel only above this many rows, and only where tile_preferred
_REDUCE_BLOCK = 1024
SHORT_ROW_BITS = 4096 * 4  # rows of at most this many code bits count as short for the one-row GEMV's blocks


class LaunchConfig(NamedTuple):
    block_n: int  # output rows per program
    groups_per_step: int  # quantization groups per row per K step
    split_k: int = 1  # K slices (whole groups); the last slice of a row block to finish adds them up
    num_warps: int = 4
    block_m: int = 1  # activation rows per program (each unpacked code is used for all of them)
    num_stages: int = 1  # software-pipelined K steps (loads issued this many steps ahead); 1: none
    thread_rows: int = 1  # rows side by side across a step's threads (a power of two dividing block_n)


class GemmConfig(NamedTuple):
    """Block sizes of the tensor-core kernel (M > GEMV_MAX_M)."""

    block_n: int  # weight rows per program (the tensor cores' M side)
    block_m: int  # activation rows per program (>= 16)
    block_w: int  # packed words per K step per row (gemm_step_words: whole groups; the dot's depth block_w · 32 / bits)
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3


class MmaConfig(NamedTuple):
    """Block sizes of the register-operand tensor-core kernel (``sinq_mma_kernel``)."""

    block_n: int = 64  # weight rows per program (>= 64 on 4 warps: wgmma; fewer rows or warps: mma.sync)
    block_m: int = 16  # activation rows per program (>= 16)
    split_k: int = 1  # K slices of whole groups; the last slice of a row block to finish adds them up
    num_warps: int = 4
    num_stages: int = 3
    groups_per_step: int = 1  # groups per pipelined K step (more than one measured slower)


class TileConfig(NamedTuple):
    """Block sizes of the tensor-core kernel for many activation rows (``sinq_tile_kernel``)."""

    block_m: int = 128  # activation rows per program (the tensor cores' M side; >= 16)
    block_n: int = 128  # weight rows per program (>= 16)
    block_w: int = 8  # packed words per K step per row (whole groups, a divisor of the row's words)
    split_k: int = 1  # K slices of whole steps; the last slice of a block to finish adds them up
    num_warps: int = 8
    num_stages: int = 3


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def _power_of_two_floor(value: int) -> int:
    """The largest power of two at most ``value`` (1 for values below 2): Triton tiles are powers of two."""
    return 1 << max(0, value.bit_length() - 1)


def even_split(steps: int, target: int) -> int:
    """The largest number of K slices, at most ``target``, that divides ``steps`` K steps evenly (at least 1)."""
    return max(d for d in range(1, max(1, min(target, steps)) + 1) if steps % d == 0)


def _words_per_group(bits: int, group_size: int) -> int:
    """Packed int32 words per quantization group (32 // bits codes each)."""
    return group_size * bits // 32


def _filled_groups(groups: int, bits: int, group_size: int, num_warps: int, thread_rows: int = 1) -> int:
    """Groups per GEMV step, doubled until the step's activation tile (thread rows x groups x the words of a group
    in the widest bit plane, whose layout the GEMV reads) has an element for every thread: with fewer, Triton
    replicates the tile and every code position pays a layout conversion (sm_90 build, 3 bits and g64: 4 such
    words per group, 863 loop instructions for 8 groups on two warps against 589 for 16)."""
    words = group_size * bit_planes(bits)[0][0] // 32
    while thread_rows * groups * words < 32 * num_warps:
        groups *= 2
    return groups


def default_config(m: int, n: int, k: int, bits: int, group_size: int, sm_count: int = 132) -> LaunchConfig:
    """Block sizes for an (m x k) @ (k x n) product with ``bits``-wide codes in groups of ``group_size``.

    From `benchmarks/gpu_speed.py layers --sweep` on an H100 (benchmarks/results/h100/layers_v5_gemv_sweep*.json):
    for one activation row, 8 rows per program and a 3-stage software pipeline; with many row blocks (at least 6
    per SM: N >= 8192 here) 64 words per step and one warp (14336 x 4096: 19.8 us against 24.9 for the next
    choice), with fewer 128 words per step shared by two warps, which splits K inside the program (4096 x 14336:
    19.3 us against 21.4; 4096^2 8.6 against 8.8; 1024 x 4096 6.6 against 6.8). One activation row on short rows
    (at most SHORT_ROW_BITS bits of codes, e.g. K = 4096 at 4 bits) with at least 6 blocks of 16 rows per SM takes
    16 rows per program (kernel timer, layers_v11_k_warps_sweep.json / layers_v12_lm_head_sweep.json: 14336 x 4096
    17.6 us against 18.9 for 8 rows; the 8B lm_head, 128256 x 4096, 118.3 against 136.5; 8192^2 and 16384^2, with
    longer rows, keep 8: 19.8 against 20.0 and 64.0 against 65.1). K is split across programs until
    about 3.5 warps per SM exist (1024 x 4096: 2 slices; 4096^2 stays whole: 8.6 us against 12.3 in 2 slices). Two
    rows take the same blocks with both rows in each program (benchmarks/small_m.py, small_m_v6.json:
    4096^2 10.7 us against 14.5 for sinq_mma_kernel, 8192^2 28.1 against 41.9). For 3-4 rows (explicitly asked
    for: the dispatcher sends them to the tensor-core kernels), 64 rows x 16 words with 4 warps, K split until
    about four programs per SM exist. The split always divides the K steps evenly: ragged
    slices need masked loads, which lose vectorization (docs/results.md). Codes of several bit planes (3, 5, 6, 7
    bits) take the same rules with whole groups per step rounded down to a power of two (64-word steps at 3 bits
    and g64: 8 groups of 6 words) and never the 16 short rows (at 3 bits they spill registers in the sm_90 build).
    """
    words_per_group = max(1, _words_per_group(bits, group_size))
    if m <= 2:
        block_m, block_n, num_stages, warps_per_sm = m, 8, 3, 3.5
        words_per_step, num_warps = (64, 1) if -(-n // block_n) >= 6 * sm_count else (128, 2)
        if m == 1 and -(-n // 16) >= 6 * sm_count and k * bits <= SHORT_ROW_BITS and bits in KERNEL_BITS:
            block_n = 16  # measured faster on short rows at 2 and 4 bits (above); at 3 bits 16 rows spill
    else:
        block_m = min(_next_power_of_two(m), GEMV_MAX_BLOCK_M)
        block_n, words_per_step, num_warps, num_stages = 64, 16, 4, 1
        warps_per_sm = 4 * num_warps  # four programs
    groups_per_step = _power_of_two_floor(words_per_step // words_per_group)  # 6 words per group at 3 bits, g64
    if m <= 2:
        groups_per_step = _filled_groups(groups_per_step, bits, group_size, num_warps)
    warps = -(-n // block_n) * -(-m // block_m) * num_warps
    steps, ragged = divmod(-(-k // group_size), groups_per_step)
    split_k = 1 if ragged else even_split(steps, min(16, math.ceil(warps_per_sm * sm_count / warps)))
    return LaunchConfig(block_n, groups_per_step, split_k, num_warps, block_m, num_stages)


def gemm_step_words(block_w: int, bits: int, group_size: int) -> int:
    """The packed words per K step that the tensor-core kernel takes for GemmConfig.block_w: raised to a whole
    group; for codes of several bit planes, whose groups are not a power of two of words (6 at 3 bits and g64),
    the whole groups that block_w words hold, rounded down to a power of two (at least one)."""
    words_per_group = _words_per_group(bits, group_size)
    if len(bit_planes(bits)) == 1:
        return max(block_w, words_per_group)
    return _power_of_two_floor(max(1, block_w // words_per_group)) * words_per_group


def default_gemm_config(m: int, n: int, k: int, bits: int, sm_count: int = 132, group_size: int = 64) -> GemmConfig:
    """Block sizes of the tensor-core kernel for an (m x k) @ (k x n) product (M > GEMV_MAX_M).

    From `benchmarks/gpu_speed.py layers --sweep` on an H100 (4096x4096 and 14336x4096, 4-bit g64): 64 weight rows
    per program, 4 warps and a 2-stage pipeline were best at M from 16 to 64; 64 codes per K step, except 256 for
    32 < M <= 64; from 128-row activation blocks (M > 64), 128 weight rows x 256 codes per step with 8 warps
    (layers_v4_m4_m256_sweep.json: 43.9 / 131.2 us at M = 256 on 4096^2 / 8192^2 against 47.6 / 178.2 for the
    64-row tile). K is split until about four programs per SM exist (two for block heights above 16). Codes of
    several bit planes take the same codes per step (block_w the power of two above their words: 8 at 3 bits for
    64 codes, which gemm_step_words turns into one group of 64); not timed on a GPU yet.
    """
    block_m = min(max(16, _next_power_of_two(m)), 128)
    block_n, codes_per_step, num_warps = (128, 256, 8) if block_m >= 128 else (64, 256 if 32 < m <= 64 else 64, 4)
    block_w = _next_power_of_two(codes_per_step * bits // 32)
    n_words = -(-k // 32) * bits
    programs = -(-n // block_n) * -(-m // block_m)
    step = block_w if len(bit_planes(bits)) == 1 else gemm_step_words(block_w, bits, group_size)
    steps, ragged = divmod(n_words, step)
    target = min(8, -(-(4 if block_m <= 16 else 2) * sm_count // programs))
    split_k = 1 if ragged else even_split(steps, target)
    return GemmConfig(block_n, block_m, block_w, split_k, num_warps=num_warps, num_stages=2)


def default_tile_config(m: int, n: int, k: int, bits: int, sm_count: int = 132) -> TileConfig:
    """Block sizes of ``sinq_tile_kernel``: 128 x 128 output tiles, 64 codes per K step, 8 warps, 3 stages, K
    split evenly only until about one program per SM exists (benchmarks/results/h100/tile_sweep_v7.json: at
    M = 256 this tile without a split was best at 14336 x 4096 and 16384^2, 100.8 / 380.5 us against the older
    kernel's 129.5 / 493.6; with fewer programs it lost to it)."""
    block_m = block_n = 128
    programs = -(-n // block_n) * -(-m // block_m)
    steps = -(-k // 32) * bits // (2 * bits)
    split_k = even_split(steps, min(8, -(-sm_count // programs)))
    return TileConfig(block_m, block_n, 2 * bits, split_k, 8, 3)


def tile_preferred(m: int, n: int, bits: int, sm_count: int = 132) -> bool:
    """Whether the dispatcher sends an (m x k) @ (k x n) product to ``sinq_tile_kernel`` rather than the older
    tensor-core kernel: 4-bit codes, more than TILE_MIN_M rows and at least 1.5 programs of 128 x 128 per SM (on
    an H100 it was 1.2-1.3x faster there and slower with fewer programs: tile_sweep_v7.json)."""
    return bits == 4 and m > TILE_MIN_M and -(-n // 128) * -(-m // 128) >= 1.5 * sm_count


def tile_supported(x: torch.Tensor, bits: int, group_size: int) -> bool:
    """Whether ``sinq_tile_kernel`` takes this product: K a whole number of groups, 16-bit activations."""
    return x.shape[-1] % group_size == 0 and x.dtype in KERNEL_DTYPES and bits in KERNEL_BITS


def mma_supported(x: torch.Tensor, bits: int, group_size: int) -> bool:
    """Whether ``sinq_mma_kernel`` reads this format: 2- or 4-bit codes (whole codes per 16-bit half), groups of
    at least 16 halves (the depth of a dot), K a whole number of groups, 16-bit activations."""
    k = x.shape[-1]
    return bits in MMA_BITS and group_size * bits // 16 >= 16 and k % group_size == 0 and x.dtype in KERNEL_DTYPES


def default_mma_config(m: int, n: int, k: int, group_size: int, sm_count: int = 132) -> MmaConfig:
    """Block sizes of ``sinq_mma_kernel`` for an (m x k) @ (k x n) product: 64 weight rows on one warpgroup,
    16..64 activation rows, K split (whole groups, evenly) until about two programs per SM exist, in at most 16
    slices of at least 4 groups. From `benchmarks/gpu_speed.py layers --sweep --kernels mma` at M = 16 on an H100
    (benchmarks/results/h100/sweep_v6_mma_m16_g.json): 4096^2 in 4 slices 14.7 us (best 14.6), 8192^2 in 2
    slices 39.3 (best), 1024 x 4096 in 16 slices 8.9 (best 8.8), 14336 x 4096 in 2 slices 38.2 (best 35.5, in
    4); 32 or 16 rows on one or two warps (mma.sync) and 8 warps were slower."""
    block_m = min(max(16, _next_power_of_two(m)), 64)
    block_n = 64
    groups = k // group_size
    programs = -(-n // block_n) * -(-m // block_m)
    split_k = even_split(groups, min(16, max(1, groups // 4), -(-2 * sm_count // programs)))
    return MmaConfig(block_n, block_m, split_k)


def kernel_supports(x: torch.Tensor, bits: int, group_size: int, tiling: str, scheme: str) -> bool:
    """Whether the fused kernel handles this call (otherwise the plain PyTorch path runs): up to FUSED_MAX_M
    activation rows of a format the kernels read. At every width the GEMV takes up to GEMV_MAX_M rows and the
    older tensor-core kernel the rest; 1-, 3-, 5-, 6- and 7-bit codes take no other kernel."""
    return x.numel() <= FUSED_MAX_M * x.shape[-1] and format_supported(x, bits, group_size, tiling, scheme)


def format_supported(x: torch.Tensor, bits: int, group_size: int, tiling: str, scheme: str) -> bool:
    """Whether the GEMV, the older tensor-core kernel and the unpack kernel read this weight format for these
    activations (the register-operand kernel also needs ``mma_supported``, the many-row kernel ``tile_supported``)."""
    return (
        triton is not None
        and x.is_cuda
        and x.dtype in KERNEL_DTYPES
        and bits in GEMV_BITS
        and tiling == "1D"
        and scheme in ("asymmetric", "symmetric")
        and group_size_supported(group_size)
    )


def group_size_supported(group_size: int) -> bool:
    """Whether the kernels take groups of this many codes: whole 32-code chunks, and a power of two (the kernels
    tile groups with tl.arange)."""
    return group_size >= 32 and group_size % 32 == 0 and group_size & (group_size - 1) == 0


def launch(x, qdata, scale, zero_point, act_pre_scale, bias, y, bits, group_size, config=None, launcher=None):
    """y = [s ⊙ (Q − z)] (t ⊙ x) + b for x (M, K) into y (M, N): the GEMV for a LaunchConfig (default for M <=
    GEMV_MAX_M), the register-operand tensor-core kernel for an MmaConfig (default up to MMA_MAX_M where
    ``mma_supported``), the older tensor-core kernel for a GemmConfig (default above); ``launcher`` wraps each
    kernel (``wrap_triton`` under the op)."""
    _check_operands(x, qdata, scale, zero_point, act_pre_scale, bias, y, bits, group_size)
    m, k = x.shape
    n = y.shape[1]
    if config is not None:
        _check_config(config)
    else:
        sms = _sm_count(x.device)
        if m <= GEMV_MAX_M:
            config = default_config(m, n, k, bits, group_size, sms)
        elif m <= MMA_MAX_M and mma_supported(x, bits, group_size):
            config = default_mma_config(m, n, k, group_size, sms)
        elif tile_preferred(m, n, bits, sms) and tile_supported(x, bits, group_size):
            config = default_tile_config(m, n, k, bits, sms)
        else:
            config = default_gemm_config(m, n, k, bits, sms, group_size)
    wrap = launcher or (lambda kernel: kernel)
    has_bias = bias is not None
    bias = bias if has_bias else y
    partial = config.split_k > 1
    out = torch.empty(config.split_k, m, n, device=x.device, dtype=torch.float32) if partial else y
    if isinstance(config, LaunchConfig):  # the GEMV reduces its K slices itself
        _launch_gemv(wrap, config, x, qdata, scale, zero_point, act_pre_scale, bias, out, y, has_bias, bits, group_size)
        return y
    if isinstance(config, TileConfig):  # so does the many-row kernel
        if not tile_supported(x, bits, group_size):
            raise ValueError(f"TileConfig needs K a multiple of group_size, bits in {KERNEL_BITS} and 16-bit "
                             f"activations; got bits={bits}, group_size={group_size}, K={k}, dtype={x.dtype}")
        _launch_tile(wrap, config, x, qdata, scale, zero_point, act_pre_scale, bias, out, y, has_bias, bits, group_size)
        return y
    if isinstance(config, MmaConfig):  # so does the register-operand kernel
        if not mma_supported(x, bits, group_size):
            raise ValueError(f"MmaConfig needs bits in {MMA_BITS}, group_size * bits / 16 >= 16, K a multiple of "
                             f"group_size and 16-bit activations; got bits={bits}, group_size={group_size}, "
                             f"K={k}, dtype={x.dtype}")  # fmt: skip
        _launch_mma(wrap, config, x, qdata, scale, zero_point, act_pre_scale, bias, out, y, has_bias, bits, group_size)
        return y
    _launch_gemm(wrap, config, x, qdata, scale, zero_point, act_pre_scale, bias, out, has_bias, bits, group_size)
    if partial:
        wrap(splitk_reduce_kernel)[(triton.cdiv(m * n, _REDUCE_BLOCK),)](
            out, bias, y, m, n, y.stride(0), SPLIT_K=config.split_k, HAS_BIAS=has_bias, BLOCK=_REDUCE_BLOCK,
        )  # fmt: skip
    return y


def _check_operands(x, qdata, scale, zero_point, act_pre_scale, bias, y, bits, group_size, name="", y_name="y"):
    """A clear error, naming the argument, for operands the kernels would read or write out of bounds: x (M, K)
    and y (M, N) with unit column stride, qdata int32 (N, packed_columns(K, bits)), scale and zero-point (N,
    groups) with one row stride, act_pre_scale (K,), bias (N,) or None, all on x's device."""
    if bits not in SUPPORTED_BITS or not group_size_supported(group_size):
        raise ValueError(f"bits must be one of {SUPPORTED_BITS} and group_size a power of two >= 32; got bits={bits}, "
                         f"group_size={group_size}")  # fmt: skip
    if x.dim() != 2 or x.stride(-1) != 1:
        raise ValueError(f"x must be (M, K) with unit column stride; got shape {tuple(x.shape)}, "
                         f"strides {x.stride()}")  # fmt: skip
    m, k = x.shape
    n = qdata.shape[0] if qdata.dim() == 2 else -1
    expected = {
        f"{name}qdata": (qdata, (n, packed_columns(k, bits)), torch.int32),
        f"{name}scale": (scale, (n, -(-k // group_size)), None),
        f"{name}zero_point": (zero_point, (n, -(-k // group_size)), None),
        f"{name}act_pre_scale": (act_pre_scale, (k,), None),
        y_name: (y, (m, n), None),
    }
    if bias is not None:
        expected[f"{name}bias"] = (bias, (n,), None)
    for arg, (tensor, shape, dtype) in expected.items():
        if tuple(tensor.shape) != shape or tensor.stride(-1) != 1:
            raise ValueError(f"{arg} must have shape {shape} with unit last stride for x of shape {(m, k)} and "
                             f"{bits}-bit codes in groups of {group_size}; got shape {tuple(tensor.shape)}, strides "
                             f"{tensor.stride()}")  # fmt: skip
        if dtype is not None and tensor.dtype != dtype:
            raise ValueError(f"{arg} must be {dtype}; got {tensor.dtype}")
        if tensor.device != x.device:
            raise ValueError(f"{arg} is on {tensor.device}, x on {x.device}")
    if scale.stride() != zero_point.stride():
        raise ValueError(f"{name}scale and {name}zero_point must have the same strides (the kernels index both with "
                         f"one row stride); got {scale.stride()} and {zero_point.stride()}")  # fmt: skip


def _inline_ptx() -> bool:
    """Whether the kernels may use inline PTX: not under Triton's interpreter (TRITON_INTERPRET=1), which executes
    none, nor on ROCm builds of torch (whose "cuda" tensors run on AMD GPUs)."""
    return os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and torch.version.hip is None


_POWER_OF_TWO_FIELDS = {  # Triton tiles are powers of two
    LaunchConfig: ("block_n", "groups_per_step", "block_m", "thread_rows"),
    GemmConfig: ("block_n", "block_m", "block_w"),
    MmaConfig: ("block_n", "block_m"),
    TileConfig: ("block_m", "block_n", "block_w"),
}


def _check_config(config: LaunchConfig | GemmConfig | MmaConfig | TileConfig) -> None:
    """A clear error for block sizes the kernels cannot compile (Triton tiles are powers of two; a tensor-core dot
    needs 16 rows and columns)."""
    if type(config) not in _POWER_OF_TWO_FIELDS:
        raise TypeError(f"config must be a LaunchConfig, GemmConfig, MmaConfig or TileConfig, got "
                        f"{type(config).__name__}")
    kind = type(config).__name__
    for name, value in config._asdict().items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{kind}.{name}={value!r} must be a positive integer")
    gemv = isinstance(config, LaunchConfig)
    if gemv and config.block_n % config.thread_rows:
        raise ValueError(f"LaunchConfig.thread_rows={config.thread_rows} must divide block_n={config.block_n}")
    if gemv and config.block_m > GEMV_MAX_BLOCK_M:
        raise ValueError(f"LaunchConfig.block_m={config.block_m} is above GEMV_MAX_BLOCK_M={GEMV_MAX_BLOCK_M} (the "
                         "GEMV unrolls over its activation rows; use a GemmConfig for more rows)")  # fmt: skip
    for name in _POWER_OF_TWO_FIELDS[type(config)]:
        value = getattr(config, name)
        if value & (value - 1):
            raise ValueError(f"{kind}.{name}={value} must be a power of two")
    if not gemv and min(config.block_n, config.block_m) < 16:
        raise ValueError(f"{kind} block_n={config.block_n} and block_m={config.block_m} must be at least 16")


def vector_thread_rows(block_n: int, groups_per_step: int, num_warps: int, bits: int, group_size: int) -> int:
    """The LaunchConfig.thread_rows that gives every thread of the GEMV four consecutive words of each of its rows
    (one 16-byte load) and the four columns' x and t that each code position meets (vector loads): the activation
    tile [thread rows, groups, words] then holds four words per thread and has the words tile's register layout,
    so neither goes through shared memory. At most block_n, and a power of two (codes of several bit planes, 6
    words per group at 3 bits and g64, read their planes' words apart: no 16-byte loads there)."""
    step_words = groups_per_step * max(1, _words_per_group(bits, group_size))
    return _power_of_two_floor(min(block_n, 4 * 32 * num_warps // step_words))


def _whole_steps(n_words: int, words_per_split: int, split_k: int, step: int, k: int, bits: int) -> bool:
    """EVEN_K of the GEMV and the older tensor-core kernel: every K slice is whole steps of ``step`` words, the
    slices cover the row exactly and no word holds columns past K, so every load is unmasked."""
    return words_per_split % step == 0 and words_per_split * split_k == n_words and n_words * 32 == k * bits


def _launch_gemv(wrap, config, x, qdata, scale, zero_point, act_pre_scale, bias, out, y, has_bias, bits, group_size):
    m, k = x.shape
    n = out.shape[-1]
    n_words, n_groups = qdata.shape[1], triton.cdiv(k, group_size)
    words_per_group = _words_per_group(bits, group_size)
    step = config.groups_per_step * words_per_group
    grid = (triton.cdiv(n, config.block_n), config.split_k, triton.cdiv(m, config.block_m))
    partial = config.split_k > 1
    # split-K counters, one per row block (unused without a split: any int32 buffer will do, no memset)
    counts = torch.zeros(grid[0] * grid[2], device=x.device, dtype=torch.int32) if partial else qdata
    words_per_split = triton.cdiv(n_groups, config.split_k) * words_per_group
    even_k = _whole_steps(n_words, words_per_split, config.split_k, step, k, bits)
    wrap(sinq_gemv_kernel)[grid](
        x, act_pre_scale, qdata, scale, zero_point, bias, out, y, counts, m, n, k, n_words, x.stride(0),
        qdata.stride(0), scale.stride(0), out.stride(-2), out.stride(0), y.stride(0), words_per_split, BITS=bits,
        GROUP=group_size, HAS_BIAS=has_bias, PARTIAL=partial, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        GROUPS_PER_STEP=config.groups_per_step, EVEN_K=even_k, ASM=_inline_ptx(), NUM_STAGES=config.num_stages,
        THREAD_ROWS=config.thread_rows, num_warps=config.num_warps,
    )  # fmt: skip


GROUP_MAX = 3  # weights per grouped GEMV launch (a layer's q, k and v projections)


def group_supported(x: torch.Tensor, weights: list[tuple[torch.Tensor, ...]]) -> bool:
    """Whether one grouped GEMV launch takes these (qdata, scale, zero_point, act_pre_scale) weights: 2 to GROUP_MAX
    of them on x's device in one format with the same strides, and at most GEMV_MAX_M activation rows."""
    if not 2 <= len(weights) <= GROUP_MAX or x.shape[0] > GEMV_MAX_M or x.stride(-1) != 1:
        return False
    qdata, scale, zero_point, _ = weights[0]
    return all(
        q.shape[1] == qdata.shape[1] and q.stride() == qdata.stride() and s.stride() == scale.stride()
        and z.stride() == s.stride() and s.dtype == scale.dtype and z.dtype == zero_point.dtype
        for q, s, z, _ in weights
    )  # fmt: skip


def default_group_config(m: int, n: int, k: int, bits: int, group_size: int, sm_count: int = 132) -> LaunchConfig:
    """Block sizes of the grouped GEMV over n rows in all, K unsplit: with at least 24 blocks of 8 rows per SM,
    32 rows per program laid 4 wide across threads (``vector_thread_rows``), 32-word steps (4 groups of 64 codes
    at 4 bits) and one warp; else 8 rows and 64-word steps with two warps, one row across threads. Kernel time
    on an H100, M = 1 (M = 2), gate + up of the 8B shape (28672 x 4096): 31.2 us (37.2) against 32.0 (39.7) for
    v9's 16 rows one across (benchmarks/results/h100/groups_v10_sweep.json); q + k + v (6144 x 4096): 10.1 us
    against 10.8 for 128-word steps (gemv_ab_v9.json)."""
    config = default_config(m, n, k, bits, group_size, sm_count)._replace(split_k=1)
    words_per_group = max(1, _words_per_group(bits, group_size))
    if -(-n // 8) >= 24 * sm_count:
        groups = _power_of_two_floor(32 // words_per_group)
        rows = vector_thread_rows(32, groups, 1, bits, group_size)
        groups = _filled_groups(groups, bits, group_size, 1, rows)
        return config._replace(block_n=32, groups_per_step=groups, num_warps=1, thread_rows=rows)
    groups = _filled_groups(_power_of_two_floor(64 // words_per_group), bits, group_size, 2)
    return config._replace(block_n=8, groups_per_step=groups, num_warps=2)


def launch_group(x, weights, ys, bits, group_size, config=None, launcher=None):
    """ys[i] = [s_i ⊙ (Q_i − z_i)] (t_i ⊙ x) for weights[i] = (Q_i, s_i, z_i, t_i), in one GEMV launch
    (``sinq_gemv_group_kernel``) with ``default_group_config``'s block sizes for all their rows together (or
    ``config``, K unsplit). ``group_supported`` must hold; each ys[i] is a contiguous (M, N_i) tensor."""
    if len(weights) != len(ys):
        raise ValueError(f"launch_group needs one output per weight; got {len(weights)} weights, {len(ys)} outputs")
    for i, ((q, s, z, t), y) in enumerate(zip(weights, ys, strict=True)):
        _check_operands(x, q, s, z, t, None, y, bits, group_size, name=f"weights[{i}].", y_name=f"ys[{i}]")
    m, k = x.shape
    if config is None:
        config = default_group_config(m, sum(y.shape[1] for y in ys), k, bits, group_size, _sm_count(x.device))
    _check_config(config)
    if config.split_k != 1:
        raise ValueError(f"the grouped GEMV does not split K; got LaunchConfig.split_k={config.split_k}")
    qdata, scale = weights[0][0], weights[0][1]
    n_words = qdata.shape[1]
    words_per_group = _words_per_group(bits, group_size)
    even_k = _whole_steps(n_words, n_words, 1, config.groups_per_step * words_per_group, k, bits)
    args = []  # per weight t, Q, s, z, y, N
    for (q, s, z, t), y in zip(weights, ys, strict=True):
        args += [t, q, s, z, y, y.shape[1]]
    # A missing third weight: the last one's inputs with N = 0 (no blocks) and an output of its own (an output
    # passed twice would be two outputs to torch.compile's functionalization, one of them never written).
    if len(weights) < GROUP_MAX:
        args += args[-6:-2] + [torch.empty(1, device=x.device, dtype=x.dtype), 0]
    grid = (sum(triton.cdiv(y.shape[1], config.block_n) for y in ys), 1, triton.cdiv(m, config.block_m))
    (launcher or (lambda kernel: kernel))(sinq_gemv_group_kernel)[grid](
        x, *args, m, k, n_words, x.stride(0), qdata.stride(0), scale.stride(0), BITS=bits,
        GROUP=group_size, BLOCK_M=config.block_m, BLOCK_N=config.block_n, GROUPS_PER_STEP=config.groups_per_step,
        EVEN_K=even_k, ASM=_inline_ptx(), NUM_STAGES=config.num_stages,
        THREAD_ROWS=config.thread_rows, num_warps=config.num_warps,
    )  # fmt: skip
    return ys


def _launch_gemm(wrap, config, x, qdata, scale, zero_point, act_pre_scale, bias, out, has_bias, bits, group_size):
    m, k = x.shape
    n = out.shape[-1]
    n_words = qdata.shape[1]
    block_w = gemm_step_words(config.block_w, bits, group_size)  # whole groups per step
    words_per_split = triton.cdiv(triton.cdiv(n_words, config.split_k), block_w) * block_w
    # no word holding columns past K either: the unmasked kernel would read x there when the caller prescales it
    even_k = _whole_steps(n_words, words_per_split, config.split_k, block_w, k, bits)
    grid = (triton.cdiv(n, config.block_n), config.split_k, triton.cdiv(m, config.block_m))
    prescaled = config.block_m >= PRESCALE_MIN_BLOCK_M
    if prescaled:
        x = x * act_pre_scale
    wrap(sinq_gemm_kernel)[grid](
        x, act_pre_scale, qdata, scale, zero_point, bias, out, m, n, k, n_words, x.stride(0), qdata.stride(0),
        scale.stride(0), out.stride(-2), out.stride(0), words_per_split, BITS=bits, GROUP=group_size,
        HAS_BIAS=has_bias, PARTIAL=config.split_k > 1, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        BLOCK_W=block_w, EVEN_K=even_k, PRESCALED=prescaled, ASM=_inline_ptx(),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip


def _launch_mma(wrap, config, x, qdata, scale, zero_point, act_pre_scale, bias, out, y, has_bias, bits, group_size):
    m, k = x.shape
    n_groups = k // group_size
    xp = torch.empty(m, k, device=x.device, dtype=x.dtype)
    xsum = torch.empty(m, n_groups, device=x.device, dtype=torch.float32)
    # split-K counters, one per row block, zeroed by the activation pass (unused without a split)
    blocks = triton.cdiv(out.shape[-1], config.block_n) * triton.cdiv(m, config.block_m)
    partial = config.split_k > 1
    counts = torch.empty(blocks, device=x.device, dtype=torch.int32) if partial else xsum
    _mma_activations(wrap, x, act_pre_scale, xp, xsum, counts, blocks if partial else 0, bits, group_size)
    _mma_product(wrap, config, xp, xsum, qdata, scale, zero_point, bias, out, y, counts, has_bias, bits, group_size)


def _mma_activations(wrap, x, act_pre_scale, xp, xsum, counts, n_counts, bits, group_size):
    """The first launch of sinq_mma_kernel's path: x' and its per-group sums into xp and xsum, and n_counts
    split-K counters zeroed."""
    m, k = x.shape
    n_groups = xsum.shape[1]
    groups = 4  # per program
    wrap(mma_activations_kernel)[(m, triton.cdiv(n_groups, groups))](
        x, act_pre_scale, xp, xsum, counts, k, n_groups, x.stride(0), xp.stride(0), xsum.stride(0), n_counts,
        BITS=bits, GROUP=group_size, GROUPS=groups, COUNT_BLOCK=256, num_warps=2,
    )  # fmt: skip


def _mma_product(wrap, config, xp, xsum, qdata, scale, zero_point, bias, out, y, counts, has_bias, bits, group_size):
    """The second launch: y (or out[split] plus the in-kernel reduction into y) from x', xsum and the codes."""
    m, n_groups = xsum.shape
    n = y.shape[1]
    grid = (triton.cdiv(n, config.block_n), config.split_k, triton.cdiv(m, config.block_m))
    wrap(sinq_mma_kernel)[grid](
        xp, xsum, qdata, scale, zero_point, bias, out, y, counts, m, n, n_groups, xp.stride(0), xsum.stride(0),
        qdata.stride(0), scale.stride(0), out.stride(-2), out.stride(0), y.stride(0),
        triton.cdiv(n_groups, config.split_k), BITS=bits, GROUP=group_size, HAS_BIAS=has_bias,
        SPLIT_K=config.split_k, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        GROUPS_PER_STEP=config.groups_per_step, ASM=_inline_ptx(),
        NUM_STAGES=config.num_stages, num_warps=config.num_warps,
    )  # fmt: skip


def _launch_tile(wrap, config, x, qdata, scale, zero_point, act_pre_scale, bias, out, y, has_bias, bits, group_size):
    m, k = x.shape
    n, n_words = y.shape[1], qdata.shape[1]
    block_w = max(config.block_w, _words_per_group(bits, group_size))
    while n_words % block_w:  # whole steps: halve down to one group per step (K is a whole number of groups)
        block_w //= 2
    words_per_split = triton.cdiv(n_words // block_w, config.split_k) * block_w
    grid = (triton.cdiv(m, config.block_m), config.split_k, triton.cdiv(n, config.block_n))
    partial = config.split_k > 1
    xp = torch.empty(m, k, device=x.device, dtype=x.dtype)
    blocks = grid[0] * grid[2]
    counts = torch.empty(blocks, device=x.device, dtype=torch.int32) if partial else qdata
    block = 1024
    wrap(tile_activations_kernel)[(m, triton.cdiv(k, block))](
        x, act_pre_scale, xp, counts, k, x.stride(0), xp.stride(0), blocks if partial else 0, BLOCK=block,
        COUNT_BLOCK=256, num_warps=4,
    )  # fmt: skip
    wrap(sinq_tile_kernel)[grid](
        xp, qdata, scale, zero_point, bias, out, y, counts, m, n, n_words, xp.stride(0), qdata.stride(0),
        scale.stride(0), out.stride(-2), out.stride(0), y.stride(0), words_per_split, BITS=bits, GROUP=group_size,
        HAS_BIAS=has_bias, SPLIT_K=config.split_k, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_W=block_w,
        ASM=_inline_ptx(), NUM_STAGES=config.num_stages, num_warps=config.num_warps,
    )  # fmt: skip


def _same_strides(scale: torch.Tensor, zero_point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels index scale and zero-point with one row stride: make both contiguous when they differ."""
    if scale.stride() != zero_point.stride():
        return scale.contiguous(), zero_point.contiguous()
    return scale, zero_point


def dequantize(qdata, scale, zero_point, bits: int, group_size: int, in_features: int, dtype) -> torch.Tensor:
    """The (N, K) weight s ⊙ (Q − z) in ``dtype`` (no column scale), unpacked by one Triton kernel: the eager
    path for products above FUSED_MAX_M rows (under torch.compile Inductor fuses the PyTorch unpack)."""
    n = qdata.shape[0]
    scale, zero_point = _same_strides(scale, zero_point)
    dense = torch.empty(n, in_features, device=qdata.device, dtype=dtype)
    block_n, block_k = 16, 256
    dequantize_kernel[(triton.cdiv(n, block_n), triton.cdiv(in_features, block_k))](
        qdata, scale, zero_point, dense, n, in_features, qdata.stride(0), scale.stride(0), dense.stride(0),
        BITS=bits, GROUP=group_size, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )  # fmt: skip
    return dense


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


@torch.library.triton_op("sinq_ao::linear_group", mutates_args=())
def sinq_linear_group_op(
    x: torch.Tensor,
    qdata: list[torch.Tensor],
    scale: list[torch.Tensor],
    zero_point: list[torch.Tensor],
    act_pre_scale: list[torch.Tensor],
    bits: int,
    group_size: int,
) -> list[torch.Tensor]:
    """[s_i ⊙ (Q_i − z_i)] (t_i ⊙ x) for each weight i, in one grouped GEMV launch (``group_supported`` holds)."""
    ys = [torch.empty(x.shape[0], q.shape[0], dtype=x.dtype, device=x.device) for q in qdata]
    weights = list(zip(qdata, scale, zero_point, act_pre_scale, strict=True))
    return launch_group(x, weights, ys, bits, group_size, launcher=torch.library.wrap_triton)


def fused_linear(x, qdata, scale, zero_point, act_pre_scale, bias, bits, group_size):
    """Flatten leading dims, call the op, restore them."""
    x2d = x.reshape(-1, x.shape[-1]).contiguous()
    scale, zero_point = _same_strides(scale, zero_point)
    y = torch.ops.sinq_ao.linear(x2d, qdata, scale, zero_point, act_pre_scale.to(x.dtype),
                                 None if bias is None else bias.to(x.dtype), bits, group_size)  # fmt: skip
    return y.reshape(*x.shape[:-1], qdata.shape[0])
