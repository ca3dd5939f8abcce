"""GPU speed of SINQ (4-bit unless --bits) against bf16 and tinygemm int4, all measured in one run (ratios within
the run).

    python benchmarks/gpu_speed.py layers  [--sweep [--kernels gemv gemm mma tile] [--gemv-stages 1 3 4]]
                                           [--ms 1 4 16 ...] [--shapes 4096x4096 ...] [--timer graph|kernels]
                                           [--bits 4] [--out results.json]
    python benchmarks/gpu_speed.py decode  [--layers 32] [--tokens 128] [--graph manual|reduce-overhead|decoder]
                                           [--pdl] [--lm-head bf16|quantized]
                                           [--variants bf16 sinq sinq-unfused tinygemm] [--mark-static] [--profile]
    python benchmarks/gpu_speed.py groups  [--sweep] [--ms 1 2] [--bits 4]
    python benchmarks/gpu_speed.py quant-time [--sweep]

layers:     per-layer (N x K) products for M in 1, 4, 16, 64, 256: bf16 F.linear, SINQ (F.linear on the SINQTensor:
            our GEMV for M = 1, the register-operand tensor-core kernel for M = 2..MMA_MAX_M, the older tensor-core
            kernel up to 256 (also timed at M = 2..MMA_MAX_M, "old gemm"), else the plain path; and the
            Inductor-compiled plain path), tinygemm int4 g64 (torchao Int4WeightOnlyConfig, tile_packed_to_4d, i.e.
            aten._weight_int4pack_mm). Each timing is a CUDA graph of R calls over R different weight copies (R chosen
            so they overflow the 50 MB L2), replayed and divided by R (--timer kernels: the profiler's kernel time per
            call instead, memsets left out). --sweep also times candidate block sizes of the kernels (the GEMV up to
            GEMV_MAX_BLOCK_M rows, each with one row and with vector_thread_rows rows across threads; the
            tensor-core kernels from 2, the many-row kernel from 32) and reports the best. --bits sets SINQ's code
            width (g64; tinygemm stays 4-bit): at 1, 3, 5, 6 and 7 bits the GEMV and the older tensor-core kernel
            run fused (M <= 256), and the sweep times their candidates alone.
decode:     end-to-end greedy decode, batch 1, of a Llama-3-8B-shaped model (random bf16 weights, built from a
            config), torch.compile(fullgraph=True) with a static KV cache, each step replayed as one CUDA graph
            (captured by hand, or by mode="reduce-overhead" with --graph reduce-overhead): tokens/s for bf16,
            SINQ 4-bit g64 (q/k/v and gate/up grouped into one launch each; sinq-unfused: not grouped) and torchao
            Int4WeightOnlyConfig (tinygemm); --bits sets the sinq variants' code width; --graph decoder times
            sinq_ao.GraphedDecoder.generate instead, and --pdl compiles with Inductor's programmatic dependent
            launch. lm_head stays bf16 in every variant unless --lm-head quantized (quantize_'s default filter,
            which includes it). --profile (manual graph) adds each kernel's GPU time per step and the last step's
            kernels in launch order.
groups:     the grouped GEMV (one launch for the weights that share an input) on the 8B shape's q + k + v and
            gate + up, against one launch per weight, kernel time per call (kernel_time_us) over copies that
            overflow L2; --sweep also times candidate block sizes (group_candidates); --bits as for layers.
quant-time: time to quantize all linear weights of that 8B-shaped model on the GPU, SINQ vs RTN, same run;
            --sweep also times the Sinkhorn kernel's block sizes on each weight shape.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._inductor.config
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sinq_ao import SINQConfig, SINQTensor, disable_projection_fusion, enable_projection_fusion  # noqa: E402
from sinq_ao.decode import GraphedStep
from sinq_ao.kernels import (  # noqa: E402
    GEMV_MAX_BLOCK_M,
    GEMV_MAX_M,
    KERNEL_BITS,
    MMA_BITS,
    MMA_MAX_M,
    LaunchConfig,
    MmaConfig,
    TileConfig,
    _sm_count,
    default_gemm_config,
    default_group_config,
    default_tile_config,
    even_split,
    gemm_step_words,
    launch,
    launch_group,
    vector_thread_rows,
)
from sinq_ao.tensor import _mark_static, plain_linear  # noqa: E402

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192), (16384, 16384)]  # (N out, K in)
MS = [1, 4, 16, 64, 256]
L2_OVERFLOW_BYTES = 256 * 2**20
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                 tie_word_embeddings=False)  # fmt: skip


def log(*parts):
    print(*parts, flush=True)


def write_results(path: Path, rows: list[dict], **fields) -> None:
    """The rows as JSON, with argv, the device and ``fields``: written under a temporary name beside ``path``,
    then renamed over it (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {**fields, "argv": sys.argv, "device": device, "rows": rows}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        json.dump(result, file, indent=1)
    os.replace(file.name, path)


def graph_time_us(calls, repeats: int = 20) -> float:
    """Median over ``repeats`` replays of a CUDA graph that makes every call in ``calls`` once; µs per call."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls[:3]:
            call()  # warm-up: compiles, allocator
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / len(calls))
    del graph
    return sorted(times)[len(times) // 2]


SKIPPED_KERNELS = ("Memset", "FillFunctor")  # counter zeroing: in a compiled model Inductor fuses it elsewhere


def kernel_time_us(calls, repeats: int = 5) -> float:
    """GPU time of the kernels each call launches (torch.profiler, summed, memsets and fills left out), averaged
    over ``repeats`` rounds of ``calls``: what the call costs inside a compiled model's CUDA graph, where launch
    gaps are the same for every variant and the zeroing of split-K counters is fused into other kernels."""
    for call in calls[:3]:
        call()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            for call in calls:
                call()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not any(skip in e.name for skip in SKIPPED_KERNELS)]  # fmt: skip
    return sum(e.time_range.elapsed_us() for e in kernels) / (repeats * len(calls))


def copies_for(bytes_per_copy: int) -> int:
    return max(2, math.ceil(L2_OVERFLOW_BYTES / bytes_per_copy))


def subclass_bytes(w: torch.Tensor) -> int:
    """Bytes held by a torchao tensor subclass (SINQ or tinygemm): the sum over its inner tensors."""
    return sum(getattr(w, n).nbytes for n in w.tensor_data_names)


def rotating_copies(w: torch.Tensor, count: int | None = None) -> list[torch.Tensor]:
    """``w`` and clones of it (of every inner tensor, for a torchao subclass): enough that together they overflow
    L2 (copies_for), or ``count`` in all, so a timed loop over them reads each weight from memory."""
    subclass = hasattr(w, "tensor_data_names")
    if count is None:
        count = copies_for(subclass_bytes(w) if subclass else w.nbytes)
    if subclass:
        return [w] + [w._apply_fn_to_data(lambda t: t.clone()) for _ in range(count - 1)]
    return [w] + [w.clone() for _ in range(count - 1)]


def tinygemm_linear(weight: torch.Tensor) -> torch.nn.Linear:
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="cuda", dtype=torch.bfloat16)
    layer.weight.data.copy_(weight)
    quantize_(layer, Int4WeightOnlyConfig(group_size=64, int4_packing_format="tile_packed_to_4d"))
    return layer


def gemv_candidates(m, n, k, bits, group_size=64, stages=(1, 3, 4)):
    """Launch configurations tried by --sweep: rows per program, groups per K step, warps (with more warps than
    rows x groups need, Triton spreads warps along the groups: K split inside a program); activation rows per
    program: M rounded up to a power of two, at most GEMV_MAX_BLOCK_M; K split until about 2, 4 and 8 programs per
    SM exist (evenly, as default_config does); software pipelines of 1 (none), 3 and 4 stages of the words; one row
    and vector_thread_rows rows across threads (_with_thread_rows)."""
    configs = []
    n_groups = -(-k // group_size)
    block_m = min(1 << (m - 1).bit_length(), GEMV_MAX_BLOCK_M)  # a power of two, at most 4
    for block_n, groups, warps in [(4, 8, 1), (8, 4, 1), (8, 8, 1), (8, 16, 1), (16, 4, 1), (16, 8, 1), (8, 8, 2),
                                   (16, 8, 2), (16, 16, 2), (32, 4, 1), (32, 8, 4), (8, 16, 2), (8, 32, 4),
                                   (4, 16, 2), (4, 32, 4)]:  # fmt: skip
        programs = -(-n // block_n) * -(-m // block_m)
        splits = {even_split(n_groups // groups, -(-per_sm * 132 // programs)) for per_sm in (2, 4, 8)}
        for split in sorted(splits):
            for depth in stages:
                configs.append(LaunchConfig(block_n, groups, split, warps, block_m, depth))
    return _with_thread_rows(configs, bits, group_size)


def _with_thread_rows(configs, bits=4, group_size=64):
    """Each configuration with one row across threads (every thread's rows one above the other) and with
    vector_thread_rows (four words per thread and row), once each."""
    out = []
    for config in configs:
        vector = vector_thread_rows(config.block_n, config.groups_per_step, config.num_warps, bits, group_size)
        out += [config._replace(thread_rows=rows) for rows in dict.fromkeys((1, vector))]
    return out


def group_candidates(m, bits=4):
    """Grouped-GEMV configurations tried by --sweep (K unsplit): rows per program, groups per step (64-code groups:
    8 words each at 4 bits) and warps, 3-stage pipeline, each with one row and with vector_thread_rows rows
    across threads (_with_thread_rows)."""
    block_m = min(1 << (m - 1).bit_length(), GEMV_MAX_BLOCK_M)
    shapes = [(8, 4, 1), (8, 8, 1), (8, 8, 2), (8, 16, 2), (16, 2, 1), (16, 4, 1), (16, 4, 2), (16, 8, 1), (16, 8, 2),
              (32, 2, 1), (32, 4, 2), (32, 8, 2), (32, 4, 1)]  # fmt: skip
    return _with_thread_rows([LaunchConfig(block_n, groups, 1, warps, block_m, 3)
                              for block_n, groups, warps in shapes], bits)


GROUPS_8B = {"q+k+v": (4096, 1024, 1024), "gate+up": (14336, 14336)}  # out features; K = 4096 for both


def bench_groups(args) -> list[dict]:
    rows = []
    bits = args.bits
    torch.manual_seed(0)
    ms = [m for m in args.ms if m <= GEMV_MAX_M] or [1]  # the grouped kernel's rows
    for name, ns in GROUPS_8B.items():
        k = 4096
        copies = copies_for(sum(ns) * k // 2)
        sets = [[SINQTensor.from_hp(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), bits=bits, group_size=64)
                 for n in ns] for _ in range(copies)]  # fmt: skip
        inner = [[(w.qdata, w.scale, w.zero_point, w.act_pre_scale) for w in ws] for ws in sets]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ys = [torch.empty(m, n, device="cuda", dtype=torch.bfloat16) for n in ns]

            def grouped(config=None, x=x, ys=ys, inner=inner):
                return [lambda ws=ws: launch_group(x, ws, ys, bits, 64, config=config) for ws in inner]

            separate = [lambda ws=ws, x=x, ys=ys: [launch(x, *w, None, y, bits, 64)
                                                   for w, y in zip(ws, ys, strict=True)] for ws in inner]  # fmt: skip
            default = default_group_config(m, sum(ns), k, bits, 64, _sm_count(x.device))  # as launch_group picks it
            row = {"group": name, "ns": list(ns), "K": k, "M": m, "bits": bits,
                   "separate_us": kernel_time_us(separate, repeats=10),
                   "default": default._asdict(), "grouped_us": kernel_time_us(grouped(), repeats=10)}  # fmt: skip
            if args.sweep:
                for config in group_candidates(m, bits):
                    try:
                        us = kernel_time_us(grouped(config), repeats=10)
                    except triton.runtime.errors.OutOfResources:
                        continue
                    row.setdefault("candidates", []).append({**config._asdict(), "us": us})
                row.setdefault("candidates", []).sort(key=lambda c: c["us"])
            rows.append(row)
            log(json.dumps(row))
        del sets, inner
        torch.cuda.empty_cache()
    log(f"\n{'group':>8} {'M':>3} {'separate µs':>11} {'grouped µs':>10} {'best cfg µs':>11}")
    for r in rows:
        best = r["candidates"][0] if r.get("candidates") else {}
        log(f"{r['group']:>8} {r['M']:>3} {r['separate_us']:11.2f} {r['grouped_us']:10.2f} "
            f"{best.get('us', float('nan')):11.2f} {best}")  # fmt: skip
    return rows


def gemm_candidates(m, n, k, bits):
    """Tensor-core configurations tried by --sweep: (block_n, block_w, warps, stages) for the two largest block
    heights below 2M, K split evenly into about two programs per SM, and twice that (where it divides the steps)."""
    configs = []
    block_ms = [b for b in (16, 32, 64, 128) if b < 2 * m][-2:]
    for block_m in block_ms:
        for block_n, block_w, warps, stages in [(64, 16, 4, 2), (64, 16, 4, 3), (64, 32, 4, 2), (128, 16, 4, 2),
                                                (128, 16, 8, 2), (128, 16, 8, 3), (128, 32, 8, 2), (256, 16, 8, 2),
                                                (32, 16, 4, 2), (64, 8, 4, 2)]:  # fmt: skip
            base = default_gemm_config(m, n, k, bits)._replace(block_n=block_n, block_m=block_m, block_w=block_w)
            steps = -(-k // 32) * bits // gemm_step_words(block_w, bits, 64)
            programs = -(-n // block_n) * -(-m // block_m)
            auto = even_split(steps, min(16, -(-2 * 132 // programs)))
            for split in sorted({auto, 2 * auto}):
                if steps % split == 0:
                    configs.append(base._replace(split_k=split, num_warps=warps, num_stages=stages))
    return configs


def mma_candidates(m, n, k, group_size=64):
    """Register-operand tensor-core configurations tried by --sweep: 16 or 32 weight rows on one warp (Triton then
    uses mma.sync, the Ampere-style instruction), 32 on two, 64 or 128 on a warpgroup (wgmma); M rounded up to a
    power of two (16..64); 3 pipeline stages of one group (also 4 stages, and 2 groups, for 64 rows); K split
    evenly until about 2, 4, 8 and 16 programs per SM exist (at most 16 slices, each at least 4 groups)."""
    configs = []
    block_m = min(max(16, 1 << (m - 1).bit_length()), 64)
    groups = k // group_size
    for block_n, warps in [(16, 1), (32, 1), (32, 2), (64, 4), (128, 4)]:
        programs = -(-n // block_n) * -(-m // block_m)
        splits = {even_split(groups, min(16, max(1, groups // 4), -(-per_sm * 132 // programs)))
                  for per_sm in (2, 4, 8, 16)}  # fmt: skip
        variants = [(3, 1), (4, 1), (3, 2)] if (block_n, warps) == (64, 4) else [(3, 1)]
        for split in sorted(splits):
            for stages, groups_per_step in variants:
                configs.append(MmaConfig(block_n, block_m, split, warps, stages, groups_per_step))
    return configs


def tile_candidates(m, n, k, bits=4):
    """Many-row configurations tried by --sweep: (block_m, block_n, codes per step, warps, stages) around the
    default, each with K split evenly until about one and two programs per SM exist."""
    configs = []
    for block_m, block_n, codes, warps, stages in [(64, 128, 64, 4, 3), (64, 128, 128, 4, 3), (64, 256, 64, 8, 3),
                                                   (128, 128, 64, 8, 3), (128, 128, 128, 8, 3), (128, 128, 64, 8, 4),
                                                   (128, 256, 64, 8, 3), (128, 64, 64, 4, 3), (64, 64, 64, 4, 4),
                                                   (256, 128, 64, 8, 3)]:  # fmt: skip
        if block_m > 2 * max(16, m):
            continue
        programs = -(-n // block_n) * -(-m // block_m)
        steps = -(-k // 32) * bits // (codes * bits // 32)
        splits = {even_split(steps, min(8, -(-per_sm * 132 // programs))) for per_sm in (1, 2)}
        for split in sorted(splits):
            configs.append(TileConfig(block_m, block_n, codes * bits // 32, split, warps, stages))
    return configs


KERNEL_FAMILIES = ("gemv", "gemm", "mma", "tile")


def sweep_candidates(m, n, k, families=KERNEL_FAMILIES, gemv_stages=(1, 3, 4), bits=4):
    """The --sweep candidates of the chosen kernel families for M activation rows (groups of 64); at code widths of
    several bit planes (and 1 bit), the GEMV's and the older tensor-core kernel's alone."""
    candidates = []
    if "gemv" in families and m <= GEMV_MAX_BLOCK_M:
        candidates += gemv_candidates(m, n, k, bits, stages=gemv_stages)
    if "gemm" in families and m > 1:  # every width (at 3/5/6/7 bits block_w rounds to whole groups)
        candidates += gemm_candidates(m, n, k, bits)
    if bits not in KERNEL_BITS:
        return candidates
    if "mma" in families and m > 1 and k % 64 == 0 and bits in MMA_BITS:
        candidates += mma_candidates(m, n, k)
    if "tile" in families and m > 1 and k % 64 == 0:
        candidates += tile_candidates(m, n, k, bits)
    return candidates


def bench_layers(args) -> list[dict]:
    timer = {"graph": graph_time_us, "kernels": kernel_time_us}[args.timer]
    rows = []
    bits = args.bits
    torch.manual_seed(0)
    for n, k in args.shapes or SHAPES:
        torch._dynamo.reset()
        compiled_plain = torch.compile(plain_linear)
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        sinq = SINQTensor.from_hp(weight, bits=bits, group_size=64)
        bf16_ws = rotating_copies(weight)
        sinq_ws = rotating_copies(sinq)
        tiny_ws = rotating_copies(tinygemm_linear(weight).weight, count=len(sinq_ws))
        for m in args.ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row = {"N": n, "K": k, "M": m, "bits": bits}
            row["bf16_us"] = timer([lambda w=w: F.linear(x, w) for w in bf16_ws])
            row["sinq_us"] = timer([lambda w=w: F.linear(x, w) for w in sinq_ws])
            row["tinygemm_us"] = timer([lambda w=w: F.linear(x, w) for w in tiny_ws])
            y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)

            def config_us(config, x=x, y=y, ws=sinq_ws):
                """The op's launch with an explicit configuration, timed over the SINQ copies."""
                return timer([lambda w=w: launch(x, w.qdata, w.scale, w.zero_point, w.act_pre_scale, None, y, bits,
                                                 64, config=config) for w in ws])  # fmt: skip

            # the older tensor-core kernel, which the dispatcher used before sinq_mma_kernel; the many-row kernel
            if 1 < m <= MMA_MAX_M and bits in KERNEL_BITS:
                row["sinq_gemm_us"] = config_us(default_gemm_config(m, n, k, bits))
            if m > MMA_MAX_M and bits in KERNEL_BITS:
                row["sinq_tile_us"] = config_us(default_tile_config(m, n, k, bits))
            if m >= 4:
                row["sinq_inductor_us"] = timer([lambda w=w: compiled_plain(x, w) for w in sinq_ws])
            if args.sweep:
                best = None
                for config in sweep_candidates(m, n, k, args.kernels, tuple(args.gemv_stages), bits):
                    try:
                        us = config_us(config)
                    except triton.runtime.errors.OutOfResources:  # a candidate too large for shared memory
                        continue
                    timing = {"kernel": type(config).__name__, **config._asdict(), "us": us}
                    row.setdefault("candidates", []).append(timing)
                    if best is None or us < best[1]:
                        best = (config, us)
                if best is None:  # the chosen families have no candidate for this M (e.g. --kernels tile at M = 16)
                    log(f"no --sweep candidate of {args.kernels} for M = {m}")
                else:
                    row["best_config"] = {"kernel": type(best[0]).__name__, **best[0]._asdict()}
                    row["best_us"] = best[1]
            row["speedup_vs_bf16"] = row["bf16_us"] / row["sinq_us"]
            row["speedup_vs_tinygemm"] = row["tinygemm_us"] / row["sinq_us"]
            rows.append(row)
            log(json.dumps(row))
        del bf16_ws, sinq_ws, tiny_ws
        torch.cuda.empty_cache()
    log(f"\nSINQ {bits}-bit g64 (tinygemm 4-bit g64)")
    log(f"{'N x K':>13} {'M':>4} {'bf16 µs':>8} {'SINQ µs':>8} {'tinygemm':>8} {'x bf16':>7} {'x tiny':>7}"
        f" {'old gemm':>8} {'tile':>8} {'inductor':>8} {'best cfg µs':>11}")  # fmt: skip
    for r in rows:
        log(f"{r['N']:>6}x{r['K']:<6} {r['M']:>4} {r['bf16_us']:8.1f} {r['sinq_us']:8.1f} {r['tinygemm_us']:8.1f}"
            f" {r['speedup_vs_bf16']:7.2f} {r['speedup_vs_tinygemm']:7.2f} {r.get('sinq_gemm_us', float('nan')):8.1f}"
            f" {r.get('sinq_tile_us', float('nan')):8.1f} {r.get('sinq_inductor_us', float('nan')):8.1f}"
            f" {r.get('best_us', float('nan')):11.1f} {r.get('best_config', '')}")  # fmt: skip
    return rows


def build_llama(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**LLAMA3_8B, "num_hidden_layers": layers})
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    return model


def quantize_variant(model, variant: str, lm_head: str = "bf16", bits: int = 4):
    """Quantize the model's linears for a decode variant (sinq variants with ``bits``-wide codes); ``lm_head=
    "quantized"`` includes the output head, as ``quantize_``'s default filter does (with "bf16" it stays as it is)."""
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    from sinq_ao import skip_lm_head

    filter_fn = (lambda module, fqn: isinstance(module, torch.nn.Linear)) if lm_head == "quantized" else skip_lm_head
    if variant in ("sinq", "sinq-unfused"):
        quantize_(model, SINQConfig(bits=bits, group_size=64), filter_fn=filter_fn)
    elif variant == "tinygemm":
        quantize_(model, Int4WeightOnlyConfig(group_size=64, int4_packing_format="tile_packed_to_4d"),
                  filter_fn=filter_fn)  # fmt: skip


PROMPT_TOKENS = 16  # the decode benchmarks' prompt


def random_prompt(model) -> torch.Tensor:
    """A random (1, PROMPT_TOKENS) prompt on the model's device."""
    device = next(model.parameters()).device
    return torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS), device=device)


def prefill(model, max_cache_len: int):
    """A transformers StaticCache of ``max_cache_len`` positions holding a random PROMPT_TOKENS-token prompt, run
    through the (uncompiled) model, and the prompt's greedy next token."""
    from transformers import StaticCache

    prompt = random_prompt(model)
    cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    positions = torch.arange(PROMPT_TOKENS, device=prompt.device)
    logits = model(input_ids=prompt, past_key_values=cache, cache_position=positions).logits
    return cache, logits[:, -1:].argmax(-1)


def greedy_decode(step, cache, token, count: int, position: int):
    """``count`` greedy steps of the compiled model from ``position``; returns the last token and next position."""
    for i in range(count):
        pos = torch.tensor([position + i], device="cuda")
        out = step(input_ids=token, past_key_values=cache, cache_position=pos, position_ids=pos[None])
        token = out.logits[:, -1:].argmax(-1).clone()  # clone: the CUDA-graph output buffer is reused
    return token, position + count


def profile_step(graphed: GraphedStep, token, steps: int = 8) -> tuple[list[dict], list[dict]]:
    """GPU time per decode step of each kernel (by name) in the captured step's CUDA graph, largest first (also
    printed), and the last step's kernels in launch order with their times."""
    graphed.decode(token, PROMPT_TOKENS, 2)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        graphed.decode(token, PROMPT_TOKENS, steps)
        torch.cuda.synchronize()
    kernels = [{"name": e.key[:120], "calls": e.count / steps, "us": e.self_device_time_total / steps}
               for e in prof.key_averages() if e.self_device_time_total > 0]  # fmt: skip
    kernels.sort(key=lambda k: -k["us"])
    log(f"kernel time per step: {sum(k['us'] for k in kernels):.1f} µs")
    for k in kernels[:25]:
        log(f"  {k['us']:9.1f} µs {k['calls']:6.1f} calls  {k['name']}")
    on_gpu = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)  # fmt: skip
    last_step = [{"name": e.name[:80], "us": e.time_range.elapsed_us()} for e in on_gpu[-(len(on_gpu) // steps):]]
    return kernels, last_step


def time_graphed_decoder(model, tokens: int) -> tuple[float, float, float]:
    """sinq_ao.GraphedDecoder on a random PROMPT_TOKENS-token prompt: (compile + capture seconds, decode tokens/s,
    seconds of generate(prompt, tokens)). Tokens/s is (tokens − 1) over generate(tokens) minus generate(1), so the
    eager prefill both include cancels; what remains is the replay loop a user's generate() runs."""
    from sinq_ao import GraphedDecoder

    decoder = GraphedDecoder(model, max_cache_len=PROMPT_TOKENS + tokens)
    prompt = random_prompt(model)

    def timed(count: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        decoder.generate(prompt, count)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    compile_s = timed(2)  # compile + capture
    one, full = timed(1), timed(tokens)
    return compile_s, (tokens - 1) / (full - one), full


@torch.no_grad()
def bench_decode(args) -> list[dict]:
    rows = []
    for variant in args.variants:
        # sinq-unfused: each projection its own launch (sinq groups q/k/v and gate/up: sinq_ao.fusion)
        (disable_projection_fusion if variant == "sinq-unfused" else enable_projection_fusion)()
        model = build_llama(args.layers)
        start = time.perf_counter()
        quantize_variant(model, variant, args.lm_head, args.bits)
        torch.cuda.synchronize()
        quant_s = time.perf_counter() - start
        weights_gib = sum(
            subclass_bytes(p) if hasattr(p, "tensor_data_names") else p.numel() * p.element_size()
            for p in model.parameters()
        ) / 2**30
        graphed = None
        extra = {}
        if args.graph == "decoder":  # the library's GraphedDecoder, timed through generate()
            compile_s, tokens_per_s, extra["generate_s"] = time_graphed_decoder(model, args.tokens)
        else:
            compile_s, tokens_per_s, graphed, token = time_compiled_steps(model, args)
        graph = "GraphedDecoder" if args.graph == "decoder" else args.graph
        graph += " (marked static)" if args.mark_static and args.graph == "reduce-overhead" else ""
        row = {"variant": variant, "bits": args.bits if variant.startswith("sinq") else None,
               "layers": args.layers, "tokens": args.tokens, "tokens_per_s": tokens_per_s,
               "graph": graph, "lm_head": "bf16" if variant == "bf16" else args.lm_head, **extra,
               "weights_GiB": weights_gib, "quantize_s": quant_s, "compile_s": compile_s,
               "inductor_pdl": bool(torch._inductor.config.triton.enable_pdl)}  # fmt: skip
        if args.profile and graphed is not None:
            row["kernels_per_step"], row["last_step_kernels"] = profile_step(graphed, token)
        rows.append(row)
        log(json.dumps(row))
        del model
        graphed = None  # free the captured graph before the next variant
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    base = next((r["tokens_per_s"] for r in rows if r["variant"] == "bf16"), None)
    log(f"\n{'variant':>10} {'bits':>4} {'lm_head':>9} {'tok/s':>8} {'x bf16':>7} {'weights GiB':>11}")
    for r in rows:
        ratio = r["tokens_per_s"] / base if base else float("nan")
        log(f"{r['variant']:>10} {r['bits'] or '-':>4} {r['lm_head']:>9} {r['tokens_per_s']:8.1f} {ratio:7.2f}"
            f" {r['weights_GiB']:11.2f}")  # fmt: skip
    return rows


def time_compiled_steps(model, args):
    """The benchmark's own decode loop (--graph manual or reduce-overhead): (compile + capture seconds, tokens/s,
    the GraphedStep (--graph manual) or None, the token the timed steps started from)."""
    # every step advances the cache's own fill counter (8 spare entries; the profile's 10 steps take 16 more)
    spare = 24 if args.profile else 8
    cache, token = prefill(model, PROMPT_TOKENS + args.tokens + spare)
    compile_start = time.perf_counter()
    graphed = step = None
    if args.graph == "manual":
        # the compiled step (argmax included) captured by hand: sinq_ao.decode.GraphedStep
        graphed = GraphedStep(model, cache, token, PROMPT_TOKENS)
        token, position = graphed.decode(token, PROMPT_TOKENS, 3), PROMPT_TOKENS + 3

        def run(token, count, position):  # as greedy_decode
            return graphed.decode(token, position, count), position + count
    else:
        if args.mark_static:
            for param in model.parameters():
                _mark_static(param)
        step = torch.compile(model, mode="reduce-overhead", fullgraph=True)
        token, position = greedy_decode(step, cache, token, 3, PROMPT_TOKENS)  # compile + graph capture
        run = functools.partial(greedy_decode, step, cache)  # run(token, count, position), as graphed.decode
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - compile_start
    start = time.perf_counter()
    run(token, args.tokens, position)
    torch.cuda.synchronize()
    return compile_s, args.tokens / (time.perf_counter() - start), graphed, token


@torch.no_grad()
def bench_quant_time(args) -> list[dict]:
    from sinq_ao.quantize import quantize_weight

    model = build_llama(args.layers)
    weights = [m.weight.data for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name != "lm_head"]  # fmt: skip
    rows = []
    for repeat in range(2):  # the first pass includes CUDA/cuBLAS warm-up; report the second
        for method in ("rtn", "sinq"):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for w in weights:
                SINQTensor.from_hp(w, bits=4, group_size=64, method=method)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            if repeat:
                rows.append({"method": method, "linears": len(weights), "params": sum(w.numel() for w in weights),
                             "seconds": seconds})  # fmt: skip
                log(json.dumps(rows[-1]))
    # The quantizer alone (no packing), for reference.
    for method in ("rtn", "sinq"):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for w in weights:
            quantize_weight(w, bits=4, group_size=64, method=method)
        torch.cuda.synchronize()
        rows.append({"method": method + " (quantize_weight only)", "seconds": time.perf_counter() - start})
        log(json.dumps(rows[-1]))
    log(f"\nSINQ / RTN time: {rows[1]['seconds'] / rows[0]['seconds']:.2f}x")
    if args.sweep:
        rows += sweep_sinkhorn(weights)
    return rows


def sweep_sinkhorn(weights) -> list[dict]:
    """Time the Sinkhorn kernel alone on the 1D tiles of each distinct weight shape, for candidate block heights,
    warps and pipeline depths, from fp32 tiles (what quantize_weight passes) and from the bf16 weight itself."""
    from sinq_ao.kernels.sinkhorn_kernel import sinkhorn_factors
    from sinq_ao.sinkhorn import _LOG_CLIP, _STD_CLAMP, _STEP_CLAMP, SINKHORN_STEPS

    rows = []
    shapes = {}
    for w in weights:
        shapes.setdefault(tuple(w.shape), w)
    for (n, k), w in shapes.items():
        for source in ("float32", "bfloat16"):
            tiles = w.to(getattr(torch, source)).reshape(1, n, k // 64, 64).transpose(1, 2)
            for block_rows in (32, 64, 128):
                for warps in (4, 8):
                    for stages in (2, 3):
                        run = functools.partial(sinkhorn_factors, tiles, SINKHORN_STEPS, _STD_CLAMP, _STEP_CLAMP,
                                                _LOG_CLIP, block_rows=block_rows, num_warps=warps, num_stages=stages)  # fmt: skip
                        run()
                        torch.cuda.synchronize()
                        start = time.perf_counter()
                        for _ in range(5):
                            run()
                        torch.cuda.synchronize()
                        rows.append({"sinkhorn": f"{n}x{k}", "source": source, "block_rows": block_rows, "warps": warps,
                                     "stages": stages, "ms": (time.perf_counter() - start) / 5 * 1000})  # fmt: skip
            best = min((r for r in rows if r["sinkhorn"] == f"{n}x{k}" and r["source"] == source), key=lambda r: r["ms"])
            log(json.dumps(best))
    return rows


def layer_shape(text: str) -> tuple[int, int]:
    """'4096x14336' -> (4096, 14336): out_features x in_features."""
    n, sep, k = text.lower().partition("x")
    if not (sep and n.isdigit() and k.isdigit() and int(n) > 0 and int(k) > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not N x K with positive integers, e.g. 4096x14336")
    return int(n), int(k)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["layers", "decode", "groups", "quant-time"])
    parser.add_argument("--sweep", action="store_true", help="also time candidate kernel block sizes (layers)")
    parser.add_argument("--kernels", nargs="+", choices=KERNEL_FAMILIES, default=list(KERNEL_FAMILIES),
                        help="kernel families whose configurations --sweep tries (layers)")
    parser.add_argument("--gemv-stages", type=int, nargs="+", default=[1, 3, 4],
                        help="pipeline depths of the GEMV candidates (--sweep)")
    parser.add_argument("--timer", choices=["graph", "kernels"], default="graph",
                        help="layers: CUDA-graph replay time per call (default), or the kernels' GPU time per call "
                             "from torch.profiler with memsets left out (kernel_time_us)")
    parser.add_argument("--ms", type=int, nargs="+", default=MS, help="activation rows M (layers)")
    parser.add_argument("--shapes", nargs="+", type=layer_shape,
                        help="N x K shapes instead of the issue's five, e.g. 4096x4096 1024x4096 (layers)")
    parser.add_argument("--layers", type=int, default=32, help="decoder layers of the 8B-shaped model")
    parser.add_argument("--tokens", type=int, default=128, help="tokens to decode (decode)")
    parser.add_argument("--graph", choices=["manual", "reduce-overhead", "decoder"], default="manual",
                        help="decode: capture the compiled step in a CUDA graph by hand, or torch.compile's "
                        "mode='reduce-overhead' (CUDA graph trees), or run sinq_ao.GraphedDecoder.generate")
    parser.add_argument("--mark-static", action="store_true",
                        help="decode with reduce-overhead: mark every parameter and its inner tensors static")
    parser.add_argument("--pdl", action="store_true",
                        help="decode: compile with Inductor's programmatic dependent launch (its Triton kernels may "
                        "start while the previous kernel finishes; torch._inductor.config.triton.enable_pdl)")
    parser.add_argument("--lm-head", choices=["bf16", "quantized"], default="bf16",
                        help="decode: keep the output head in bf16 in every variant (default), or quantize it in the "
                        "quantized variants as quantize_'s default filter does")
    parser.add_argument("--profile", action="store_true",
                        help="decode: also list each kernel's GPU time per step (torch.profiler, manual graph only)")
    parser.add_argument("--variants", nargs="+", default=["bf16", "sinq", "tinygemm"],
                        choices=["bf16", "sinq", "sinq-unfused", "tinygemm"],
                        help="decode variants (sinq-unfused: without grouping q/k/v and gate/up into one launch)")
    parser.add_argument("--bits", type=int, choices=range(1, 9), default=4, metavar="1..8",
                        help="SINQ's code width (layers, groups, decode's sinq variants; g64)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    log(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    if args.pdl:
        torch._inductor.config.triton.enable_pdl = True
    rows = {"layers": bench_layers, "decode": bench_decode, "groups": bench_groups,
            "quant-time": bench_quant_time}[args.what](args)
    if args.out:
        write_results(args.out, rows, what=args.what)


if __name__ == "__main__":
    main()
