"""Saving, checking and loading SINQ checkpoints in the Hugging Face format (sharded safetensors).

A checkpoint is what ``transformers`` writes for a torchao-quantized model: ``config.json`` with a
``TorchAoConfig`` (``quant_type`` = the ``SINQConfig``), and safetensors shards holding, for each quantized
weight ``<module>.weight``, its inner tensors ``<module>._weight_qdata`` / ``_weight_scale`` / ... and a JSON
header entry ``<module>.weight`` with the ``SINQTensor`` attributes (see :mod:`sinq_ao.serialization`).
``AutoModelForCausalLM.from_pretrained(path)`` loads it once ``sinq_ao`` is imported.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torchao.core.config import AOBaseConfig
from torchao.prototype.safetensors.safetensors_utils import object_from_dict
from torchao.utils import TorchAOBaseTensor
from transformers import AutoModelForCausalLM, TorchAoConfig
from transformers.quantizers.quantizer_torchao import TorchAoHfQuantizer

__all__ = [
    "SAFE_INDEX",
    "SAFE_WEIGHTS",
    "CheckpointError",
    "atomic_directory",
    "checkpoint_files",
    "load_pretrained",
    "locate_tensors",
    "open_safetensors",
    "save_pretrained",
    "torchao_config",
    "unquantized_linears",
    "verify_checkpoint",
]

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be read as it is: truncated, corrupt or incomplete."""


@contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` that becomes ``path`` only if the block succeeds.

    On an exception the temporary folder is removed and ``path`` is untouched. An existing ``path`` is
    refused unless ``overwrite``; then it is replaced only after the new folder is complete.
    """
    path = Path(path)
    if path.exists() and not (overwrite and path.is_dir()):
        what = "a file" if not path.is_dir() else "already there"
        raise FileExistsError(f"{path} is {what}; choose another destination or pass overwrite=True (--overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
        if path.exists():
            retired = path.parent / f".{path.name}.old-{secrets.token_hex(4)}"
            os.replace(path, retired)
            os.replace(staging, path)
            shutil.rmtree(retired)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def unquantized_linears(model: torch.nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules whose weight is still a plain tensor (e.g. ``["lm_head"]``)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not isinstance(module.weight, TorchAOBaseTensor)
    ]


def torchao_config(config: AOBaseConfig, modules_to_not_convert: list[str]) -> TorchAoConfig:
    """The ``quantization_config`` that goes into ``config.json``."""
    return TorchAoConfig(config, modules_to_not_convert=modules_to_not_convert or None)


def save_pretrained(
    model: torch.nn.Module,
    save_directory: str | os.PathLike,
    config: AOBaseConfig | None = None,
    *,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Save a model quantized in memory (``quantize_(model, SINQConfig(...))``) as a loadable checkpoint.

    ``config``: what ``quantize_`` was given (a ``SINQConfig``, an ``FqnToConfig``, ...); it is recorded in
    ``config.json``. It may be left out for a model loaded with ``quantization_config=TorchAoConfig(...)``.
    The model is marked as quantized the way ``from_pretrained`` marks it (``model.config.quantization_config``
    and ``model.hf_quantizer``), so a later ``model.save_pretrained(...)`` works too. The folder is written
    beside ``save_directory`` and renamed into place at the end (see :func:`atomic_directory`).
    """
    if config is None:
        recorded = getattr(model.config, "quantization_config", None)
        if not isinstance(recorded, TorchAoConfig):
            raise ValueError(
                "save_pretrained needs the config the model was quantized with, e.g. "
                "save_pretrained(model, path, SINQConfig(bits=4)); the model records none"
            )
        config = recorded.quant_type
    quantization_config = torchao_config(config, unquantized_linears(model))
    model.config.quantization_config = quantization_config
    model.hf_quantizer = TorchAoHfQuantizer(quantization_config, pre_quantized=True)
    with atomic_directory(save_directory, overwrite=overwrite) as staging:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
    return Path(save_directory)


def checkpoint_files(path: str | os.PathLike) -> dict[str, Path]:
    """Tensor name -> safetensors file, from ``model.safetensors.index.json`` or the single ``model.safetensors``."""
    path = Path(path)
    index = path / SAFE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index}: not a safetensors index ({error})") from error
        return {name: path / file for name, file in weight_map.items()}
    single = path / SAFE_WEIGHTS
    if not single.is_file():
        raise CheckpointError(f"{path}: no {SAFE_WEIGHTS} or {SAFE_INDEX}; is it a Hugging Face checkpoint folder?")
    with open_safetensors(single) as reader:
        return dict.fromkeys(reader.keys(), single)


@contextmanager
def open_safetensors(file: Path):
    """``safe_open(file)``, with the error naming the file when it is missing, truncated or corrupt."""
    if not file.is_file():
        raise CheckpointError(f"{file}: the file is missing (the checkpoint index names it)")
    try:
        reader = safe_open(str(file), framework="pt")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{file}: cannot read it as safetensors, it is truncated or corrupt ({error})") from error
    with reader:
        yield reader


def locate_tensors(path: str | os.PathLike) -> tuple[dict[str, Path], dict[str, str]]:
    """Read every shard header of a checkpoint folder: (tensor name -> file, merged header metadata).

    Raises :class:`CheckpointError` naming the file for a missing, truncated or corrupt shard, and for a
    tensor the index lists but its shard lacks.
    """
    files = checkpoint_files(path)
    located, metadata = {}, {}
    for file in sorted(set(files.values())):
        with open_safetensors(file) as reader:
            keys = set(reader.keys())
            metadata.update(reader.metadata() or {})
        located.update(dict.fromkeys(keys, file))
        absent = sorted(name for name, where in files.items() if where == file and name not in keys)
        if absent:
            raise CheckpointError(
                f"{file}: tensor {absent[0]!r} is listed in the checkpoint index but missing from the file"
            )
    return located, metadata


def _meta_like(file: Path, name: str) -> torch.Tensor:
    """A meta tensor with the shape and dtype stored for ``name`` in ``file`` (its data is not read)."""
    with open_safetensors(file) as reader:
        view = reader.get_slice(name)
        return torch.empty(view.get_shape(), dtype=view[0:0].dtype, device="meta")  # an empty slice reads no data


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Check a checkpoint folder before loading it: raise :class:`CheckpointError` naming the file and tensor.

    Catches: missing, truncated or corrupt shards; tensors the index lists but a shard lacks; quantized
    tensors with a missing inner tensor or attributes this ``sinq_ao`` cannot read (e.g. an unknown
    ``layout_version``) — each quantized tensor is rebuilt on the meta device, so no weight data is read.
    """
    path = Path(path)
    located, metadata = locate_tensors(path)
    if "tensor_names" not in metadata:
        return  # not a torchao checkpoint: its tensors are plain
    for name in json.loads(metadata["tensor_names"]):
        entry = json.loads(metadata[name])
        if entry["_type"] == "Tensor":
            if name not in located:
                raise CheckpointError(f"{path}: tensor {name!r} is missing from every shard")
            continue
        module, attribute = name.rsplit(".", 1)
        inner = {data: f"{module}._{attribute}_{data}" for data in entry["_tensor_data_names"]}
        found = [located[key] for key in inner.values() if key in located]
        where = found[0] if found else path
        for key in inner.values():
            if key not in located:
                raise CheckpointError(f"{where}: quantized tensor {name!r} lacks its inner tensor {key!r}")
        entry["_data"].update({data: _meta_like(located[key], key) for data, key in inner.items()})
        try:
            object_from_dict(entry)
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"{where}: quantized tensor {name!r} cannot be rebuilt: {error}") from error


def load_pretrained(path: str | os.PathLike, **from_pretrained_kwargs) -> torch.nn.Module:
    """:func:`verify_checkpoint`, then ``AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs)``."""
    verify_checkpoint(path)
    return AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs)
