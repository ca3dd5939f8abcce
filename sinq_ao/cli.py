"""The ``sinq-ao`` command: quantize a checkpoint (streaming), evaluate perplexity, generate text.

Examples (SRC and MODEL: an HF folder, a .gguf file, a built-in name or a Hub id):

    sinq-ao quantize SRC DST --bits 4 --group-size 64
    sinq-ao eval DST --max-windows 8
    sinq-ao generate DST "The capital of France is"
    sinq-ao generate DST "The capital of France is" --device cuda --graphed --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import sys

import torch

from .config import SINQConfig
from .evaluate import load_eval_text, perplexity
from .hf import verify_checkpoint
from .models import load_model, resolve_model
from .quantize import METHODS, SCHEMES, TILINGS
from .sinkhorn import SINKHORN_STEPS
from .streaming import quantize_checkpoint

__all__ = ["build_parser", "main"]

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _quantize(args: argparse.Namespace) -> None:
    config = SINQConfig(bits=args.bits, group_size=args.group_size, tiling=args.tiling, method=args.method,
                        scheme=args.scheme, steps=args.steps, hqq_steps=args.hqq_steps)  # fmt: skip
    dst = quantize_checkpoint(
        resolve_model(args.src),
        args.dst,
        config,
        device=args.device,
        dtype=DTYPES.get(args.dtype),
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
    )
    print(f"wrote {dst} ({config})")


def _load(args: argparse.Namespace):
    """(model, tokenizer) for MODEL, its checkpoint checked first so a damaged shard is named."""
    path = resolve_model(args.model)
    verify_checkpoint(path)
    return load_model(str(path), dtype=DTYPES[args.dtype], device=args.device)


def _eval(args: argparse.Namespace) -> None:
    model, tokenizer = _load(args)
    text = load_eval_text(args.text)
    value = perplexity(model, tokenizer, text, seq_len=args.seq_len, max_windows=args.max_windows)
    windows = "all windows" if args.max_windows is None else f"at most {args.max_windows} windows"
    print(f"perplexity {value:.4f}  ({args.model}, seq_len {args.seq_len}, {windows}, {args.text or 'WikiText-2'})")


def _through_first_eos(tokens: torch.Tensor, prompt_length: int, eos: int | list[int] | None) -> torch.Tensor:
    """Row 0 of ``tokens`` up to and including the first end-of-sequence token after the prompt (all of it if
    none), as transformers' generate stops; GraphedDecoder always decodes the full count."""
    row = tokens[0]
    ends = [eos] if isinstance(eos, int) else list(eos or [])
    if ends:
        hits = torch.isin(row[prompt_length:], torch.tensor(ends, device=row.device)).nonzero()
        if len(hits):
            row = row[: prompt_length + int(hits[0]) + 1]
    return row


@torch.no_grad()
def _generate(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.graphed and torch.device(args.device).type != "cuda":
        raise ValueError(f"--graphed replays CUDA graphs and needs a CUDA --device, got {args.device!r}")
    model, tokenizer = _load(args)
    inputs = tokenizer(args.prompt, return_tensors="pt").to(args.device)
    if args.graphed:
        from .decode import GraphedDecoder

        prompt = inputs["input_ids"]
        decoder = GraphedDecoder(model, max_cache_len=prompt.shape[1] + args.max_new_tokens)
        tokens = decoder.generate(prompt, args.max_new_tokens)
        output = _through_first_eos(tokens, prompt.shape[1], model.generation_config.eos_token_id)
    else:
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)[0]
    print(tokenizer.decode(output, skip_special_tokens=True))


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="a (quantized or not) HF folder, a .gguf file, a built-in name or a Hub id")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="where the model runs, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                        help="dtype of the unquantized parts (default: bfloat16)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sinq-ao`` (``sinq-ao COMMAND --help`` explains each command)."""
    root = argparse.ArgumentParser(
        prog="sinq-ao",
        description="SINQ (Sinkhorn-Normalized Quantization) for Hugging Face models, as a torchao workflow.",
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    quantize = commands.add_parser(
        "quantize",
        help="quantize a checkpoint into a new SINQ checkpoint folder, one tensor at a time",
        description="Quantize every nn.Linear weight except lm_head, reading SRC tensor by tensor and writing "
        "DST shard by shard, so memory stays around one shard whatever the model size. DST is written under a "
        "temporary name beside it and renamed at the end. Load the result with "
        "`import sinq_ao; AutoModelForCausalLM.from_pretrained(DST)`.",
    )
    quantize.add_argument("src", metavar="SRC", help="HF safetensors folder, .gguf file, built-in name or Hub id")
    quantize.add_argument("dst", metavar="DST", help="output folder (must not exist unless --overwrite)")
    quantize.add_argument("--bits", type=int, default=4, help="code width, 1..8 (default: 4)")
    quantize.add_argument("--group-size", type=int, default=64,
                          help="weights per scale/zero-point group, a multiple of 32 (default: 64)")  # fmt: skip
    quantize.add_argument("--method", choices=METHODS, default="sinq",
                          help="sinq = Sinkhorn-normalised; rtn = plain round-to-nearest (default: sinq)")  # fmt: skip
    quantize.add_argument(
        "--scheme",
        choices=SCHEMES,
        default="asymmetric",
        help="code levels: asymmetric, symmetric, or nf (NF4/NF3 codebook) (default: asymmetric)",
    )
    quantize.add_argument(
        "--tiling",
        choices=TILINGS,
        default="1D",
        help="1D: tiles of all rows x group_size columns; 2D: square tiles (default: 1D)",
    )
    quantize.add_argument("--steps", type=int, default=SINKHORN_STEPS,
                          help=f"Sinkhorn iterations (default: {SINKHORN_STEPS})")  # fmt: skip
    quantize.add_argument(
        "--hqq-steps",
        type=int,
        default=0,
        help="HQQ-style zero-point refinement steps after normalisation, 0 = off (default: 0)",
    )
    quantize.add_argument("--device", default="cpu",
                          help="where the quantization math runs, e.g. cuda (default: cpu)")  # fmt: skip
    quantize.add_argument("--dtype", choices=DTYPES,
                          help="cast floating-point tensors first (default: keep the checkpoint's dtype)")  # fmt: skip
    quantize.add_argument("--max-shard-size", default="5GB",
                          help="largest output shard, e.g. 500MB or 5GB (default: 5GB)")  # fmt: skip
    quantize.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    quantize.set_defaults(run=_quantize)

    evaluate = commands.add_parser(
        "eval",
        help="perplexity of a model on WikiText-2 or a text file",
        description="Perplexity over non-overlapping windows of SEQ_LEN tokens (the SINQ paper's protocol).",
    )
    _add_model_options(evaluate)
    evaluate.add_argument("--text", metavar="FILE",
                          help="text file to evaluate on (default: the WikiText-2 test split)")  # fmt: skip
    evaluate.add_argument("--seq-len", type=int, default=2048, help="tokens per window (default: 2048)")
    evaluate.add_argument("--max-windows", type=int, help="evaluate only the first N windows (default: all)")
    evaluate.set_defaults(run=_eval)

    generate = commands.add_parser("generate", help="greedy text generation from a prompt",
                                   description="Greedy decoding of PROMPT with MODEL.")  # fmt: skip
    _add_model_options(generate)
    generate.add_argument("prompt", metavar="PROMPT", help="the text to continue")
    generate.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default: 64)")
    generate.add_argument(
        "--graphed",
        action="store_true",
        help="decode with sinq_ao.GraphedDecoder: each step one CUDA-graph replay of the compiled model (CUDA "
        "only; compiling first takes a while, so it pays off on long outputs)",
    )
    generate.set_defaults(run=_generate)
    return root


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``sinq-ao`` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileExistsError, FileNotFoundError, ValueError) as error:  # CheckpointError is a ValueError
        print(f"sinq-ao {args.command}: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
