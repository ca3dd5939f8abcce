"""benchmarks/gpu_speed.py's argument parsing and sweep candidates (no GPU needed)."""

import argparse
import json

import pytest
import torch

from benchmarks.gpu_speed import group_candidates, layer_shape, sweep_candidates, write_results
from sinq_ao.kernels import LaunchConfig, MmaConfig, _check_config


def test_layer_shapes_parse_as_out_by_in_features():
    assert layer_shape("4096x14336") == (4096, 14336)
    assert layer_shape("1024X4096") == (1024, 4096)


@pytest.mark.parametrize("text", ["4096", "0x4096", "ax4096", "4096x", "-1x5"])
def test_malformed_layer_shapes_are_refused_by_name(text):
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        layer_shape(text)


@pytest.mark.parametrize("n, k", [(4096, 4096), (1024, 4096), (4096, 14336), (16384, 16384)])
def test_every_sweep_candidate_is_a_configuration_the_launcher_accepts(n, k):
    for m in (1, 4, 16, 64):
        kinds = set()
        for config in sweep_candidates(m, n, k):
            _check_config(config)  # raises for block sizes the kernels cannot compile
            kinds.add(type(config).__name__)
            if isinstance(config, LaunchConfig):
                steps = (k // 64) // config.groups_per_step
            elif isinstance(config, MmaConfig):
                steps = k // 64  # one group per step
                assert config.block_m >= min(m, 64) and config.block_m < max(2 * m, 32), (m, config)
            else:
                steps = (k // 32 * 4) // config.block_w  # 4-bit, g64
            assert steps % config.split_k == 0, (m, config)
        expected = {"LaunchConfig"} if m <= 4 else set()  # the GEMV's rows per program are at most 4
        expected |= {"MmaConfig"} if m > 1 else set()
        expected |= {"GemmConfig"} if m > 8 else set()  # block heights (>= 16) below 2 M
        expected |= {"TileConfig"} if m >= 32 else set()  # its block heights (>= 64) at most 2 M
        assert kinds == expected, m


@pytest.mark.parametrize("m", [1, 2, 4, 16, 64])
def test_sweep_at_3_bits_tries_the_gemv_and_the_older_tensor_core_kernel_alone(m):
    """Codes of two bit planes run on the GEMV (its candidates, with power-of-two thread rows, up to
    GEMV_MAX_BLOCK_M rows) and on the older tensor-core kernel (whole groups per step, K split evenly)."""
    from sinq_ao.kernels import GemmConfig, gemm_step_words

    configs = sweep_candidates(m, 4096, 4096, bits=3)
    for config in configs:
        _check_config(config)
        if isinstance(config, GemmConfig):
            step = gemm_step_words(config.block_w, 3, 64)
            assert step % 6 == 0 and (4096 // 32 * 3 // step) % config.split_k == 0, config
    expected = ({"LaunchConfig"} if m <= 4 else set()) | ({"GemmConfig"} if m > 8 else set())
    assert {type(c).__name__ for c in configs} == expected
    assert all(c.thread_rows & (c.thread_rows - 1) == 0 for c in group_candidates(1, bits=3))


@pytest.mark.parametrize("m", [1, 2])
def test_every_grouped_sweep_candidate_is_accepted_and_leaves_k_whole(m):
    configs = group_candidates(m)
    for config in configs:
        _check_config(config)
        assert config.split_k == 1 and config.block_m == m
    assert len(set(configs)) == len(configs)


def test_results_are_written_whole_with_their_command_and_device(tmp_path):
    path = tmp_path / "deeper" / "layers.json"
    write_results(path, [{"N": 1, "M": 2}], what="layers")
    written = json.loads(path.read_text())
    assert written["rows"] == [{"N": 1, "M": 2}] and written["what"] == "layers"
    assert "argv" in written and "device" in written
    assert [p.name for p in path.parent.iterdir()] == ["layers.json"]  # no temporary file left behind


def test_rotating_copies_clone_every_inner_tensor_and_overflow_l2(monkeypatch):
    from benchmarks import gpu_speed
    from sinq_ao import SINQTensor

    w = SINQTensor.from_hp(torch.randn(32, 64), bits=4, group_size=32)
    copies = gpu_speed.rotating_copies(w, count=3)
    assert len(copies) == 3 and copies[0] is w
    for copy in copies[1:]:
        for name in w.tensor_data_names:
            assert getattr(copy, name).data_ptr() != getattr(w, name).data_ptr()
            assert torch.equal(getattr(copy, name), getattr(w, name))
    dense = torch.randn(16, 16, dtype=torch.bfloat16)
    monkeypatch.setattr(gpu_speed, "L2_OVERFLOW_BYTES", 3 * dense.nbytes + 1)  # copies_for: 4 needed
    copies = gpu_speed.rotating_copies(dense)
    assert len(copies) == 4 and all(torch.equal(c, dense) for c in copies)
    assert len({c.data_ptr() for c in copies}) == 4


def test_decode_benchmarks_prefill_a_static_cache_with_the_prompt():
    """gpu_speed.prefill, shared by the decode benchmarks: the cache holds PROMPT_TOKENS positions, and the next
    token is the model's greedy choice after them (on CPU here, on the model's device there)."""
    from benchmarks.gpu_speed import PROMPT_TOKENS, prefill
    from tests.test_model import tiny_llama

    model = tiny_llama()
    torch.manual_seed(3)
    with torch.no_grad():
        cache, token = prefill(model, PROMPT_TOKENS + 8)
    assert token.shape == (1, 1) and 0 <= int(token) < model.config.vocab_size
    assert int(cache.get_seq_length()) == PROMPT_TOKENS
    torch.manual_seed(3)  # the same prompt, run without a cache
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS))
    with torch.no_grad():
        assert int(token) == int(model(prompt).logits[0, -1].argmax())


def test_decode_benchmark_runs_every_decode_loop_without_autograd(monkeypatch):
    """bench_decode holds no_grad for both timing paths (a 7226b2e refactor once moved it onto one of them, and the
    other then failed in AOTAutograd's backward trace on the GPU); the model and the timed loops are stubbed."""
    from benchmarks import gpu_speed

    grad_enabled = []

    def steps(model, args):
        grad_enabled.append(torch.is_grad_enabled())
        return 1.0, 100.0, None, None

    def decoder(model, tokens):
        grad_enabled.append(torch.is_grad_enabled())
        return 1.0, 50.0, 0.5

    monkeypatch.setattr(gpu_speed, "build_llama", lambda layers: torch.nn.Linear(4, 4))
    heads = []
    monkeypatch.setattr(gpu_speed, "quantize_variant",
                        lambda model, variant, lm_head, bits: heads.append((lm_head, bits)))
    monkeypatch.setattr(gpu_speed, "time_compiled_steps", steps)
    monkeypatch.setattr(gpu_speed, "time_graphed_decoder", decoder)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    rows = []
    for graph in ("manual", "decoder"):
        args = argparse.Namespace(variants=["bf16", "sinq"], layers=1, tokens=2, graph=graph, mark_static=False,
                                  profile=False, lm_head="quantized", bits=3)  # fmt: skip
        rows += gpu_speed.bench_decode(args)
    assert grad_enabled == [False] * 4 and heads == [("quantized", 3)] * 4
    assert [r["bits"] for r in rows] == [None, 3] * 2  # the code width reaches the sinq variants only
    assert [r["tokens_per_s"] for r in rows] == [100.0, 100.0, 50.0, 50.0] and rows[2]["generate_s"] == 0.5
    assert [r["lm_head"] for r in rows] == ["bf16", "quantized"] * 2  # bf16 keeps its head whatever --lm-head says
