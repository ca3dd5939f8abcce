"""The perplexity evaluator (the paper's WikiText-2 protocol) and the evaluation text it reads."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sinq_ao.evaluate import SHARED_WIKITEXT, load_eval_text, perplexity, wikitext_rows


class CharTokenizer:
    """A byte-level stand-in for a HF tokenizer: ``tokenizer(text, return_tensors="pt").input_ids``."""

    def __call__(self, text, return_tensors=None, verbose=True):
        ids = torch.tensor([list(text.encode("utf-8"))])
        return type("Encoding", (), {"input_ids": ids})()


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(config).eval()


TEXT = "The quick brown fox jumps over the lazy dog; " * 3  # 135 bytes: 4 windows of 32 and a dropped tail


def test_perplexity_is_exp_of_the_mean_loss_over_non_overlapping_windows():
    model, ids = tiny_model(), CharTokenizer()(TEXT).input_ids
    with torch.no_grad():
        losses = [model(ids[:, i : i + 32], labels=ids[:, i : i + 32]).loss.item() for i in range(0, 128, 32)]
    expected = math.exp(sum(losses) / len(losses))
    assert perplexity(model, CharTokenizer(), TEXT, seq_len=32, progress=False) == pytest.approx(expected, rel=1e-5)


def test_max_windows_evaluates_only_the_first_windows():
    model, ids = tiny_model(), CharTokenizer()(TEXT).input_ids
    with torch.no_grad():
        first = model(ids[:, :32], labels=ids[:, :32]).loss.item()
    result = perplexity(model, CharTokenizer(), TEXT, seq_len=32, max_windows=1, progress=False)
    assert result == pytest.approx(math.exp(first), rel=1e-5)


def test_token_ids_given_instead_of_text_give_the_same_perplexity():
    model, ids = tiny_model(), CharTokenizer()(TEXT).input_ids[0]
    from_text = perplexity(model, CharTokenizer(), TEXT, seq_len=32, progress=False)
    assert perplexity(model, None, ids.to(torch.int32), seq_len=32, progress=False) == from_text


@pytest.mark.parametrize("ids", [torch.zeros(2, 64, dtype=torch.long), torch.zeros(64)])
def test_token_ids_that_are_not_a_1d_integer_tensor_are_refused(ids):
    with pytest.raises(ValueError, match="1-D integer tensor"):
        perplexity(tiny_model(), None, ids, seq_len=32, progress=False)


def test_text_shorter_than_one_window_is_refused():
    with pytest.raises(ValueError, match="shorter than one window"):
        perplexity(tiny_model(), CharTokenizer(), "short", seq_len=32, progress=False)


@pytest.mark.parametrize("options", [{"seq_len": 1}, {"seq_len": 32.0}, {"max_windows": 0}, {"max_windows": True}])
def test_bad_window_options_are_refused(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        perplexity(tiny_model(), CharTokenizer(), TEXT, progress=False, **{"seq_len": 32, **options})


def test_a_model_with_nan_outputs_raises_instead_of_returning_nan():
    model = tiny_model()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="window 0.*non-finite"):
        perplexity(model, CharTokenizer(), TEXT, seq_len=32, progress=False)


RAW = " \n = Title = \n \n Some text .\n More text .\n \n"  # the layout of wiki.test.raw


def test_wikitext_rows_follow_the_readme_recipe():
    # each line is a row; non-blank rows keep their newline, blank ones become ""
    assert wikitext_rows(RAW) == ["", " = Title = \n", "", " Some text .\n", " More text .\n", ""]


def test_raw_files_are_joined_with_blank_lines_and_other_files_read_as_is(tmp_path):
    (tmp_path / "wiki.test.raw").write_text(RAW, encoding="utf-8")
    (tmp_path / "notes.txt").write_text(RAW, encoding="utf-8")
    assert load_eval_text(str(tmp_path / "wiki.test.raw")) == "\n\n".join(wikitext_rows(RAW))
    assert load_eval_text(str(tmp_path / "notes.txt")) == RAW


def test_a_missing_text_file_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        load_eval_text(str(tmp_path / "nowhere.txt"))


@pytest.mark.skipif(not SHARED_WIKITEXT.is_file(), reason="the shared WikiText-2 copy is not next to the checkout")
def test_the_default_text_is_the_4358_rows_of_the_wikitext2_test_split():
    text = load_eval_text()
    rows = wikitext_rows(SHARED_WIKITEXT.read_text(encoding="utf-8"))
    assert len(rows) == 4358
    assert text == "\n\n".join(rows)
    assert text.startswith("\n\n = Robert Boulter = \n")
