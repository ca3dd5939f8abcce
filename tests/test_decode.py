"""GraphedDecoder: greedy decoding with each step replayed from one hand-captured CUDA graph."""

import pytest
import torch
from torchao.quantization import quantize_

from sinq_ao import GraphedDecoder, SINQConfig, skip_lm_head
from tests.helpers import requires_cuda
from tests.test_model import tiny_llama


def test_decoder_refuses_a_model_that_is_not_on_cuda():
    with pytest.raises(ValueError, match="CUDA device, got cpu"):
        GraphedDecoder(tiny_llama(), max_cache_len=32)


def _quantized(dtype):
    model = tiny_llama().to(device="cuda", dtype=dtype)
    quantize_(model, SINQConfig(bits=4), filter_fn=skip_lm_head)
    return model


@requires_cuda
def test_graphed_greedy_tokens_equal_transformers_generate_in_float32():
    """float32 (the plain path under compile): numerics close enough to eager that greedy tokens match exactly."""
    model = _quantized(torch.float32)
    prompt = torch.randint(0, 512, (1, 6), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    torch._dynamo.reset()
    graphed = GraphedDecoder(model, max_cache_len=32).generate(prompt, max_new_tokens=10)
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    assert torch.equal(graphed, expected)


@requires_cuda
def test_graph_is_reused_across_prompts_and_validates_lengths():
    """bf16 (the fused kernels): a second prompt through the same captured graph gives what a fresh decoder does."""
    model = _quantized(torch.bfloat16)
    gen = torch.Generator("cuda").manual_seed(1)
    first, second = (torch.randint(0, 512, (2, n), device="cuda", generator=gen) for n in (5, 9))
    torch._dynamo.reset()
    decoder = GraphedDecoder(model, max_cache_len=24, batch_size=2)
    decoder.generate(first, max_new_tokens=8)
    graph = decoder.graph
    again = decoder.generate(second, max_new_tokens=8)
    assert decoder.graph is graph and again.shape == (2, 17) and torch.equal(again[:, :9], second)
    assert torch.equal(again, GraphedDecoder(model, max_cache_len=24, batch_size=2).generate(second, 8))
    with pytest.raises(ValueError, match="must fit in max_cache_len"):
        decoder.generate(second, max_new_tokens=16)
    with pytest.raises(ValueError, match="batch_size=2"):
        decoder.generate(second[:1], max_new_tokens=4)
