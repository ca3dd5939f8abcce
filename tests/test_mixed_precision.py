"""Automatic mixed precision: exact memory accounting, the greedy allocator, and the FqnToConfig it emits."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchao.quantization import quantize_

from sinq_ao import SINQConfig, SINQTensor, skip_lm_head
from sinq_ao.mixed_precision import allocate_bits, layer_errors, plan_mixed_precision, storage_bytes
from tests.helpers import relative_error, structured_matrix
from tests.test_model import tiny_llama


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("tiling", ["1D", "2D"])
@pytest.mark.parametrize("shape", [(96, 320), (100, 200)])
def test_storage_bytes_is_what_a_sinq_tensor_holds(bits, tiling, shape):
    w = SINQTensor.from_hp(structured_matrix(*shape, 0).to(torch.bfloat16), bits=bits, tiling=tiling)
    assert storage_bytes(*shape, bits, 64, tiling, torch.bfloat16) == w.stored_bytes()


@given(st.lists(st.tuples(st.floats(0.1, 100), st.integers(1, 50)), min_size=1, max_size=12),
       st.floats(2, 8), st.integers(0, 2**31 - 1))  # fmt: skip
def test_allocation_stays_within_the_budget(layers, average_bits, seed):
    gen = torch.Generator().manual_seed(seed)
    candidates = (2, 3, 4, 5, 6, 8)
    errors, sizes = {}, {}
    for index, (scale, size) in enumerate(layers):
        noise = 1 + torch.rand(len(candidates), generator=gen).sort(descending=True).values
        errors[f"l{index}"] = {b: scale * 4.0 ** -b * float(n) for b, n in zip(candidates, noise)}
        sizes[f"l{index}"] = {b: size * b for b in candidates}
    budget = sum(size * average_bits for _, size in layers)
    bits = allocate_bits(errors, sizes, budget)
    assert set(bits) == set(errors) and all(b in candidates for b in bits.values())
    assert sum(sizes[name][b] for name, b in bits.items()) <= budget


def test_the_more_sensitive_of_two_equal_layers_gets_more_bits():
    errors = {"calm": {b: 4.0**-b for b in (3, 4, 5)}, "sensitive": {b: 10 * 4.0**-b for b in (3, 4, 5)}}
    sizes = {name: {b: 100 * b for b in (3, 4, 5)} for name in errors}
    assert allocate_bits(errors, sizes, budget=100 * 8) == {"calm": 3, "sensitive": 5}
    assert allocate_bits(errors, sizes, budget=100 * 7) == {"calm": 3, "sensitive": 4}


def test_identical_layers_at_a_candidate_budget_all_get_that_width():
    errors = {f"l{i}": {b: 4.0**-b for b in (2, 3, 4, 8)} for i in range(5)}
    sizes = {name: {b: 10 * b for b in (2, 3, 4, 8)} for name in errors}
    assert set(allocate_bits(errors, sizes, budget=5 * 10 * 4).values()) == {4}


def test_a_budget_below_the_smallest_candidate_is_refused():
    with pytest.raises(ValueError, match="budget"):
        allocate_bits({"a": {3: 1.0, 4: 0.5}}, {"a": {3: 30, 4: 40}}, budget=20)


@pytest.mark.parametrize("average_bits", [1.5, 9, "3.5"])
def test_average_bits_outside_the_candidates_is_refused(average_bits):
    with pytest.raises(ValueError, match="average_bits"):
        plan_mixed_precision(tiny_llama(), average_bits, candidate_bits=(2, 3, 4, 8), progress=False)


def test_nf_candidates_outside_its_codebooks_are_refused():
    with pytest.raises(ValueError, match="NF4, NF3"):
        plan_mixed_precision(tiny_llama(), 3.5, SINQConfig(scheme="nf"), candidate_bits=(2, 3, 4), progress=False)


def logit_error(model, tokens, reference):
    with torch.no_grad():
        return relative_error(model(tokens).logits, reference)


def test_plan_applies_its_bits_within_the_memory_budget_and_beats_uniform_three_bits():
    tokens = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    model = tiny_llama()
    with torch.no_grad():
        reference = model(tokens).logits
    plan = plan_mixed_precision(model, 3.5, candidate_bits=(2, 3, 4, 5, 6, 8), tokens=tokens, progress=False)
    assert plan.bytes <= plan.budget and len(set(plan.bits.values())) > 1
    quantize_(model, plan.config, filter_fn=None)
    for name, module in model.named_modules():
        if name in plan.bits:
            assert module.weight.bits == plan.bits[name]
    assert not isinstance(model.lm_head.weight, SINQTensor)
    held = sum(m.weight.stored_bytes() for name, m in model.named_modules() if name in plan.bits)
    assert held == plan.bytes
    uniform = {}
    for bits in (3, 4):
        other = tiny_llama()
        quantize_(other, SINQConfig(bits=bits), filter_fn=skip_lm_head)
        uniform[bits] = logit_error(other, tokens, reference)
    uniform_bytes = {bits: sum(storage_bytes(*m.weight.shape, bits, 64, "1D", m.weight.dtype)
                               for name, m in tiny_llama().named_modules() if name in plan.bits)
                     for bits in (3, 4)}  # fmt: skip
    assert uniform_bytes[3] < plan.bytes <= (uniform_bytes[3] + uniform_bytes[4]) / 2 == plan.budget
    assert logit_error(model, tokens, reference) < uniform[3]


def test_layer_errors_fall_with_bits_and_ignore_the_weights_scale():
    w = structured_matrix(64, 192, 3, spread=0.5)
    channel_weight = torch.rand(192, generator=torch.Generator().manual_seed(1))
    errors = layer_errors(w, SINQConfig(), (2, 3, 4, 8), channel_weight)
    assert [errors[b] for b in (2, 3, 4, 8)] == sorted(errors.values(), reverse=True)
    scaled = layer_errors(w * 1000, SINQConfig(), (2, 3, 4, 8), channel_weight)
    assert all(abs(scaled[b] - errors[b]) <= 1e-3 * errors[b] for b in errors)


def test_mixed_precision_and_asinq_checkpoints_reload_as_they_were(tmp_path):
    from sinq_ao import asinq_quantize_
    from sinq_ao.hf import load_pretrained, save_pretrained
    from tests.test_hf import assert_same_quantized_state, logits
    from tests.test_hf import tiny_llama as hf_tiny_llama

    model = hf_tiny_llama()
    plan = plan_mixed_precision(model, 3.5, candidate_bits=(2, 3, 4, 8), progress=False)
    quantize_(model, plan.config, filter_fn=None)
    save_pretrained(model, tmp_path / "mixed", plan.config)
    restored = load_pretrained(tmp_path / "mixed")
    assert_same_quantized_state(restored, model)
    assert {name: m.weight.bits for name, m in restored.named_modules() if name in plan.bits} == plan.bits

    calibrated = hf_tiny_llama()
    asinq_quantize_(calibrated, torch.randint(3, 320, (2, 16)), SINQConfig(bits=3), progress=False)
    save_pretrained(calibrated, tmp_path / "asinq", SINQConfig(bits=3))
    assert torch.equal(logits(load_pretrained(tmp_path / "asinq")), logits(calibrated))
