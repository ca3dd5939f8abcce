"""The Triton Sinkhorn kernel against the PyTorch reference (SPEC §3): on CPU through Triton's interpreter, compiled
ahead of time for sm_90 without a GPU, and on the GPU."""

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from sinq_ao.sinkhorn import _LOG_CLIP, _STD_CLAMP, _STEP_CLAMP, SINKHORN_STEPS, sinkhorn_normalize
from tests.helpers import (
    assert_passes_under_the_interpreter,
    compile_for_sm90,
    relative_error,
    requires_cuda,
    requires_interpreter,
    requires_triton,
)
from tests.test_sinkhorn import spec_normalize

TOLERANCE = {"cpu": {"rtol": 1e-5, "atol": 1e-6}, "cuda": {"rtol": 1e-4, "atol": 1e-6}}  # GPU exp/log are approximate


def kernel_factors(tiles: torch.Tensor, steps: int = SINKHORN_STEPS, block_rows: int | None = None):
    """Row and column factors from the kernel (called directly: under the interpreter tiles are CPU tensors)."""
    from sinq_ao.kernels.sinkhorn_kernel import sinkhorn_factors

    return sinkhorn_factors(tiles, steps, _STD_CLAMP, _STEP_CLAMP, _LOG_CLIP, block_rows=block_rows)


def scaled_tiles(shape, seed: int, spread: float = 1.0) -> torch.Tensor:
    """Gaussian tiles (..., R, C) times log-normal row and column scales of their own: several steps, then a rise."""
    gen = torch.Generator().manual_seed(seed)
    rows = (torch.randn(*shape[:-1], 1, generator=gen) * spread).exp()
    cols = (torch.randn(*shape[:-2], 1, shape[-1], generator=gen) * spread).exp()
    return torch.randn(*shape, generator=gen) * rows * cols


def assert_factors_match_reference(tiles: torch.Tensor, device: str, steps: int = SINKHORN_STEPS, block_rows=None):
    expected = sinkhorn_normalize(tiles.cpu(), steps)
    rows, cols = (factors.cpu() for factors in kernel_factors(tiles.to(device), steps, block_rows))
    assert rows.shape == expected.row_factors.shape and cols.shape == expected.col_factors.shape
    torch.testing.assert_close(rows, expected.row_factors, **TOLERANCE[device])
    torch.testing.assert_close(cols, expected.col_factors, **TOLERANCE[device])


def weight_tiles(n: int, k: int, rows: int, group_size: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """The (nb, ng, R, C) transposed view of an (n, k) weight that quantize_weight hands to the normalisation."""
    w = scaled_tiles((n, k), seed).to(device)
    return w.reshape(n // rows, rows, k // group_size, group_size).transpose(1, 2)


def check_cases(device: str) -> None:
    """Every case against the CPU reference, printing one line per case; raises on the first miss."""
    cases = {
        "several row blocks, ragged last": (scaled_tiles((1, 3, 70, 64), 0), 16),
        "C not a power of two": (scaled_tiles((2, 2, 33, 48), 1), None),
        "two rows": (scaled_tiles((1, 1, 2, 16), 2), None),
        "two columns": (scaled_tiles((1, 2, 5, 2), 3), None),
        "square tiles": (scaled_tiles((3, 1, 64, 64), 4, spread=2.0), None),
        "one 2-D tile": (scaled_tiles((37, 20), 5), 8),
        "3-D batch": (scaled_tiles((4, 19, 24), 6), None),
        "1D tiling view": (weight_tiles(50, 4 * 32, 50, 32, 7), None),
        "2D tiling view": (weight_tiles(64, 4 * 16, 16, 16, 8), 4),
        "bfloat16": (scaled_tiles((2, 1, 40, 32), 9).bfloat16(), 16),
        "float16": (scaled_tiles((2, 1, 40, 32), 10).half(), None),
        "no tiles": (torch.zeros(0, 2, 5, 8), None),
    }
    for name, (tiles, block_rows) in cases.items():
        assert_factors_match_reference(tiles, device, block_rows=block_rows)
        print(f"{name} {tuple(tiles.shape)}: ok", flush=True)
    for steps in (0, 1, 2, 3):  # few steps: the last state is the best one, recorded after the loop
        assert_factors_match_reference(scaled_tiles((2, 1, 24, 16), 11), device, steps=steps, block_rows=8)
        print(f"{steps} steps: ok", flush=True)


def check_constant_tiles_keep_finite_factors(device: str) -> None:
    """Rows or columns without spread: their stds are rounding noise, on which the kernel and the reference may stop
    at different steps; the factors only have to stay finite and positive."""
    for tile in (torch.zeros(16, 32), torch.ones(16, 32), torch.zeros(16, 32).index_fill_(0, torch.tensor([3]), 2.0)):
        for factors in kernel_factors(tile.to(device)):
            assert torch.isfinite(factors).all() and (factors > 0).all()
    print("constant tiles: ok", flush=True)


# The subprocess loads no conftest profile; the interpreter is too slow for many examples or for shrinking.
@settings(max_examples=10, deadline=None, database=None, phases=[Phase.explicit, Phase.generate])
@given(st.tuples(st.integers(1, 2), st.integers(2, 40), st.integers(2, 40)), st.integers(0, 2**31 - 1),
       st.floats(0.0, 2.5))  # fmt: skip
def check_kernel_matches_literal_spec(shape, seed, spread):
    """Random shapes and spreads against SPEC §3 in float64 (tiles of 2+ rows and columns: the spec's std of one
    element is NaN), skipping tiles with a near-tie step as test_sinkhorn does."""
    tiles = scaled_tiles(shape, seed, spread)
    rows, cols = kernel_factors(tiles, block_rows=8)
    for i in range(shape[0]):
        _, expected_rows, expected_cols, margin = spec_normalize(tiles[i])
        if margin < 1e-4:  # float32 rounding may decide a near-tie either way
            continue
        torch.testing.assert_close(rows[i].double(), expected_rows, rtol=2e-4, atol=0)
        torch.testing.assert_close(cols[i].double(), expected_cols, rtol=2e-4, atol=0)


def run_interpreter_cases() -> None:
    """Entry point for the TRITON_INTERPRET=1 subprocess."""
    check_cases("cpu")
    check_constant_tiles_keep_finite_factors("cpu")
    check_kernel_matches_literal_spec()
    print("hypothesis examples: ok")
    print("interpreter cases passed")


@requires_triton
@requires_interpreter
def test_kernel_matches_reference_under_the_triton_interpreter():
    assert_passes_under_the_interpreter("tests.test_sinkhorn_kernel")


def compile_for_hopper(tiles_type: str, block_rows: int, block_cols: int, num_warps: int) -> str:
    """Compile the kernel ahead of time for sm_90 (Triton ships ptxas) as a launch on a weight view specialises it:
    unit column stride, 16-divisible pointers, row stride and sizes. Returns the PTX."""
    from sinq_ao.kernels.sinkhorn_kernel import sinkhorn_kernel

    names = sinkhorn_kernel.arg_names
    constants = {"STD_LO": _STD_CLAMP[0], "STD_HI": _STD_CLAMP[1], "STEP_LO": _STEP_CLAMP[0], "STEP_HI": _STEP_CLAMP[1],
                 "LOG_LO": _LOG_CLIP[0], "LOG_HI": _LOG_CLIP[1], "BLOCK_R": block_rows, "BLOCK_C": block_cols,
                 "NUM_STAGES": 2, "stride_c": 1}  # fmt: skip
    aligned = [name for name in names if name.endswith("_ptr") or name in ("rows", "cols", "stride_b", "stride_r")]
    return compile_for_sm90(sinkhorn_kernel, constants, {"tiles_ptr": tiles_type}, "*fp32", aligned,
                            num_warps=num_warps).asm["ptx"]  # fmt: skip


@requires_triton
@pytest.mark.parametrize("tiles_type, block_rows, block_cols, num_warps", [("*fp32", 64, 64, 8), ("*bf16", 16, 128, 4)])
def test_kernel_compiles_for_hopper_without_a_gpu(tiles_type, block_rows, block_cols, num_warps):
    ptx = compile_for_hopper(tiles_type, block_rows, block_cols, num_warps)
    assert ".entry sinkhorn_kernel" in ptx and "bar.sync" in ptx  # the barrier between steps survived


@requires_cuda
def test_kernel_matches_reference_on_gpu_over_small_and_odd_shapes():
    check_cases("cuda")
    check_constant_tiles_keep_finite_factors("cuda")


@requires_cuda
def test_gpu_normalisation_matches_cpu_reference_on_a_weight_sized_view():
    """sinkhorn_normalize on CUDA (the kernel) vs on CPU (PyTorch) for the (1, 64, 4096, 64) view of a 4096^2 weight."""
    tiles = weight_tiles(4096, 4096, 4096, 64, seed=12)
    expected = sinkhorn_normalize(tiles)
    result = sinkhorn_normalize(weight_tiles(4096, 4096, 4096, 64, seed=12, device="cuda"))
    checked = 0
    for g in range(tiles.shape[1]):
        if spec_normalize(tiles[0, g])[3] < 1e-4:  # a near-tie step: float32 rounding may decide it either way
            continue
        torch.testing.assert_close(result.row_factors[0, g].cpu(), expected.row_factors[0, g], **TOLERANCE["cuda"])
        torch.testing.assert_close(result.col_factors[0, g].cpu(), expected.col_factors[0, g], **TOLERANCE["cuda"])
        assert relative_error(result.normalized[0, g].cpu(), expected.normalized[0, g]) < 1e-4
        checked += 1
    assert checked >= tiles.shape[1] // 2, f"only {checked} tiles without a near-tie step"


@requires_cuda
def test_tiles_of_one_row_or_column_take_the_reference_path_on_gpu():
    """A single row or column has no spread; its first rise is rounding noise (even CPU and GPU PyTorch disagree
    there), so the GPU uses the PyTorch path for such tiles: the result is that path's, on the same device."""
    from sinq_ao.sinkhorn import _reference_factors

    for shape in [(1, 1, 1, 16), (1, 2, 5, 1)]:
        tiles = scaled_tiles(shape, 2).cuda()
        rows, cols = _reference_factors(tiles, SINKHORN_STEPS)
        got = sinkhorn_normalize(tiles, SINKHORN_STEPS)
        assert torch.equal(got.row_factors, rows) and torch.equal(got.col_factors, cols)


if __name__ == "__main__":
    run_interpreter_cases()
