"""Kernel-vs-reference checks shared by the GPU tests and the CPU Triton-interpreter test."""

import torch

from sinq_ao import SINQTensor
from sinq_ao.kernels import (
    GemmConfig,
    LaunchConfig,
    MmaConfig,
    TileConfig,
    default_tile_config,
    dequantize,
    gemm_step_words,
    launch,
    launch_group,
)
from tests.helpers import compile_for_sm90


def kernel_relative_error(bits, m, n, k, group_size, dtype, device, config=None, seed=0, bias=True,
                          x_scale=1.0) -> float:  # fmt: skip
    """Relative error of the kernel against x·t @ dequant(W)ᵀ in float64, with a NaN-poisoned output buffer; the
    activations are standard normal times ``x_scale``."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=gen) * (torch.randn(1, k, generator=gen).exp())
    w = SINQTensor.from_hp(weight.to(device=device, dtype=dtype), bits=bits, group_size=group_size)
    x = (torch.randn(m, k, generator=gen) * x_scale).to(device=device, dtype=dtype)
    b = (torch.randn(n, generator=gen) * x_scale).to(device=device, dtype=dtype) if bias else None
    reference = torch.nn.functional.linear(
        x.double() * w.act_pre_scale.double(),
        w.dequantize(torch.float64, with_col_scale=False),
        None if b is None else b.double(),
    )
    y = torch.full((m, n), float("nan"), device=device, dtype=dtype)  # unwritten elements stay NaN and fail
    launch(x, w.qdata, w.scale, w.zero_point, w.act_pre_scale, b, y, bits, group_size, config=config)
    if not torch.isfinite(y).all():
        return float("inf")
    return ((y.double() - reference).norm() / reference.norm()).item()


def group_relative_error(bits, m, ns, k, group_size, dtype, device, config=None, seed=0) -> float:
    """The largest relative error of the grouped GEMV's outputs (weights of ns rows sharing x) against each
    weight's x·t @ dequant(W)ᵀ in float64, outputs NaN-poisoned."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    weights, references, ys = [], [], []
    for n in ns:
        weight = torch.randn(n, k, generator=gen) * (torch.randn(1, k, generator=gen).exp())
        w = SINQTensor.from_hp(weight.to(device=device, dtype=dtype), bits=bits, group_size=group_size)
        weights.append((w.qdata, w.scale, w.zero_point, w.act_pre_scale))
        references.append(x.double() @ (w.act_pre_scale.double()[:, None] * w.dequantize(
            torch.float64, with_col_scale=False).t()))  # fmt: skip
        ys.append(torch.full((m, n), float("nan"), device=device, dtype=dtype))
    launch_group(x, weights, ys, bits, group_size, config=config)
    if not all(torch.isfinite(y).all() for y in ys):
        return float("inf")
    return max(((y.double() - r).norm() / r.norm()).item() for y, r in zip(ys, references, strict=True))


def dequantize_relative_error(bits, n, k, group_size, dtype, device, seed=0) -> float:
    """Relative error of the unpack kernel against SINQTensor.dequantize (without t), float64 reference."""
    gen = torch.Generator().manual_seed(seed)
    w = SINQTensor.from_hp(torch.randn(n, k, generator=gen).to(device=device, dtype=dtype), bits=bits,
                           group_size=group_size)  # fmt: skip
    reference = w.dequantize(torch.float64, with_col_scale=False)
    dense = dequantize(w.qdata, w.scale, w.zero_point, bits, group_size, k, dtype)
    if dense.shape != reference.shape or not torch.isfinite(dense).all():
        return float("inf")
    return ((dense.double() - reference).norm() / reference.norm()).item()


# Small cases for the CPU interpreter: every kernel bit width, with and without split-K, M up to GEMV_MAX_M, ragged N
# and K (the last group shorter, K not a multiple of 32), several groups per K step.
INTERPRETER_CASES = [
    (bits, m, n, k, g, config)
    for bits in (2, 4, 8)
    for m, n, k, g, config in [
        (1, 24, 192, 64, None),
        (3, 40, 320, 64, LaunchConfig(16, 2, split_k=3, block_m=4)),  # uneven split, one block of 3 rows
        (2, 16, 576, 128, LaunchConfig(8, 2, split_k=2)),  # K = 4.5 groups: ragged last group; one m per block
        (4, 16, 200, 64, LaunchConfig(4, 1, block_m=2)),  # K not a multiple of 32
        (7, 24, 256, 64, LaunchConfig(8, 2, block_m=4)),  # M not a multiple of the row block
        (2, 40, 320, 64, LaunchConfig(16, 2, split_k=2, thread_rows=4)),  # rows 4 wide across threads, ragged N
        (20, 40, 320, 64, GemmConfig(16, 16, 16, split_k=2)),  # tensor-core kernel: ragged M, N and K slices
        (5, 16, 512, 128, None),  # default tensor-core configuration (M > GEMV_MAX_M; float16: sinq_mma_kernel)
        (17, 24, 200, 64, GemmConfig(16, 32, 16)),  # K not a multiple of 32
        (70, 24, 256, 64, GemmConfig(32, 64, 16)),  # t ⊙ x computed by the caller (block_m >= 64)
        (70, 24, 240, 32, GemmConfig(16, 64, 32 * bits // 4)),  # that, whole steps and K not a multiple of 32
    ]
]

# Codes of several bit planes (3 = 2 + 1, 5, 6, 7 bits) and of one bit, which the GEMV and the older tensor-core
# kernel read: the defaults for one and two rows, explicit GEMV blocks up to GEMV_MAX_BLOCK_M rows, K splits, ragged
# N and K, rows across threads; then the tensor-core kernel's defaults (M = 5) and explicit blocks (ragged M, N and K
# slices, K not a multiple of 32, a ragged last group of 128, t ⊙ x computed by the caller, 1 to 4 groups per step).
INTERPRETER_PLANE_CASES = [
    (3, 1, 24, 192, 64, None),
    (3, 2, 40, 576, 128, None),  # K = 4.5 groups of 128: ragged last group
    (3, 3, 40, 320, 64, LaunchConfig(16, 2, split_k=3, block_m=4)),
    (3, 4, 16, 200, 64, LaunchConfig(4, 1, block_m=2)),  # K not a multiple of 32
    (3, 2, 40, 320, 64, LaunchConfig(16, 2, split_k=2, thread_rows=4)),
    (3, 1, 24, 256, 32, LaunchConfig(8, 4, thread_rows=2)),  # groups of one chunk
] + [(bits, m, n, k, 64, config) for bits in (1, 5, 6, 7) for m, n, k, config in [
    (1, 24, 192, None), (3, 40, 200, LaunchConfig(16, 2, split_k=2, block_m=4, thread_rows=2))]] + [
    (3, 5, 24, 192, 64, None),
    (3, 20, 40, 320, 64, GemmConfig(16, 16, 16, split_k=2)),
    (3, 17, 24, 200, 64, GemmConfig(16, 32, 32)),
    (3, 4, 16, 576, 128, GemmConfig(16, 16, 8)),
    (3, 70, 24, 256, 64, GemmConfig(32, 64, 16)),
    (3, 70, 24, 200, 32, GemmConfig(16, 64, 2)),  # t ⊙ x prescaled, whole steps, K not a multiple of 32
    (1, 5, 24, 192, 64, None),
    (5, 20, 40, 320, 64, GemmConfig(16, 16, 16, split_k=2)),
    (6, 5, 24, 256, 32, None),
    (7, 17, 24, 200, 64, None),
]

# The register-operand kernel reads 16-bit activations only (float16 here): M, N ragged, K split, 2 and 4 bits.
INTERPRETER_MMA_CASES = [
    (4, 3, 70, 256, 64, MmaConfig(64, 16)),
    (4, 20, 140, 512, 64, MmaConfig(128, 16, 2)),
    (4, 33, 64, 256, 128, MmaConfig(64, 32, 2)),
    (2, 5, 64, 512, 128, MmaConfig(64, 16, 4)),
    (4, 6, 72, 704, 64, MmaConfig(64, 16, 2, groups_per_step=2)),  # 11 groups: a ragged last step in each slice
    (4, 3, 64, 128, 64, None),  # the default for M = 3 (M <= GEMV_MAX_M = 2 runs the GEMV)
]


# The many-row kernel (16-bit activations, float16 here): ragged M and N, K splits incl. an empty slice, steps
# halved to divide the row, 2 and 8 bits, the default configuration.
INTERPRETER_TILE_CASES = [
    (4, 20, 70, 256, 64, TileConfig(16, 32, 8)),
    (4, 33, 64, 512, 64, TileConfig(32, 16, 16, split_k=3)),
    (2, 17, 40, 512, 128, TileConfig(16, 16, 8, split_k=2)),
    (8, 18, 24, 256, 64, TileConfig(16, 16, 16)),
    (4, 70, 48, 384, 128, TileConfig(32, 16, 64, split_k=2)),  # 48 words per row: 64-word steps halve to 16
    (4, 5, 64, 192, 32, TileConfig(16, 16, 8, split_k=4)),  # 3 steps in 4 slices: one slice empty
    (4, 130, 40, 256, 64, None),  # default_tile_config (the dispatcher would pick the older kernel here)
]


# The grouped GEMV (two or three weights sharing x): ragged N per weight, K not a multiple of a step or of 32.
INTERPRETER_GROUP_CASES = [
    (4, 1, (24, 8, 8), 256, 64, None),
    (4, 2, (40, 16), 320, 64, LaunchConfig(16, 2)),
    (2, 1, (17, 30, 9), 576, 128, LaunchConfig(8, 2, block_m=1)),
    (8, 2, (16, 24, 8), 200, 64, LaunchConfig(4, 1, block_m=2)),
    (4, 2, (40, 24), 256, 64, LaunchConfig(32, 2, num_warps=1, block_m=2, thread_rows=4)),  # rows 4 wide across threads
    (3, 1, (24, 8, 8), 320, 64, None),  # codes of two bit planes
    (3, 2, (40, 24), 256, 64, LaunchConfig(32, 2, num_warps=1, block_m=2, thread_rows=4)),
]


def run_interpreter_cases() -> None:
    """Entry point for the TRITON_INTERPRET=1 subprocess: print one line per case, fail loudly on a miss."""
    # The interpreter emulates bf16 casts incorrectly (numpy has no bf16), so check float16 and float32 here;
    # bf16 is covered by the GPU tests.
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.float16, 5e-3)):
        for bits, m, n, k, g, config in INTERPRETER_CASES:
            error = kernel_relative_error(bits, m, n, k, g, dtype, "cpu", config)
            print(f"{dtype} bits={bits} M={m} N={n} K={k} g={g}: {error:.2e}", flush=True)
            assert error < tolerance, (dtype, bits, m, n, k, g, error)
        for bits, m, n, k, g, config in INTERPRETER_PLANE_CASES:
            error = kernel_relative_error(bits, m, n, k, g, dtype, "cpu", config)
            print(f"{dtype} several planes / one bit, bits={bits} M={m} N={n} K={k} g={g}: {error:.2e}", flush=True)
            assert error < tolerance, (dtype, bits, m, n, k, g, error)
        for bits, n, k, g in [(2, 24, 192, 64), (4, 40, 200, 64), (8, 17, 576, 128), (3, 40, 200, 64), (1, 24, 192, 64),
                              (5, 17, 576, 128), (6, 24, 256, 32), (7, 40, 200, 64)]:  # fmt: skip
            error = dequantize_relative_error(bits, n, k, g, dtype, "cpu")
            print(f"{dtype} dequantize bits={bits} N={n} K={k} g={g}: {error:.2e}", flush=True)
            assert error < tolerance, (dtype, bits, n, k, g, error)
    # The GEMV's subnormal codes keep fp32 accuracy over the activation range its docstring states (|t ⊙ x| below
    # 2^43, products above 2^-62): max |t ⊙ x| is 61 · x_scale here, so 3e12 at the top; 1e-15 at the bottom
    for x_scale in (5e10, 1e-15):
        for bits in (2, 3, 4, 7, 8):
            error = kernel_relative_error(bits, 2, 24, 256, 64, torch.float32, "cpu", x_scale=x_scale)
            print(f"float32 GEMV bits={bits} activations x {x_scale:g}: {error:.2e}", flush=True)
            assert error < 1e-4, (bits, x_scale, error)
    for bits, m, n, k, g, config in INTERPRETER_MMA_CASES:
        error = kernel_relative_error(bits, m, n, k, g, torch.float16, "cpu", config)
        print(f"float16 register-operand bits={bits} M={m} N={n} K={k} g={g}: {error:.2e}", flush=True)
        assert error < 5e-3, (bits, m, n, k, g, error)
    for bits, m, n, k, g, config in INTERPRETER_TILE_CASES:
        config = config or default_tile_config(m, n, k, bits)
        error = kernel_relative_error(bits, m, n, k, g, torch.float16, "cpu", config)
        print(f"float16 many-row bits={bits} M={m} N={n} K={k} g={g} {config}: {error:.2e}", flush=True)
        assert error < 5e-3, (bits, m, n, k, g, error)
    for bits, m, ns, k, g, config in INTERPRETER_GROUP_CASES:
        error = group_relative_error(bits, m, ns, k, g, torch.float16, "cpu", config)
        print(f"float16 grouped GEMV bits={bits} M={m} N={ns} K={k} g={g}: {error:.2e}", flush=True)
        assert error < 5e-3, (bits, m, ns, k, g, error)
    print("interpreter cases passed")


if __name__ == "__main__":
    run_interpreter_cases()


# Pointer types of the linear kernels' arguments for an ahead-of-time build (the others point to bf16).
POINTER_TYPES = {"q_ptr": "*i32", "out_ptr": "*fp32", "partial_ptr": "*fp32", "counts_ptr": "*i32", "xsum_ptr": "*fp32",
                 "q0_ptr": "*i32", "q1_ptr": "*i32", "q2_ptr": "*i32"}


def compile_for_hopper(bits: int, group_size: int = 64) -> list[str]:
    """Compile the kernels that read ``bits``-wide codes ahead of time for sm_90 (no GPU needed: Triton ships
    ptxas); returns the kernel names."""
    from sinq_ao.kernels.triton_kernels import (
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

    common = {"BITS": bits, "GROUP": group_size}
    kernels = [
        (sinq_gemv_kernel, {**common, "HAS_BIAS": True, "PARTIAL": True, "BLOCK_M": 2, "BLOCK_N": 8,
                            "GROUPS_PER_STEP": 4, "EVEN_K": False, "ASM": True, "NUM_STAGES": 3,
                            "THREAD_ROWS": 1}),  # fmt: skip
        (sinq_gemv_group_kernel, {**common, "BLOCK_M": 1, "BLOCK_N": 8, "GROUPS_PER_STEP": 2, "EVEN_K": True,
                                  "ASM": True, "NUM_STAGES": 3, "THREAD_ROWS": 4}),
        (sinq_gemm_kernel, {**common, "HAS_BIAS": True, "PARTIAL": False, "BLOCK_M": 16, "BLOCK_N": 64,
                            "BLOCK_W": gemm_step_words(16, bits, group_size), "EVEN_K": False, "PRESCALED": False,
                            "ASM": True}),  # fmt: skip
        (splitk_reduce_kernel, {"SPLIT_K": 4, "HAS_BIAS": True, "BLOCK": 1024}),
        (dequantize_kernel, {**common, "BLOCK_N": 16, "BLOCK_K": 256}),
        (tile_activations_kernel, {"BLOCK": 1024, "COUNT_BLOCK": 256}),
        (sinq_tile_kernel, {**common, "HAS_BIAS": True, "SPLIT_K": 2, "BLOCK_M": 64, "BLOCK_N": 128,
                            "BLOCK_W": 2 * bits, "ASM": True, "NUM_STAGES": 3}),
    ]
    if bits not in (2, 4, 8):  # codes of several bit planes (and of one bit): the GEMVs, the older tensor-core
        kernels = kernels[:5]  # kernel and the unpack kernel
    if bits in (2, 4):  # the register-operand kernel needs 16 halves per group: 128 codes at 2 bits
        mma = {"BITS": bits, "GROUP": max(group_size, 256 // bits)}
        kernels += [(mma_activations_kernel, {**mma, "GROUPS": 4, "COUNT_BLOCK": 256}),
                    (sinq_mma_kernel, {**mma, "HAS_BIAS": True, "SPLIT_K": 2, "BLOCK_M": 16, "BLOCK_N": 128,
                                       "GROUPS_PER_STEP": 2, "ASM": True, "NUM_STAGES": 3})]  # fmt: skip
    names = []
    for kernel, constants in kernels:
        compiled = compile_for_sm90(kernel, constants, POINTER_TYPES, num_warps=4, num_stages=3)
        assert "ptx" in compiled.asm
        names.append(compiled.name)
    return names
