"""The streaming quantizer: same checkpoint as the in-memory path, bounded memory, nothing half-written."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torchao.quantization import quantize_
from transformers import AutoModelForCausalLM

from sinq_ao import SINQConfig, SINQTensor, skip_lm_head
from sinq_ao.hf import CheckpointError, save_pretrained
from sinq_ao.streaming import quantize_checkpoint
from tests.test_hf import assert_same_quantized_state, logits, save_source, shard_files, tiny_llama


@pytest.mark.parametrize("tie", [False, True], ids=["separate-head", "tied-head"])
def test_streamed_checkpoint_loads_exactly_like_an_in_memory_save(tmp_path, tie):
    source = save_source(tmp_path / "src", tiny_llama(tie=tie, dtype=torch.bfloat16), max_shard_size="60KB")
    config = SINQConfig(bits=3)
    quantize_checkpoint(source, tmp_path / "streamed", config, max_shard_size="40KB", progress=False)
    in_memory = AutoModelForCausalLM.from_pretrained(source)
    quantize_(in_memory, config, filter_fn=skip_lm_head)
    save_pretrained(in_memory, tmp_path / "saved", config, max_shard_size="40KB")

    streamed, saved = (AutoModelForCausalLM.from_pretrained(tmp_path / name) for name in ("streamed", "saved"))
    assert_same_quantized_state(streamed, saved)
    assert torch.equal(logits(streamed), logits(saved))
    assert json.loads((tmp_path / "streamed" / "config.json").read_text()) == json.loads(
        (tmp_path / "saved" / "config.json").read_text()
    )
    assert len(shard_files(tmp_path / "streamed")) > 1


def test_dtype_casts_the_source_before_quantizing(tmp_path):
    source = save_source(tmp_path / "src", tiny_llama(dtype=torch.float32))
    quantize_checkpoint(source, tmp_path / "streamed", dtype=torch.bfloat16, progress=False)
    in_memory = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    quantize_(in_memory, SINQConfig(), filter_fn=skip_lm_head)
    streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed")
    assert streamed.dtype == torch.bfloat16
    assert_same_quantized_state(streamed, in_memory)
    assert torch.equal(logits(streamed), logits(in_memory))


def test_tokenizer_and_generation_config_are_copied(tmp_path):
    source = save_source(tmp_path / "src", tiny_llama())
    quantize_checkpoint(source, tmp_path / "q", progress=False)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "q" / name).read_bytes() == (source / name).read_bytes()


# Runs in a fresh interpreter: a first small run loads every module, then the peak resident memory is reset and
# read back (Linux /proc) around the streaming run, and around loading the whole source as a control.
PEAK_SCRIPT = textwrap.dedent("""
    import json, pathlib, sys
    import torch
    from safetensors.torch import load_file
    from sinq_ao import SINQConfig
    from sinq_ao.streaming import quantize_checkpoint

    def peak_growth(work):
        open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
        fields = lambda: {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open("/proc/self/status") if "kB" in l}
        start = fields()["VmRSS"]
        result = work()
        return fields()["VmHWM"] - start, result

    torch.set_num_threads(1)
    src, warmup, dst = map(pathlib.Path, sys.argv[1:4])
    config = SINQConfig(method="rtn")  # same reading, packing and writing as "sinq", minus the Sinkhorn compute time
    quantize_checkpoint(warmup, dst.with_name("warm"), config, progress=False)
    streaming, _ = peak_growth(lambda: quantize_checkpoint(src, dst, config, max_shard_size="256KB", progress=False))
    whole, _ = peak_growth(lambda: [{k: v.clone() for k, v in load_file(str(f)).items()} for f in src.glob("*.safetensors")])
    print(json.dumps({"streaming": streaming, "whole_model": whole}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads and resets the peak RSS through /proc")
def test_peak_memory_stays_near_one_shard_not_the_model(tmp_path):
    model = tiny_llama(layers=60, hidden=128, intermediate=256)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    source = save_source(tmp_path / "src", model, max_shard_size="1MB")
    warmup = save_source(tmp_path / "warmup", tiny_llama(layers=1))
    # Blocks of 64 KiB and more are mmap'ed and returned on free, so the resident size follows the live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(source), str(warmup), str(tmp_path / "q")],
                            capture_output=True, text=True, check=True, env=env, cwd=Path(__file__).parents[1])  # fmt: skip
    growth = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"\nsource {model_bytes / 2**20:.1f} MiB in 1 MB shards, output in 256 KB shards; peak RSS growth: "
        f"streaming {growth['streaming'] / 2**20:.1f} MiB, loading the whole source {growth['whole_model'] / 2**20:.1f} MiB"
    )
    assert growth["whole_model"] > 0.8 * model_bytes  # the meter sees tensors being held
    assert growth["streaming"] < model_bytes / 4


def test_truncated_source_shard_is_named_and_destination_kept(tmp_path):
    source = save_source(tmp_path / "src", tiny_llama(), max_shard_size="60KB")
    shard = shard_files(source)[-1]
    shard.write_bytes(shard.read_bytes()[:-64])
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "keep.txt").write_text("previous result")
    with pytest.raises(CheckpointError, match=rf"{shard.name}: cannot read it as safetensors, it is truncated"):
        quantize_checkpoint(source, tmp_path / "q", overwrite=True, progress=False)
    assert [p.name for p in (tmp_path / "q").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q", "src"]  # no temporary folder left behind


def edited_source(folder, edit):
    """A tiny Llama checkpoint in ``folder`` whose tensors went through ``edit(tensors)`` before saving."""
    source = save_source(folder, tiny_llama())
    tensors = load_file(str(source / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(source / "model.safetensors"), metadata={"format": "pt"})
    return source


def test_missing_source_tensor_is_named(tmp_path):
    source = edited_source(tmp_path / "src", lambda tensors: tensors.pop("model.layers.1.mlp.gate_proj.weight"))
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.1.mlp.gate_proj.weight' of LlamaForCausalLM "
                       r"is missing from the checkpoint"):  # fmt: skip
        quantize_checkpoint(source, tmp_path / "q", progress=False)
    assert not (tmp_path / "q").exists()


def test_non_finite_weight_is_named_with_file_and_tensor(tmp_path):
    def put_inf(tensors):
        tensors["model.layers.0.self_attn.v_proj.weight"][3, 5] = float("inf")

    source = edited_source(tmp_path / "src", put_inf)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'model.layers.0.self_attn.v_proj.weight' "
                       r"cannot be quantized: .*NaN/Inf"):  # fmt: skip
        quantize_checkpoint(source, tmp_path / "q", progress=False)
    assert not (tmp_path / "q").exists()


def test_quantized_source_is_refused(tmp_path):
    source = save_source(tmp_path / "src", tiny_llama())
    quantize_checkpoint(source, tmp_path / "q", progress=False)
    with pytest.raises(ValueError, match="is already quantized"):
        quantize_checkpoint(tmp_path / "q", tmp_path / "qq", progress=False)


def test_existing_destination_is_replaced_only_with_overwrite(tmp_path):
    source = save_source(tmp_path / "src", tiny_llama())
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        quantize_checkpoint(source, tmp_path / "q", progress=False)
    quantize_checkpoint(source, tmp_path / "q", overwrite=True, progress=False)
    assert not (tmp_path / "q" / "old.txt").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert isinstance(model.model.layers[0].mlp.up_proj.weight, SINQTensor)
