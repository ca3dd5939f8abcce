"""In-situ A/B of the output head's GEMV block height: a small 8B-shaped decode, same run, alternating settings.

    python benchmarks/head_rows_ab.py [--rows 16 8 16] [--layers 4] [--tokens 32] [--out results.json]

Builds gpu_speed's Llama-3-8B-shaped model with ``--layers`` decoder layers, quantizes every linear with SINQ 4-bit
g64 (``lm_head`` included), and for each entry of ``--rows`` in turn forces that many rows per program on the
one-row GEMV of the head (N = vocabulary size; every other launch keeps ``default_config``), compiles and captures
the decode step afresh (``GraphedStep``, Inductor's FX-graph cache off, since the launch configuration is baked into
the compiled code), times ``--tokens`` steps, then profiles 8 steps. Per setting it reports tokens/s, the head
kernel's time in the last profiled step, and the GPU time per step of all kernels. Alternating the settings
(the default, 16 8 16) shows how far the run drifts. The head's default is 16 rows (v12).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sinq_ao.kernels as kernels  # noqa: E402
from benchmarks import gpu_speed  # noqa: E402

DEFAULT_CONFIG = kernels.default_config


def with_head_rows(rows: int, vocab: int):
    """default_config, except ``rows`` rows per program for a one-row product with ``vocab`` outputs."""

    def config(m, n, k, bits, group_size, sm_count=132):
        chosen = DEFAULT_CONFIG(m, n, k, bits, group_size, sm_count)
        return chosen._replace(block_n=rows) if m == 1 and n == vocab else chosen

    return config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 8, 16], help="head rows per program, in order")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers")
    parser.add_argument("--tokens", type=int, default=32, help="timed decode steps per setting")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if any(r < 1 or r & (r - 1) for r in args.rows):
        parser.error(f"--rows must be powers of two (Triton tiles), got {args.rows}")
    if args.layers < 1 or args.tokens < 1:
        parser.error(f"--layers and --tokens must be at least 1, got {args.layers} and {args.tokens}")
    return args


@torch.no_grad()
def run(args) -> list[dict]:
    torch._inductor.config.fx_graph_cache = False  # each setting compiles afresh
    torch._functorch.config.enable_autograd_cache = False
    vocab = gpu_speed.LLAMA3_8B["vocab_size"]
    rows = []
    try:
        for head_rows in args.rows:
            kernels.default_config = with_head_rows(head_rows, vocab)
            torch._dynamo.reset()
            model = gpu_speed.build_llama(args.layers)
            gpu_speed.quantize_variant(model, "sinq", "quantized")
            timing = argparse.Namespace(graph="manual", profile=True, tokens=args.tokens, mark_static=False)
            _, tokens_per_s, graphed, token = gpu_speed.time_compiled_steps(model, timing)
            per_step, last_step = gpu_speed.profile_step(graphed, token)
            head = max((k for k in last_step if k["name"].startswith("sinq_gemv_kernel")), key=lambda k: k["us"])
            row = {"head_rows": head_rows, "layers": args.layers, "tokens_per_s": tokens_per_s,
                   "head_last_step_us": head["us"], "kernels_per_step_us": sum(k["us"] for k in per_step)}  # fmt: skip
            gpu_speed.log(row)
            rows.append(row)
            del model, graphed
            torch.cuda.empty_cache()
    finally:
        kernels.default_config = DEFAULT_CONFIG
    gpu_speed.log(f"\n{'head rows':>9} {'tok/s':>8} {'head µs':>8} {'kernels µs/step':>15}")
    for r in rows:
        gpu_speed.log(f"{r['head_rows']:>9} {r['tokens_per_s']:8.1f} {r['head_last_step_us']:8.1f} "
                      f"{r['kernels_per_step_us']:15.1f}")  # fmt: skip
    return rows


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("head_rows_ab.py needs a CUDA GPU")
    rows = run(args)
    if args.out:
        gpu_speed.write_results(args.out, rows, what="head_rows_ab")


if __name__ == "__main__":
    main()
