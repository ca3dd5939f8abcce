"""Random kernel cases against the float64 dequantize reference, for a while, on the CPU (Triton's interpreter).

The fixed cases of tests/kernel_checks.py run in `make test`; this draws new ones (every kernel family and code
width, ragged M, N and K, K not a multiple of 32, random block sizes, fp32 and fp16 activations) until the time is
up, prints each miss, and exits 1 if there was one. After a kernel change, run it under both Triton versions
(docs/architecture.md says how to install the GPU machine's beside the project):

    TRITON_INTERPRET=1 python -m tests.kernel_fuzz --seconds 600 --seed 1
    TRITON_INTERPRET=1 PYTHONPATH=/tmp/t36:. python -m tests.kernel_fuzz --seconds 600 --seed 2
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import torch

from sinq_ao.kernels import GemmConfig, LaunchConfig, MmaConfig, TileConfig
from tests.kernel_checks import group_relative_error, kernel_relative_error

TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3}


def draw_case(rng: random.Random):
    """(kind, bits, m, n or ns, k, group_size, dtype, config); config None: the dispatcher's default."""
    bits, group_size = rng.randint(1, 8), rng.choice([32, 64, 128])
    k = rng.randint(1, 12) * 32 - rng.choice([0, 0, 8, 16, 24])
    n, dtype = rng.randint(1, 60), rng.choice([torch.float32, torch.float16])
    kind = rng.choice(["default", "gemv", "gemm", "mma", "tile", "group"])
    if kind == "mma":  # 2- and 4-bit codes, 16 halves per group, K whole groups, 16-bit activations
        bits = rng.choice([2, 4])
        group_size = max(group_size, 256 // bits)
        k, dtype = rng.randint(1, 6) * group_size, torch.float16
        config = MmaConfig(rng.choice([64, 128]), rng.choice([16, 32]), rng.randint(1, 3),
                           groups_per_step=rng.choice([1, 2]))  # fmt: skip
        return kind, bits, rng.randint(3, 40), n, k, group_size, dtype, config
    if kind == "tile":  # one bit plane, K whole groups, 16-bit activations
        bits = rng.choice([2, 4, 8])
        k, dtype = rng.randint(1, 6) * group_size, torch.float16
        config = TileConfig(rng.choice([16, 32]), rng.choice([16, 32]), rng.choice([2, 4, 8, 16]), rng.randint(1, 3))
        return kind, bits, rng.randint(3, 80), n, k, group_size, dtype, config
    if kind == "group":
        ns = tuple(rng.randint(1, 40) for _ in range(rng.choice([2, 3])))
        return kind, bits, rng.randint(1, 2), ns, k, group_size, torch.float16, None
    if kind == "gemv":
        block_n = rng.choice([4, 8, 16, 32])
        config = LaunchConfig(block_n, rng.choice([1, 2, 4]), rng.randint(1, 4), rng.choice([1, 2, 4]),
                              rng.choice([1, 2, 4]), rng.choice([1, 3]),
                              rng.choice([r for r in (1, 2, 4) if block_n % r == 0]))  # fmt: skip
        return kind, bits, rng.randint(1, 4), n, k, group_size, dtype, config
    if kind == "gemm":
        config = GemmConfig(rng.choice([16, 32, 64]), rng.choice([16, 32, 64]), rng.choice([1, 2, 4, 8, 16, 32]),
                            rng.randint(1, 4))  # fmt: skip
        return kind, bits, rng.randint(3, 80), n, k, group_size, dtype, config
    return kind, bits, rng.choice([1, 2, 3, 5, 17, 40, 70]), n, k, group_size, dtype, None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to draw cases (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("run under Triton's interpreter: TRITON_INTERPRET=1 python -m tests.kernel_fuzz ...")
    rng = random.Random(args.seed)
    deadline, cases, misses = time.monotonic() + args.seconds, 0, 0
    while time.monotonic() < deadline:
        kind, bits, m, n, k, group_size, dtype, config = case = draw_case(rng)
        if kind == "group":
            error = group_relative_error(bits, m, n, k, group_size, dtype, "cpu")
        else:
            error = kernel_relative_error(bits, m, n, k, group_size, dtype, "cpu", config, seed=rng.randint(0, 999))
        cases += 1
        if not error < TOLERANCE[dtype]:
            misses += 1
            print(f"MISS {case}: relative error {error:.3g}", flush=True)
    print(f"{cases} cases, {misses} misses", flush=True)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
