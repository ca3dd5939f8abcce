"""Count the SASS instructions of a kernel's main loop, built for sm_90 on any machine (no GPU needed).

Triton ships ptxas and nvdisasm, so the Hopper build of a kernel can be read on the CPU machine. This prints the
number of instructions in the kernel's longest loop (its K loop), the most frequent opcodes there, and the
registers and stack (local memory) per thread that cuobjdump reports; the counts quoted in docs/results.md come
from it. Examples:

    python benchmarks/sass_count.py gemv BITS=4 BLOCK_N=8 GROUPS_PER_STEP=4 --num-warps 1 --num-stages 3
    python benchmarks/sass_count.py gemm BITS=4 BLOCK_N=64 BLOCK_M=16 BLOCK_W=8 --num-warps 4 --num-stages 2
    python benchmarks/sass_count.py gemm BITS=3 BLOCK_W=6     # one group of 64 three-bit codes per step
    python benchmarks/sass_count.py mma BITS=4 BLOCK_N=64 BLOCK_M=16 --num-warps 4 --num-stages 3
    python benchmarks/sass_count.py tile BITS=4 BLOCK_M=128 BLOCK_N=128 BLOCK_W=8 --num-warps 8 --num-stages 3

Constexprs not given take the values below (4-bit g64, no bias, even K, inline PTX), and warps / stages the
defaults of M = 1 (GEMV), M = 16 (both tensor-core kernels) and M = 256 (the many-row kernel).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sinq_ao.kernels import triton_kernels  # noqa: E402
from tests.helpers import compile_for_sm90  # noqa: E402
from tests.kernel_checks import POINTER_TYPES  # noqa: E402

KERNELS = {
    "gemv": (triton_kernels.sinq_gemv_kernel, dict(BITS=4, GROUP=64, HAS_BIAS=False, PARTIAL=False, BLOCK_M=1,
                                                   BLOCK_N=8, GROUPS_PER_STEP=8, EVEN_K=True, ASM=True,
                                                   NUM_STAGES=3, THREAD_ROWS=1), 1, 3),  # fmt: skip
    "gemm": (triton_kernels.sinq_gemm_kernel, dict(BITS=4, GROUP=64, HAS_BIAS=False, PARTIAL=False, BLOCK_M=16,
                                                   BLOCK_N=64, BLOCK_W=8, EVEN_K=True, PRESCALED=False,
                                                   ASM=True), 4, 2),  # fmt: skip
    "mma": (triton_kernels.sinq_mma_kernel, dict(BITS=4, GROUP=64, HAS_BIAS=False, SPLIT_K=1, BLOCK_M=16,
                                                 BLOCK_N=64, GROUPS_PER_STEP=1, ASM=True, NUM_STAGES=3),
            4, 3),  # fmt: skip
    "tile": (triton_kernels.sinq_tile_kernel, dict(BITS=4, GROUP=64, HAS_BIAS=False, SPLIT_K=1, BLOCK_M=128,
                                                   BLOCK_N=128, BLOCK_W=8, ASM=True, NUM_STAGES=3), 8, 3),  # fmt: skip
}
# specialised as multiples of 16, as in real launches
ALIGNED_INTS = ("N", "K", "n_words", "words_per_split", "n_groups", "groups_per_split")
OPCODE = re.compile(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)")


def cubin_of(kernel, constants: dict, num_warps: int, num_stages: int) -> bytes:
    """The kernel's sm_90 build (pointers, strides and sizes specialised as multiples of 16)."""
    aligned = [n for n in kernel.arg_names
               if n not in constants and (n.endswith("_ptr") or n.startswith("stride") or n in ALIGNED_INTS)]
    compiled = compile_for_sm90(kernel, constants, POINTER_TYPES, aligned=aligned, num_warps=num_warps,
                                num_stages=num_stages)  # fmt: skip
    return compiled.asm["cubin"]


def _inspect(cubin: bytes, tool: str, *flags: str) -> str:
    """The output of one of Triton's CUDA tools (nvdisasm, cuobjdump) on a cubin."""
    binary = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        return subprocess.run([str(binary), *flags, file.name], capture_output=True, text=True, check=True).stdout


def sass_of(kernel, constants: dict, num_warps: int, num_stages: int) -> str:
    return _inspect(cubin_of(kernel, constants, num_warps, num_stages), "nvdisasm", "-c")


def resources(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) per thread of a build (cuobjdump -res-usage)."""
    usage = _inspect(cubin, "cuobjdump", "-res-usage")
    return int(re.search(r"REG:(\d+)", usage).group(1)), int(re.search(r"STACK:(\d+)", usage).group(1))


def longest_loop(sass: str) -> list[str]:
    """Opcodes between a label and the furthest backward branch to it."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"\s*\.(L_x_\d+):", line))}
    best = (0, 0)
    for i, line in enumerate(lines):
        target = re.search(r"BRA\s+(?:`\()?\.?(L_x_\d+)", line)
        if target and labels.get(target.group(1), i) < i and i - labels[target.group(1)] > best[1] - best[0]:
            best = (labels[target.group(1)], i)
    return [m.group(1) for line in lines[best[0] : best[1] + 1] if (m := OPCODE.search(line))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kernel", choices=sorted(KERNELS))
    parser.add_argument("constexprs", nargs="*", metavar="NAME=VALUE", help="constexpr overrides (ints or True/False)")
    parser.add_argument("--num-warps", type=int)
    parser.add_argument("--num-stages", type=int)
    args = parser.parse_args(argv)
    kernel, constants, num_warps, num_stages = KERNELS[args.kernel]
    constants = dict(constants)
    num_warps, num_stages = args.num_warps or num_warps, args.num_stages or num_stages
    for item in args.constexprs:
        name, _, value = item.partition("=")
        if name not in constants:
            parser.error(f"{name!r} is not a constexpr of {args.kernel}: choose from {sorted(constants)}")
        constants[name] = value == "True" if value in ("True", "False") else int(value)
    cubin = cubin_of(kernel, constants, num_warps, num_stages)
    sass = _inspect(cubin, "nvdisasm", "-c")
    loop = longest_loop(sass)
    print(f"{args.kernel} {constants} warps={num_warps} stages={num_stages}")
    registers, stack = resources(cubin)
    print(f"kernel: {len(OPCODE.findall(sass))} instructions; main loop: {len(loop)}; {registers} registers, "
          f"{stack} bytes of stack per thread")
    print("loop opcodes:", collections.Counter(op.split(".")[0] for op in loop).most_common(12))


if __name__ == "__main__":
    main()
