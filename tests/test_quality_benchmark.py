"""benchmarks/quality.py: tokenizing on one machine and evaluating on another gives the same rows."""

import importlib.util
import json
from pathlib import Path

import pytest

from tests.test_hf import TEXT, save_source, tiny_llama

ROOT = Path(__file__).resolve().parents[1]


def quality_module():
    spec = importlib.util.spec_from_file_location("quality_benchmark", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality")
    model = save_source(folder / "tiny", tiny_llama())
    text = folder / "text.txt"
    text.write_text(TEXT * 4)
    common = ["--models", str(model), "--methods", "bf16", "rtn", "--bits", "4", "--group-sizes", "32",
              "--seq-len", "24", "--max-windows", "2", "--device", "cpu", "--dtype", "float32"]  # fmt: skip
    return quality_module(), folder, model, text, common


def test_rows_from_saved_token_ids_equal_rows_from_the_text(setup):
    quality, folder, model, text, common = setup
    quality.main(common + ["--eval-text", str(text), "--out", str(folder / "from_text.json")])
    quality.main(common + ["--eval-text", str(text), "--save-tokens", str(folder / "tokens")])
    assert quality.tokens_file(folder / "tokens", str(model)).is_file()
    quality.main(common + ["--tokens", str(folder / "tokens"), "--out", str(folder / "from_ids.json")])
    from_text = json.loads((folder / "from_text.json").read_text())["rows"]
    from_ids = json.loads((folder / "from_ids.json").read_text())["rows"]
    assert [(r["method"], r["windows"], r["perplexity"]) for r in from_ids] == [
        (r["method"], r["windows"], r["perplexity"]) for r in from_text
    ]
    assert len(from_ids) == 2


def test_token_ids_of_another_model_or_missing_ones_are_refused(setup, tmp_path):
    quality, folder, model, text, common = setup
    with pytest.raises(FileNotFoundError, match="--save-tokens"):
        quality.load_tokens(tmp_path, str(model))
    quality.main(common + ["--eval-text", str(text), "--save-tokens", str(tmp_path)])
    quality.tokens_file(tmp_path, str(model)).rename(quality.tokens_file(tmp_path, "other/tiny"))
    with pytest.raises(ValueError, match="not 'other/tiny'"):
        quality.load_tokens(tmp_path, "other/tiny")
