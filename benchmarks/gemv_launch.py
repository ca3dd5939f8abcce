"""Launch the GEMV a few times with an explicit block configuration: a driver for Nsight Compute.

    ncu --clock-control none -k regex:sinq_gemv --launch-skip 2 --launch-count 1 \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \\
        python benchmarks/gemv_launch.py --weights 14336x4096 14336x4096 --config 32 4 1 1 1 3 4

Two or three --weights sharing K run the grouped kernel (launch_group, as q/k/v or gate/up at decode), one runs
sinq_gemv_kernel (launch). --config takes LaunchConfig's fields in order (block_n, groups_per_step, split_k,
num_warps, block_m, num_stages, thread_rows); without it the defaults apply. 4-bit, groups of 64, random bf16
weights, M activation rows (--m, default 1; at most GEMV_MAX_M for grouped weights, GEMV_MAX_BLOCK_M for one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_speed import layer_shape
from sinq_ao import SINQTensor
from sinq_ao.kernels import GEMV_MAX_BLOCK_M, GEMV_MAX_M, LaunchConfig, launch, launch_group


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", type=layer_shape, default=[(14336, 4096), (14336, 4096)],
                        help="N x K of each weight (1 to 3, one K); default: the 8B shape's gate + up")  # fmt: skip
    parser.add_argument("--config", nargs="+", type=int, metavar="FIELD",
                        help="LaunchConfig fields in order: block_n groups_per_step [split_k num_warps block_m "
                             "num_stages thread_rows]")  # fmt: skip
    parser.add_argument("--m", type=int, default=1, help="activation rows (default: 1)")
    parser.add_argument("--launches", type=int, default=3, help="launches (default: 3: compile, warm, profiled)")
    args = parser.parse_args(argv)
    if not 1 <= len(args.weights) <= 3 or len({k for _, k in args.weights}) != 1:
        parser.error("--weights takes 1 to 3 N x K shapes with one K")
    if not 1 <= args.m <= (GEMV_MAX_M if len(args.weights) > 1 else GEMV_MAX_BLOCK_M):
        parser.error(f"--m must be 1 to {GEMV_MAX_M} rows for grouped weights (group_supported), 1 to "
                     f"{GEMV_MAX_BLOCK_M} for one weight (the GEMV's rows per program); got {args.m}")  # fmt: skip
    if args.launches < 1:
        parser.error(f"--launches must be at least 1, got {args.launches}")
    if args.config is not None and not 2 <= len(args.config) <= len(LaunchConfig._fields):
        parser.error(f"--config takes 2 to {len(LaunchConfig._fields)} fields: {' '.join(LaunchConfig._fields)}")
    args.config = LaunchConfig(*args.config) if args.config else None
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gemv_launch.py: needs a CUDA GPU")
    torch.manual_seed(0)
    k = args.weights[0][1]
    weights = [SINQTensor.from_hp(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), bits=4, group_size=64)
               for n, _ in args.weights]  # fmt: skip
    x = torch.randn(args.m, k, device="cuda", dtype=torch.bfloat16)
    ys = [torch.empty(args.m, n, device="cuda", dtype=torch.bfloat16) for n, _ in args.weights]
    inner = [(w.qdata, w.scale, w.zero_point, w.act_pre_scale) for w in weights]
    for _ in range(args.launches):
        if len(inner) > 1:
            launch_group(x, inner, ys, 4, 64, config=args.config)
        else:
            launch(x, *inner[0], None, ys[0], 4, 64, config=args.config)
    torch.cuda.synchronize()
    print(f"{args.launches} launches of {args.weights} with {args.config or 'the default configuration'}")


if __name__ == "__main__":
    main()
