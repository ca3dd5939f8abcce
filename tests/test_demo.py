"""What `make demo` reports: weight memory of a quantized model, and the side-by-side completions."""

import torch
from torchao.quantization import quantize_

from sinq_ao import SINQConfig, skip_lm_head
from sinq_ao.demo import linear_weight_bytes, side_by_side, weight_bytes


def test_weight_memory_counts_the_packed_codes_and_scales_of_quantized_layers():
    model = torch.nn.Sequential(torch.nn.Linear(128, 64, bias=False)).to(torch.bfloat16)
    assert weight_bytes(model) == linear_weight_bytes(model) == 128 * 64 * 2
    quantize_(model, SINQConfig(bits=4, group_size=64), filter_fn=skip_lm_head)
    codes = 64 * 128 * 4 // 8  # 4 bits per weight
    scales_and_zeros = 2 * 64 * 2 * 2  # (N, K / 64) each, bf16
    column_scale = 128 * 2
    assert weight_bytes(model) == linear_weight_bytes(model) == codes + scales_and_zeros + column_scale


def test_lm_head_is_not_counted_among_the_quantized_linear_weights():
    model = torch.nn.Module()
    model.body, model.lm_head = torch.nn.Linear(32, 32, bias=False), torch.nn.Linear(32, 100, bias=False)
    assert linear_weight_bytes(model) == 32 * 32 * 4
    assert weight_bytes(model) == (32 * 32 + 32 * 100) * 4


def test_side_by_side_puts_each_text_in_its_own_column():
    table = side_by_side("alpha " * 20, "beta", titles=("left", "right"), width=30)
    lines = table.splitlines()
    assert lines[0].startswith("left") and lines[0].endswith("| right")
    assert all(len(line.split(" | ")[0]) == 30 for line in lines[2:])
    assert "".join(line.split(" | ")[0] for line in lines[2:]).split() == ["alpha"] * 20
    assert [line.split(" | ")[1] for line in lines[2:]] == ["beta"] + [""] * (len(lines) - 3)
