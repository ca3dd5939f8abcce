"""torchao's safetensors path and config (de)serialization carry SINQTensor / SINQConfig completely."""

import json

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from safetensors.torch import load, save
from torchao.core.config import ALLOWED_AO_MODULES, config_from_dict, config_to_dict
from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict, unflatten_tensor_state_dict
from torchao.prototype.safetensors.safetensors_utils import ALLOWED_CLASSES, ALLOWED_TENSORS_SUBCLASSES
from transformers import TorchAoConfig
from transformers.quantizers.quantizer_torchao import TorchAoHfQuantizer

import sinq_ao.serialization
from sinq_ao import SINQConfig, SINQTensor
from sinq_ao.quantize import SCHEMES, TILINGS
from tests.helpers import structured_matrix


def through_safetensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """flatten -> safetensors bytes -> unflatten, as save_pretrained / from_pretrained do."""
    data, metadata = flatten_tensor_state_dict(tensors)
    raw = save(data, metadata=metadata)
    restored, leftover = unflatten_tensor_state_dict(load(raw), metadata)
    assert not leftover
    return restored


def valid_options(**options) -> bool:
    try:
        SINQConfig(**options)
    except ValueError:
        return False
    return True


def test_import_registers_sinq_in_torchao_allow_lists():
    assert ALLOWED_CLASSES["SINQTensor"] is SINQTensor
    assert "SINQTensor" in ALLOWED_TENSORS_SUBCLASSES
    assert "sinq_ao.serialization" in ALLOWED_AO_MODULES
    assert getattr(sinq_ao.serialization, sinq_ao.serialization.CONFIG_TYPE) is SINQConfig


@given(
    bits=st.sampled_from([1, 2, 3, 4, 5, 6, 8]),
    scheme=st.sampled_from(SCHEMES),
    tiling=st.sampled_from(TILINGS),
    rows=st.integers(1, 3).map(lambda n: 32 * n),
    cols=st.integers(1, 4).map(lambda n: 32 * n),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    transposed=st.booleans(),
)
def test_every_inner_tensor_and_attribute_survives_safetensors(bits, scheme, tiling, rows, cols, dtype, transposed):
    assume(valid_options(bits=bits, scheme=scheme))
    weight = SINQTensor.from_hp(structured_matrix(rows, cols, seed=bits).to(dtype), bits=bits, group_size=32,
                                scheme=scheme, tiling=tiling)  # fmt: skip
    weight = weight.t() if transposed else weight
    restored = through_safetensors({"layer.weight": weight})["layer.weight"]
    assert type(restored) is SINQTensor
    for name in SINQTensor.tensor_data_names:
        assert torch.equal(getattr(restored, name), getattr(weight, name)), name
    for name in SINQTensor.tensor_attribute_names:
        assert getattr(restored, name) == getattr(weight, name), name
    assert torch.equal(restored.dequantize(), weight.dequantize())


def test_plain_tensors_travel_beside_sinq_tensors():
    weight = SINQTensor.from_hp(structured_matrix(64, 64, seed=0))
    bias = torch.randn(64)
    restored = through_safetensors({"layer.weight": weight, "layer.bias": bias})
    assert type(restored["layer.bias"]) is torch.Tensor and torch.equal(restored["layer.bias"], bias)


def test_unknown_layout_version_is_refused_when_rebuilding():
    data, metadata = flatten_tensor_state_dict({"layer.weight": SINQTensor.from_hp(structured_matrix(32, 64, seed=1))})
    entry = json.loads(metadata["layer.weight"])
    entry["_data"]["layout_version"] = 99
    metadata["layer.weight"] = json.dumps(entry)
    with pytest.raises(ValueError, match="layout_version=99 is not known"):
        unflatten_tensor_state_dict(data, metadata)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_layout_v1_checkpoint_loads_repacked_with_the_same_codes(bits):
    """A checkpoint written before layout v2 (consecutive codes per word) loads with the same weight."""
    from tests.test_packing import _pack_layout_v1

    weight = SINQTensor.from_hp(structured_matrix(32, 96, seed=bits), bits=bits, group_size=32)
    data, metadata = flatten_tensor_state_dict({"layer.weight": weight})
    data["layer._weight_qdata"] = _pack_layout_v1(weight.codes(), bits)
    entry = json.loads(metadata["layer.weight"])
    entry["_data"]["layout_version"] = 1
    metadata["layer.weight"] = json.dumps(entry)
    restored, _ = unflatten_tensor_state_dict(load(save(data, metadata=metadata)), metadata)
    restored = restored["layer.weight"]
    assert restored.layout_version == weight.layout_version == 2
    assert torch.equal(restored.qdata, weight.qdata)
    assert torch.equal(restored.dequantize(), weight.dequantize())


def test_every_inner_tensor_is_one_transformers_collects_when_loading():
    """transformers' torchao loader gathers a fixed list of inner-tensor suffixes; a new one would not load."""
    quantizer = TorchAoHfQuantizer(TorchAoConfig(SINQConfig()), pre_quantized=True)
    collected = {pattern for converter in quantizer.get_weight_conversions() for pattern in converter.source_patterns}
    assert {f"_weight_{name}" for name in SINQTensor.tensor_data_names} <= collected


@pytest.mark.parametrize("config", [SINQConfig(), SINQConfig(bits=3, group_size=128, tiling="2D", method="rtn",
                                                             scheme="nf", steps=4, hqq_steps=5)])  # fmt: skip
def test_config_round_trips_through_config_json(config):
    saved = json.loads(json.dumps(TorchAoConfig(config).to_dict(), default=str))
    assert saved["quant_type"]["default"]["_type"] == "sinq_ao.SINQConfig"
    assert TorchAoConfig.from_dict(saved).quant_type == config
    assert config_from_dict(config_to_dict(config)) == config


def test_config_saved_under_its_class_name_still_loads():
    saved = config_to_dict(SINQConfig(bits=5))
    saved["_type"] = "SINQConfig"
    assert config_from_dict(saved) == SINQConfig(bits=5)
