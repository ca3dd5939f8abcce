"""SINQTensor: construction, dequantization and the ops a linear layer needs, eager and compiled."""

import pytest
import torch
import torch.nn.functional as F
from torchao.quantization import quantize_

from sinq_ao import SINQConfig, SINQTensor
from sinq_ao.packing import LAYOUT_VERSION
from sinq_ao.quantize import dequantize_weight, quantize_weight
from tests.helpers import relative_error, structured_matrix

aten = torch.ops.aten


def make(rows=96, cols=320, bits=4, dtype=torch.float32, **options):
    return SINQTensor.from_hp(structured_matrix(rows, cols, 0).to(dtype), bits=bits, **options)


def test_inner_tensors_have_the_documented_shapes_and_dtypes():
    w = make(rows=96, cols=320, bits=3, dtype=torch.bfloat16)
    assert w.shape == (96, 320) and w.dtype == torch.bfloat16
    assert w.qdata.dtype == torch.int32 and w.qdata.shape == (96, 10 * 3)
    assert w.scale.shape == w.zero_point.shape == (96, 5) and w.scale.dtype == torch.bfloat16
    assert w.act_pre_scale.shape == (320,)
    assert (w.bits, w.group_size, w.tiling, w.layout_version) == (3, 64, "1D", LAYOUT_VERSION)


def test_dequantize_matches_the_quantizer():
    weight = structured_matrix(64, 256, 1)
    w = SINQTensor.from_hp(weight, bits=4)
    assert torch.equal(w.dequantize(), dequantize_weight(*quantize_weight(weight, bits=4), 64))


@pytest.mark.parametrize("tiling", ["1D", "2D"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_equals_linear_of_dequantized_weight(tiling, dtype):
    w = make(dtype=dtype, tiling=tiling)
    x, bias = torch.randn(2, 5, 320, dtype=dtype), torch.randn(96, dtype=dtype)
    expected = F.linear(x.float(), w.dequantize(torch.float32), bias.float())
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for out in (F.linear(x, w, bias), aten.linear(x, w, bias), x @ w.t() + bias, torch.addmm(bias, x[0], w.t())):
        assert out.dtype == dtype
        assert relative_error(out.float(), expected[0] if out.ndim == 2 else expected) < tolerance


def test_compiled_linear_is_one_graph_and_matches_eager():
    model = torch.nn.Sequential(torch.nn.Linear(320, 96), torch.nn.GELU(), torch.nn.Linear(96, 64))
    quantize_(model, SINQConfig(bits=4))
    x = torch.randn(3, 320)
    eager = model(x)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
    compiled = torch.compile(model, fullgraph=True)
    assert relative_error(compiled(x), eager) < 1e-5


def test_transposed_matmul_without_linear():
    w = make()
    x = torch.randn(4, 96)
    # x (4, N) @ W (N, K): a plain matmul against the untransposed weight
    assert relative_error(torch.mm(x, w), x @ w.dequantize()) < 1e-5
    assert w.t().shape == (320, 96) and w.t().t().shape == (96, 320)
    assert torch.equal(w.t().dequantize(), w.dequantize().t())


@pytest.mark.parametrize("tiling", ["1D", "2D"])
def test_slicing_rows_and_columns_at_group_boundaries(tiling):
    w = make(rows=128, cols=320, tiling=tiling)
    dense = w.dequantize()
    for index in ((slice(64, 128), slice(None)), (slice(None), slice(64, 192)), (slice(None), slice(256, 320))):
        part = w[index]
        assert isinstance(part, SINQTensor)
        assert torch.equal(part.dequantize(), dense[index])
    with pytest.raises(ValueError, match="group_size"):
        w[:, 10:70]


def test_slice_of_ragged_tail():
    w = make(rows=8, cols=100, group_size=64)
    assert torch.equal(w[:, 64:].dequantize(), w.dequantize()[:, 64:])


def test_detach_clone_to_and_copy_keep_the_quantized_data():
    w = make()
    for other in (w.detach(), w.clone(), w.to("cpu"), torch.nn.Parameter(w, requires_grad=False)):
        assert isinstance(other, SINQTensor) and torch.equal(other.dequantize(), w.dequantize())
    target = make(cols=320, bits=4)
    source = SINQTensor.from_hp(structured_matrix(96, 320, 9), bits=4)
    target.copy_(source)
    assert torch.equal(target.dequantize(), source.dequantize())


def test_unknown_layout_version_is_refused():
    w = make()
    with pytest.raises(ValueError, match="layout_version"):
        SINQTensor(w.qdata, w.scale, w.zero_point, w.act_pre_scale, 4, 64, w.shape, "asymmetric", "1D", 99, False)


def test_wrong_input_width_names_both_sizes():
    w = make()
    with pytest.raises(ValueError, match="320"):
        F.linear(torch.randn(2, 100), w)


def test_the_eager_only_gpu_unpack_is_never_chosen_while_tracing():
    """The raw Triton unpack launch is for real eager tensors; Dynamo and AOTAutograd's fake tensors take the
    traceable path (a launch on a fake tensor would fail under torch.compile)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from sinq_ao.tensor import _eager

    assert _eager(torch.randn(2, 3))
    with FakeTensorMode():
        assert not _eager(torch.randn(2, 3))
    seen = []

    def probe(x):
        seen.append(_eager(x))
        return x + 1

    torch.compile(probe, backend="eager", fullgraph=True)(torch.randn(2, 3))
    assert seen == [False]


def test_quantize_marks_the_weight_and_its_inner_tensors_static_for_cuda_graph_replays():
    from torchao.quantization import quantize_

    from sinq_ao import SINQConfig, mark_static_weights

    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))
    quantize_(model, SINQConfig(bits=4, group_size=32))
    weights = [model[0].weight, model[1].weight]
    inner = [getattr(w, name) for w in weights for name in w.tensor_data_names]
    assert all(hasattr(t, "_dynamo_static_input_type") for t in weights + inner)
    moved = model.to(torch.float64)  # new inner tensors: unmarked until marked again
    assert mark_static_weights(moved) is moved
    assert all(hasattr(getattr(moved[0].weight, n), "_dynamo_static_input_type") for n in moved[0].weight.tensor_data_names)


def test_compile_guards_still_tell_weights_of_another_format_apart():
    """SINQTensor.__tensor_flatten__ builds its metadata once per tensor (torch.compile's guards call it for every
    weight on every call): a weight that differs only in metadata must still recompile, an equal one must not."""
    from torch._dynamo.testing import CompileCounter
    from torchao.utils import TorchAOBaseTensor

    dense = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    weight = SINQTensor.from_hp(dense, bits=4, group_size=64)
    same_format = SINQTensor.from_hp(dense * 2, bits=4, group_size=64)
    symmetric = SINQTensor.from_hp(dense, bits=4, group_size=64, scheme="symmetric")  # same inner shapes
    assert weight.__tensor_flatten__() == TorchAOBaseTensor.__tensor_flatten__(weight)
    assert weight.__tensor_flatten__()[1] is weight.__tensor_flatten__()[1]  # built once
    counter = CompileCounter()
    torch._dynamo.reset()
    linear = torch.compile(lambda x, w: F.linear(x, w), backend=counter, fullgraph=True)
    x = torch.randn(3, 128)
    for w in (weight, same_format):
        torch.testing.assert_close(linear(x, w), F.linear(x, w))
    assert counter.frame_count == 1
    torch.testing.assert_close(linear(x, symmetric), F.linear(x, symmetric))
    assert counter.frame_count == 2
