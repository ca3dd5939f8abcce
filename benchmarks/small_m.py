"""Which kernel should take a few activation rows (M = 2..4)? On an H100, per layer, in one run: the dispatcher's
choice (sinq_mma_kernel), the one-row GEMV's tuned configuration with M rows per program (block_m = M rounded up
to a power of two), and the older tensor-core kernel; bf16 F.linear as the baseline. CUDA graphs over weight
copies that overflow L2, as in gpu_speed.py.

    python benchmarks/small_m.py [--shapes 4096x4096 14336x4096 1024x4096] [--ms 2 3 4] [--out small_m.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_speed import graph_time_us, layer_shape, log, rotating_copies, write_results  # noqa: E402
from sinq_ao import SINQTensor  # noqa: E402
from sinq_ao.kernels import default_config, default_gemm_config, launch  # noqa: E402


def compare(n: int, k: int, m: int) -> dict:
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    sinq = SINQTensor.from_hp(weight, bits=4, group_size=64)
    bf16_ws = rotating_copies(weight)
    ws = rotating_copies(sinq)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    gemv = default_config(1, n, k, 4, 64)._replace(block_m=1 << (m - 1).bit_length())
    gemm = default_gemm_config(m, n, k, 4)

    def timed(config):
        return graph_time_us([lambda w=w: launch(x, w.qdata, w.scale, w.zero_point, w.act_pre_scale, None, y, 4, 64,
                                                 config=config) for w in ws])  # fmt: skip

    row = {"N": n, "K": k, "M": m, "gemv_config": gemv._asdict()}
    row["bf16_us"] = graph_time_us([lambda w=w: F.linear(x, w) for w in bf16_ws])
    row["dispatch_us"] = graph_time_us([lambda w=w: F.linear(x, w) for w in ws])
    row["gemv_us"] = timed(gemv)
    row["old_gemm_us"] = timed(gemm)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", type=layer_shape, default=[(4096, 4096), (14336, 4096), (1024, 4096)])
    parser.add_argument("--ms", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    rows = [compare(n, k, m) for n, k in args.shapes for m in args.ms]
    log(f"{'N x K':>13} {'M':>3} {'bf16':>7} {'dispatch':>8} {'GEMV':>7} {'old gemm':>8}  (µs)")
    for r in rows:
        log(f"{r['N']:>6}x{r['K']:<6} {r['M']:>3} {r['bf16_us']:7.1f} {r['dispatch_us']:8.1f} {r['gemv_us']:7.1f}"
            f" {r['old_gemm_us']:8.1f}")  # fmt: skip
    if args.out:
        write_results(args.out, rows)


if __name__ == "__main__":
    main()
