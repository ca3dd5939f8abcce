"""A-SINQ (SPEC §6): the column-scale search, its absorption into t, and layer-by-layer calibration."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sinq_ao import SINQConfig, SINQTensor
from sinq_ao.calibration import (
    ALPHAS,
    _alpha_scale,
    asinq_quantize_,
    calibration_tokens,
    collect_inputs,
    linear_blocks,
    search_col_scale,
)
from sinq_ao.quantize import quantize_weight
from tests.helpers import relative_error, structured_matrix
from tests.test_model import tiny_llama

seeds = st.integers(0, 2**31 - 1)


def activations(rows: int, cols: int, seed: int, outliers: int = 4) -> torch.Tensor:
    """Gaussian inputs with a few outlier channels, the pattern AWQ-style scaling exploits."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen)
    x[:, torch.randperm(cols, generator=gen)[:outliers]] *= 20
    return x


@given(st.integers(2, 64), seeds, st.floats(0, 0.95))
def test_alpha_scale_is_positive_and_normalised(cols, seed, alpha):
    gen = torch.Generator().manual_seed(seed)
    a = _alpha_scale(torch.rand(cols, generator=gen) * 5, torch.rand(cols, generator=gen), alpha)
    assert (a > 0).all() and torch.isfinite(a).all()
    assert torch.isclose(a.max() * a.min(), torch.tensor(1.0), rtol=1e-4)


@given(st.sampled_from([3, 4]), st.sampled_from(["1D", "2D"]), seeds)
def test_asinq_output_error_is_never_above_sinq_on_the_calibration_inputs(bits, tiling, seed):
    w, x = structured_matrix(64, 128, seed, spread=0.5), activations(256, 128, seed)
    config = SINQConfig(bits=bits, tiling=tiling)
    col_scale, alpha, errors = search_col_scale(w, x, x.abs().mean(dim=0), config)
    assert set(errors) == {None, *ALPHAS}
    assert errors[alpha] == min(errors.values()) and errors[alpha] <= errors[None]


def test_asinq_strictly_helps_when_inputs_have_outlier_channels():
    w, x = structured_matrix(96, 256, 1, spread=0.5), activations(512, 256, 1)
    _, alpha, errors = search_col_scale(w, x, x.abs().mean(dim=0), SINQConfig(bits=3))
    assert alpha is not None and errors[alpha] < errors[None]


@pytest.mark.parametrize("options", [{"bits": 3}, {"bits": 4, "scheme": "nf"}, {"bits": 3, "tiling": "2D"}],
                         ids=["3bit", "nf4", "2D"])  # fmt: skip
def test_absorbed_scale_leaves_the_layer_computable_by_the_plain_linear(options):
    model = tiny_llama()
    tokens = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(tokens).logits
    result = asinq_quantize_(model, tokens, SINQConfig(**options), progress=False)
    assert set(result.alphas) == {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"}
    layer = model.model.layers[0].mlp.down_proj
    plain = quantize_weight(layer.weight.dequantize(torch.float32), **options)
    assert isinstance(layer.weight, SINQTensor) and layer.weight.act_pre_scale.shape == plain.col_scale.shape
    x = torch.randn(3, layer.in_features)
    # The calibrated t is an ordinary column scale: F.linear through the tensor equals x Ŵᵀ with Ŵ dense.
    assert relative_error(F.linear(x, layer.weight), x @ layer.weight.dequantize().T) < 1e-5
    with torch.no_grad():
        assert relative_error(model(tokens).logits, reference) < 0.5
        explanation = torch._dynamo.explain(model)(tokens)
    assert explanation.graph_break_count == 0


def test_calibration_stops_the_forward_pass_after_the_block():
    model = tiny_llama()
    calls = []
    model.model.layers[1].register_forward_pre_hook(lambda *_: calls.append(1))
    blocks = linear_blocks(model, lambda m, n: isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert list(blocks) == ["model.layers.0", "model.layers.1"]
    first = blocks["model.layers.0"]
    inputs = collect_inputs(model, torch.randint(0, 512, (2, 16)), first, model.model.layers[0], max_rows=8)
    assert calls == []  # layer 1 never ran
    assert set(inputs) == set(first) and all(record.count == 32 for record in inputs.values())
    assert sum(len(rows) for rows in inputs["model.layers.0.self_attn.q_proj"].rows) == 8  # 32 tokens, stride 4


def test_linears_outside_any_layer_list_are_blocks_of_their_own():
    blocks = linear_blocks(tiny_llama(), lambda m, n: isinstance(m, torch.nn.Linear))
    assert list(blocks) == ["model.layers.0", "model.layers.1", "lm_head"]
    assert list(blocks["lm_head"]) == ["lm_head"] and len(blocks["model.layers.0"]) == 7


class WordTokenizer:
    """A test double with the one call calibration_tokens makes: one token id per whitespace word."""

    def __call__(self, text, return_tensors, verbose):
        ids = torch.tensor([[hash(word) % 512 for word in text.split()]])
        return type("Encoding", (), {"input_ids": ids})


def test_calibration_tokens_come_from_a_text_file_in_even_non_overlapping_windows(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(" ".join(f"w{i}" for i in range(1000)))
    tokens = calibration_tokens(WordTokenizer(), str(path), n_samples=4, seq_len=100)
    assert tokens.shape == (4, 100)
    assert len({tuple(row.tolist()) for row in tokens}) == 4


def test_calibration_tokens_accept_a_token_tensor():
    assert calibration_tokens(None, torch.arange(1000), n_samples=3, seq_len=200).shape == (3, 200)
    assert torch.equal(calibration_tokens(None, torch.ones(2, 7, dtype=torch.long)), torch.ones(2, 7))


def test_calibrating_on_the_eval_text_warns_that_it_leaks():
    from sinq_ao.calibration import CalibrationLeakWarning
    from sinq_ao.evaluate import SHARED_WIKITEXT

    if not SHARED_WIKITEXT.is_file():
        pytest.skip("the shared WikiText-2 copy is not next to this checkout")
    with pytest.warns(CalibrationLeakWarning, match="leaks"):
        tokens = calibration_tokens(WordTokenizer(), None, n_samples=2, seq_len=64)
    assert tokens.shape == (2, 64)


@pytest.mark.parametrize(
    "source, message, error",
    [("/nonexistent/calib.txt", "does not exist", FileNotFoundError), (torch.zeros(4), "integer", ValueError),
     (torch.arange(10), "fewer than one window", ValueError)],
)  # fmt: skip
def test_bad_calibration_sources_are_refused(source, message, error):
    with pytest.raises(error, match=message):
        calibration_tokens(WordTokenizer(), source, seq_len=64)


def test_asinq_refuses_token_ids_that_are_not_a_batch():
    with pytest.raises(ValueError, match="n_samples, seq_len"):
        asinq_quantize_(tiny_llama(), torch.arange(32))


def test_already_quantized_models_are_refused_with_the_layer_name():
    from torchao.quantization import quantize_

    model = tiny_llama()
    quantize_(model.model.layers[1].mlp.up_proj, SINQConfig())
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight is already a SINQTensor"):
        asinq_quantize_(model, torch.randint(0, 512, (2, 8)))
