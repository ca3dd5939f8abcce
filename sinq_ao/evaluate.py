"""Perplexity the way the SINQ paper (and GPTQ, AWQ) measure it on WikiText-2.

Protocol: the raw test split joined with "\\n\\n", tokenized once, cut into non-overlapping windows of
``seq_len`` tokens (a last, partial window is dropped), mean next-token NLL over all windows, ``exp`` of it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["SHARED_WIKITEXT", "load_eval_text", "perplexity", "token_ids", "wikitext_rows"]

# The offline copy shared next to the project checkout (see its README); never copied into the project.
SHARED_WIKITEXT = Path(__file__).resolve().parents[1].parent / "shared" / "eval-data" / "wikitext-2-raw-v1.test.raw"


def wikitext_rows(raw: str) -> list[str]:
    """The rows of HF ``wikitext-2-raw-v1`` from the original ``wiki.test.raw`` layout (one row per line)."""
    lines = raw.split("\n")[:-1]
    return [line + "\n" if line.strip() else "" for line in lines]


def load_eval_text(path: str | None = None) -> str:
    """The evaluation string: WikiText-2 raw test rows joined with "\\n\\n".

    ``path``: a ``*.raw`` file in the original WikiText layout (rows rebuilt as :func:`wikitext_rows` does)
    or any other text file (read as-is). Without a path: the shared offline copy when present, else
    ``datasets`` (wikitext-2-raw-v1, test) when installed and online.
    """
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"evaluation text file {file} does not exist")
        text = file.read_text(encoding="utf-8")
        return "\n\n".join(wikitext_rows(text)) if file.suffix == ".raw" else text
    if SHARED_WIKITEXT.is_file():
        return load_eval_text(str(SHARED_WIKITEXT))
    try:
        from datasets import load_dataset

        return "\n\n".join(load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])
    except Exception as error:  # not installed, or offline: both leave the user the same choice
        raise FileNotFoundError(
            f"no evaluation text: {SHARED_WIKITEXT} is missing and `datasets` could not load "
            f"wikitext-2-raw-v1 ({type(error).__name__}: {error}); pass the path of a text file instead"
        ) from error


def token_ids(tokenizer, text: str | torch.Tensor) -> torch.Tensor:
    """The 1-D token ids of ``text`` (tokenized once, BOS as the tokenizer adds it), or ``text`` itself when it
    already is a 1-D integer tensor of ids."""
    if isinstance(text, torch.Tensor):
        if text.ndim != 1 or text.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"token ids must be a 1-D integer tensor, got {text.dtype} of shape {tuple(text.shape)}")
        return text.long()
    return tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]


@torch.no_grad()
def perplexity(model, tokenizer, text: str | torch.Tensor, *, seq_len: int = 2048, max_windows: int | None = None,
               progress: bool = True) -> float:  # fmt: skip
    """exp(mean next-token NLL) of ``model`` over non-overlapping ``seq_len``-token windows of ``text``.

    The text is tokenized once (with BOS when the tokenizer adds one); ``text`` may instead be the token ids
    already (a 1-D integer tensor, e.g. tokenized on another machine; ``tokenizer`` is then unused).
    ``max_windows`` evaluates only the first windows (a slice). Runs on the model's device, quantized or not;
    the loss is computed in fp32.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len={seq_len!r} must be an integer >= 2")
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int)
                                    or max_windows < 1):  # fmt: skip
        raise ValueError(f"max_windows={max_windows!r} must be a positive integer or None")
    ids = token_ids(tokenizer, text)
    windows = ids.numel() // seq_len
    if windows == 0:
        raise ValueError(f"the text is {ids.numel()} tokens long, shorter than one window (seq_len={seq_len})")
    if max_windows is not None:
        windows = min(windows, max_windows)
    device = next(model.parameters()).device
    nll_sum = 0.0
    bar = tqdm(range(windows), desc="perplexity", unit="window", disable=not progress, leave=False)
    for index in bar:
        window = ids[index * seq_len : (index + 1) * seq_len].to(device).unsqueeze(0)
        logits = model(window, use_cache=False).logits[0, :-1]
        nll = F.cross_entropy(logits.float(), window[0, 1:]).item()
        if not math.isfinite(nll):
            raise ValueError(f"window {index} (tokens {index * seq_len}..{(index + 1) * seq_len}) gave a "
                             f"non-finite loss ({nll}); the model's outputs are broken")  # fmt: skip
        nll_sum += nll
        bar.set_postfix(ppl=f"{math.exp(nll_sum / (index + 1)):.3f}")
    return math.exp(nll_sum / windows)
