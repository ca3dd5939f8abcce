"""Projections that share their input run as one grouped GEMV launch (sinq_ao.fusion) under torch.compile."""

import pytest
import torch
from torchao.quantization import quantize_

import sinq_ao
from sinq_ao import SINQConfig, SINQTensor, fusion, grouped_linear, kernels
from tests.helpers import relative_error, requires_cuda
from tests.kernel_checks import group_relative_error
from tests.test_model import tiny_llama

NO_CACHES = torch._inductor.config.patch(force_disable_caches=True)


def _spy_groups(monkeypatch) -> list[list[int]]:
    """Record, per compiled graph, how many linears each grouped_linear node took (compile under NO_CACHES: a
    cached graph skips the pass)."""
    seen = []
    original = fusion.group_projections

    def spy(graph):
        original(graph)
        seen.append([len(n.args) - 1 for n in graph.nodes if n.target is grouped_linear])

    monkeypatch.setattr(fusion, "group_projections", spy)
    return seen


def test_import_enables_the_pass_in_inductor_unless_the_environment_says_no(monkeypatch):
    with torch._inductor.config.patch(pre_grad_custom_pass=None):
        monkeypatch.setenv("SINQ_AO_FUSE_PROJECTIONS", "0")
        fusion.enable_from_environment()
        assert torch._inductor.config.pre_grad_custom_pass is None
        monkeypatch.delenv("SINQ_AO_FUSE_PROJECTIONS")
        fusion.enable_from_environment()
        assert torch._inductor.config.pre_grad_custom_pass is fusion.PASS
    assert fusion._installed(torch._inductor.config.pre_grad_custom_pass)  # what `import sinq_ao` left


def test_enabling_keeps_a_users_own_pass_and_disabling_restores_it():
    calls = []

    def users_pass(graph):
        calls.append(graph)

    with torch._inductor.config.patch(pre_grad_custom_pass=users_pass):
        sinq_ao.enable_projection_fusion()
        sinq_ao.enable_projection_fusion()  # idempotent
        both = torch._inductor.config.pre_grad_custom_pass
        assert isinstance(both, fusion._Both) and both.first is users_pass and both.second is fusion.PASS
        both(torch.fx.Graph())
        assert len(calls) == 1
        assert both.uuid() is None  # the user's pass has no uuid: Inductor must not cache on ours alone
        sinq_ao.disable_projection_fusion()
        assert torch._inductor.config.pre_grad_custom_pass is users_pass


def test_compiled_llama_groups_qkv_and_gate_up_and_matches_eager(monkeypatch):
    """On CPU the grouped node runs the separate linears: the rewrite must not change the result."""
    seen = _spy_groups(monkeypatch)
    model = tiny_llama()
    quantize_(model, SINQConfig(bits=4))
    tokens = torch.randint(0, 512, (1, 7), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    with torch.no_grad(), NO_CACHES:
        eager = model(tokens).logits
        compiled = torch.compile(model, fullgraph=True)(tokens).logits
    assert seen == [[3, 2, 3, 2]]  # per layer q/k/v, then gate/up
    assert relative_error(compiled, eager) < 1e-5


class _Shared(torch.nn.Module):
    """Five linears on one input: two SINQ g64 (grouped), one with a bias, one g128, one unquantized."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(256, 64, bias=False)
        self.b = torch.nn.Linear(256, 96, bias=False)
        self.with_bias = torch.nn.Linear(256, 32)
        self.g128 = torch.nn.Linear(256, 32, bias=False)
        self.dense = torch.nn.Linear(256, 32, bias=False)

    def forward(self, x):
        return torch.cat([self.a(x), self.with_bias(x), self.g128(x), self.dense(x), self.b(x)], dim=-1)


def test_pass_groups_only_bias_free_sinq_linears_of_one_format(monkeypatch):
    seen = _spy_groups(monkeypatch)
    torch.manual_seed(0)
    model = _Shared().eval()
    quantize_(model, SINQConfig(bits=4, group_size=64), filter_fn=lambda m, fqn: fqn in ("a", "b", "with_bias"))
    quantize_(model, SINQConfig(bits=4, group_size=128), filter_fn=lambda m, fqn: fqn == "g128")
    x = torch.randn(3, 256)
    torch._dynamo.reset()
    with torch.no_grad(), NO_CACHES:
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    assert seen == [[2]]
    assert relative_error(compiled, eager) < 1e-5


class _MutatedBetween(torch.nn.Module):
    """Three SINQ linears on one input, which is written in place after the first."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Linear(128, 64, bias=False) for _ in range(3))

    def forward(self, x):
        x = x * 1.0  # a graph-internal tensor that may be written in place
        first = self.a(x)
        x.add_(1.0)
        return first, self.b(x), self.c(x)


def test_pass_does_not_group_across_a_write_to_the_shared_input(monkeypatch):
    seen = _spy_groups(monkeypatch)
    torch.manual_seed(0)
    model = _MutatedBetween().eval()
    quantize_(model, SINQConfig(bits=4, group_size=64))
    x = torch.randn(2, 128)
    torch._dynamo.reset()
    with torch.no_grad(), NO_CACHES:
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    assert seen == [[2]]  # b and c, after the write; not a
    for c, e in zip(compiled, eager, strict=True):
        assert relative_error(c, e) < 1e-5


def test_grouped_linear_equals_the_separate_linears_on_cpu():
    torch.manual_seed(0)
    weights = [SINQTensor.from_hp(torch.randn(n, 128), bits=4, group_size=64) for n in (64, 32, 32)]
    x = torch.randn(2, 5, 128)
    grouped = grouped_linear(x, *weights)
    for y, w in zip(grouped, weights, strict=True):
        assert torch.equal(y, torch.nn.functional.linear(x, w))


def test_grouped_launch_refuses_a_k_split_and_bad_block_sizes_by_name():
    w = SINQTensor.from_hp(torch.randn(16, 128), bits=4, group_size=64)
    parts = [(w.qdata, w.scale, w.zero_point, w.act_pre_scale)] * 2
    x, ys = torch.randn(1, 128), [torch.empty(1, 16), torch.empty(1, 16)]
    with pytest.raises(ValueError, match="does not split K.*split_k=2"):
        kernels.launch_group(x, parts, ys, 4, 64, config=kernels.LaunchConfig(8, 2, split_k=2))
    with pytest.raises(ValueError, match="block_n=6 must be a power of two"):
        kernels.launch_group(x, parts, ys, 4, 64, config=kernels.LaunchConfig(6, 2))
    assert not kernels.group_supported(x, parts[:1])  # one weight: nothing to group
    assert not kernels.group_supported(torch.randn(3, 128), parts)  # more rows than the GEMV takes


@requires_cuda
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_grouped_gemv_matches_reference_on_gpu_over_random_shapes(bits, dtype):
    gen = torch.Generator().manual_seed(bits)
    for case in range(8):
        m = 1 + case % 2
        ns = [int(torch.randint(1, 80, (1,), generator=gen)) * 8 + case % 3 for _ in range(2 + case % 2)]
        k = int(torch.randint(1, 24, (1,), generator=gen)) * 64
        error = group_relative_error(bits, m, ns, k, [64, 128][case % 2] if k % 128 == 0 else 64, dtype, "cuda",
                                     seed=case)  # fmt: skip
        assert error < 1e-2, (bits, m, ns, k, error)


def test_default_group_config_takes_32_vector_rows_for_many_blocks_and_64_word_steps_otherwise():
    """The two regimes of default_group_config, on the 8B shape's gate + up and q + k + v (132 SMs), 4-bit g64."""
    many = kernels.default_group_config(1, 2 * 14336, 4096, 4, 64, sm_count=132)
    few = kernels.default_group_config(1, 4096 + 2 * 1024, 4096, 4, 64, sm_count=132)
    assert (many.block_n, many.groups_per_step, many.num_warps, many.split_k, many.thread_rows) == (32, 4, 1, 1, 4)
    assert (few.block_n, few.groups_per_step, few.num_warps, few.split_k, few.thread_rows) == (8, 8, 2, 1, 1)
    # steps are counted in words: the same shapes at 2 bits take twice the groups per step, with 4 rows across
    two_bit = kernels.default_group_config(1, 2 * 14336, 4096, 2, 64, sm_count=132)
    assert (two_bit.groups_per_step, two_bit.thread_rows) == (8, 4)
    # 3 bits: 6 words per group, 4 of them in the 2-bit plane whose layout the GEMV reads; the few-row block takes
    # 16 groups so that its two warps' activation tile holds an element per thread
    many, few = (kernels.default_group_config(1, n, 4096, 3, 64, sm_count=132) for n in (2 * 14336, 6144))
    assert (many.block_n, many.groups_per_step, many.thread_rows) == (32, 4, 4)
    assert (few.block_n, few.groups_per_step, few.num_warps) == (8, 16, 2)


def test_vector_thread_rows_give_each_thread_four_words_of_the_step():
    for block_n, groups, warps, bits, group_size in [(32, 4, 1, 4, 64), (16, 8, 2, 4, 64), (8, 8, 2, 8, 128),
                                                     (4, 16, 1, 2, 64)]:  # fmt: skip
        rows = kernels.vector_thread_rows(block_n, groups, warps, bits, group_size)
        step_words = groups * group_size * bits // 32
        assert block_n % rows == 0
        # the activation tile [rows, groups, words] spread over the threads: four words each, unless capped
        assert rows * step_words == 4 * 32 * warps or rows in (1, block_n), (block_n, groups, warps, rows)
    # 3 bits, g64: 6 words per group, so no count of rows gives four words each; a power of two (a Triton tile)
    assert kernels.vector_thread_rows(32, 4, 1, 3, 64) == 4 and kernels.vector_thread_rows(16, 8, 2, 3, 64) == 4


@requires_cuda
def test_grouped_gemv_default_for_many_rows_matches_reference_on_gpu():
    """gate + up of the 8B shape: default_group_config's 32-row programs, rows 4 wide across threads (24 or more
    blocks of 8 rows per SM), at 2, 3, 4 and 8 bits and M = 1 and 2."""
    sm_count = kernels._sm_count(torch.device("cuda"))
    for bits in (2, 3, 4, 8):
        config = kernels.default_group_config(1, 2 * 14336, 4096, bits, 64, sm_count)
        assert (config.block_n, config.thread_rows) == (32, 4), config
        for m in (1, 2):
            error = group_relative_error(bits, m, (14336, 14336), 4096, 64, torch.bfloat16, "cuda")
            assert error < 1e-2, (bits, m, error)


@requires_cuda
@pytest.mark.parametrize("bits", [3, 4])
def test_compiled_llama_decode_step_runs_the_grouped_kernel_and_matches_eager(monkeypatch, bits):
    launches = []
    original = kernels.launch_group

    def counting(*args, **kwargs):
        launches.append(len(args[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "launch_group", counting)
    model = tiny_llama().to(device="cuda", dtype=torch.bfloat16)
    quantize_(model, SINQConfig(bits=bits))
    tokens = torch.randint(0, 512, (1, 1), device="cuda")
    torch._dynamo.reset()
    with torch.no_grad(), NO_CACHES:  # a cached graph would not trace the op
        eager = model(tokens).logits.float()
        compiled = torch.compile(model, fullgraph=True)(tokens).logits.float()
    # traced (at least once, the same number of times) for each layer's q/k/v and gate/up
    assert set(launches) == {2, 3} and launches.count(3) == launches.count(2) >= 2
    assert relative_error(compiled, eager) < 1e-2
