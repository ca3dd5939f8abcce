"""SPEC §4-§5 variants: NF4/NF3 codebooks, symmetric codes, 2D tiling, HQQ-refined zero-points, a given t."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torchao.quantization import quantize_

from sinq_ao import SINQConfig, SINQTensor, skip_lm_head
from sinq_ao.quantize import (
    NF_CODEBOOKS,
    codebook,
    dequantize_weight,
    expand_col_scale,
    expand_groups,
    lp_error,
    quantize_weight,
    refine_zero_point,
)
from tests.helpers import relative_error, structured_matrix

seeds = st.integers(0, 2**31 - 1)
nf_bits = st.sampled_from([3, 4])
methods = st.sampled_from(["sinq", "rtn"])
tilings = st.sampled_from(["1D", "2D"])


def code_units(weight, q, group_size):
    """W / t / s + z: where each weight falls on the code axis (fp32)."""
    n, k = weight.shape
    t = expand_col_scale(q.col_scale.float(), group_size, n)
    s, z = expand_groups(q.scale.float(), group_size, k), expand_groups(q.zero_point.float(), group_size, k)
    return weight.float() / t / s + z, s * t


# --- NF4 / NF3 -----------------------------------------------------------------------------------------------


def test_nf_codebooks_are_sorted_span_minus_one_to_one_and_hold_zero():
    for bits, levels in NF_CODEBOOKS.items():
        assert len(levels) == 2**bits
        assert list(levels) == sorted(levels) and levels[0] == -1.0 and levels[-1] == 1.0 and 0.0 in levels


@given(nf_bits, methods, tilings, st.integers(1, 70), st.integers(1, 150), seeds)
def test_nf_codes_are_the_nearest_codebook_level(bits, method, tiling, rows, cols, seed):
    w = structured_matrix(rows, cols, seed)
    q = quantize_weight(w, bits=bits, group_size=32, method=method, scheme="nf", tiling=tiling)
    x, _ = code_units(w, q, 32)
    levels = codebook(bits, "nf")
    chosen = (x - levels[q.codes.long()]).abs()
    nearest = (x.unsqueeze(-1) - levels).abs().amin(dim=-1)
    assert q.codes.min() >= 0 and q.codes.max() < 2**bits
    assert torch.allclose(chosen, nearest, atol=1e-6)


@given(nf_bits, methods, tilings, st.integers(1, 70), st.integers(1, 150), seeds)
def test_nf_weights_decode_to_codebook_levels(bits, method, tiling, rows, cols, seed):
    w = structured_matrix(rows, cols, seed)
    q = quantize_weight(w, bits=bits, group_size=32, method=method, scheme="nf", tiling=tiling)
    dense = dequantize_weight(*q, 32, levels=codebook(bits, "nf"))
    _, step = code_units(w, q, 32)
    z = expand_groups(q.zero_point, 32, cols)
    # Ŵ / (s t) + z is the codebook level of each code (up to fp32 rounding, relative to |z| when z is large).
    assert ((dense / step + z - codebook(bits, "nf")[q.codes.long()]).abs() <= 1e-4 + 1e-6 * z.abs()).all()


@given(nf_bits, methods, tilings, st.integers(1, 70), st.integers(1, 150), seeds)
def test_nf_error_is_within_half_the_widest_codebook_gap(bits, method, tiling, rows, cols, seed):
    w = structured_matrix(rows, cols, seed)
    q = quantize_weight(w, bits=bits, group_size=32, method=method, scheme="nf", tiling=tiling)
    levels = codebook(bits, "nf")
    half_gap = (levels[1:] - levels[:-1]).max() / 2
    _, step = code_units(w, q, 32)
    error = (dequantize_weight(*q, 32, levels=levels) - w).abs()
    assert (error <= step * half_gap * (1 + 1e-5) + 1e-6 * w.abs()).all()


@pytest.mark.parametrize("bits", [3, 4])
def test_sinq_nf_beats_rtn_nf_on_matrices_with_row_and_column_scales(bits):
    w = structured_matrix(128, 256, 3, spread=1.0)
    levels = codebook(bits, "nf")
    errors = {
        method: relative_error(dequantize_weight(*quantize_weight(w, bits=bits, method=method, scheme="nf"), 64,
                                                 levels=levels), w)  # fmt: skip
        for method in ("sinq", "rtn")
    }
    assert errors["sinq"] < errors["rtn"]


def test_nf_all_zero_groups_dequantize_to_exact_zeros():
    w = structured_matrix(32, 128, 4)
    w[:, :64] = 0
    q = quantize_weight(w, bits=4, scheme="nf")
    assert (dequantize_weight(*q, 64, levels=codebook(4, "nf"))[:, :64] == 0).all()


# --- symmetric -----------------------------------------------------------------------------------------------


@given(st.sampled_from([2, 3, 4, 5, 6, 8]), methods, tilings, st.integers(1, 70), st.integers(1, 150), seeds)
def test_symmetric_error_is_within_half_a_step_around_a_mid_point_zero(bits, method, tiling, rows, cols, seed):
    w = structured_matrix(rows, cols, seed)
    q = quantize_weight(w, bits=bits, group_size=32, method=method, scheme="symmetric", tiling=tiling)
    _, step = code_units(w, q, 32)
    assert (q.zero_point == 2 ** (bits - 1)).all()
    assert q.codes.min() >= 1 and q.codes.max() <= 2**bits - 1  # symmetric levels: ±(2^(b-1) - 1) steps
    assert ((dequantize_weight(*q, 32) - w).abs() <= step / 2 * (1 + 1e-5) + 1e-7).all()


def test_symmetric_is_worse_than_asymmetric_at_three_bits():
    w = structured_matrix(128, 256, 5, spread=1.0)
    errors = {scheme: relative_error(dequantize_weight(*quantize_weight(w, bits=3, scheme=scheme), 64), w)
              for scheme in ("symmetric", "asymmetric")}  # fmt: skip
    assert errors["asymmetric"] < errors["symmetric"]


# --- 2D tiling -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_two_d_tiling_follows_column_scales_that_change_between_row_blocks(seed):
    # Two row blocks whose columns are scaled in opposite patterns: one t per row block fits, one t per column cannot.
    gen = torch.Generator().manual_seed(seed)
    pattern = (torch.randn(1, 256, generator=gen) * 0.5).exp()
    rows = (torch.randn(128, 1, generator=gen) * 0.5).exp()
    w = torch.cat([torch.randn(64, 256, generator=gen) * pattern, torch.randn(64, 256, generator=gen) / pattern]) * rows
    errors = {tiling: relative_error(dequantize_weight(*quantize_weight(w, bits=3, tiling=tiling), 64), w)
              for tiling in ("1D", "2D")}  # fmt: skip
    assert errors["2D"] < errors["1D"]


# --- HQQ-style zero-point refinement -------------------------------------------------------------------------


@given(st.sampled_from([(2, "asymmetric"), (3, "asymmetric"), (4, "asymmetric"), (3, "nf"), (4, "nf")]),
       st.integers(1, 30), st.integers(1, 64), st.integers(0, 25), seeds)  # fmt: skip
def test_hqq_refinement_is_never_worse_than_its_start_on_its_own_objective(bits_scheme, groups, size, steps, seed):
    bits, scheme = bits_scheme
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(groups, size, generator=gen) * 2**bits / 4  # groups in code units
    start = torch.randn(groups, generator=gen) + 2 ** (bits - 1)
    refined = refine_zero_point(x, start, bits, scheme, steps)
    assert (lp_error(x, refined, bits, scheme) <= lp_error(x, start, bits, scheme)).all()


@pytest.mark.parametrize("scheme, bits", [("asymmetric", 3), ("asymmetric", 4), ("nf", 4)])
def test_hqq_quantizer_keeps_scales_and_lowers_the_lp_error_of_every_group(scheme, bits):
    w = structured_matrix(64, 256, 8)
    plain = quantize_weight(w, bits=bits, scheme=scheme)
    refined = quantize_weight(w, bits=bits, scheme=scheme, hqq_steps=20)
    assert torch.equal(plain.scale, refined.scale) and torch.equal(plain.col_scale, refined.col_scale)
    x = (w / plain.col_scale / expand_groups(plain.scale, 64, 256)).view(64, 4, 64)
    plain_loss = lp_error(x, plain.zero_point, bits, scheme)
    refined_loss = lp_error(x, refined.zero_point, bits, scheme)
    assert (refined_loss <= plain_loss * (1 + 1e-5)).all()
    assert refined_loss.sum() < plain_loss.sum()  # and it does move something


def test_hqq_keeps_the_codes_consistent_with_the_stored_zero_points():
    w = structured_matrix(32, 192, 9)
    q = quantize_weight(w, bits=3, hqq_steps=20)
    x, _ = code_units(w, q, 64)
    assert torch.equal(q.codes, x.round().clamp(0, 7).to(torch.int32))


# --- a given column scale t ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tiling", ["1D", "2D"])
def test_quantizing_with_sinqs_own_column_scale_reproduces_sinq(tiling):
    w = structured_matrix(96, 320, 10)
    sinq = quantize_weight(w, bits=4, tiling=tiling)
    again = quantize_weight(w, bits=4, tiling=tiling, col_scale=sinq.col_scale)
    assert (again.codes == sinq.codes).float().mean() > 0.999
    assert relative_error(dequantize_weight(*again, 64), dequantize_weight(*sinq, 64)) < 1e-3


@pytest.mark.parametrize(
    "col_scale, message",
    [(torch.ones(100), "shape"), (torch.ones(2, 128), "shape"), (-torch.ones(128), "positive"),
     (torch.full((128,), float("nan")), "finite")],
)  # fmt: skip
def test_bad_column_scale_is_refused(col_scale, message):
    with pytest.raises(ValueError, match=message):
        quantize_weight(torch.randn(16, 128), col_scale=col_scale)


# --- options, tensor, checkpoint, compile --------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [({"scheme": "nf", "bits": 2}, "NF4, NF3"), ({"scheme": "symmetric", "bits": 1}, "bits >= 2"),
     ({"hqq_steps": -1}, "hqq_steps"), ({"hqq_steps": 5, "scheme": "symmetric"}, "symmetric"),
     ({"scheme": "nf4"}, "scheme")],
)  # fmt: skip
def test_bad_variant_options_are_refused_by_the_config(options, message):
    with pytest.raises(ValueError, match=message):
        SINQConfig(**options)


VARIANTS = [
    {"bits": 4, "scheme": "nf"},
    {"bits": 3, "scheme": "nf", "method": "rtn"},
    {"bits": 3, "tiling": "2D"},
    {"bits": 4, "scheme": "symmetric"},
    {"bits": 3, "hqq_steps": 10},
    {"bits": 4, "scheme": "nf", "tiling": "2D", "hqq_steps": 5},
]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_variant_tensor_round_trips_through_packing_and_a_checkpoint(options, tmp_path):
    layer = torch.nn.Linear(320, 96)
    reference = quantize_weight(layer.weight.detach(), **options)
    quantize_(layer, SINQConfig(**options))
    assert layer.weight.scheme == options.get("scheme", "asymmetric")
    assert torch.equal(layer.weight.codes(), reference.codes)
    torch.save(layer.state_dict(), tmp_path / "layer.pt")
    restored = torch.load(tmp_path / "layer.pt", weights_only=True)["weight"]
    assert isinstance(restored, SINQTensor) and restored.scheme == layer.weight.scheme
    assert torch.equal(restored.dequantize(), layer.weight.dequantize())


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_variant_linear_matches_the_dense_weight_and_compiles_without_graph_break(options):
    model = torch.nn.Sequential(torch.nn.Linear(320, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
    original = [m.weight.detach().clone() for m in (model[0], model[2])]
    quantize_(model, SINQConfig(**options))
    x = torch.randn(3, 320)
    eager = model(x)
    dense = F.linear(F.gelu(F.linear(x, model[0].weight.dequantize(), model[0].bias)), model[2].weight.dequantize(),
                     model[2].bias)  # fmt: skip
    assert relative_error(eager, dense) < 1e-5
    assert relative_error(model[0].weight.dequantize(), original[0]) < 0.3
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    assert relative_error(torch.compile(model, fullgraph=True)(x), eager) < 1e-5


@pytest.mark.parametrize("options", [{"bits": 3, "scheme": "nf", "hqq_steps": 5}, {"bits": 3, "tiling": "2D"}],
                         ids=["nf3-hqq", "2D"])  # fmt: skip
def test_variant_hf_checkpoint_reloads_with_its_scheme_tiling_and_zero_points(options, tmp_path):
    from sinq_ao.hf import load_pretrained, save_pretrained
    from tests.test_hf import assert_same_quantized_state, logits, tiny_llama

    model = tiny_llama()
    config = SINQConfig(**options)
    quantize_(model, config, filter_fn=skip_lm_head)
    save_pretrained(model, tmp_path / "variant", config)
    restored = load_pretrained(tmp_path / "variant")
    assert_same_quantized_state(restored, model)
    assert torch.equal(logits(restored), logits(model))
