"""Fused SINQ kernels against the dequantize reference: on the GPU, and on CPU through Triton's interpreter."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
import torch

from sinq_ao import SINQConfig, SINQTensor
from sinq_ao.kernels import GemmConfig, LaunchConfig, MmaConfig, TileConfig
from tests.helpers import (
    assert_passes_under_the_interpreter,
    relative_error,
    requires_cuda,
    requires_interpreter,
    requires_triton,
)
from tests.kernel_checks import compile_for_hopper, dequantize_relative_error, kernel_relative_error


@requires_triton
@requires_interpreter
def test_kernels_match_reference_under_the_triton_interpreter():
    assert_passes_under_the_interpreter("tests.kernel_checks")


@requires_triton
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_kernels_compile_for_hopper_without_a_gpu(bits):
    """Every kernel that reads a width builds for sm_90: all of them at 2/4/8 bits (the register-operand kernel
    at 2 and 4 only), the two GEMVs, the older tensor-core kernel (with its split-K reduction) and the unpack
    kernel at the other widths."""
    assert len(compile_for_hopper(bits)) == {2: 9, 4: 9, 8: 7}.get(bits, 5)


@requires_triton
def test_hopper_build_runs_wgmma_in_the_tensor_core_loop_and_lop3_in_the_gemv_loop():
    """The sm_90 SASS (benchmarks/sass_count.py): the tensor-core kernel's K loop issues wgmma (HGMMA), and the
    GEMV's makes each code with one LOP3 (its subnormal float: an `and`) and meets it with one FFMA, with no
    instruction that flushes subnormals to zero (.FTZ), which would zero every code."""
    from benchmarks.sass_count import KERNELS, longest_loop, sass_of

    kernel, constants, warps, stages = KERNELS["gemm"]
    assert "HGMMA" in {op.split(".")[0] for op in longest_loop(sass_of(kernel, constants, warps, stages))}
    kernel, constants, warps, stages = KERNELS["gemv"]
    sass = sass_of(kernel, constants, warps, stages)
    loop = [op.split(".")[0] for op in longest_loop(sass)]
    codes_per_thread = constants["BLOCK_N"] * constants["GROUPS_PER_STEP"] * constants["GROUP"] // 32  # 1 warp
    assert loop.count("LOP3") == codes_per_thread and loop.count("FFMA") >= codes_per_thread
    assert ".FTZ" not in sass


@requires_triton
def test_kernel_bit_planes_are_the_packing_layouts():
    """The kernels' compile-time copy of the bit-plane split (triton_kernels.plane_widths / plane_start) is the one
    sinq_ao.packing packs with, at every width."""
    from sinq_ao.kernels.triton_kernels import plane_count, plane_start, plane_width
    from sinq_ao.packing import SUPPORTED_BITS, bit_planes

    for bits in SUPPORTED_BITS:
        planes = [(plane_width(bits, i), plane_start(bits, i)) for i in range(plane_count(bits))]
        assert planes == bit_planes(bits), bits


@requires_triton
def test_hopper_gemv_merges_a_3_bit_codes_planes_with_one_lop3_per_word_and_reads_each_code_with_one_more():
    """The 3-bit GEMV's sm_90 K loop (codes of a 2-bit and a 1-bit plane): each 2-bit-plane word and the 1-bit
    word of its chunk merge into whole 3-bit fields with four LOP3s (even and odd code positions, in place and
    shifted), then each code is one LOP3 and meets its activation with one FFMA, as at 2 and 4 bits; nothing goes
    to local memory and no instruction flushes subnormals."""
    from benchmarks.sass_count import KERNELS, longest_loop, sass_of

    kernel, constants, warps, stages = KERNELS["gemv"]
    constants = {**constants, "BITS": 3}
    sass = sass_of(kernel, constants, warps, stages)
    loop = [op.split(".")[0] for op in longest_loop(sass)]
    codes_per_thread = constants["BLOCK_N"] * constants["GROUPS_PER_STEP"] * constants["GROUP"] // 32  # 1 warp
    words_per_thread = codes_per_thread // 16  # of the 2-bit plane
    assert codes_per_thread + 4 * words_per_thread <= loop.count("LOP3") <= codes_per_thread + 4 * words_per_thread + 2
    assert loop.count("FFMA") >= codes_per_thread
    assert ".FTZ" not in sass and not {"LDL", "STL"} & set(loop)


@requires_triton
@pytest.mark.parametrize("bits", [3, 5, 7])
def test_hopper_tensor_core_kernel_reads_codes_of_several_bit_planes_into_vector_stores_of_whole_chunks(bits):
    """The older tensor-core kernel's sm_90 K loop at 3, 5 and 7 bits (64 x 64 tile, 4 warps, one group of 64 per
    step): wgmma, nothing in local memory, and the dequantized tile reaches shared memory in vector stores (a
    thread holds its chunks' 32 columns in order), as at 4 bits: at most one store per four codes (each code as a
    store of its own, as when neighbouring threads take neighbouring rows, would be 32)."""
    from benchmarks.sass_count import KERNELS, longest_loop, sass_of
    from sinq_ao.kernels import gemm_step_words

    kernel, constants, warps, stages = KERNELS["gemm"]
    constants = {**constants, "BITS": bits, "BLOCK_W": gemm_step_words(8, bits, 64)}
    loop = [op.split(".")[0] for op in longest_loop(sass_of(kernel, constants, warps, stages))]
    codes_per_thread = constants["BLOCK_N"] * 64 // (32 * warps)
    assert "HGMMA" in loop and not {"LDL", "STL"} & set(loop)
    assert loop.count("STS") <= codes_per_thread // 4, loop.count("STS")


@requires_triton
def test_register_operand_kernel_feeds_wgmma_from_registers_with_one_lop3_per_two_codes():
    """sinq_mma_kernel's sm_90 K loop: the packed halves go from their pipelined shared-memory copy (ldmatrix)
    straight into the wgmma register operand, one LOP3 per two codes; no tile is stored to shared memory (the
    only stores are single 16- or 32-bit values: each row's scale and zero-point, staged for the epilogue)."""
    from benchmarks.sass_count import KERNELS, longest_loop, sass_of

    kernel, constants, warps, stages = KERNELS["mma"]
    loop = longest_loop(sass_of(kernel, constants, warps, stages))
    names = [op.split(".")[0] for op in loop]
    codes_per_thread = constants["BLOCK_N"] * constants["GROUP"] // (32 * warps)  # one group per step
    assert "HGMMA" in names and "LDSM" in names
    assert {op for op in loop if op.startswith("STS")} <= {"STS", "STS.U16"}
    assert names.count("LOP3") == codes_per_thread // 2


@requires_cuda
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernels_match_reference_on_gpu_over_random_shapes(bits, dtype):
    gen = torch.Generator().manual_seed(bits)
    for case in range(12):
        m = [1, 2, 3, 4, 1, 2, 3, 4, 1, 1, 4, 1][case]
        n = int(torch.randint(1, 40, (1,), generator=gen)) * 16 + int(torch.randint(0, 2, (1,), generator=gen)) * 7
        k = int(torch.randint(1, 24, (1,), generator=gen)) * 32
        group_size = [64, 128][case % 2]
        error = kernel_relative_error(bits, m, n, k, group_size, dtype, "cuda", seed=case)
        assert error < 1e-2, (bits, m, n, k, group_size, error)


@requires_cuda
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_kernel_launch_configs_match_reference_on_gpu(bits):
    """Block shapes the sweep tries, incl. several activation rows per program, M not a multiple of it and rows
    side by side across threads."""
    configs = [LaunchConfig(4, 4, 1, 2, 1), LaunchConfig(16, 8, 3, 4, 4, 3), LaunchConfig(32, 2, 2, 4, 2),
               LaunchConfig(64, 2, 1, 4, 4, 2), LaunchConfig(8, 8, 1, 1, 1, 3), LaunchConfig(32, 4, 5, 8, 4, 3),
               LaunchConfig(32, 4, 1, 1, 1, 3, thread_rows=4),  # rows 4 wide across threads
               LaunchConfig(16, 8, 2, 2, 2, 3, thread_rows=4)]  # fmt: skip
    assert_configs_match_reference(bits, configs, [1, 3, 16, 11, 9, 4, 1, 2], seed=100 + bits)


@requires_cuda
@pytest.mark.parametrize("bits", [1, 3, 5, 6, 7])
def test_gemv_reads_codes_of_several_bit_planes_and_of_one_bit_on_gpu(bits):
    """The GEMV at the widths of several bit planes and of one bit: one and two activation rows with the default
    blocks and explicit blocks up to GEMV_MAX_BLOCK_M rows (K splits, rows across threads, several warps,
    pipelines) over random ragged N and K, bf16 and fp16 activations in turn."""
    gen = torch.Generator().manual_seed(500 + bits)
    configs = [None, None, LaunchConfig(16, 4, 2, 2, 4, 3), LaunchConfig(8, 8, 1, 1, 1, 3),
               LaunchConfig(32, 4, 1, 1, 2, 3, thread_rows=4), LaunchConfig(16, 2, 3, 4, 4, 1, thread_rows=2),
               LaunchConfig(8, 16, 1, 2, 1, 4), LaunchConfig(4, 8, 4, 1, 2, 3)]  # fmt: skip
    for case, config in enumerate(configs):
        m = [1, 2, 3, 1, 2, 4, 1, 2][case]
        n = int(torch.randint(1, 40, (1,), generator=gen)) * 16 + case
        k = int(torch.randint(1, 24, (1,), generator=gen)) * 64 + (32 if case % 3 == 2 else 0)
        dtype = [torch.bfloat16, torch.float16][case % 2]
        error = kernel_relative_error(bits, m, n, k, [64, 128][case // 2 % 2] if k % 128 == 0 else 64, dtype,
                                      "cuda", config=config, seed=case)  # fmt: skip
        assert error < 1e-2, (bits, config, m, n, k, error)


@requires_cuda
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_default_blocks_for_one_row_on_short_rows_match_reference_on_gpu(bits):
    """The 8B MLP's 14336 x 4096 with one activation row (16 rows per program at 2 and 4 bits, 8 at 3 and 8
    bits), N not a multiple of the block."""
    error = kernel_relative_error(bits, 1, 14336 + 5, 4096, 64, torch.bfloat16, "cuda", seed=bits)
    assert error < 1e-2, (bits, error)


def assert_configs_match_reference(bits, configs, ms, seed):
    """Each explicit configuration on its own random (M, N, K) case, N and K not multiples of the blocks."""
    gen = torch.Generator().manual_seed(seed)
    for case, (config, m) in enumerate(zip(configs, ms, strict=True)):
        n = int(torch.randint(1, 40, (1,), generator=gen)) * 16 + case
        k = int(torch.randint(2, 40, (1,), generator=gen)) * 64
        error = kernel_relative_error(bits, m, n, k, 64, torch.bfloat16, "cuda", config=config, seed=case)
        assert error < 1e-2, (bits, config, m, n, k, error)


@requires_cuda
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tensor_core_kernel_matches_reference_on_gpu_over_random_shapes(bits, dtype):
    """M beyond the GEMV: default configurations, random ragged N and K (not always whole steps or groups; every
    third K not a multiple of 32)."""
    gen = torch.Generator().manual_seed(200 + bits)
    for case in range(10):
        m = [5, 16, 17, 33, 64, 100, 128, 255, 300, 1024][case]
        n = int(torch.randint(1, 40, (1,), generator=gen)) * 16 + int(torch.randint(0, 2, (1,), generator=gen)) * 7
        k = int(torch.randint(1, 40, (1,), generator=gen)) * 32 - (16 if case % 3 == 1 else 0)
        error = kernel_relative_error(bits, m, n, k, [64, 128][case % 2], dtype, "cuda", seed=case)
        assert error < 1e-2, (bits, m, n, k, error)


@requires_cuda
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_tensor_core_launch_configs_match_reference_on_gpu(bits):
    """Block shapes the sweep tries, incl. uneven K splits, several warps and pipeline depths (at 3 and 5 bits
    block_w rounds to whole groups: one, two and four of 64 codes)."""
    words = 1 << (bits * 2 - 1).bit_length()  # 64 codes per K step (the defaults' depth; tiles of 256 codes at 2
    # bits overflow shared memory); the power of two above 6 and 10 words at 3 and 5 bits
    configs = [GemmConfig(64, 16, words, 3), GemmConfig(128, 32, 2 * words, 2, 8, 2), GemmConfig(64, 64, words, 1, 4, 2),
               GemmConfig(128, 128, words, 5, 8, 2), GemmConfig(256, 16, words, 1, 8, 2), GemmConfig(64, 16, 4 * words, 7)]  # fmt: skip
    assert_configs_match_reference(bits, configs, [16, 20, 64, 130, 9, 1], seed=300 + bits)


@requires_cuda
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_register_operand_kernel_matches_reference_on_gpu_over_random_shapes(bits, dtype):
    """sinq_mma_kernel (the dispatcher's choice for M = 2..MMA_MAX_M): random M, ragged N, K whole groups, its
    default configuration and explicit ones (K splits, row blocks down to one warp's mma.sync, pipeline depths)."""
    gen = torch.Generator().manual_seed(400 + bits)
    group_sizes = [64, 128] if bits == 4 else [128, 256]  # 2 bits: a dot needs 16 halves, i.e. 128 codes
    configs = [None, MmaConfig(64, 16), MmaConfig(128, 16, 3), MmaConfig(256, 32, 2, 8, 2), MmaConfig(128, 64, 1, 4, 4),
               None, MmaConfig(64, 32, 5, 4, 2), None, MmaConfig(16, 16, 4, 1), MmaConfig(32, 16, 2, 1, 3, 2),
               MmaConfig(32, 32, 3, 2)]  # fmt: skip
    for case, config in enumerate(configs):
        m = [3, 3, 16, 33, 64, 12, 9, 16, 5, 16, 20][case]  # the default (None) cases within 3..MMA_MAX_M
        group_size = group_sizes[case % 2]
        n = int(torch.randint(1, 40, (1,), generator=gen)) * 16 + int(torch.randint(0, 2, (1,), generator=gen)) * 7
        k = int(torch.randint(1, 12, (1,), generator=gen)) * group_size * (config.split_k if config else 1)
        error = kernel_relative_error(bits, m, n, k, group_size, dtype, "cuda", config=config, seed=case)
        assert error < 1e-2, (bits, dtype, config, m, n, k, group_size, error)


@requires_cuda
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_many_row_kernel_matches_reference_on_gpu_over_random_shapes(bits, dtype):
    """sinq_tile_kernel: random M and ragged N, K whole groups, its default configuration and explicit ones (K
    splits that leave empty slices, steps halved to divide the row, block shapes the sweep tries)."""
    from sinq_ao.kernels import default_tile_config

    gen = torch.Generator().manual_seed(500 + bits)
    words = 2 * bits  # 64 codes
    configs = [None, TileConfig(64, 128, words, 1, 4), TileConfig(128, 128, 2 * words, 3), None,
               TileConfig(128, 256, words, 2, 8), TileConfig(64, 64, words, 5, 4, 4), TileConfig(16, 16, words, 1, 1),
               TileConfig(256, 64, words, 2), None]  # fmt: skip
    for case, config in enumerate(configs):
        m = [17, 64, 130, 256, 300, 33, 20, 200, 100][case]
        group_size = [64, 128][case % 2]
        n = int(torch.randint(1, 40, (1,), generator=gen)) * 16 + int(torch.randint(0, 2, (1,), generator=gen)) * 7
        k = int(torch.randint(1, 24, (1,), generator=gen)) * group_size
        config = config or default_tile_config(m, n, k, bits)
        error = kernel_relative_error(bits, m, n, k, group_size, dtype, "cuda", config=config, seed=case)
        assert error < 1e-2, (bits, dtype, config, m, n, k, group_size, error)


@requires_cuda
def test_compiled_linear_on_the_many_row_kernel_matches_eager():
    """Rows and weight rows enough for the dispatcher's many-row kernel (tile_preferred), compiled with
    fullgraph=True at two M (the second symbolic), against eager."""
    from sinq_ao.kernels import tile_preferred
    from sinq_ao.tensor import plain_linear

    n, k = 128 * 100, 256
    w = SINQTensor.from_hp(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), bits=4, group_size=64)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: torch.nn.functional.linear(x, w), fullgraph=True)
    for m in (256, 200):
        assert tile_preferred(m, n, 4, torch.cuda.get_device_properties(0).multi_processor_count), m
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        assert relative_error(compiled(x).float(), plain_linear(x, w).float()) < 1e-2, m


@given(m=st.integers(1, 512), n=st.integers(1, 40000), k_groups=st.integers(1, 600), bits=st.sampled_from([2, 4, 8]),
       sms=st.sampled_from([66, 132]))  # fmt: skip
def test_many_row_kernel_only_for_4_bits_many_rows_and_enough_tiles_with_whole_step_slices(m, n, k_groups, bits, sms):
    from sinq_ao.kernels import TILE_MIN_M, _check_config, default_tile_config, tile_preferred

    preferred = tile_preferred(m, n, bits, sms)
    assert preferred == (bits == 4 and m > TILE_MIN_M and -(-n // 128) * -(-m // 128) >= 1.5 * sms)
    config = default_tile_config(m, n, k_groups * 64, bits, sms)
    _check_config(config)
    steps = k_groups * 64 // 32 * bits // config.block_w
    assert steps % config.split_k == 0 and (config.split_k == 1 or -(-n // 128) * -(-m // 128) < sms)


@requires_cuda
@pytest.mark.parametrize("bits", [3, 4])
def test_compiled_linear_with_a_varying_number_of_rows_matches_eager_on_every_kernel(bits):
    """torch.compile(fullgraph=True) called with several M (Dynamo makes M dynamic from the second size): the
    GEMV, the register-operand kernel (4 bits) and the older tensor-core kernel are all traced with a symbolic M."""
    w = SINQTensor.from_hp(torch.randn(384, 512, device="cuda", dtype=torch.bfloat16), bits=bits, group_size=64)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: torch.nn.functional.linear(x, w), fullgraph=True)
    for m in (3, 16, 9, 2, 40, 100, 1):
        x = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
        assert relative_error(compiled(x).float(), torch.nn.functional.linear(x, w).float()) < 1e-2, m


def test_register_operand_kernel_refuses_formats_it_cannot_read_by_name():
    from sinq_ao.kernels import launch

    for bits, group_size, k, dtype in [(8, 64, 128, torch.bfloat16), (2, 64, 128, torch.bfloat16),
                                       (4, 64, 96, torch.bfloat16), (4, 64, 128, torch.float32)]:  # fmt: skip
        w = SINQTensor.from_hp(torch.randn(32, k), bits=bits, group_size=group_size)
        x, y = torch.randn(16, k, dtype=dtype), torch.empty(16, 32, dtype=dtype)
        with pytest.raises(ValueError, match=f"MmaConfig needs .* got bits={bits}, group_size={group_size}, K={k}"):
            launch(x, w.qdata, w.scale, w.zero_point, w.act_pre_scale, None, y, bits, group_size, config=MmaConfig())


@given(m=st.integers(2, 64), n=st.integers(1, 40000), k_groups=st.integers(1, 600), sms=st.sampled_from([66, 132]))
def test_default_mma_config_splits_k_into_equal_whole_groups(m, n, k_groups, sms):
    from sinq_ao.kernels import _check_config, default_mma_config

    config = default_mma_config(m, n, k_groups * 64, 64, sms)
    _check_config(config)
    assert config.block_m >= min(m, 64) and k_groups % config.split_k == 0 and config.split_k <= 16
    assert config.split_k == 1 or k_groups // config.split_k >= 4


@requires_cuda
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_dequantize_kernel_matches_reference_on_gpu(bits):
    for case, (n, k, g) in enumerate([(4096, 4096, 64), (100, 576, 128), (33, 200, 64)]):
        assert dequantize_relative_error(bits, n, k, g, torch.bfloat16, "cuda", seed=case) < 1e-2


@requires_cuda
def test_eager_gpu_linear_beyond_the_gemv_uses_the_unpack_kernel_and_matches_plain_path():
    w = SINQTensor.from_hp(torch.randn(96, 320, device="cuda", dtype=torch.bfloat16), bits=4, group_size=64)
    x = torch.randn(3, 100, 320, device="cuda", dtype=torch.bfloat16)  # M = 300 > FUSED_MAX_M
    from sinq_ao.tensor import plain_linear

    assert relative_error(torch.nn.functional.linear(x, w).float(), plain_linear(x, w).float()) < 1e-2


@requires_cuda
@pytest.mark.parametrize("bits", [3, 4])
def test_quantized_llama_compiles_fullgraph_on_gpu_and_matches_eager(bits):
    from tests.test_model import tiny_llama

    model = tiny_llama().to(device="cuda", dtype=torch.bfloat16)
    from torchao.quantization import quantize_

    quantize_(model, SINQConfig(bits=bits))
    tokens = torch.randint(0, 512, (2, 16), device="cuda")
    with torch.no_grad():
        eager = model(tokens).logits.float()
        explanation = torch._dynamo.explain(model)(tokens)
        compiled = torch.compile(model, fullgraph=True)(tokens).logits.float()
    assert explanation.graph_break_count == 0
    assert relative_error(compiled, eager) < 1e-2
    assert isinstance(model.model.layers[0].mlp.up_proj.weight, SINQTensor)


@requires_cuda
def test_gpu_linear_of_3_bit_codes_runs_the_kernels_up_to_256_rows_and_the_unpack_kernel_beyond(monkeypatch):
    from sinq_ao import kernels
    from sinq_ao.tensor import plain_linear

    launches = []
    original = kernels.launch

    def counting(x, *args, **kwargs):
        launches.append(len(x))
        return original(x, *args, **kwargs)

    monkeypatch.setattr(kernels, "launch", counting)
    w = SINQTensor.from_hp(torch.randn(256, 512, device="cuda", dtype=torch.bfloat16), bits=3)
    for m in (1, 2, 16, 256, 300):
        x = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
        assert relative_error(torch.nn.functional.linear(x, w), plain_linear(x, w)) < 1e-2
    assert launches == [1, 2, 16, 256]  # the GEMV, then the older tensor-core kernel; M = 300: unpack + cuBLAS


def test_codes_of_several_bit_planes_are_refused_by_the_kernels_that_cannot_read_them_by_name():
    """At 3 bits the register-operand and many-row kernels refuse, naming the format; the older tensor-core
    kernel's block_w must still be a power of two (it is rounded to whole groups of 6 words)."""
    from sinq_ao.kernels import launch

    w = SINQTensor.from_hp(torch.randn(32, 64), bits=3, group_size=32)
    x, y = torch.randn(16, 64), torch.empty(16, 32)
    for config, message in [(MmaConfig(), "MmaConfig needs bits in"), (TileConfig(), "TileConfig needs .* bits=3"),
                            (GemmConfig(64, 16, 6), "GemmConfig.block_w=6 must be a power of two")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            launch(x, w.qdata, w.scale, w.zero_point, w.act_pre_scale, None, y, 3, 32, config=config)


def test_kernels_take_up_to_256_rows_at_every_code_width(monkeypatch):
    from sinq_ao import kernels

    monkeypatch.setattr(kernels, "format_supported", lambda *args: True)  # as for CUDA bf16 activations
    for bits in range(1, 9):
        assert kernels.kernel_supports(torch.empty(256, 64), bits, 64, "1D", "asymmetric"), bits
        assert not kernels.kernel_supports(torch.empty(257, 64), bits, 64, "1D", "asymmetric"), bits


def recorded_launches(w, m, bits, group_size):
    """(kernel name, constexprs) of each launch that launch() makes for m activation rows by default, recorded by
    a stand-in launcher: nothing runs."""
    from sinq_ao.kernels import launch

    launched = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **constants: launched.append((self.kernel.fn.__name__, constants))

    x = torch.randn(m, w.shape[1], dtype=torch.bfloat16)
    y = torch.empty(m, w.shape[0], dtype=torch.bfloat16)
    launch(x, w.qdata, w.scale, w.zero_point, w.act_pre_scale, None, y, bits, group_size, launcher=Recorder)
    return launched


@requires_triton
@pytest.mark.parametrize("bits", [1, 3, 5, 7])
def test_default_launches_at_codes_of_several_planes_are_the_gemv_then_the_older_tensor_core_kernel(bits):
    """The GEMV for one and two rows, the older tensor-core kernel for 3..256, each K step whole groups."""
    k, group_size = 512, 64
    w = SINQTensor.from_hp(torch.randn(64, k), bits=bits, group_size=group_size)
    for m in (1, 2, 3, 16, 256):
        launched = recorded_launches(w, m, bits, group_size)
        names = [name for name, _ in launched]
        if m <= 2:
            assert names == ["sinq_gemv_kernel"], (m, names)
        else:
            assert names[0] == "sinq_gemm_kernel" and set(names[1:]) <= {"splitk_reduce_kernel"}, (m, names)
            assert launched[0][1]["BLOCK_W"] % (group_size * bits // 32) == 0, (m, launched[0][1])


@requires_triton
def test_default_launches_at_codes_of_one_plane_follow_the_api_table():
    """docs/api.md's table: the GEMV, the register-operand kernel where its format allows (2 bits with groups of
    128, 4 bits with groups of 64, K whole groups), the many-row kernel for 4-bit products of many tiles, the
    older tensor-core kernel otherwise."""
    gemm, mma, tile = ["sinq_gemm_kernel"], ["mma_activations_kernel", "sinq_mma_kernel"], \
        ["tile_activations_kernel", "sinq_tile_kernel"]  # fmt: skip
    cases = [(2, 64, 64, 2, ["sinq_gemv_kernel"]), (2, 128, 64, 16, mma), (2, 64, 64, 16, gemm), (4, 64, 64, 3, mma),
             (4, 32, 64, 16, gemm), (4, 64, 64, 17, gemm), (8, 64, 64, 16, gemm), (4, 64, 64, 256, gemm),
             (4, 64, 12800, 256, tile), (4, 64, 12800, 128, gemm)]  # fmt: skip
    for bits, group_size, n, m, expected in cases:
        w = SINQTensor.from_hp(torch.randn(n, 256), bits=bits, group_size=group_size)
        names = [name for name, _ in recorded_launches(w, m, bits, group_size) if name != "splitk_reduce_kernel"]
        assert names == expected, (bits, group_size, n, m, names)


@given(log_block_w=st.integers(0, 9), bits=st.integers(1, 8), group_size=st.sampled_from([32, 64, 128, 256]))
def test_tensor_core_steps_are_whole_groups_a_power_of_two_of_them_for_several_bit_planes(log_block_w, bits,
                                                                                        group_size):  # fmt: skip
    """GemmConfig.block_w is a power of two (_check_config)."""
    from sinq_ao.kernels import gemm_step_words

    block_w = 1 << log_block_w

    words_per_group = group_size * bits // 32
    step = gemm_step_words(block_w, bits, group_size)
    groups, ragged = divmod(step, words_per_group)
    assert not ragged and groups >= 1 and step <= max(block_w, words_per_group)
    if bits in (1, 2, 4, 8):  # one bit plane: block_w raised to a whole group, as before codes of several planes
        assert step == max(block_w, words_per_group)
    else:
        assert groups & (groups - 1) == 0 and 2 * step > block_w


@requires_cuda
def test_gpu_linear_uses_the_kernel_and_matches_plain_path():
    from sinq_ao.tensor import plain_linear

    w = SINQTensor.from_hp(torch.randn(256, 512, device="cuda", dtype=torch.bfloat16), bits=4)
    for m in (1, 16, 100):
        x = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
        assert relative_error(torch.nn.functional.linear(x, w), plain_linear(x, w)) < 1e-2


@given(
    m=st.integers(1, 4), n=st.integers(1, 40000), k_groups=st.integers(1, 600),
    bits=st.integers(1, 8), group_size=st.sampled_from([32, 64, 128, 256]),
)  # fmt: skip
def test_default_config_splits_k_only_into_equal_whole_group_slices(m, n, k_groups, bits, group_size):
    """Ragged K slices would need masked (unvectorized) loads; the defaults never make them. Groups per step are a
    power of two (a Triton tile) at every width, 6 words per group at 3 bits included."""
    from sinq_ao.kernels import GEMV_MAX_BLOCK_M, default_config

    config = default_config(m, n, k_groups * group_size, bits, group_size)
    steps, ragged = divmod(k_groups, config.groups_per_step)
    assert 1 <= config.block_m <= GEMV_MAX_BLOCK_M and config.block_n >= 1 and config.groups_per_step >= 1
    assert config.groups_per_step & (config.groups_per_step - 1) == 0
    if m <= 2:  # the step's activation tile (groups x words of a group in the widest bit plane) fills the threads
        widest_words = group_size * (1 << (bits.bit_length() - 1)) // 32
        assert config.groups_per_step * widest_words >= 32 * config.num_warps
    assert config.split_k == 1 if ragged else steps % config.split_k == 0
    assert config.split_k <= max(1, steps)


def test_default_config_takes_16_rows_per_program_only_for_one_row_on_many_short_rows():
    """The measured rule (default_config's docstring): K = 4096 at 4 bits with many rows takes 16; longer rows,
    fewer rows and two activation rows keep 8."""
    from sinq_ao.kernels import default_config

    assert default_config(1, 14336, 4096, 4, 64).block_n == 16
    assert default_config(1, 128256, 4096, 4, 64).block_n == 16
    assert default_config(1, 14336, 4096, 2, 64).block_n == 16
    assert default_config(1, 14336, 4096, 8, 64).block_n == 8  # 8-bit rows are twice as long
    assert default_config(1, 14336, 4096, 3, 64).block_n == 8  # two bit planes: 16 rows spill registers
    assert default_config(1, 16384, 16384, 4, 64).block_n == 8
    assert default_config(1, 8192, 8192, 4, 64).block_n == 8
    assert default_config(1, 4096, 4096, 4, 64).block_n == 8
    assert default_config(2, 14336, 4096, 4, 64).block_n == 8


@given(m=st.integers(2, 256), n=st.integers(1, 40000), k_chunks=st.integers(1, 600), bits=st.integers(1, 8),
       group_size=st.sampled_from([32, 64, 128]))  # fmt: skip
def test_default_gemm_config_fits_and_splits_k_into_equal_steps(m, n, k_chunks, bits, group_size):
    """Tensor-core defaults: tiles at least 16 deep and 16 tall for tl.dot, no ragged K slices, and a K step of at
    most 256 codes (larger tiles overflow shared memory at 2 bits; codes of several planes: whole groups)."""
    from sinq_ao.kernels import _check_config, default_gemm_config, gemm_step_words

    config = default_gemm_config(m, n, k_chunks * 32, bits, group_size=group_size)
    _check_config(config)
    n_words = k_chunks * bits
    step = config.block_w if bits in (1, 2, 4, 8) else gemm_step_words(config.block_w, bits, group_size)
    steps, ragged = divmod(n_words, step)
    assert 16 <= config.block_m <= 128 and config.block_m >= min(m, 128) // 2
    assert 16 <= step * 32 // bits <= max(256, group_size)
    assert config.split_k == 1 if ragged else steps % config.split_k == 0


@requires_cuda
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_compiled_gemv_matches_eager_on_gpu(bits):
    """One activation row (decode) through torch.compile(fullgraph=True): the op's GEMV launches, as in eager."""
    w = SINQTensor.from_hp(torch.randn(320, 200, device="cuda", dtype=torch.bfloat16), bits=bits, group_size=64)
    x = torch.randn(1, 200, device="cuda", dtype=torch.bfloat16)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: torch.nn.functional.linear(x, w), fullgraph=True)
    assert relative_error(compiled(x).float(), torch.nn.functional.linear(x, w).float()) < 1e-2


@pytest.mark.parametrize(
    "config, message",
    [(GemmConfig(64, 8, 8), "at least 16"), (GemmConfig(48, 16, 8), "block_n=48 must be a power of two"),
     (LaunchConfig(8, 3), "groups_per_step=3 must be a power of two"), (LaunchConfig(8, 2, split_k=0), "split_k=0"),
     (LaunchConfig(8, 2, block_m=8), "block_m=8 is above GEMV_MAX_BLOCK_M"),
     (LaunchConfig(8, 2, thread_rows=16), "thread_rows=16 must divide block_n=8"),
     ("fast", "LaunchConfig, GemmConfig, MmaConfig or TileConfig"), (MmaConfig(48, 16), "MmaConfig.block_n=48 must be a power of two"),
     (MmaConfig(128, 8), "MmaConfig block_n=128 and block_m=8 must be at least 16"), (MmaConfig(128, 16, 0), "split_k=0"),
     (TileConfig(48, 128), "TileConfig.block_m=48 must be a power of two"),
     (TileConfig(128, 8), "TileConfig block_n=8 and block_m=128 must be at least 16"),
     (TileConfig(), "TileConfig needs .* got bits=4, group_size=32, K=64, dtype=torch.float32")],
)  # fmt: skip
def test_explicit_launch_configurations_that_cannot_compile_are_refused_by_name(config, message):
    from sinq_ao.kernels import launch

    w = SINQTensor.from_hp(torch.randn(32, 64), bits=4, group_size=32)
    x, y = torch.randn(16, 64), torch.empty(16, 32)
    with pytest.raises((ValueError, TypeError), match=message):
        launch(x, w.qdata, w.scale, w.zero_point, w.act_pre_scale, None, y, 4, 32, config=config)


def test_launch_refuses_operands_it_would_read_or_write_out_of_bounds_by_name():
    """launch and launch_group are public (the benchmarks' sweeps use them): wrong shapes, strides, dtypes or
    devices raise before any kernel runs, naming the argument."""
    from sinq_ao.kernels import launch, launch_group

    w = SINQTensor.from_hp(torch.randn(32, 128), bits=3, group_size=64)
    x, y = torch.randn(4, 128), torch.empty(4, 32)
    operands = dict(x=x, qdata=w.qdata, scale=w.scale, zero_point=w.zero_point, act_pre_scale=w.act_pre_scale,
                    bias=None, y=y)  # fmt: skip
    cases = [
        (dict(x=torch.randn(4, 200)), "qdata must have shape \\(32, 21\\)"),
        (dict(x=torch.randn(4, 100)), "act_pre_scale must have shape \\(100,\\)"),  # same words and groups
        (dict(x=torch.randn(128, 4).t()), "x must be \\(M, K\\) with unit column stride"),
        (dict(y=torch.empty(4, 16)), "y must have shape \\(4, 32\\)"),
        (dict(y=torch.empty(32, 4).t()), "y must have shape .* unit last stride"),
        (dict(qdata=w.qdata.to(torch.int64)), "qdata must be torch.int32"),
        (dict(scale=w.scale[:, :1]), "scale must have shape \\(32, 2\\)"),
        (dict(zero_point=torch.cat([w.zero_point, w.zero_point], 1)[:, :2]), "same strides"),
        (dict(act_pre_scale=w.act_pre_scale[:64]), "act_pre_scale must have shape \\(128,\\)"),
        (dict(bias=torch.zeros(31)), "bias must have shape \\(32,\\)"),
        (dict(qdata=w.qdata.to("meta")), "qdata is on meta, x on cpu"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            launch(**{**operands, **change}, bits=3, group_size=64)
    with pytest.raises(ValueError, match="group_size a power of two >= 32; got bits=3, group_size=48"):
        launch(**operands, bits=3, group_size=48)
    weights = [(w.qdata, w.scale, w.zero_point, w.act_pre_scale)] * 2
    with pytest.raises(ValueError, match="ys\\[1\\] must have shape \\(4, 32\\)"):
        launch_group(x, weights, [y, torch.empty(4, 8)], 3, 64)
    with pytest.raises(ValueError, match="one output per weight"):
        launch_group(x, weights, [y], 3, 64)


def test_kernel_fuzz_draws_only_cases_the_launcher_accepts():
    """tests/kernel_fuzz.py's misses should mean kernel bugs: every drawn configuration compiles (_check_config) and
    each register-operand or many-row case is a format that kernel reads."""
    import random

    from sinq_ao.kernels import MmaConfig, TileConfig, _check_config, mma_supported, tile_supported
    from tests.kernel_fuzz import draw_case

    rng = random.Random(0)
    for _ in range(500):
        kind, bits, m, n, k, group_size, dtype, config = draw_case(rng)
        if config is not None:
            _check_config(config)
        x = torch.empty(m, k, dtype=dtype)
        assert not isinstance(config, MmaConfig) or mma_supported(x, bits, group_size), (bits, k, group_size)
        assert not isinstance(config, TileConfig) or tile_supported(x, bits, group_size), (bits, k, group_size)


def test_inline_ptx_is_off_under_the_interpreter_and_on_rocm(monkeypatch):
    """The kernels' one-lop3 unpack is PTX: the interpreter and AMD GPUs (ROCm torch) get the plain and-or."""
    from sinq_ao.kernels import _inline_ptx

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.version, "hip", None)
    assert _inline_ptx()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not _inline_ptx()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert not _inline_ptx()
