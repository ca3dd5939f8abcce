"""Helpers shared by the tests."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)")
requires_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


def _numpy_breaks_interpreter() -> bool:
    import numpy

    return tuple(int(p) for p in numpy.__version__.split(".")[:2]) >= (2, 4)


requires_interpreter = pytest.mark.skipif(
    _numpy_breaks_interpreter(), reason="Triton 3.6's interpreter fails on numpy >= 2.4 (the test extra pins <2.4)"
)


def assert_passes_under_the_interpreter(module: str, function: str | None = None) -> None:
    """Run ``python -m module`` (or ``module.function()``) with TRITON_INTERPRET=1 in a subprocess (the variable
    must be set before Triton is imported, so not in this process) and require its closing line "interpreter cases
    passed"."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    command = ["-m", module] if function is None else ["-c", f"from {module} import {function}; {function}()"]
    done = subprocess.run([sys.executable, *command], check=False, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "interpreter cases passed" in done.stdout


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def structured_matrix(rows: int, cols: int, seed: int, spread: float = 1.5) -> torch.Tensor:
    """Gaussian weights times log-normal row and column scales: the imbalance SINQ is built for."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, cols, generator=gen)
    row_scale = (torch.randn(rows, 1, generator=gen) * spread).exp()
    col_scale = (torch.randn(1, cols, generator=gen) * spread).exp()
    return base * row_scale * col_scale


def compile_for_sm90(kernel, constants: dict, pointer_types: dict | None = None, default_pointer: str = "*bf16",
                     aligned=(), **options):
    """Compile a Triton kernel ahead of time for sm_90 without a GPU (Triton ships ptxas); returns the compiled
    kernel (its ``asm`` holds TTIR, TTGIR, PTX and the cubin). Arguments in ``constants`` are constexprs, pointers
    (``*_ptr``) take ``pointer_types[name]`` or ``default_pointer``, the rest are i32; those named in ``aligned``
    are specialised as multiples of 16, as a launch on aligned tensors and sizes would."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature = {name: "constexpr" if name in constants else (pointer_types or {}).get(name, default_pointer)
                 if name.endswith("_ptr") else "i32" for name in names}  # fmt: skip
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = ASTSource(kernel, signature, constants, attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
