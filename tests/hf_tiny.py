"""Tiny randomly initialised HF checkpoints, saved with save_pretrained, for parity tests."""

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM


def save_tiny_llama(directory: Path, **overrides) -> "LlamaForCausalLM":
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config: dict[str, Any] = dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    config.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    model.save_pretrained(directory)
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()
