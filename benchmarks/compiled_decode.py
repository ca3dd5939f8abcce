"""Decode through ``torch.compile(model)`` called every step, as users do (no hand-captured graph): under
torch.compile's own CUDA graphs (``options={"triton.cudagraphs": True}``, what ``mode="reduce-overhead"`` sets; the
default) or without them (``--no-cudagraphs``, plain ``torch.compile``). Every step runs Dynamo's guards and
AOTAutograd's runtime wrapper on the CPU: tokens/s and the per-step CPU and GPU profile, per variant, in one run.

    python benchmarks/compiled_decode.py [--layers 8] [--tokens 32] [--no-cudagraphs]
                                         [--variants bf16 sinq sinq-skipguards sinq-freezing ...] [--out results.json]

Variants: bf16, sinq (4-bit g64), tinygemm (torchao int4, tile-packed); suffixes: ``-skipguards`` compiles with
``guard_filter_fn=torch.compiler.skip_guard_on_inbuilt_nn_modules_unsafe`` (no guards on the modules'
parameters), ``-freezing`` with Inductor's ``freezing`` (parameters become constants of the compiled graph, so
the runtime wrapper no longer unwraps them per call), ``-staticlaunch`` with Inductor's
``static_launch_user_defined_triton_kernels`` (sinq_ao's Triton kernels launched like Inductor's own); ``sinq-uncached-flatten`` is sinq with torchao's
``TorchAOBaseTensor.__tensor_flatten__`` (which rebuilds the metadata dict on every call) instead of SINQTensor's
cached one. The model is gpu_speed.py's Llama-3-8B-shaped one
(random weights, lm_head bf16 everywhere) with a static KV cache, decoded greedily by gpu_speed's loop (which
builds the position tensor on the host each step, as HF generate does, so CPU and GPU time add up).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_speed import (
    PROMPT_TOKENS,
    build_llama,
    greedy_decode,
    log,
    prefill,
    quantize_variant,
    write_results,
)
from sinq_ao import SINQTensor

VARIANTS = ["bf16", "sinq", "tinygemm", "sinq-uncached-flatten"]


def top(events, key, count: int, steps: int) -> list[dict]:
    rows = [{"name": e.key[:100], "calls": e.count / steps, "us": key(e) / steps} for e in events if key(e) > 0]
    return sorted(rows, key=lambda r: -r["us"])[:count]


SUFFIXES = ("-skipguards", "-freezing", "-staticlaunch")


@torch.no_grad()
def bench(variant: str, layers: int, tokens: int, cudagraphs: bool) -> dict:
    from torchao.utils import TorchAOBaseTensor

    base = variant
    for suffix in SUFFIXES:
        base = base.removesuffix(suffix)
    cached_flatten = SINQTensor.__dict__["__tensor_flatten__"]
    if base == "sinq-uncached-flatten":
        SINQTensor.__tensor_flatten__ = TorchAOBaseTensor.__tensor_flatten__
    options = {"triton.cudagraphs": cudagraphs, "freezing": "-freezing" in variant}
    if "-staticlaunch" in variant:
        options["static_launch_user_defined_triton_kernels"] = True
    if "-skipguards" in variant:
        options["guard_filter_fn"] = torch.compiler.skip_guard_on_inbuilt_nn_modules_unsafe
    try:
        model = build_llama(layers)
        quantize_variant(model, "sinq" if base.startswith("sinq") else base)
        cache, token = prefill(model, PROMPT_TOKENS + 2 * tokens + 16)
        step = torch.compile(model, fullgraph=True, options=options)
        start = time.perf_counter()
        token, position = greedy_decode(step, cache, token, 3, PROMPT_TOKENS)  # compile + graph capture
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        token, position = greedy_decode(step, cache, token, tokens, position)
        torch.cuda.synchronize()
        tokens_per_s = tokens / (time.perf_counter() - start)
        steps = 4
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            greedy_decode(step, cache, token, steps, position)
            torch.cuda.synchronize()
        events = prof.key_averages()
        row = {"variant": variant, "cudagraphs": cudagraphs, "layers": layers, "tokens": tokens, "tokens_per_s": tokens_per_s,
               "compile_s": compile_s, "cpu_per_step": top(events, lambda e: e.self_cpu_time_total, 12, steps),
               "gpu_per_step": top(events, lambda e: e.self_device_time_total, 12, steps)}  # fmt: skip
        lookup = next((r["us"] for r in row["cpu_per_step"] if "Cache Lookup" in r["name"]), float("nan"))
        log(f"{variant}: {tokens_per_s:.1f} tok/s, Dynamo cache lookup (guards) {lookup:.0f} µs per step, "
            f"compile + capture {compile_s:.0f} s")  # fmt: skip
        del model, cache, step
        return row
    finally:
        SINQTensor.__tensor_flatten__ = cached_flatten
        torch._dynamo.reset()
        torch.cuda.empty_cache()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the 8B-shaped model")
    parser.add_argument("--tokens", type=int, default=32, help="tokens decoded in the timed loop")
    parser.add_argument("--no-cudagraphs", dest="cudagraphs", action="store_false",
                        help="plain torch.compile (no CUDA graphs of its own)")
    parser.add_argument("--variants", nargs="+", default=["bf16", "sinq", "sinq-skipguards"],
                        choices=[v + "".join(s) for v in VARIANTS for n in range(len(SUFFIXES) + 1)
                                 for s in itertools.combinations(SUFFIXES, n)])  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    log(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    rows = [bench(variant, args.layers, args.tokens, args.cudagraphs) for variant in args.variants]
    base = next((r["tokens_per_s"] for r in rows if r["variant"] == "bf16"), float("nan"))
    log(f"\n{'variant':>28} {'tok/s':>8} {'x bf16':>7}")
    for r in rows:
        log(f"{r['variant']:>28} {r['tokens_per_s']:8.1f} {r['tokens_per_s'] / base:7.2f}")
    if args.out:
        write_results(args.out, rows, what="compiled decode" + (" with CUDA graphs" if args.cudagraphs else ""))


if __name__ == "__main__":
    main()
