"""benchmarks/gpu_speed.py's argument parsing and sweep candidates (no GPU needed)."""

import argparse

import pytest

from benchmarks.gpu_speed import gemm_candidates, gemv_candidates, layer_shape
from sinq_ao.kernels import _check_config


def test_layer_shapes_parse_as_out_by_in_features():
    assert layer_shape("4096x14336") == (4096, 14336)
    assert layer_shape("1024X4096") == (1024, 4096)


@pytest.mark.parametrize("text", ["4096", "0x4096", "ax4096", "4096x", "-1x5"])
def test_malformed_layer_shapes_are_refused_by_name(text):
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        layer_shape(text)


@pytest.mark.parametrize("n, k", [(4096, 4096), (1024, 4096), (4096, 14336), (16384, 16384)])
def test_every_sweep_candidate_is_a_configuration_the_launcher_accepts(n, k):
    for m in (1, 4, 16):
        for config in gemv_candidates(m, n, k, 4) + (gemm_candidates(m, n, k, 4) if m > 1 else []):
            _check_config(config)  # raises for block sizes the kernels cannot compile
            gemv = hasattr(config, "groups_per_step")
            steps = (k // 64) // config.groups_per_step if gemv else (k // 32 * 4) // config.block_w  # 4-bit, g64
            assert steps % config.split_k == 0, (m, config)
