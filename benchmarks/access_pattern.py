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
    log(f"\n{'N x K':>13} {'copy GB/s':>9} {'bf16':>6} {'GEMV':>6}   block      rows GB/s  tiles GB/s")
    for r in rows:
        for i, b in enumerate(r.get("blocks", [])):
            lead = (f"{r['N']:>6}x{r['K']:<6} {r['copy_GBps']:9.0f} {r['bf16_GBps']:6.0f} {r['gemv_GBps']:6.0f}"
                    if i == 0 else " " * 38)  # fmt: skip
            block = f"{b['block_n']:>2}x{b['step_words']:<3}/{b['warps']}w"
            log(f"{lead}   {block} {b['rows_GBps']:9.0f} {b['tiles_GBps']:11.0f}")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", type=layer_shape, help="N x K shapes (default: the 8B and issue shapes)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    rows = bench(args.shapes or SHAPES)
    if args.out:
        write_results(args.out, rows, what="access_pattern")


if __name__ == "__main__":
    main()
