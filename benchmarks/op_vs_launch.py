"""Time one M = 1 product three ways in turn (F.linear on the SINQTensor, the op, `launch`), 3 repeats, on 16384^2
and 8192^2: the check behind docs/results.md's note that 16384^2 timings are bimodal (66.4-74.0 us for one
configuration, whichever path). Needs a CUDA GPU: ``python benchmarks/op_vs_launch.py``.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_speed import graph_time_us, rotating_copies  # noqa: E402
from sinq_ao import SINQTensor  # noqa: E402
from sinq_ao.kernels import launch  # noqa: E402


def main():
    if not torch.cuda.is_available():
        sys.exit("op_vs_launch.py needs a CUDA GPU")
    torch.manual_seed(0)
    for n, k in [(16384, 16384), (8192, 8192)]:
        w = SINQTensor.from_hp(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), bits=4, group_size=64)
        ws = rotating_copies(w)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        y = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a = graph_time_us([lambda w=w: F.linear(x, w) for w in ws])
            b = graph_time_us([lambda w=w: launch(x, w.qdata, w.scale, w.zero_point, w.act_pre_scale, None, y, 4, 64)
                               for w in ws])  # fmt: skip
            c = graph_time_us([
                lambda w=w: torch.ops.sinq_ao.linear(x, w.qdata, w.scale, w.zero_point, w.act_pre_scale, None, 4, 64)
                for w in ws])  # fmt: skip
            print(n, k, len(ws), f"F.linear {a:.1f}  launch {b:.1f}  op {c:.1f}", flush=True)


if __name__ == "__main__":
    main()
