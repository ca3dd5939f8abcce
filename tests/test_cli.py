"""The ``sinq-ao`` console script: quantize, eval and generate in a subprocess; errors and --help in-process."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sinq_ao import SINQConfig
from sinq_ao.cli import build_parser, main
from sinq_ao.evaluate import perplexity
from sinq_ao.models import load_model
from sinq_ao.streaming import quantize_checkpoint
from tests.helpers import requires_cuda
from tests.test_hf import TEXT, assert_same_quantized_state, save_source, shard_files, tiny_llama

SCRIPT = Path(sys.executable).parent / "sinq-ao"


def sinq_ao(*args: str) -> str:
    """Run the installed console script; its stdout."""
    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} is missing: install the package (`make env` or `pip install -e .`)")
    result = subprocess.run([str(SCRIPT), *args], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return save_source(tmp_path_factory.mktemp("cli") / "src", tiny_llama())


@pytest.fixture(scope="module")
def quantized(source) -> Path:
    folder = source.parent / "q3"
    quantize_checkpoint(source, folder, SINQConfig(bits=3, group_size=32), progress=False)
    return folder


def test_quantize_command_writes_what_the_python_api_writes(source, quantized, tmp_path):
    sinq_ao(
        "quantize", str(source), str(tmp_path / "q"), "--bits", "3", "--group-size", "32", "--max-shard-size", "40KB"
    )
    assert len(shard_files(tmp_path / "q")) > 1
    expected = AutoModelForCausalLM.from_pretrained(quantized)
    assert_same_quantized_state(AutoModelForCausalLM.from_pretrained(tmp_path / "q"), expected)


def test_eval_command_prints_the_perplexity_of_the_quantized_model(quantized, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT * 3)
    output = sinq_ao(
        "eval", str(quantized), "--text", str(text), "--seq-len", "24", "--max-windows", "2", "--dtype", "float32"
    )
    printed = float(re.search(r"perplexity ([0-9.]+)", output).group(1))
    model, tokenizer = load_model(str(quantized), dtype=torch.float32, device="cpu")
    assert printed == pytest.approx(
        perplexity(model, tokenizer, TEXT * 3, seq_len=24, max_windows=2, progress=False), rel=1e-4
    )


def test_generate_command_prints_the_greedy_continuation(quantized):
    output = sinq_ao("generate", str(quantized), "the quick brown", "--max-new-tokens", "6", "--dtype", "float32")
    model, tokenizer = load_model(str(quantized), dtype=torch.float32, device="cpu")
    ids = model.generate(**tokenizer("the quick brown", return_tensors="pt"), max_new_tokens=6, do_sample=False)
    assert output.strip() == tokenizer.decode(ids[0], skip_special_tokens=True).strip()
    assert output.startswith("the quick brown")


def test_help_explains_every_command_and_option():
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(commands.choices) == {"quantize", "eval", "generate"}
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"sinq-ao {name} {action.option_strings or action.dest} has no help text"


def test_invalid_option_exits_with_the_reason(source, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(source), str(tmp_path / "q"), "--bits", "9"])
    assert exit_info.value.code == 1
    assert "sinq-ao quantize: error: bits=9 is not supported" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_damaged_checkpoint_is_named_before_loading(quantized, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for file in quantized.iterdir():
        (damaged / file.name).write_bytes(file.read_bytes())
    (damaged / "model.safetensors").write_bytes((quantized / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(SystemExit):
        main(["generate", str(damaged), "hello"])
    assert "model.safetensors: cannot read it as safetensors, it is truncated" in capsys.readouterr().err


def test_graphed_generation_needs_a_cuda_device_and_says_so_before_loading(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(tmp_path / "not-loaded"), "hello", "--graphed"])
    assert exit_info.value.code == 1
    assert "--graphed replays CUDA graphs and needs a CUDA --device, got 'cpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", str(tmp_path / "not-loaded"), "hello", "--max-new-tokens", "0"])
    assert "--max-new-tokens must be at least 1, got 0" in capsys.readouterr().err


def test_graphed_output_stops_after_the_first_end_of_sequence_token_like_generate():
    from sinq_ao.cli import _through_first_eos

    tokens = torch.tensor([[5, 2, 7, 2, 9]])
    assert _through_first_eos(tokens, 1, 2).tolist() == [5, 2]  # the prompt's own eos does not count
    assert _through_first_eos(tokens, 2, [9, 2]).tolist() == [5, 2, 7, 2]
    assert _through_first_eos(tokens, 2, None).tolist() == [5, 2, 7, 2, 9]
    assert _through_first_eos(tokens, 1, [4]).tolist() == [5, 2, 7, 2, 9]


@requires_cuda
def test_graphed_generate_command_prints_what_plain_generate_prints_on_gpu(quantized):
    """float32 on CUDA: GraphedDecoder's greedy tokens equal transformers' generate (tests/test_decode.py)."""
    options = ("--max-new-tokens", "6", "--dtype", "float32", "--device", "cuda")
    graphed = sinq_ao("generate", str(quantized), "the quick brown", *options, "--graphed")
    assert graphed == sinq_ao("generate", str(quantized), "the quick brown", *options)
