"""Per-layer weight and output error of HQQ against RTN on a real model (docs/results.md, the HQQ 3-bit finding).

    python benchmarks/layer_errors.py --model smollm2-135m --bits 3 --group-size 64 --tokens 256

Runs the model once on the first ``--tokens`` tokens of the evaluation text to collect each linear's inputs X, then
for every linear (lm_head excluded) prints relative errors ‖W'−W‖/‖W‖ (weight) and ‖XW'ᵀ−XWᵀ‖/‖XWᵀ‖ (output)
for RTN and for torchao's HQQ, worst HQQ/RTN output ratios first, and writes them as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sinq_ao.baselines import hqq_fake_quantize  # noqa: E402
from sinq_ao.evaluate import load_eval_text  # noqa: E402
from sinq_ao.models import DEFAULT_MODEL, load_model  # noqa: E402
from sinq_ao.quantize import quantization_error  # noqa: E402


def layer_inputs(model, tokenizer, names: list[str], tokens: int, text: str) -> dict[str, torch.Tensor]:
    """Each named linear's input rows (tokens, in_features) for one forward pass over the start of ``text``."""
    ids = tokenizer(text[: tokens * 20], return_tensors="pt").input_ids[:, :tokens]
    inputs = {}

    def keep(name):
        return lambda module, args, output: inputs.__setitem__(name, args[0].detach().reshape(-1, args[0].shape[-1]))

    hooks = [model.get_submodule(name).register_forward_hook(keep(name)) for name in names]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    return inputs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256, help="tokens of the eval text whose activations are used")
    parser.add_argument("--eval-text", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.model, dtype=torch.float32, device="cpu")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    inputs = layer_inputs(model, tokenizer, names, args.tokens, load_eval_text(args.eval_text))
    rows = []
    for name in names:
        w = model.get_submodule(name).weight.data.float()
        rtn = w - quantization_error(w, bits=args.bits, group_size=args.group_size, scheme="asymmetric", method="rtn")
        hqq = hqq_fake_quantize(w, args.bits, args.group_size).float()
        x = inputs[name].float()
        y = x @ w.T
        row = {"layer": name}
        for method, dense in (("rtn", rtn), ("hqq", hqq)):
            row[f"{method}_weight"] = ((dense - w).norm() / w.norm()).item()
            row[f"{method}_output"] = ((x @ dense.T - y).norm() / y.norm()).item()
        row["hqq_over_rtn_output"] = row["hqq_output"] / row["rtn_output"]
        rows.append(row)
    rows.sort(key=lambda r: -r["hqq_over_rtn_output"])
    print(f"{'layer':42} {'HQQ/RTN out':>11} {'out RTN':>8} {'out HQQ':>8} {'w RTN':>6} {'w HQQ':>6}")
    for r in rows[:12]:
        print(f"{r['layer']:42} {r['hqq_over_rtn_output']:11.2f} {r['rtn_output']:8.3f} {r['hqq_output']:8.3f}"
              f" {r['rtn_weight']:6.3f} {r['hqq_weight']:6.3f}")  # fmt: skip
    lower_weight = sum(r["hqq_weight"] < r["rtn_weight"] for r in rows)
    worse_output = sum(r["hqq_output"] > r["rtn_output"] for r in rows)
    print(f"\n{len(rows)} linears: HQQ has the lower weight error in {lower_weight}, the higher output error in "
          f"{worse_output}; median HQQ/RTN output ratio {statistics.median(r['hqq_over_rtn_output'] for r in rows):.3f}")
    if args.out:
        args.out.write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
