"""How the GEMV's memory access pattern alone sets its read rate on the GPU (the question v10 left open).

    python benchmarks/access_pattern.py [--shapes 28672x4096 16384x16384 ...] [--out results.json]

A streaming kernel reads every packed word of an (N, K) 4-bit weight once and folds each row's words into one
int32 (no unpacking, no activations, so nothing but the loads costs), in two arrangements of the same words:

rows:   SINQ's layout, row-major (N, K/8) int32: each program reads BLOCK_N rows, STEP words of each per step, the
        rows K/2 bytes apart (the GEMV's pattern);
tiles:  the words rearranged (tile_words) so that each program's step is one contiguous [BLOCK_N, STEP] block and
        its steps follow each other, as in a tiled packing (tinygemm's, Marlin's).

Both run with the GEMV's block sizes and Triton's cp.async pipeline, timed as CUDA graphs over weight copies that
overflow L2 (gpu_speed.graph_time_us), beside SINQ's own GEMV (F.linear on the SINQTensor, default blocks) and
bf16 F.linear on the same shape, and a device-to-device copy of the packed words (read + write). Rates are the
bytes each reads (the GEMV: codes, scales, zero-points) over its time. If tiles read clearly faster than rows at
the GEMV's block sizes, a tiled packing is worth building; if both stream near the copy's rate, the GEMV's gap to
them lies in its arithmetic or launch, not in where its words sit.

    python benchmarks/access_pattern.py --operands [--shapes ...] [--out results.json]

times the GEMV's loads one operand at a time (operands_kernel, row-major words at the same blocks): the words
alone, + the scales and zero-points ([BLOCK_N, groups per step] tiles of the two (N, K/g) arrays, as the GEMV
reads them), + the step's columns of x and t, and the scales and zero-points again from one interleaved
(N, K/g, 2) copy, beside the GEMV itself. The GEMV's time over the last of these is what its arithmetic costs.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_speed import graph_time_us, layer_shape, log, rotating_copies, subclass_bytes, write_results
from sinq_ao import SINQTensor

# The GEMV's blocks at 4 bits, g64: (rows per program, words per step, warps); default_config and
# default_group_config pick (8, 64, 1), (8, 128, 2) and (16, 32, 1).
BLOCKS = [(8, 64, 1), (8, 128, 2), (16, 32, 1), (32, 32, 1), (4, 128, 1)]
SHAPES = [(28672, 4096), (14336, 4096), (4096, 14336), (8192, 8192), (16384, 16384), (4096, 4096)]


@triton.jit
def stream_kernel(q_ptr, out_ptr, n_words, n_steps, BLOCK_N: tl.constexpr, STEP: tl.constexpr, TILED: tl.constexpr,
                  NUM_STAGES: tl.constexpr):  # fmt: skip
    """out[n] = the int32 sum (wrapping) of row n's words, read in [BLOCK_N, STEP] steps: from the row-major
    (N, n_words) words, or with TILED from tile_words' arrangement of them."""
    block = tl.program_id(0)
    r = tl.arange(0, BLOCK_N)[:, None]
    w = tl.arange(0, STEP)[None, :]
    acc = tl.zeros((BLOCK_N, STEP), dtype=tl.int32)
    for s in tl.range(0, n_steps, num_stages=NUM_STAGES):
        if TILED:
            offsets = ((block * n_steps + s) * BLOCK_N + r).to(tl.int64) * STEP + w
        else:
            offsets = (block * BLOCK_N + r).to(tl.int64) * n_words + s * STEP + w
        acc += tl.load(q_ptr + offsets)
    tl.store(out_ptr + block * BLOCK_N + tl.arange(0, BLOCK_N), tl.sum(acc, axis=1))


@triton.jit
def operands_kernel(q_ptr, s_ptr, z_ptr, x_ptr, t_ptr, out_ptr, n_words, n_groups, n_steps, BLOCK_N: tl.constexpr,
                    STEP: tl.constexpr, WPG: tl.constexpr, SCALES: tl.constexpr, PACKED: tl.constexpr,
                    ACTIVATIONS: tl.constexpr, NUM_STAGES: tl.constexpr):  # fmt: skip
    """stream_kernel's row-major read of the words plus, with SCALES, each step's scales and zero-points ([BLOCK_N,
    STEP / WPG] tiles of the (N, n_groups) arrays, as the GEMV reads them) and, with ACTIVATIONS, the step's
    columns of x and t (WPG · 8 per group, 4-bit): the GEMV's loads without its arithmetic. With PACKED, s_ptr
    points to scales and zero-points interleaved, (N, n_groups, 2), read as one [BLOCK_N, 2 · STEP / WPG] tile per
    step (z_ptr unused). out[n] = the float sum of row n's words (as int32) and of everything else it read."""
    block = tl.program_id(0)
    r = tl.arange(0, BLOCK_N)[:, None]
    w = tl.arange(0, STEP)[None, :]
    g = tl.arange(0, STEP // WPG)[None, :]
    c = tl.arange(0, STEP * 8)
    acc = tl.zeros((BLOCK_N, STEP), dtype=tl.float32)
    side = tl.zeros((BLOCK_N, STEP // WPG * (2 if PACKED else 1)), dtype=tl.float32)
    g2 = tl.arange(0, 2 * (STEP // WPG))[None, :]
    act = tl.zeros((STEP * 8,), dtype=tl.float32)
    for s in tl.range(0, n_steps, num_stages=NUM_STAGES):
        rows = (block * BLOCK_N + r).to(tl.int64)
        acc += tl.load(q_ptr + rows * n_words + s * STEP + w).to(tl.float32)
        if PACKED:
            side += tl.load(s_ptr + rows * (2 * n_groups) + s * (2 * STEP // WPG) + g2).to(tl.float32)
        elif SCALES:
            side += tl.load(s_ptr + rows * n_groups + s * (STEP // WPG) + g).to(tl.float32)
            side += tl.load(z_ptr + rows * n_groups + s * (STEP // WPG) + g).to(tl.float32)
        if ACTIVATIONS:
            act += tl.load(x_ptr + s * STEP * 8 + c).to(tl.float32) * tl.load(t_ptr + s * STEP * 8 + c).to(tl.float32)
    total = tl.sum(acc, axis=1) + tl.sum(side, axis=1) + tl.sum(act, axis=0)
    tl.store(out_ptr + block * BLOCK_N + tl.arange(0, BLOCK_N), total)


def operands(w: SINQTensor, x: torch.Tensor, block_n: int, step: int, warps: int, scales: bool, activations: bool,
             out: torch.Tensor, packed: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Run operands_kernel over a 4-bit SINQTensor's words (and its scales, zero-points, t and x if asked; with
    ``packed`` the scales and zero-points from that (N, n_groups, 2) copy)."""
    q = w.qdata
    n, n_words = q.shape
    wpg = w.group_size * w.bits // 32
    if n % block_n or n_words % step or step % wpg:
        raise ValueError(f"N={n}, {n_words} words per row and {wpg} per group do not fit block {block_n}x{step}")
    operands_kernel[(n // block_n,)](q, w.scale if packed is None else packed, w.zero_point, x, w.act_pre_scale, out,
                                     n_words, w.scale.shape[1], n_words // step, BLOCK_N=block_n, STEP=step, WPG=wpg,
                                     SCALES=scales, PACKED=packed is not None, ACTIVATIONS=activations, NUM_STAGES=3,
                                     num_warps=warps)  # fmt: skip
    return out


def bench_operands(shapes) -> list[dict]:
    """The GEMV's loads one operand at a time: words only, + scales and zero-points, + x and t, and the same with
    the scales and zero-points interleaved in one array; beside them the GEMV (F.linear, default blocks)."""
    rows = []
    torch.manual_seed(0)
    for n, k in shapes:
        sinq = SINQTensor.from_hp(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), bits=4, group_size=64)
        x = torch.randn(k, device="cuda", dtype=torch.bfloat16)
        sinq_ws = rotating_copies(sinq)
        row = {"N": n, "K": k, "gemv_MB": subclass_bytes(sinq) / 1e6, "word_MB": sinq.qdata.nbytes / 1e6,
               "gemv_us": graph_time_us([functools.partial(F.linear, x[None], w) for w in sinq_ws])}  # fmt: skip
        out = torch.empty(n, device="cuda", dtype=torch.float32)
        packs = [torch.stack([w.scale, w.zero_point], dim=-1).contiguous() for w in sinq_ws]
        for block_n, step, warps in BLOCKS:
            if n % block_n or sinq.qdata.shape[1] % step:  # as bench: blocks that do not tile the shape are skipped
                continue
            timing = {"block_n": block_n, "step_words": step, "warps": warps}
            for name, scales, acts, pack in (("words", False, False, False), ("scales", True, False, False),
                                              ("all", True, True, False), ("packed", True, False, True),
                                              ("packed_all", True, True, True)):  # fmt: skip
                timing[f"{name}_us"] = graph_time_us([functools.partial(operands, w, x, block_n, step, warps, scales,
                                                                        acts, out, p if pack else None)
                                                      for w, p in zip(sinq_ws, packs, strict=True)])  # fmt: skip
            row.setdefault("blocks", []).append(timing)
        rows.append(row)
        log(json.dumps(row))
        del sinq_ws
        torch.cuda.empty_cache()
    log_blocks(rows, f"{'N x K':>13} {'GEMV us':>8}   block      words us  +scales us  +x,t us  packed:+scales  +x,t",
               lambda r: f"{r['N']:>6}x{r['K']:<6} {r['gemv_us']:8.2f}",
               lambda b: (f"{b['words_us']:9.2f} {b['scales_us']:11.2f} {b['all_us']:8.2f} {b['packed_us']:15.2f} "
                          f"{b['packed_all_us']:6.2f}"))  # fmt: skip
    return rows


def log_blocks(rows, header: str, lead, cells) -> None:
    """The per-block table of a benchmark's rows: the header, then one line per shape and block, ``lead(row)`` on
    a shape's first line (blanks of its width below), the block, and ``cells(block)``."""
    log(f"\n{header}")
    for r in rows:
        first = lead(r)
        for i, b in enumerate(r.get("blocks", [])):
            block = f"{b['block_n']:>2}x{b['step_words']:<3}/{b['warps']}w"
            log(f"{first if i == 0 else ' ' * len(first)}   {block} {cells(b)}")


def check_operands_kernel() -> None:
    """Entry point for the TRITON_INTERPRET=1 subprocess (tests): every operand mode sums what it reads, once."""
    gen = torch.Generator().manual_seed(0)
    for n, k, block_n, step in [(16, 512, 8, 32), (8, 1024, 4, 64)]:
        w = SINQTensor.from_hp(torch.randn(n, k, generator=gen), bits=4, group_size=64)
        w.qdata.copy_(torch.randint(-1000, 1000, w.qdata.shape, generator=gen))  # sums exact in float32
        x = torch.randn(k, generator=gen)
        packed = torch.stack([w.scale, w.zero_point], dim=-1).contiguous()
        words = w.qdata.double().sum(dim=1)
        side = w.scale.double().sum(dim=1) + w.zero_point.double().sum(dim=1)
        acts = (x.double() * w.act_pre_scale.double()).sum()
        for scales, activations, pack in [(False, False, False), (True, False, False), (True, True, False),
                                          (True, False, True), (True, True, True)]:  # fmt: skip
            got = operands(w, x, block_n, step, 1, scales, activations, torch.empty(n), packed if pack else None)
            want = words + (side if scales else 0) + (acts if activations else 0)
            error = ((got.double() - want).abs().max() / want.abs().max()).item()
            assert error < 1e-6, (n, k, block_n, step, scales, activations, pack, error)
            print(f"N={n} K={k} block {block_n}x{step} scales={scales} x,t={activations} packed={pack}: {error:.1e}",
                  flush=True)  # fmt: skip
    print("interpreter cases passed")


def tile_words(q: torch.Tensor, block_n: int, step: int) -> torch.Tensor:
    """The (N, W) words as consecutive [block_n, step] tiles: row block by row block, each block's steps in
    order (flat, contiguous)."""
    n, w = q.shape
    return q.view(n // block_n, block_n, w // step, step).permute(0, 2, 1, 3).contiguous().view(-1)


def stream(q: torch.Tensor, n: int, n_words: int, block_n: int, step: int, warps: int, tiled: bool,
           out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Run stream_kernel over the words ``q`` ((N, n_words) row-major, or tile_words' flat arrangement)."""
    if n % block_n or n_words % step:
        raise ValueError(f"N={n} and words per row {n_words} must be multiples of block_n={block_n} and step={step}")
    out = torch.empty(n, device=q.device, dtype=torch.int32) if out is None else out
    stream_kernel[(n // block_n,)](q, out, n_words, n_words // step, BLOCK_N=block_n, STEP=step, TILED=tiled,
                                   NUM_STAGES=3, num_warps=warps)  # fmt: skip
    return out


def row_sums(q: torch.Tensor) -> torch.Tensor:
    """The reference: each row's int32 words summed with int32 wrap-around."""
    total = q.to(torch.int64).sum(dim=1) % 2**32
    return torch.where(total >= 2**31, total - 2**32, total).to(torch.int32)


def check_stream_kernel() -> None:
    """Entry point for the TRITON_INTERPRET=1 subprocess (tests): both arrangements fold every word, once."""
    gen = torch.Generator().manual_seed(0)
    for n, n_words, block_n, step in [(16, 64, 8, 16), (32, 96, 4, 32), (8, 32, 8, 32)]:
        q = torch.randint(-(2**31), 2**31 - 1, (n, n_words), generator=gen, dtype=torch.int32)
        for tiled in (False, True):
            words = tile_words(q, block_n, step) if tiled else q
            got = stream(words, n, n_words, block_n, step, 1, tiled)
            assert torch.equal(got, row_sums(q)), (n, n_words, block_n, step, tiled)
            print(f"N={n} words={n_words} block {block_n}x{step} tiled={tiled}: equal", flush=True)
    print("interpreter cases passed")


def bench(shapes) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    for n, k in shapes:
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        sinq = SINQTensor.from_hp(weight, bits=4, group_size=64)
        q = sinq.qdata
        n_words = q.shape[1]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        sinq_ws = rotating_copies(sinq)
        gemv_bytes = subclass_bytes(sinq)
        row = {"N": n, "K": k, "word_MB": q.nbytes / 1e6, "gemv_MB": gemv_bytes / 1e6}
        row["gemv_us"] = graph_time_us([functools.partial(F.linear, x, w) for w in sinq_ws])
        del sinq_ws
        bf16_ws = rotating_copies(weight)
        row["bf16_us"] = graph_time_us([functools.partial(F.linear, x, w) for w in bf16_ws])
        row["bf16_GBps"] = weight.nbytes / row["bf16_us"] / 1e3
        del bf16_ws
        words = rotating_copies(q)
        copies = [torch.empty_like(q) for _ in words]
        row["copy_us"] = graph_time_us([lambda s=s, d=d: d.copy_(s) for s, d in zip(words, copies, strict=True)])
        row["copy_GBps"] = 2 * q.nbytes / row["copy_us"] / 1e3  # read + write
        del copies
        row["gemv_GBps"] = gemv_bytes / row["gemv_us"] / 1e3
        out = torch.empty(n, device="cuda", dtype=torch.int32)
        for block_n, step, warps in BLOCKS:
            if n % block_n or n_words % step:
                continue
            tiles = [tile_words(w, block_n, step) for w in words]
            timing = {"block_n": block_n, "step_words": step, "warps": warps}
            for name, sources, tiled in (("rows", words, False), ("tiles", tiles, True)):
                us = graph_time_us([functools.partial(stream, s, n, n_words, block_n, step, warps, tiled, out)
                                    for s in sources])  # fmt: skip
                timing[f"{name}_us"], timing[f"{name}_GBps"] = us, q.nbytes / us / 1e3
            assert torch.equal(stream(tiles[0], n, n_words, block_n, step, warps, True), row_sums(q))
            row.setdefault("blocks", []).append(timing)
            del tiles
        rows.append(row)
        log(json.dumps(row))
        del words
        torch.cuda.empty_cache()
    log_blocks(rows, f"{'N x K':>13} {'copy GB/s':>9} {'bf16':>6} {'GEMV':>6}   block      rows GB/s  tiles GB/s",
               lambda r: f"{r['N']:>6}x{r['K']:<6} {r['copy_GBps']:9.0f} {r['bf16_GBps']:6.0f} {r['gemv_GBps']:6.0f}",
               lambda b: f"{b['rows_GBps']:9.0f} {b['tiles_GBps']:11.0f}")  # fmt: skip
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", type=layer_shape, help="N x K shapes (default: the 8B and issue shapes)")
    parser.add_argument("--operands", action="store_true", help="time the GEMV's loads one operand at a time")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    if args.operands:
        rows = bench_operands(args.shapes or SHAPES)
    else:
        rows = bench(args.shapes or SHAPES)
    if args.out:
        write_results(args.out, rows, what="access_pattern_operands" if args.operands else "access_pattern")


if __name__ == "__main__":
    main()
