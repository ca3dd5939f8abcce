"""benchmarks/head_rows_ab.py's arguments and its head-only override of default_config (timing needs a GPU)."""

import pytest

from benchmarks.head_rows_ab import parse_args, with_head_rows
from sinq_ao.kernels import default_config


def test_override_changes_only_the_one_row_head_product():
    config = with_head_rows(8, vocab=128256)
    assert default_config(1, 128256, 4096, 4, 64).block_n == 16 and config(1, 128256, 4096, 4, 64).block_n == 8
    assert config(1, 128256, 4096, 4, 64)._replace(block_n=16) == default_config(1, 128256, 4096, 4, 64)
    for m, n in [(1, 14336), (2, 128256), (1, 4096)]:
        assert config(m, n, 4096, 4, 64) == default_config(m, n, 4096, 4, 64)


@pytest.mark.parametrize("argv, message", [
    (["--rows", "12"], "powers of two"),
    (["--rows", "0"], "powers of two"),
    (["--layers", "0"], "at least 1"),
])  # fmt: skip
def test_bad_arguments_exit_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_defaults_alternate_the_head_settings():
    args = parse_args([])
    assert args.rows == [16, 8, 16] and args.layers == 4 and args.tokens == 32 and args.out is None
