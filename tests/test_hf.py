"""Hugging Face save/load of SINQ models: round trips, on-the-fly quantization, damaged checkpoints.

The tiny models and tokenizer built here are shared by the other ecosystem tests (streaming, CLI, lm-eval).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torchao.quantization import quantize_
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TorchAoConfig

from sinq_ao import SINQConfig, SINQTensor, skip_lm_head
from sinq_ao.hf import CheckpointError, load_pretrained, save_pretrained, verify_checkpoint

TEXT = "the quick brown fox jumps over the lazy dog. a stitch in time saves nine. " * 4


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on one sentence (no Hub needed)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_llama(seed: int = 0, *, layers: int = 2, hidden: int = 64, intermediate: int = 128, tie: bool = False,
               dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:  # fmt: skip
    """A random Llama small enough for a test, with shapes that group_size 64 tiles."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=320, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=tie,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).to(dtype).eval()


def save_source(folder: Path, model: torch.nn.Module, max_shard_size: str = "5GB") -> Path:
    """A plain (unquantized) HF checkpoint folder with its tokenizer."""
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def quantized_state(model: torch.nn.Module) -> dict[str, object]:
    """Every SINQTensor parameter, flattened: inner tensors and attributes by name."""
    state = {}
    for name, param in model.named_parameters():
        if isinstance(param, SINQTensor):
            for inner in param.tensor_data_names:
                state[f"{name}:{inner}"] = getattr(param, inner)
            for attribute in param.tensor_attribute_names:
                state[f"{name}:{attribute}"] = getattr(param, attribute)
    return state


def assert_same_quantized_state(actual: torch.nn.Module, expected: torch.nn.Module) -> None:
    actual_state, expected_state = quantized_state(actual), quantized_state(expected)
    assert actual_state.keys() == expected_state.keys() and expected_state
    for key, value in expected_state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(actual_state[key], value), key
        else:
            assert actual_state[key] == value, key


def logits(model: torch.nn.Module) -> torch.Tensor:
    tokens = torch.randint(3, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(tokens).logits


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


@pytest.mark.parametrize(
    "config",
    [SINQConfig(bits=2), SINQConfig(bits=3, tiling="2D"), SINQConfig(bits=4), SINQConfig(bits=4, scheme="nf"),
     SINQConfig(bits=8), SINQConfig(bits=8, method="rtn", scheme="symmetric")],
    ids=["2bit", "3bit-2D", "4bit", "4bit-nf", "8bit", "8bit-rtn-symmetric"],
)  # fmt: skip
def test_save_then_load_gives_identical_logits_and_inner_tensors(tmp_path, config):
    model = tiny_llama()
    quantize_(model, config, filter_fn=skip_lm_head)
    save_pretrained(model, tmp_path / "q", config, max_shard_size="40KB")
    assert len(shard_files(tmp_path / "q")) > 1  # sharded
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert isinstance(reloaded.model.layers[0].self_attn.q_proj.weight, SINQTensor)
    assert not isinstance(reloaded.lm_head.weight, SINQTensor)
    assert_same_quantized_state(reloaded, model)
    assert torch.equal(logits(reloaded), logits(model))


def test_saved_config_records_the_sinq_config_and_the_unquantized_head(tmp_path):
    model = tiny_llama()
    config = SINQConfig(bits=3, group_size=32, hqq_steps=2)
    quantize_(model, config, filter_fn=skip_lm_head)
    save_pretrained(model, tmp_path / "q", config)
    saved = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert saved["modules_to_not_convert"] == ["lm_head"]
    assert TorchAoConfig.from_dict(saved).quant_type == config


def test_reloaded_model_compiles_fullgraph(tmp_path):
    model = tiny_llama()
    quantize_(model, SINQConfig(), filter_fn=skip_lm_head)
    save_pretrained(model, tmp_path / "q", SINQConfig())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    compiled = torch.compile(reloaded, fullgraph=True)
    torch.testing.assert_close(logits(compiled), logits(reloaded), rtol=1e-4, atol=1e-4)


def test_on_the_fly_quantization_equals_quantize_then_reloads(tmp_path):
    save_source(tmp_path / "src", tiny_llama())
    config = SINQConfig(bits=3)
    on_the_fly = AutoModelForCausalLM.from_pretrained(tmp_path / "src", quantization_config=TorchAoConfig(config))
    in_memory = AutoModelForCausalLM.from_pretrained(tmp_path / "src")
    quantize_(in_memory, config, filter_fn=skip_lm_head)
    assert_same_quantized_state(on_the_fly, in_memory)
    on_the_fly.save_pretrained(tmp_path / "q")
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "q")), logits(in_memory))


def test_loading_without_import_sinq_ao_says_to_import_it(tmp_path):
    model = tiny_llama()
    quantize_(model, SINQConfig(), filter_fn=skip_lm_head)
    save_pretrained(model, tmp_path / "q", SINQConfig())
    script = (
        f"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained({str(tmp_path / 'q')!r})"
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert "Failed to find class sinq_ao.SINQConfig" in result.stderr


def test_save_needs_the_config_when_the_model_records_none(tmp_path):
    model = tiny_llama()
    quantize_(model, SINQConfig(), filter_fn=skip_lm_head)
    with pytest.raises(ValueError, match="needs the config the model was quantized with"):
        save_pretrained(model, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_save_refuses_an_existing_folder_and_leaves_it_untouched(tmp_path):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "keep.txt").write_text("mine")
    model = tiny_llama()
    quantize_(model, SINQConfig(), filter_fn=skip_lm_head)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained(model, tmp_path / "q", SINQConfig())
    assert [p.name for p in (tmp_path / "q").iterdir()] == ["keep.txt"]


def test_interrupted_save_leaves_neither_a_folder_nor_temporary_files(tmp_path, monkeypatch):
    model = tiny_llama()
    quantize_(model, SINQConfig(), filter_fn=skip_lm_head)

    def write_then_fail(folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save_pretrained", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(model, tmp_path / "q", SINQConfig())
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A sharded 8-bit SINQ checkpoint (8 bits: the width the reference cannot reload)."""
    folder = tmp_path_factory.mktemp("ckpt") / "q"
    model = tiny_llama()
    quantize_(model, SINQConfig(bits=8), filter_fn=skip_lm_head)
    save_pretrained(model, folder, SINQConfig(bits=8), max_shard_size="40KB")
    return folder


def damaged_copy(checkpoint: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged"
    copy.mkdir()
    for file in checkpoint.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    return copy


def test_intact_checkpoint_verifies_and_loads(checkpoint):
    verify_checkpoint(checkpoint)
    assert isinstance(load_pretrained(checkpoint).model.layers[1].mlp.down_proj.weight, SINQTensor)


def test_truncated_shard_is_named(checkpoint, tmp_path):
    folder = damaged_copy(checkpoint, tmp_path)
    shard = shard_files(folder)[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: cannot read it as safetensors, it is truncated"):
        load_pretrained(folder)


def test_unknown_layout_version_is_named_with_file_and_tensor(checkpoint, tmp_path):
    folder = damaged_copy(checkpoint, tmp_path)
    for shard in shard_files(folder):
        with safe_open(str(shard), framework="pt") as reader:
            metadata = reader.metadata()
        entry = json.loads(metadata["model.layers.0.mlp.up_proj.weight"])
        entry["_data"]["layout_version"] = 99
        metadata["model.layers.0.mlp.up_proj.weight"] = json.dumps(entry)
        save_file(load_file(str(shard)), str(shard), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"model-\d+-of-\d+\.safetensors: quantized tensor "
                       r"'model.layers.0.mlp.up_proj.weight' cannot be rebuilt: .*layout_version=99"):  # fmt: skip
        verify_checkpoint(folder)


def test_missing_inner_tensor_is_named_with_file_and_tensor(checkpoint, tmp_path):
    folder = damaged_copy(checkpoint, tmp_path)
    key = "model.layers.1.self_attn.o_proj._weight_scale"
    shard = next(s for s in shard_files(folder) if key in load_file(str(s)))
    with safe_open(str(shard), framework="pt") as reader:
        metadata = reader.metadata()
    tensors = load_file(str(shard))
    del tensors[key]
    save_file(tensors, str(shard), metadata=metadata)
    with pytest.raises(CheckpointError, match=rf"{shard.name}: tensor '{key}' is listed in the checkpoint index"):
        verify_checkpoint(folder)
    index = folder / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())
    del weight_map["weight_map"][key]
    index.write_text(json.dumps(weight_map))
    with pytest.raises(CheckpointError, match=rf"quantized tensor 'model.layers.1.self_attn.o_proj.weight' lacks "
                       rf"its inner tensor '{key}'"):  # fmt: skip
        verify_checkpoint(folder)
