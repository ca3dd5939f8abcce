"""WikiText-2 perplexity of real models: one row per model x method x bits x group size (docs/results.md).

Every method keeps ``lm_head`` (and so a tied embedding) in high precision. Each finished row is written to
the ``--out`` JSON at once (atomically), and a rerun skips the rows already there, so the table resumes.

    python benchmarks/quality.py --models smollm2-135m --bits 3 4 --group-sizes 64 128 --max-windows 8

Tokenizing on one machine and evaluating on another (e.g. when the GPU machine's transformers tokenizes a GGUF
model differently): ``--save-tokens DIR`` writes each model's token ids of the eval (and calibration) text and
exits; ``--tokens DIR`` evaluates on those ids instead of tokenizing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torchao.quantization import quantize_

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sinq_ao import SINQConfig, skip_lm_head  # noqa: E402 (after the sys.path line)
from sinq_ao.baselines import hqq_quantize_  # noqa: E402
from sinq_ao.calibration import asinq_quantize_, calibration_tokens  # noqa: E402
from sinq_ao.mixed_precision import plan_mixed_precision  # noqa: E402
from sinq_ao.tensor import SINQTensor  # noqa: E402
from sinq_ao.evaluate import load_eval_text, perplexity, token_ids  # noqa: E402
from sinq_ao.models import DEFAULT_MODEL, load_model, resolve_model  # noqa: E402

# name -> quantize(model, *, bits, group_size, calibration_text) in place. Add variants here.
Quantizer = Callable[..., None]


def _unquantized(model, *, bits, group_size, calibration_text=None) -> None:
    """The model as loaded (bits and group size do not apply)."""


def _sinq_config_method(**options) -> Quantizer:
    def quantize(model, *, bits, group_size, calibration_text=None) -> None:
        quantize_(model, SINQConfig(bits=bits, group_size=group_size, **options), filter_fn=skip_lm_head)

    return quantize


def _hqq(model, *, bits, group_size, calibration_text=None) -> None:
    hqq_quantize_(model, bits, group_size, filter_fn=skip_lm_head)


def _asinq(model, *, bits, group_size, calibration_text=None) -> None:
    """A-SINQ on --calibration-text (without one: the end of the eval text, with a leak warning)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)
    if calibration_text is None or isinstance(calibration_text, torch.Tensor):  # no text, or token ids already
        source = calibration_text
    else:
        source = tokenizer(calibration_text, return_tensors="pt").input_ids[0]
    tokens = calibration_tokens(tokenizer, source, n_samples=8, seq_len=256)
    asinq_quantize_(model, tokens, SINQConfig(bits=bits, group_size=group_size), batch_size=8)


def _mixed_precision(average_bits: float) -> Quantizer:
    """Calibration-free bit allocation at the memory of ``average_bits`` code bits per weight (see IMPLIED_BITS)."""

    def quantize(model, *, bits, group_size, calibration_text=None) -> None:
        plan = plan_mixed_precision(model, average_bits, SINQConfig(group_size=group_size), filter_fn=skip_lm_head)
        quantize_(model, plan.config, filter_fn=None)

    return quantize


QUANTIZERS: dict[str, Quantizer] = {
    "bf16": _unquantized,
    "rtn": _sinq_config_method(method="rtn"),
    "hqq": _hqq,
    "sinq": _sinq_config_method(method="sinq"),
    "sinq-nf4": _sinq_config_method(scheme="nf"),
    "sinq-nf3": _sinq_config_method(scheme="nf"),
    "sinq-2d": _sinq_config_method(tiling="2D"),
    "sinq-hqqzero": _sinq_config_method(hqq_steps=20),
    "asinq": _asinq,
    "sinq-mp3.5": _mixed_precision(3.5),
    "sinq-mp3.25": _mixed_precision(3.25),
}
UNQUANTIZED = {"bf16"}  # methods whose rows take no bits / group size
IMPLIED_BITS = {"sinq-nf4": 4, "sinq-nf3": 3, "sinq-mp3.5": 3.5, "sinq-mp3.25": 3.25}  # rows ignore --bits


def bits_per_weight(model) -> float | None:
    """Stored bits per weight of the SINQ-quantized linears: codes, scales, zero-points and column scales."""
    weights = [m.weight for m in model.modules() if isinstance(getattr(m, "weight", None), SINQTensor)]
    if not weights:
        return None
    held = sum(w.stored_bytes() for w in weights)
    return round(8 * held / sum(w.numel() for w in weights), 4)


def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in ("model", "method", "bits", "group_size", "seq_len", "max_windows", "device"))


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())["rows"]
    except (json.JSONDecodeError, KeyError) as error:
        raise ValueError(f"{path} is not a results file written by this script ({error}); move it away") from error


def save_rows(path: Path, rows: list[dict]) -> None:
    """Write the JSON next to ``path`` under a temporary name, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        json.dump({"rows": rows}, file, indent=1)
    os.replace(file.name, path)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def tokens_file(folder: Path, model_name: str) -> Path:
    return folder / f"{Path(model_name).name}.tokens.pt"


def save_tokens(args, text: str, calibration: str | None) -> None:
    """Tokenize the eval (and calibration) text with each model's tokenizer into ``--save-tokens``; no model loads."""
    from transformers import AutoTokenizer

    from sinq_ao.evaluate import token_ids

    for model_name in args.models:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(model_name))
        record = {"model": model_name, "eval": token_ids(tokenizer, text),
                  "calibration": None if calibration is None else token_ids(tokenizer, calibration),
                  "tokenizer": type(tokenizer).__name__}  # fmt: skip
        path = tokens_file(args.save_tokens, model_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
            torch.save(record, file)
        os.replace(file.name, path)
        print(f"[quality] {model_name}: {record['eval'].numel()} eval tokens -> {path}", flush=True)


def load_tokens(folder: Path, model_name: str) -> dict:
    path = tokens_file(folder, model_name)
    if not path.is_file():
        raise FileNotFoundError(f"no token ids for {model_name} at {path}; write them with --save-tokens")
    record = torch.load(path, weights_only=True)
    if record.get("model") != model_name:
        raise ValueError(f"{path} holds the tokens of {record.get('model')!r}, not {model_name!r}")
    return record


def run_row(model_name: str, method: str, bits, group_size, args, text, calibration) -> dict:
    """One table row; ``text`` and ``calibration`` are strings or token ids (``--tokens``)."""
    model, tokenizer = load_model(model_name, dtype=getattr(torch, args.dtype), device=args.device)
    _sync(args.device)
    start = time.perf_counter()
    QUANTIZERS[method](model, bits=bits, group_size=group_size, calibration_text=calibration)
    _sync(args.device)
    quantize_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ids = token_ids(tokenizer, text)  # tokenized once, for the perplexity and the window count
    ppl = perplexity(model, tokenizer, ids, seq_len=args.seq_len, max_windows=args.max_windows)
    windows = min(ids.numel() // args.seq_len, args.max_windows or 10**9)
    return {
        "model": model_name, "method": method, "bits": bits, "group_size": group_size, "seq_len": args.seq_len,
        "max_windows": args.max_windows, "device": args.device, "windows": windows, "perplexity": ppl,
        "quantize_seconds": round(quantize_seconds, 3), "eval_seconds": round(time.perf_counter() - start, 1),
        "bits_per_weight": bits_per_weight(model),
        "dtype": args.dtype, "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "command": "python " + shlex.join(sys.argv),
    }  # fmt: skip


def planned_rows(args) -> list[tuple]:
    rows = []
    for model_name in args.models:
        for method in args.methods:
            if method in UNQUANTIZED:
                rows.append((model_name, method, None, None))
            else:
                bits = [IMPLIED_BITS[method]] if method in IMPLIED_BITS else args.bits
                rows += [(model_name, method, b, g) for b in bits for g in args.group_sizes]
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table; Δ is the perplexity change against the same model's unquantized row, when present."""
    reference = {(r["model"], r["seq_len"], r["max_windows"], r["device"]): r["perplexity"]
                 for r in rows if r["method"] in UNQUANTIZED}  # fmt: skip
    lines = ["| model | method | bits | group | windows | perplexity | Δ vs bf16 | quantize s |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        base = reference.get((r["model"], r["seq_len"], r["max_windows"], r["device"]))
        delta = f"{r['perplexity'] - base:+.3f}" if base is not None and r["method"] not in UNQUANTIZED else ""
        lines.append(f"| {Path(r['model']).name} | {r['method']} | {r['bits'] or '-'} | {r['group_size'] or '-'} | "
                     f"{r['windows']}×{r['seq_len']} | {r['perplexity']:.3f} | {delta} | {r['quantize_seconds']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="WikiText-2 perplexity of models quantized with each method (lm_head kept in high precision). "
        "Rows are cached in --out; a rerun resumes.",
    )
    parser.add_argument("--models", nargs="+", default=[DEFAULT_MODEL],
                        help="built-in names (smollm2-135m, gemma3-270m), local .gguf files or HF folders")
    parser.add_argument("--methods", nargs="+", default=list(QUANTIZERS), choices=list(QUANTIZERS))
    parser.add_argument("--bits", nargs="+", type=int, default=[3, 4])
    parser.add_argument("--group-sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="dtype the model is loaded and evaluated in")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per evaluation window")
    parser.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows (a slice)")
    parser.add_argument("--eval-text", default=None,
                        help="evaluation text file (default: the shared WikiText-2 copy, else `datasets`)")
    parser.add_argument("--calibration-text", default=None,
                        help="text file handed to methods that calibrate (none of the default ones do)")
    parser.add_argument("--save-tokens", type=Path, default=None, metavar="DIR",
                        help="write each model's token ids of the eval/calibration text to DIR, then exit")
    parser.add_argument("--tokens", type=Path, default=None, metavar="DIR",
                        help="evaluate (and calibrate) on the token ids in DIR instead of tokenizing")
    parser.add_argument("--out", type=Path, default=Path("results/quality.json"), help="results JSON (resumed)")
    args = parser.parse_args(argv)
    if args.save_tokens and args.tokens:
        parser.error("--save-tokens writes token ids and exits; --tokens reads them: give one of the two")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    text = None if args.tokens else load_eval_text(args.eval_text)
    calibration = Path(args.calibration_text).read_text(encoding="utf-8") if args.calibration_text else None
    if args.save_tokens:
        save_tokens(args, text, calibration)
        return
    rows = load_rows(args.out)
    done = {row_key(r): r for r in rows}
    records = {}  # --tokens: each model's token file, read once
    wanted = []
    for model_name, method, bits, group_size in planned_rows(args):
        key = (model_name, method, bits, group_size, args.seq_len, args.max_windows, args.device)
        if key not in done:
            label = f"{model_name} {method}" + (f" {bits}-bit g{group_size}" if bits else "")
            print(f"[quality] {label} ...", flush=True)
            if args.tokens:
                if model_name not in records:
                    records[model_name] = load_tokens(args.tokens, model_name)
                text, calibration = records[model_name]["eval"], records[model_name]["calibration"]
            done[key] = run_row(model_name, method, bits, group_size, args, text, calibration)
            rows.append(done[key])
            save_rows(args.out, rows)
            print(f"[quality] {label}: perplexity {done[key]['perplexity']:.3f} "
                  f"(quantized in {done[key]['quantize_seconds']:.2f} s)", flush=True)  # fmt: skip
        wanted.append(done[key])
    print(format_table(wanted))


if __name__ == "__main__":
    main()
