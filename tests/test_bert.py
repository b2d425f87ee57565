"""BERT sentence encoder against HF transformers: a tiny random model and the real all-MiniLM-L6-v2."""

import json
from typing import Any

import chex
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from infodec.models import bert
from infodec.models.base import CheckpointMismatchError

TINY: dict[str, Any] = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=32,
    type_vocab_size=2,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**TINY)).eval()
    model.save_pretrained(path)
    with open(path / "config.json") as f:
        hf = json.load(f)
    return model, hf, load_file(path / "model.safetensors")


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, TINY["vocab_size"], (3, 10)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    tokens[mask == 0] = 0
    return tokens, mask


@pytest.mark.parametrize("scan_layers", [False, True])
def test_tiny_hidden_states_match_hf(tiny, scan_layers):
    model, hf, tensors = tiny
    config = bert.BertConfig.from_hf(hf, scan_layers=scan_layers)
    encoder = bert.build(config)
    params = bert.convert_hf_weights(config, tensors)
    tokens, mask = _batch()
    token_types = np.zeros_like(tokens)
    token_types[0, 5:] = 1
    ours = jax.jit(encoder.apply)(params, tokens, mask, token_types)
    with torch.no_grad():
        ref = model(
            input_ids=torch.as_tensor(tokens, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
            token_type_ids=torch.as_tensor(token_types, dtype=torch.long),
        ).last_hidden_state.numpy()
    diff = np.max(np.abs(np.asarray(ours) - ref))
    assert diff < 1e-5, diff


def test_prefixed_names_and_extra_heads_are_accepted(tiny):
    _, hf, tensors = tiny
    config = bert.BertConfig.from_hf(hf, scan_layers=False)
    prefixed = {f"bert.{name}": value for name, value in tensors.items()}
    prefixed["cls.predictions.bias"] = np.zeros(TINY["vocab_size"], np.float32)
    params = bert.convert_hf_weights(config, prefixed)
    reference = bert.convert_hf_weights(config, tensors)
    chex.assert_trees_all_equal(params, reference)


def test_config_weight_mismatch_raises(tiny):
    _, hf, tensors = tiny
    for change in (
        {"hidden_size": 64, "num_attention_heads": 4},
        {"num_hidden_layers": 3},
        {"num_hidden_layers": 1},
        {"intermediate_size": 128},
        {"max_position_embeddings": 64},
    ):
        with pytest.raises(CheckpointMismatchError):
            bert.convert_hf_weights(bert.BertConfig.from_hf({**hf, **change}), tensors)


def test_config_roundtrip(tiny):
    _, hf, _ = tiny
    config = bert.BertConfig.from_hf(hf, scan_layers=False)
    assert bert.BertConfig.from_hf(config.to_hf(), scan_layers=False) == config
    assert transformers.BertConfig.from_dict(config.to_hf()).hidden_size == TINY["hidden_size"]


def test_input_validation(tiny):
    _, hf, tensors = tiny
    config = bert.BertConfig.from_hf(hf, scan_layers=False)
    encoder, params = bert.build(config), bert.convert_hf_weights(config, tensors)
    tokens, mask = _batch()
    with pytest.raises(ValueError, match="batch, length"):
        encoder.encode(params, tokens[0], mask[0])
    with pytest.raises(ValueError, match="mask"):
        encoder.encode(params, tokens, mask[:, :5])
    with pytest.raises(ValueError, match="integers"):
        encoder.encode(params, tokens.astype(np.float32), mask)
    too_long = np.ones((1, TINY["max_position_embeddings"] + 1), np.int32)
    with pytest.raises(ValueError, match="longer"):
        encoder.encode(params, too_long, too_long)


def test_empty_mask_gives_zero_vector_not_nan(tiny):
    _, hf, tensors = tiny
    config = bert.BertConfig.from_hf(hf, scan_layers=False)
    encoder, params = bert.build(config), bert.convert_hf_weights(config, tensors)
    tokens, mask = _batch()
    mask[1] = 0
    embeddings = np.asarray(jax.jit(encoder.encode)(params, tokens, mask))
    assert np.all(np.isfinite(embeddings))
    np.testing.assert_array_equal(embeddings[1], 0.0)
    np.testing.assert_allclose(np.linalg.norm(embeddings[[0, 2]], axis=-1), 1.0, atol=1e-6)


SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing an instrument, a guitar, on the stage tonight.",
    "The quarterly earnings report was released on Tuesday.",
    "Cats",
]


def _tokenize(minilm_dir, sentences):
    tokenizer = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    ids = [tokenizer.encode(s).ids for s in sentences]
    length = max(map(len, ids))
    tokens = np.zeros((len(ids), length), np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return tokens, mask


@pytest.mark.download
def test_minilm_matches_transformers(minilm_dir):
    with open(minilm_dir / "config.json") as f:
        config = bert.BertConfig.from_hf(json.load(f), scan_layers=False)
    encoder = bert.build(config)
    params = bert.convert_hf_weights(config, load_file(minilm_dir / "model.safetensors"))
    tokens, mask = _tokenize(minilm_dir, SENTENCES)
    assert len(set(mask.sum(1).tolist())) == len(SENTENCES)  # different lengths, so padding matters
    ours = np.asarray(jax.jit(encoder.encode)(params, tokens, mask))

    model = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        attention = torch.as_tensor(mask, dtype=torch.long)
        hidden = model(
            input_ids=torch.as_tensor(tokens, dtype=torch.long),
            attention_mask=attention,
            token_type_ids=torch.zeros_like(attention),
        ).last_hidden_state
        weights = attention.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        ref = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    diff = np.max(np.abs(ours - ref))
    assert diff < 1e-5, diff

    # Padding does not change a sentence's embedding.
    alone = np.asarray(jax.jit(encoder.encode)(params, *_tokenize(minilm_dir, SENTENCES[3:])))
    np.testing.assert_allclose(alone[0], ours[3], atol=1e-5)

    similarity = ours @ ours.T
    assert similarity[0, 1] > 0.5
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert similarity[1, 2] < similarity[0, 1]
