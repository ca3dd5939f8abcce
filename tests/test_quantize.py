"""SPEC §4-§5: group-wise quantization of the normalised weight, and what bad input does."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sinq_ao.quantize import dequantize_weight, expand_col_scale, expand_groups, quantize_weight
from tests.helpers import relative_error, structured_matrix

bits_st = st.sampled_from([2, 3, 4, 5, 6, 8])
seeds = st.integers(0, 2**31 - 1)


@given(bits_st, st.sampled_from(["sinq", "rtn"]), st.sampled_from(["1D", "2D"]),
       st.integers(1, 70), st.integers(1, 200), st.sampled_from([32, 64]), seeds)  # fmt: skip
def test_reconstruction_error_is_within_half_a_step(bits, method, tiling, rows, cols, group_size, seed):
    w = structured_matrix(rows, cols, seed)
    q = quantize_weight(w, bits=bits, group_size=group_size, method=method, tiling=tiling)
    step = expand_groups(q.scale, group_size, cols) * expand_col_scale(q.col_scale, group_size, rows)
    error = (dequantize_weight(*q, group_size) - w).abs()
    # Half a step, plus fp32 rounding of s * (Q - z) (a constant group has a tiny step and a huge |z|).
    assert (error <= step / 2 * (1 + 1e-5) + 1e-6 * w.abs() + 1e-7).all()


@given(bits_st, st.integers(1, 40), st.integers(1, 150), seeds)
def test_codes_lie_in_range_and_shapes_follow_groups(bits, rows, cols, seed):
    q = quantize_weight(structured_matrix(rows, cols, seed), bits=bits, group_size=64)
    groups = -(-cols // 64)
    assert q.codes.min() >= 0 and q.codes.max() <= 2**bits - 1
    assert q.scale.shape == q.zero_point.shape == (rows, groups)
    assert q.col_scale.shape == (cols,)
    assert torch.equal(q.zero_point, q.zero_point.round())  # z is integer-valued


@given(st.sampled_from([3, 4]), st.integers(0, 2**31 - 1))
def test_sinq_beats_rtn_on_matrices_with_row_and_column_scales(bits, seed):
    # Averaged over four draws: SINQ minimises imbalance, not this error, and loses on ~1 % of single draws at this
    # spread (on ~37 % at spread 1.5, where a few columns dominate the Frobenius norm; docs/architecture.md).
    errors = {"sinq": 0.0, "rtn": 0.0}
    for draw in range(4):
        w = structured_matrix(128, 256, seed + draw, spread=1.0)
        for method in errors:
            q = quantize_weight(w, bits=bits, group_size=64, method=method)
            errors[method] += relative_error(dequantize_weight(*q, 64), w)
    assert errors["sinq"] < errors["rtn"]


def test_rtn_has_unit_column_scale():
    q = quantize_weight(structured_matrix(16, 128, 0), method="rtn")
    assert torch.equal(q.col_scale, torch.ones(128))


def test_two_d_tiling_gives_a_column_scale_per_row_block():
    q = quantize_weight(structured_matrix(100, 128, 0), tiling="2D", group_size=32)
    assert q.col_scale.shape == (4, 128)


def test_same_input_gives_bit_identical_codes():
    w = structured_matrix(96, 320, 7)
    first, second = quantize_weight(w, bits=3), quantize_weight(w.clone(), bits=3)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_parameters_are_stored_in_the_weight_dtype(dtype):
    w = structured_matrix(32, 128, 1).to(dtype)
    q = quantize_weight(w)
    assert q.scale.dtype == q.zero_point.dtype == q.col_scale.dtype == dtype
    assert relative_error(dequantize_weight(*q, 64, dtype=torch.float32), w.float()) < 0.15


def test_ragged_last_group_is_shorter_not_padded():
    # in_features = 576 = 4 * 128 + 64 (SmolLM2's hidden size at group 128)
    w = structured_matrix(24, 576, 5)
    q = quantize_weight(w, bits=4, group_size=128)
    assert q.scale.shape == (24, 5)
    ragged_only = quantize_weight(w[:, 512:], bits=4, group_size=128)
    # The tail is its own narrower tile: quantizing it alone gives the same codes.
    assert torch.equal(q.codes[:, 512:], ragged_only.codes)
    assert relative_error(dequantize_weight(*q, 128), w) < 0.15


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_with_a_clear_error(bad):
    w = structured_matrix(8, 64, 0)
    w[3, 5] = bad
    with pytest.raises(ValueError, match="NaN/Inf"):
        quantize_weight(w)


@pytest.mark.parametrize("method", ["sinq", "rtn"])
@pytest.mark.parametrize("tiling", ["1D", "2D"])
def test_zero_rows_columns_and_groups_give_finite_scales_and_exact_zeros(method, tiling):
    w = structured_matrix(64, 192, 2)
    w[5] = 0  # a row
    w[:, 17] = 0  # a column
    w[10:20, 64:128] = 0  # whole groups
    q = quantize_weight(w, bits=4, method=method, tiling=tiling)
    assert all(torch.isfinite(t).all() for t in (q.scale, q.zero_point, q.col_scale))
    dense = dequantize_weight(*q, 64)
    assert torch.isfinite(dense).all()
    assert (dense[5] == 0).all() and (dense[:, 17] == 0).all() and (dense[10:20, 64:128] == 0).all()
    all_zero = quantize_weight(torch.zeros(8, 64), method=method, tiling=tiling)
    assert (dequantize_weight(*all_zero, 64) == 0).all()


@pytest.mark.parametrize(
    "weight, options, message",
    [
        (torch.zeros(4, 64, 2), {}, "2-D"),
        (torch.zeros(64), {}, "2-D"),
        (torch.zeros(4, 64, dtype=torch.int32), {}, "floating-point"),
        (torch.zeros(0, 64), {}, "empty"),
        (torch.zeros(4, 64), {"bits": 9}, "bits"),
        (torch.zeros(4, 64), {"bits": 0}, "bits"),
        (torch.zeros(4, 64), {"group_size": 48}, "group_size"),
        (torch.zeros(4, 64), {"method": "gptq"}, "method"),
        (torch.zeros(4, 64), {"tiling": "3D"}, "tiling"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(weight, options, message):
    with pytest.raises(ValueError, match=message):
        quantize_weight(weight, **options)
