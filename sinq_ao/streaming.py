"""Streaming quantizer: a Hugging Face safetensors checkpoint in, a SINQ checkpoint out, never the whole model.

The source is read tensor by tensor (``safe_open``); each ``nn.Linear`` weight is quantized on the chosen
device as soon as it is read, and output shards are written as they fill. Peak memory is about one source
shard (memory-mapped while it is read) plus one output shard plus one weight's quantization temporaries,
whatever the model size. Which tensors are linear weights comes from the model built on the meta device from
``config.json``, so embeddings, norms and (with the default filter) ``lm_head`` stay as they are, exactly as
``quantize_(model, config, filter_fn=skip_lm_head)`` leaves them. The result loads with ``from_pretrained``
like :func:`sinq_ao.hf.save_pretrained` of the model quantized in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torchao.core.config import AOBaseConfig
from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict
from torchao.quantization import quantize_
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils.hub import convert_file_size_to_int

from .config import SINQConfig, skip_lm_head
from .hf import (
    SAFE_INDEX,
    SAFE_WEIGHTS,
    CheckpointError,
    atomic_directory,
    locate_tensors,
    open_safetensors,
    torchao_config,
)

__all__ = ["quantize_checkpoint"]

# Files of a source folder that are not copied: weights and their indexes (the output has its own), config.json.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf", ".ckpt")
_NOT_COPIED = ("config.json", SAFE_INDEX, "pytorch_model.bin.index.json")


class _Plan(NamedTuple):
    """What a checkpoint of the model holds, from the model built on the meta device (no weights)."""

    architecture: str
    names: list[str]  # state-dict names a checkpoint holds, in model order; a tied weight once, under its first name
    quantized: set[str]  # the linear weights to quantize
    skipped: list[str]  # the nn.Linear modules left in high precision (for modules_to_not_convert)


def _plan(model_config, filter_fn: Callable[[torch.nn.Module, str], bool]) -> _Plan:
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config)
    seen, names = set(), []
    for name, tensor in skeleton.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            names.append(name)
    linears = [(fqn, module) for fqn, module in skeleton.named_modules() if isinstance(module, torch.nn.Linear)]
    quantized = {f"{fqn}.weight" for fqn, module in linears if filter_fn(module, fqn)}
    skipped = [fqn for fqn, _ in linears if f"{fqn}.weight" not in quantized]
    return _Plan(type(skeleton).__name__, names, quantized, skipped)


def _source_files(src: Path, plan: _Plan) -> dict[Path, list[str]]:
    """The tensors to read, grouped by source file; a tensor the model needs but the checkpoint lacks is an error."""
    located, _ = locate_tensors(src)
    missing = [name for name in plan.names if name not in located]
    if missing:
        raise CheckpointError(
            f"{src}: tensor {missing[0]!r} of {plan.architecture} is missing from the checkpoint "
            f"({len(missing)} missing in all). If the checkpoint names its tensors differently from the model "
            "(transformers renames some on load), quantize in memory instead: from_pretrained, quantize_, "
            "sinq_ao.hf.save_pretrained"
        )
    unused = sorted(set(located) - set(plan.names))
    if unused:
        warnings.warn(f"{src}: {len(unused)} tensors the model does not use are left out, e.g. {unused[0]!r}")
    by_file: dict[Path, list[str]] = {}
    for name in plan.names:
        by_file.setdefault(located[name], []).append(name)
    return dict(sorted(by_file.items()))


def _quantize_weight(weight: torch.Tensor, config: AOBaseConfig, device: str | torch.device) -> torch.Tensor:
    """The (N, K) ``weight`` quantized by ``config``'s own ``quantize_`` handler, returned on the CPU."""
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = torch.nn.Parameter(weight.to(device), requires_grad=False)
    quantize_(linear, config)
    return linear.weight.detach().to("cpu")


class _ShardWriter:
    """Writes tensors into numbered shards of at most ``max_bytes`` as they come; :meth:`finish` names them.

    A shard's header must carry the torchao metadata of every tensor of the checkpoint (that is what
    ``save_pretrained`` writes, and what transformers reads), which is only known at the end: so shards are
    first written as parts, then re-saved one at a time with the full metadata.
    """

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.parts: list[Path] = []
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.metadata: dict[str, str] = {}
        self.total_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Add the inner tensors of one weight (kept in one shard) and their header entries."""
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending.update(tensors)
        self.pending_bytes += size
        self.total_bytes += size
        self.metadata.update(metadata)

    def _flush(self) -> None:
        part = self.folder / f".part-{len(self.parts):05d}.safetensors"
        save_file(self.pending, str(part))
        self.parts.append(part)
        self.pending, self.pending_bytes = {}, 0

    def finish(self, tensor_names: list[str], total_parameters: int) -> None:
        """Write the final shards (``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` + index)."""
        if self.pending or not self.parts:
            self._flush()
        metadata = {**self.metadata, "tensor_names": json.dumps(tensor_names), "format": "pt"}
        count = len(self.parts)
        weight_map = {}
        for number, part in enumerate(self.parts, start=1):
            name = SAFE_WEIGHTS if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"
            tensors = load_file(str(part))
            save_file(tensors, str(self.folder / name), metadata=metadata)
            weight_map.update(dict.fromkeys(tensors, name))
            part.unlink()
        if count > 1:
            index = {"metadata": {"total_parameters": total_parameters, "total_size": self.total_bytes},
                     "weight_map": dict(sorted(weight_map.items()))}  # fmt: skip
            (self.folder / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def quantize_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    config: AOBaseConfig | None = None,
    *,
    filter_fn: Callable[[torch.nn.Module, str], bool] = skip_lm_head,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Quantize the checkpoint folder ``src`` into the new checkpoint folder ``dst``, one tensor at a time.

    Args:
        src: a Hugging Face model folder (``config.json`` + ``model.safetensors`` or shards and their index).
        dst: the output folder; written beside it under a temporary name and renamed at the end, so an
            interrupted run leaves no half-written ``dst``. An existing ``dst`` needs ``overwrite=True``.
        config: the quantization (default ``SINQConfig()``); applied by its ``quantize_`` handler.
        filter_fn: which ``nn.Linear`` modules to quantize, as for ``quantize_`` (default: all but ``lm_head``).
        device: where the quantization math runs ("cuda" for speed); tensors are read and written on the CPU.
        dtype: cast floating-point tensors to this dtype first (default: keep the stored dtype).
        max_shard_size: output shard size, bytes or a string like "5GB"; a weight's inner tensors stay together.
        progress: show a tqdm bar.

    Other files of ``src`` (tokenizer, generation config, ...) are copied. Raises :class:`CheckpointError`
    (naming the file and tensor) for an unreadable shard, a missing tensor or a weight that cannot be quantized.
    """
    src, config = Path(src), config or SINQConfig()
    model_config = AutoConfig.from_pretrained(src)
    if getattr(model_config, "quantization_config", None) is not None:
        raise ValueError(
            f"{src} is already quantized ({model_config.quantization_config}); quantize the original model"
        )
    plan = _plan(model_config, filter_fn)
    by_file = _source_files(src, plan)
    with atomic_directory(dst, overwrite=overwrite) as staging:
        writer = _ShardWriter(staging, convert_file_size_to_int(max_shard_size))
        total_parameters = 0
        bar = tqdm(total=len(plan.names), desc=f"Quantizing {src.name}", unit="tensor", disable=not progress)
        for file, names in by_file.items():
            with open_safetensors(file) as reader:
                for name in names:
                    try:
                        tensor = reader.get_tensor(name)
                    except (SafetensorError, OSError) as error:
                        raise CheckpointError(
                            f"{file}: cannot read tensor {name!r}, the file is corrupt ({error})"
                        ) from error
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    total_parameters += tensor.numel()
                    if name in plan.quantized:
                        try:
                            tensor = _quantize_weight(tensor, config, device)
                        except (ValueError, TypeError) as error:
                            raise CheckpointError(f"{file}: tensor {name!r} cannot be quantized: {error}") from error
                    tensors, header = flatten_tensor_state_dict({name: tensor})
                    del header["tensor_names"]  # the list of the whole checkpoint is written by finish()
                    writer.add(tensors, header)
                    bar.update()
        bar.close()
        writer.finish(plan.names, total_parameters)
        model_config.quantization_config = torchao_config(config, plan.skipped)
        if dtype is not None:
            model_config.dtype = dtype
        model_config.save_pretrained(staging)
        for extra in sorted(src.iterdir()):
            if extra.is_file() and not extra.name.endswith(_WEIGHT_SUFFIXES) and extra.name not in _NOT_COPIED:
                shutil.copy2(extra, staging / extra.name)
    return Path(dst)
