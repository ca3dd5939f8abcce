"""benchmarks/access_pattern.py's streaming kernels: both word arrangements fold every word once and every operand
mode sums what it reads (CPU, through Triton's interpreter), and they build for sm_90 with the GEMV's pipeline."""

import torch

from benchmarks.access_pattern import row_sums, tile_words
from tests.helpers import assert_passes_under_the_interpreter, compile_for_sm90, requires_interpreter


def test_tile_words_puts_each_programs_step_in_one_contiguous_block():
    q = torch.arange(4 * 8, dtype=torch.int32).view(4, 8)  # 4 rows of 8 words
    tiles = tile_words(q, block_n=2, step=4).view(-1, 2, 4)
    # block 0 step 0, block 0 step 1, block 1 step 0, block 1 step 1
    for index, (block, step) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert torch.equal(tiles[index], q[2 * block : 2 * block + 2, 4 * step : 4 * step + 4])


def test_row_sums_wrap_like_int32():
    q = torch.tensor([[2**31 - 1, 1], [-(2**31), -1]], dtype=torch.int32)
    assert row_sums(q).tolist() == [-(2**31), 2**31 - 1]


@requires_interpreter
def test_stream_kernel_reads_both_arrangements_under_the_interpreter():
    assert_passes_under_the_interpreter("benchmarks.access_pattern", "check_stream_kernel")


@requires_interpreter
def test_operands_kernel_sums_each_operand_it_reads_under_the_interpreter():
    assert_passes_under_the_interpreter("benchmarks.access_pattern", "check_operands_kernel")


def test_operands_kernel_builds_for_hopper_with_a_cp_async_pipeline():
    from benchmarks.access_pattern import operands_kernel

    constants = {"BLOCK_N": 32, "STEP": 32, "WPG": 8, "SCALES": True, "PACKED": False, "ACTIVATIONS": True,
                 "NUM_STAGES": 3}  # fmt: skip
    compiled = compile_for_sm90(operands_kernel, constants, {"q_ptr": "*i32", "out_ptr": "*fp32"},
                                aligned=["q_ptr", "out_ptr", "n_words", "n_groups"], num_warps=1,
                                num_stages=3)  # fmt: skip
    assert "cp.async" in compiled.asm["ptx"]


def test_stream_kernel_builds_for_hopper_with_a_cp_async_pipeline():
    from benchmarks.access_pattern import stream_kernel

    for tiled in (False, True):
        compiled = compile_for_sm90(stream_kernel, {"BLOCK_N": 8, "STEP": 64, "TILED": tiled, "NUM_STAGES": 3},
                                    {"q_ptr": "*i32", "out_ptr": "*i32"}, aligned=["q_ptr", "out_ptr", "n_words"],
                                    num_warps=1, num_stages=3)  # fmt: skip
        assert "cp.async" in compiled.asm["ptx"], tiled
