"""Every model family against HF transformers on a tiny random checkpoint (``tests/family_parity.py``).

One test per family: the model is built from the family's own transformers config class, saved sharded in
float32 and in bfloat16, and checked for logits, left padding, the KV cache, greedy generation and the bf16
criterion. Sizes are tiny (2 layers, hidden 64, vocabulary 128) so each family runs in seconds.
"""

import pytest
import torch
import transformers as t

from tests.family_parity import check_family

VOCAB = 128
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    initializer_range=0.1,  # larger than HF's 0.02, so logits are far from uniform and bf16 matters
)


def build(config_class, model_class, **fields):
    torch.manual_seed(0)
    return model_class(config_class(**fields))


def gemma3():
    config = t.Gemma3TextConfig(**BASE, head_dim=16, sliding_window=4)
    config.layer_types = ["sliding_attention", "full_attention"]
    torch.manual_seed(0)
    return t.Gemma3ForCausalLM(config)


def gpt2():
    config = t.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, initializer_range=0.1)
    config.bos_token_id = config.eos_token_id = 0
    torch.manual_seed(0)
    return t.GPT2LMHeadModel(config)


FAMILIES = {
    "llama": lambda: build(t.LlamaConfig, t.LlamaForCausalLM, **BASE),
    "qwen2": lambda: build(t.Qwen2Config, t.Qwen2ForCausalLM, **BASE, tie_word_embeddings=True),
    "gemma3_text": gemma3,
    "gpt2": gpt2,
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_matches_hf(family, tmp_path, capsys):
    report = check_family(FAMILIES[family](), tmp_path)
    with capsys.disabled():
        print(f"\n{family}: " + ", ".join(f"{k} {v:.1e}" for k, v in report.items()))
