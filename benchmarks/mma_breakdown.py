"""Where the time of one register-operand tensor-core product goes (H100): each of the two launches of sinq_ao's
M = 2..MMA_MAX_M path timed alone in CUDA graphs over L2-overflowing weight copies, next to the whole call, the
product without a K split, and an empty launch.

    python benchmarks/mma_breakdown.py [--shapes 4096x4096 14336x4096] [--ms 16] [--out breakdown.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_speed import graph_time_us, layer_shape, log, rotating_copies, write_results  # noqa: E402
from sinq_ao import SINQTensor  # noqa: E402
from sinq_ao.kernels import _mma_activations, _mma_product, default_mma_config, launch  # noqa: E402


@triton.jit
def empty_kernel(x_ptr):
    """Does nothing: the cost of a launch inside a CUDA graph."""
    pass


def breakdown(n: int, k: int, m: int, group: int = 64) -> dict:
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    sinq = SINQTensor.from_hp(weight, bits=4, group_size=group)
    ws = rotating_copies(sinq)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    config = default_mma_config(m, n, k, group)
    n_groups = k // group
    xp = torch.empty(m, k, device="cuda", dtype=x.dtype)
    xsum = torch.empty(m, n_groups, device="cuda", dtype=torch.float32)
    partial = torch.empty(config.split_k, m, n, device="cuda", dtype=torch.float32)
    blocks = triton.cdiv(n, config.block_n) * triton.cdiv(m, config.block_m)
    counts = torch.zeros(blocks, device="cuda", dtype=torch.int32)

    def activations(w):
        _mma_activations(lambda kernel: kernel, x, w.act_pre_scale, xp, xsum, counts, blocks, 4, group)

    def main(w, split):
        if split > 1:
            counts.zero_()  # a memset node in the graph (the activation pass zeroes them in the real path)
        _mma_product(lambda kernel: kernel, config._replace(split_k=split), xp, xsum, w.qdata, w.scale,
                     w.zero_point, y, partial if split > 1 else y, y, counts, False, 4, group)  # fmt: skip

    row = {"N": n, "K": k, "M": m, "config": config._asdict()}
    row["whole_call_us"] = graph_time_us([lambda w=w: launch(x, w.qdata, w.scale, w.zero_point, w.act_pre_scale,
                                                                None, y, 4, group) for w in ws])  # fmt: skip
    row["activations_us"] = graph_time_us([lambda w=w: activations(w) for w in ws])
    row["main_us"] = graph_time_us([lambda w=w: main(w, config.split_k) for w in ws])
    row["main_unsplit_us"] = graph_time_us([lambda w=w: main(w, 1) for w in ws])
    row["memset_us"] = graph_time_us([lambda: counts.zero_() for _ in ws])
    row["empty_launch_us"] = graph_time_us([lambda: empty_kernel[(1,)](x) for _ in ws])
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", type=layer_shape, default=[(4096, 4096), (14336, 4096)])
    parser.add_argument("--ms", type=int, nargs="+", default=[16])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    rows = [breakdown(n, k, m) for n, k in args.shapes for m in args.ms]
    log(f"{'N x K':>13} {'M':>3} {'whole':>6} {'activ.':>6} {'main':>6} {'unsplit':>7} {'memset':>6} {'empty':>6}"
        "  config")
    for r in rows:
        log(f"{r['N']:>6}x{r['K']:<6} {r['M']:>3} {r['whole_call_us']:6.1f} {r['activations_us']:6.1f}"
            f" {r['main_us']:6.1f} {r['main_unsplit_us']:7.1f} {r['memset_us']:6.1f} {r['empty_launch_us']:6.1f}"
            f"  {r['config']}")  # fmt: skip
    if args.out:
        write_results(args.out, rows)


if __name__ == "__main__":
    main()
