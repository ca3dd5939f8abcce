"""benchmarks/gemv_launch.py's arguments (the Nsight Compute driver; launching needs a GPU)."""

import pytest

from benchmarks.gemv_launch import parse_args
from sinq_ao.kernels import LaunchConfig


def test_defaults_are_the_8b_gate_and_up_with_the_default_configuration():
    args = parse_args([])
    assert args.weights == [(14336, 4096), (14336, 4096)] and args.config is None and args.m == 1


def test_config_fields_fill_a_launch_config_in_order():
    args = parse_args(["--weights", "4096x4096", "--config", "32", "4", "1", "1", "1", "3", "4", "--m", "2"])
    assert args.config == LaunchConfig(32, 4, 1, 1, 1, 3, 4) and args.config.thread_rows == 4
    assert parse_args(["--config", "8", "8"]).config == LaunchConfig(8, 8)


@pytest.mark.parametrize("argv, message", [
    (["--weights", "4096x4096", "1024x2048"], "one K"),
    (["--weights", "8x64", "8x64", "8x64", "8x64"], "1 to 3"),
    (["--config", "8"], "block_n groups_per_step"),
    (["--m", "3"], "--m must be 1 to 2 rows for grouped weights"),
    (["--weights", "4096x4096", "--m", "0"], "got 0"),
    (["--launches", "0"], "--launches must be at least 1, got 0"),
])  # fmt: skip
def test_bad_arguments_exit_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
