"""Greedy decoding with each step replayed from one hand-captured CUDA graph.

Under ``torch.compile``'s own CUDA graphs (``mode="reduce-overhead"``) every step runs Dynamo's guards and
AOTAutograd's unwrapping of each tensor-subclass weight in Python, which on an 8B-shaped model costs more than the
4-bit kernels save (docs/results.md). Capturing the compiled step once and replaying it skips all of that: on an H100,
:class:`GraphedDecoder`'s own generate decoded the 8B-shaped SINQ model at 1.98x bf16 (v9). It packages that recipe
for transformers causal LMs with a ``StaticCache``; :class:`GraphedStep` is its captured step, usable on its own.
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


ARGMAX_CHUNK = 1024  # vocabulary entries per program of the first argmax stage


def last_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits[:, -1:].argmax(-1)`` (the first index of the largest logit, shape (batch, 1)) in two reductions:
    the largest of each chunk of ARGMAX_CHUNK entries, then the largest of those. Inductor runs one reduction over
    a whole row in a single program (an H100 took 23-36 us per step on a 128256-entry vocabulary); chunked, the
    first stage spreads over many programs."""
    last = logits[:, -1]
    batch, vocab = last.shape
    chunks = -(-vocab // ARGMAX_CHUNK)
    padded = torch.nn.functional.pad(last, (0, chunks * ARGMAX_CHUNK - vocab), value=float("-inf"))
    best, where = padded.view(batch, chunks, ARGMAX_CHUNK).max(-1)
    chunk = best.argmax(-1, keepdim=True)
    return chunk * ARGMAX_CHUNK + where.gather(-1, chunk)


def greedy_step(model: torch.nn.Module, token: torch.Tensor, cache, position: torch.Tensor) -> torch.Tensor:
    """One greedy decode step, in place: runs ``token`` (batch, 1) at ``position`` (a one-element tensor) through
    ``model`` with its ``cache``, then overwrites ``token`` with the argmax of the logits (:func:`last_argmax`) and
    advances ``position`` by one. Returns ``token``. Compiled, both updates fuse into the step's own kernels."""
    positions = position[None].expand(token.shape[0], -1)
    logits = model(input_ids=token, past_key_values=cache, cache_position=position, position_ids=positions).logits
    token.copy_(last_argmax(logits))
    position.add_(1)
    return token


def _check_token(token: torch.Tensor, batch: int | None = None) -> None:
    """A (batch, 1) integer tensor of token ids (of ``batch`` rows, when given), else a ValueError."""
    not_ids = token.dtype.is_floating_point or token.dtype.is_complex or token.dtype == torch.bool
    if token.dim() != 2 or token.shape[1] != 1 or not_ids:
        raise ValueError(f"token must be a (batch, 1) integer tensor of token ids, got shape {tuple(token.shape)} "
                         f"and dtype {token.dtype}")  # fmt: skip
    if batch is not None and token.shape[0] != batch:
        raise ValueError(f"token has {token.shape[0]} rows; this step was captured for {batch}")


class GraphedStep:
    """:func:`greedy_step` of ``model`` over a transformers ``StaticCache``, compiled (``torch.compile(fullgraph=True)``
    unless ``compile=False``) and captured in one CUDA graph when constructed. Token and position live in static
    buffers that each replay reads and advances, so a step is one ``graph.replay()`` and nothing else.

    Construction runs the step four times (compile and warm-up, then the capture), writing the cache at positions
    ``position`` onwards: fill the cache again (or overwrite those positions) before decoding from it."""

    def __init__(self, model: torch.nn.Module, cache, token: torch.Tensor, position: int, *, compile: bool = True):
        _check_token(token)
        if token.device.type != "cuda":
            raise ValueError(f"GraphedStep replays CUDA graphs: token must be on a CUDA device, got {token.device}")
        if position < 0:
            raise ValueError(f"position must be non-negative, got {position}")

        def step(token: torch.Tensor, cache, position: torch.Tensor) -> torch.Tensor:
            return greedy_step(model, token, cache, position)

        self.step = torch.compile(step, fullgraph=True) if compile else step
        self.cache = cache
        self.token = token.clone()
        self.position = torch.tensor([position], device=token.device)
        self.graph, _ = capture(lambda: self.step(self.token, self.cache, self.position))

    def decode(self, token: torch.Tensor, position: int, count: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """``count`` greedy steps from ``token`` at ``position``; returns the last token. With ``out`` (batch, count)
        each step's token is copied there too."""
        _check_token(token, self.token.shape[0])
        if count < 0 or position < 0:
            raise ValueError(f"count and position must be non-negative, got {count} and {position}")
        if out is not None and tuple(out.shape) != (self.token.shape[0], count):
            raise ValueError(f"out must have shape (batch, count) = {(self.token.shape[0], count)}, got "
                             f"{tuple(out.shape)}")  # fmt: skip
        self.token.copy_(token)
        self.position.fill_(position)
        for i in range(count):
            self.graph.replay()
            if out is not None:
                out[:, i : i + 1].copy_(self.token)
        return self.token.clone()


class GraphedDecoder:
    """Greedy decoding of a transformers causal LM on CUDA, each step one CUDA-graph replay of the compiled model.

    ``max_cache_len`` bounds prompt plus new tokens (a ``StaticCache`` of that length is allocated once);
    ``batch_size`` prompts of equal length (no padding) are decoded together. The graph (a :class:`GraphedStep`) is
    captured at the first :meth:`generate` call (after ``torch.compile``, unless ``compile=False``) and reused while
    the batch size stays the same. Sampling, stopping at an end-of-sequence token and attention masks are not
    supported: the result is always ``max_new_tokens`` greedy tokens.

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
        self.device = device
        self.max_cache_len = max_cache_len
        self.batch_size = batch_size
        self.compile = compile
        self.cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
        self.step: GraphedStep | None = None

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        """The captured step's CUDA graph (None before the first :meth:`generate`)."""
        return None if self.step is None else self.step.graph

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
        input_ids = input_ids.to(self.device)
        token = self._prefill(input_ids)
        if self.step is None:
            self.step = GraphedStep(self.model, self.cache, token, prompt, compile=self.compile)
            token = self._prefill(input_ids)  # the warm-up steps advanced the cache: start again from the prompt
        new = torch.empty(self.batch_size, max_new_tokens, dtype=token.dtype, device=token.device)
        new[:, :1] = token
        if max_new_tokens > 1:
            self.step.decode(token, prompt, max_new_tokens - 1, out=new[:, 1:])
        return torch.cat([input_ids, new], dim=1)
