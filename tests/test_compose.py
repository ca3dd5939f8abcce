"""SINQ composes with the rest of torchao: FqnToConfig mixes, custom filters, on-the-fly mixed loading."""

import torch
from torchao.quantization import FqnToConfig, Int8Tensor, Int8WeightOnlyConfig, quantize_
from transformers import AutoModelForCausalLM, TorchAoConfig

from sinq_ao import SINQConfig, SINQTensor
from sinq_ao.hf import save_pretrained
from tests.helpers import relative_error
from tests.test_hf import assert_same_quantized_state, logits, save_source, tiny_llama


def mixed_config() -> FqnToConfig:
    """3-bit SINQ queries, int8 keys (torchao's own tensor), float values, 8-bit SINQ MLPs, 2-bit g32 layer-0 output."""
    return FqnToConfig(
        {
            "model.layers.0.self_attn.o_proj": SINQConfig(bits=2, group_size=32),
            r"re:.*\.q_proj": SINQConfig(bits=3),
            r"re:.*\.k_proj": Int8WeightOnlyConfig(),
            r"re:.*\.v_proj": None,
            r"re:.*\.mlp\.(gate|up|down)_proj": SINQConfig(bits=8),
        }
    )


def layer_kinds(model: torch.nn.Module) -> dict[str, str]:
    """Linear name -> how its weight is stored ("sinq3", "int8", "float", ...)."""
    kinds = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            weight = module.weight
            if isinstance(weight, SINQTensor):
                kinds[name] = f"sinq{weight.bits}g{weight.group_size}"
            else:
                kinds[name] = "int8" if isinstance(weight, Int8Tensor) else "float"
    return kinds


EXPECTED_KINDS = {
    **{f"model.layers.{i}.self_attn.q_proj": "sinq3g64" for i in (0, 1)},
    **{f"model.layers.{i}.self_attn.k_proj": "int8" for i in (0, 1)},
    **{f"model.layers.{i}.self_attn.v_proj": "float" for i in (0, 1)},
    "model.layers.0.self_attn.o_proj": "sinq2g32",
    "model.layers.1.self_attn.o_proj": "float",
    **{f"model.layers.{i}.mlp.{p}": "sinq8g64" for i in (0, 1) for p in ("gate_proj", "up_proj", "down_proj")},
    "lm_head": "float",
}


def test_fqn_to_config_mixes_sinq_bit_widths_int8_and_float_layers():
    model = tiny_llama()
    reference = logits(model)
    quantize_(model, mixed_config(), filter_fn=None)
    assert layer_kinds(model) == EXPECTED_KINDS
    assert relative_error(logits(model), reference) < 0.5


def test_mixed_model_saves_and_reloads_identically(tmp_path):
    model = tiny_llama()
    quantize_(model, mixed_config(), filter_fn=None)
    save_pretrained(model, tmp_path / "mixed", mixed_config())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "mixed")
    assert layer_kinds(reloaded) == EXPECTED_KINDS
    assert_same_quantized_state(reloaded, model)
    assert torch.equal(logits(reloaded), logits(model))


def test_mixed_config_applies_on_the_fly_in_from_pretrained(tmp_path):
    source = save_source(tmp_path / "src", tiny_llama())
    on_the_fly = AutoModelForCausalLM.from_pretrained(source, quantization_config=TorchAoConfig(mixed_config()))
    assert layer_kinds(on_the_fly) == EXPECTED_KINDS


def test_custom_filter_quantizes_only_the_layers_it_selects():
    model = tiny_llama()
    quantize_(
        model, SINQConfig(bits=4), filter_fn=lambda module, fqn: isinstance(module, torch.nn.Linear) and ".mlp." in fqn
    )
    kinds = layer_kinds(model)
    assert {name for name, kind in kinds.items() if kind != "float"} == {name for name in kinds if ".mlp." in name}
