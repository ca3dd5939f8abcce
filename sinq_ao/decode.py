"""Greedy decoding with each step replayed from one hand-captured CUDA graph.

Under ``torch.compile``'s own CUDA graphs (``mode="reduce-overhead"``) every step runs Dynamo's guards and
AOTAutograd's unwrapping of each tensor-subclass weight in Python, which on an 8B-shaped model costs more than the
4-bit kernels save (docs/results.md). Capturing the compiled step once and replaying it skips all of that: on an H100,
:class:`GraphedDecoder`'s own generate decoded the 8B-shaped SINQ model at 1.98x bf16 (v9). It packages that recipe
for transformers causal LMs with a ``StaticCache``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def capture(run: Callable[[], torch.Tensor], warmup: int = 3) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Call ``run`` ``warmup`` times on a side stream (compiles, allocates), then capture one call in a CUDA graph;
    returns the graph and that call's output, which every replay rewrites in place."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = run()
    return graph, output


class GraphedDecoder:
    """Greedy decoding of a transformers causal LM on CUDA, each step one CUDA-graph replay of the compiled model.

    ``max_cache_len`` bounds prompt plus new tokens (a ``StaticCache`` of that length is allocated once);
    ``batch_size`` prompts of equal length (no padding) are decoded together. The graph is captured at the first
    :meth:`generate` call (after ``torch.compile``, unless ``compile=False``) and reused while the batch size stays
    the same. Sampling, stopping at an end-of-sequence token and attention masks are not supported: the result is
    always ``max_new_tokens`` greedy tokens.

        decoder = GraphedDecoder(model, max_cache_len=1024)
        tokens = decoder.generate(input_ids, max_new_tokens=128)   # (batch, prompt + 128)
    """

    def __init__(self, model: torch.nn.Module, *, max_cache_len: int, batch_size: int = 1, compile: bool = True):
        from transformers import StaticCache

        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"GraphedDecoder replays CUDA graphs: the model must be on a CUDA device, got {device}")
        if max_cache_len < 2 or batch_size < 1:
            raise ValueError(f"max_cache_len must be at least 2 and batch_size at least 1, got {max_cache_len} and "
                             f"{batch_size}")  # fmt: skip
        self.model = model
        self.max_cache_len = max_cache_len
        self.batch_size = batch_size
        self.cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
        self.step = torch.compile(model, fullgraph=True) if compile else model
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # the graph's static inputs
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.next_token: torch.Tensor | None = None

    def _run_step(self) -> torch.Tensor:
        positions = self.position[None].expand(self.batch_size, -1)
        logits = self.step(input_ids=self.token, past_key_values=self.cache, cache_position=self.position,
                           position_ids=positions).logits  # fmt: skip
        return logits[:, -1:].argmax(-1)

    def _prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Reset the cache, run the prompt through the (uncompiled) model, return its greedy next token."""
        self.cache.reset()
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        logits = self.model(input_ids=input_ids, past_key_values=self.cache, cache_position=positions).logits
        return logits[:, -1:].argmax(-1)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """The prompt followed by ``max_new_tokens`` greedy tokens, shape (batch_size, prompt + max_new_tokens)."""
        if input_ids.dim() != 2 or input_ids.shape[0] != self.batch_size:
            raise ValueError(f"input_ids must be (batch_size={self.batch_size}, prompt length), got shape "
                             f"{tuple(input_ids.shape)}")  # fmt: skip
        prompt = input_ids.shape[1]
        if max_new_tokens < 1 or prompt < 1 or prompt + max_new_tokens > self.max_cache_len:
            raise ValueError(f"prompt ({prompt}) + max_new_tokens ({max_new_tokens}) must fit in max_cache_len "
                             f"({self.max_cache_len}), with at least one of each")  # fmt: skip
        input_ids = input_ids.to(self.token.device)
        token = self._prefill(input_ids)
        if self.graph is None:
            self.token.copy_(token)
            self.position.fill_(prompt)
            self.graph, self.next_token = capture(self._run_step)
            token = self._prefill(input_ids)  # the warm-up steps advanced the cache: start again from the prompt
        tokens = [input_ids, token]
        self.token.copy_(token)
        for i in range(max_new_tokens - 1):
            self.position.fill_(prompt + i)
            self.graph.replay()
            self.token.copy_(self.next_token)
            tokens.append(self.token.clone())
        return torch.cat(tokens, dim=1)
