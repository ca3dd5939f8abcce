"""GraphedDecoder / GraphedStep: greedy decoding with each step replayed from one hand-captured CUDA graph."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchao.quantization import quantize_

from sinq_ao import GraphedDecoder, SINQConfig, skip_lm_head
from sinq_ao.decode import greedy_step, last_argmax
from tests.helpers import requires_cuda
from tests.test_model import tiny_llama


def test_decoder_refuses_a_model_that_is_not_on_cuda():
    with pytest.raises(ValueError, match="CUDA device, got cpu"):
        GraphedDecoder(tiny_llama(), max_cache_len=32)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_greedy_step_advances_token_and_position_in_place_as_generate_does(compiled):
    """On CPU: the step (what GraphedStep compiles and captures) gives transformers' greedy tokens, writing each
    into the token buffer and moving the position on by one, also under torch.compile(fullgraph=True)."""
    from transformers import StaticCache

    model = tiny_llama()
    quantize_(model, SINQConfig(bits=4))  # lm_head included, as quantize_'s default filter does
    prompt = torch.randint(0, 512, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        cache = StaticCache(config=model.config, max_cache_len=16)
        logits = model(input_ids=prompt, past_key_values=cache, cache_position=torch.arange(5)).logits
        token = logits[:, -1:].argmax(-1)
        position = torch.tensor([5])
        torch._dynamo.reset()
        step = torch.compile(greedy_step, fullgraph=True) if compiled else greedy_step
        tokens = [token.clone()]
        for i in range(5):
            assert step(model, token, cache, position) is token
            assert position.item() == 6 + i
            tokens.append(token.clone())
    assert torch.equal(torch.cat([prompt, *tokens], dim=1), expected)


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


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 3), vocab=st.integers(1, 3000), ties=st.booleans(), data=st.data())
def test_last_argmax_is_the_first_index_of_the_largest_last_logit(batch, vocab, ties, data):
    """Chunked argmax == torch.argmax over the last position, ties (first index wins), -inf and ragged chunks."""
    seed = data.draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, 2, vocab, generator=gen)
    if ties:  # few distinct values: many ties, across chunks too
        logits = logits.round().clamp(-1, 1)
    logits[:, :, torch.randint(0, vocab, (vocab // 7,), generator=gen)] = float("-inf")
    assert torch.equal(last_argmax(logits), logits[:, -1:].argmax(-1))


@pytest.mark.parametrize("token, message", [
    (torch.zeros(2, 1, dtype=torch.long), "CUDA device, got cpu"),
    (torch.zeros(2, dtype=torch.long), "token must be a (batch, 1) integer tensor"),
    (torch.zeros(2, 3, dtype=torch.long), "got shape (2, 3)"),
    (torch.zeros(2, 1), "dtype torch.float32"),
])  # fmt: skip
def test_graphed_step_refuses_bad_tokens_before_compiling(token, message):
    from sinq_ao import GraphedStep

    with pytest.raises(ValueError, match=re.escape(message)):
        GraphedStep(tiny_llama(), None, token, 5)


@pytest.mark.parametrize("call, message", [
    (lambda step: step.decode(torch.zeros(3, 1, dtype=torch.long), 5, 4), "3 rows; this step was captured for 2"),
    (lambda step: step.decode(torch.zeros(2, 1, dtype=torch.long), 5, -1), "got -1 and 5"),
    (lambda step: step.decode(torch.zeros(2, 1, dtype=torch.long), 5, 4, out=torch.zeros(2, 3)), "got (2, 3)"),
])  # fmt: skip
def test_graphed_step_decode_checks_its_arguments_before_replaying(call, message):
    """The checks run before any replay (a step whose graph was never captured: no GPU needed)."""
    from sinq_ao import GraphedStep

    step = GraphedStep.__new__(GraphedStep)
    step.token = torch.zeros(2, 1, dtype=torch.long)
    with pytest.raises(ValueError, match=re.escape(message)):
        call(step)
