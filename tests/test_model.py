"""quantize_(model, SINQConfig()) on a small transformers Llama built from a config (random weights)."""

import pytest
import torch
from torchao.quantization import quantize_
from transformers import LlamaConfig, LlamaForCausalLM

from sinq_ao import SINQConfig, SINQTensor, skip_lm_head
from tests.helpers import relative_error


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


# Relative logit error bounds per bit width: loose enough for random weights, tight enough to catch a broken path.
BOUNDS = {3: 0.5, 4: 0.25, 8: 0.02}


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_quantized_llama_matches_the_original_and_generates(bits, capsys):
    model = tiny_llama()
    tokens = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(tokens).logits
        quantize_(model, SINQConfig(bits=bits), filter_fn=skip_lm_head)
        logits = model(tokens).logits
        generated = model.generate(tokens[:1, :8], max_new_tokens=6, do_sample=False)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, module in linears.items():
        assert isinstance(module.weight, SINQTensor) == (name != "lm_head"), name
    error = relative_error(logits, reference)
    with capsys.disabled():
        print(f"\n[{bits}-bit SINQ g64] relative logit error vs unquantized tiny Llama: {error:.4f}")
    assert error < BOUNDS[bits]
    assert generated.shape == (1, 14)


def test_error_shrinks_with_more_bits():
    tokens = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(2))
    errors = []
    for bits in (2, 3, 4, 6, 8):
        model = tiny_llama()
        with torch.no_grad():
            reference = model(tokens).logits
            quantize_(model, SINQConfig(bits=bits))
            errors.append(relative_error(model(tokens).logits, reference))
    assert errors == sorted(errors, reverse=True)


def test_default_quantize_covers_lm_head_too():
    model = tiny_llama()
    quantize_(model, SINQConfig())
    assert isinstance(model.lm_head.weight, SINQTensor)


def test_config_refuses_bad_options_and_already_quantized_weights():
    with pytest.raises(ValueError, match="bits"):
        SINQConfig(bits=16)
    with pytest.raises(ValueError, match="group_size"):
        SINQConfig(group_size=100)
    layer = torch.nn.Linear(64, 32)
    quantize_(layer, SINQConfig())
    with pytest.raises(ValueError, match="already a SINQTensor"):
        quantize_(layer, SINQConfig())


def test_nan_weight_error_names_the_layer():
    layer = torch.nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"Linear\(in_features=64, out_features=32.*NaN"):
        quantize_(layer, SINQConfig())


def test_compiled_quantized_llama_has_no_graph_break():
    model = tiny_llama()
    quantize_(model, SINQConfig(bits=4))
    tokens = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        eager = model(tokens).logits
        explanation = torch._dynamo.explain(model)(tokens)
        assert explanation.graph_break_count == 0
        compiled = torch.compile(model, fullgraph=True)(tokens).logits
    assert relative_error(compiled, eager) < 1e-4
