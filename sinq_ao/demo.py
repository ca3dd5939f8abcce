"""`make demo`: quantize a small randomly initialised Llama with SINQ and compare it with the original.

(The real-model demo replaces this once the offline model fetcher lands.)
"""

import time

import torch
from torchao.quantization import quantize_
from transformers import LlamaConfig, LlamaForCausalLM

from sinq_ao import SINQConfig, SINQTensor, skip_lm_head


def weight_bytes(model: torch.nn.Module) -> int:
    total = 0
    for p in model.parameters():
        if isinstance(p, SINQTensor):
            total += sum(getattr(p, n).numel() * getattr(p, n).element_size() for n in p.tensor_data_names)
        else:
            total += p.numel() * p.element_size()
    return total


def main() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    tokens = torch.randint(0, config.vocab_size, (1, 64))
    with torch.no_grad():
        reference = model(tokens).logits.float()
    before = weight_bytes(model)
    for method in ("rtn", "sinq"):
        quantized = LlamaForCausalLM(config).to(torch.bfloat16).eval()
        quantized.load_state_dict(model.state_dict())
        start = time.perf_counter()
        quantize_(quantized, SINQConfig(bits=4, group_size=64, method=method), filter_fn=skip_lm_head)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            logits = quantized(tokens).logits.float()
        error = ((logits - reference).norm() / reference.norm()).item()
        print(f"{method:>4} 4-bit g64: weights {before / 2**20:.1f} MiB -> {weight_bytes(quantized) / 2**20:.1f} MiB, "
              f"quantized in {seconds:.2f} s, relative logit error {error:.4f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
