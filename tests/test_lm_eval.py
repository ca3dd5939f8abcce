"""A SINQ model inside lm-eval's HFLM: offline loglikelihood requests on a tiny model."""

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from torchao.quantization import quantize_

from sinq_ao import SINQConfig, SINQTensor, skip_lm_head
from tests.test_hf import tiny_llama, tiny_tokenizer

REQUESTS = [("the quick brown", " fox jumps"), ("a stitch in", " time saves nine"), ("the lazy", " dog")]


def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log p(continuation tokens | prefix) and whether each is the argmax, straight from the logits."""
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    n = len(whole) - len(tokenizer(context, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([whole[:-1]])).logits[0, -n:].float(), dim=-1)
    target = torch.tensor(whole[-n:])
    return logprobs.gather(1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())


def test_hflm_loglikelihoods_of_a_sinq_model_are_its_own():
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    quantize_(model, SINQConfig(bits=4), filter_fn=skip_lm_head)
    assert isinstance(model.model.layers[0].mlp.up_proj.weight, SINQTensor)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu")
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(REQUESTS)
    ]
    results = lm.loglikelihood(requests, disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(REQUESTS, results, strict=True):
        expected, expected_greedy = direct_loglikelihood(model, tokenizer, context, continuation)
        assert logprob == pytest.approx(expected, rel=1e-4, abs=1e-4)
        assert greedy == expected_greedy
