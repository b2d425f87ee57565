"""GPT-2 against HF transformers on a tiny random checkpoint: logits, cache, padding, config checks."""

import json
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from infodec.models import gpt2
from infodec.models.base import CheckpointMismatchError

HF_CONFIG = dict(n_embd=64, n_head=4, n_layer=3, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0)


def _save_tiny(path, **overrides):
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(**{**HF_CONFIG, **overrides})
    model = transformers.GPT2LMHeadModel(hf_config).eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    model = _save_tiny(path)
    with open(path / "config.json") as f:
        hf = json.load(f)
    return path, model, hf, load_file(path / "model.safetensors")


def _tokens(batch=2, length=12, seed=0):
    return np.random.default_rng(seed).integers(0, HF_CONFIG["vocab_size"], (batch, length)).astype(np.int32)


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


def _load(hf, tensors, scan_layers):
    """The model, its params and a jitted ``apply`` (jitting beats op-by-op dispatch even for one call)."""
    config = gpt2.GPT2Config.from_hf(hf, scan_layers=scan_layers)
    lm = gpt2.build(config)
    return lm, gpt2.convert_hf_weights(config, tensors), jax.jit(lm.apply)


def _positions(tokens):
    return np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_logits_match_hf(tiny, scan_layers):
    _, model, hf, tensors = tiny
    _, params, apply = _load(hf, tensors, scan_layers)
    tokens = _tokens()
    logits, cache = apply(params, tokens, _positions(tokens))
    assert cache is None
    diff = np.max(np.abs(np.asarray(logits) - _hf_logits(model, tokens)))
    assert diff < 1e-4, diff


def test_names_without_transformer_prefix(tiny):
    _, model, hf, tensors = tiny
    stripped = {name.removeprefix("transformer."): value for name, value in tensors.items()}
    _, params, apply = _load(hf, stripped, False)
    tokens = _tokens()
    logits, _ = apply(params, tokens, _positions(tokens))
    np.testing.assert_allclose(np.asarray(logits), _hf_logits(model, tokens), atol=1e-4)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_inverse_layer_idx_scaling(tmp_path, scan_layers):
    model = _save_tiny(tmp_path, scale_attn_by_inverse_layer_idx=True)
    with open(tmp_path / "config.json") as f:
        hf = json.load(f)
    _, params, apply = _load(hf, load_file(tmp_path / "model.safetensors"), scan_layers)
    tokens = _tokens()
    logits, _ = apply(params, tokens, _positions(tokens))
    np.testing.assert_allclose(np.asarray(logits), _hf_logits(model, tokens), atol=1e-4)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_decode_matches_full_sequence(tiny, scan_layers):
    _, _, hf, tensors = tiny
    lm, params, apply = _load(hf, tensors, scan_layers)
    tokens = _tokens(length=10)
    positions = _positions(tokens)
    full, _ = apply(params, tokens, positions)
    prefill = 4
    cache = lm.init_cache(tokens.shape[0], 16)
    logits, cache = apply(params, tokens[:, :prefill], positions[:, :prefill], cache)
    steps = [logits]
    for t in range(prefill, tokens.shape[1]):
        logits, cache = apply(params, tokens[:, t : t + 1], positions[:, t : t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), np.asarray(full), atol=1e-5)


def test_left_padded_row_matches_unpadded(tiny):
    _, _, hf, tensors = tiny
    lm, params, apply = _load(hf, tensors, False)
    short, long = _tokens(1, 6, seed=1)[0], _tokens(1, 9, seed=2)[0]
    pad = len(long) - len(short)
    tokens = np.stack([np.concatenate([np.full(pad, 7, np.int32), short]), long])
    positions = np.stack([np.concatenate([np.full(pad, -1), np.arange(len(short))]), np.arange(len(long))])
    batched, _ = apply(params, tokens, positions.astype(np.int32))
    alone, _ = apply(params, short[None], np.arange(len(short), dtype=np.int32)[None])
    np.testing.assert_allclose(np.asarray(batched)[0, pad:], np.asarray(alone)[0], atol=1e-5)

    # Same through the cache: padded prefill, then one decode step per row.
    cache = lm.init_cache(2, 12)
    _, cache = apply(params, tokens, positions.astype(np.int32), cache)
    step = np.array([[3], [5]], np.int32)
    logits, _ = apply(params, step, np.array([[len(short)], [len(long)]], np.int32), cache)
    ref, _ = apply(
        params, np.concatenate([short, [3]])[None].astype(np.int32), np.arange(len(short) + 1, dtype=np.int32)[None]
    )
    np.testing.assert_allclose(np.asarray(logits)[0, 0], np.asarray(ref)[0, -1], atol=1e-5)


def test_config_weight_mismatch_raises(tiny):
    _, _, hf, tensors = tiny
    with pytest.raises(CheckpointMismatchError):
        gpt2.convert_hf_weights(gpt2.GPT2Config.from_hf({**hf, "n_embd": 32}), tensors)
    with pytest.raises(CheckpointMismatchError):
        gpt2.convert_hf_weights(gpt2.GPT2Config.from_hf({**hf, "n_layer": 4}), tensors)
    with pytest.raises(CheckpointMismatchError):
        gpt2.convert_hf_weights(gpt2.GPT2Config.from_hf({**hf, "n_layer": 2}), tensors)
    with pytest.raises(CheckpointMismatchError):
        gpt2.convert_hf_weights(gpt2.GPT2Config.from_hf({**hf, "n_positions": 128}), tensors)


def test_to_hf_roundtrip_loads_in_transformers(tiny, tmp_path):
    path, model, hf, _ = tiny
    config = gpt2.GPT2Config.from_hf(hf, scan_layers=False)
    assert gpt2.GPT2Config.from_hf(config.to_hf(), scan_layers=False) == config
    shutil.copy(path / "model.safetensors", tmp_path / "model.safetensors")
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config.to_hf(), f)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    tokens = _tokens()
    np.testing.assert_allclose(_hf_logits(reloaded, tokens), _hf_logits(model, tokens), atol=1e-6)


def test_unsupported_activation_is_a_clear_error(tiny):
    _, _, hf, _ = tiny
    with pytest.raises(ValueError, match="activation_function"):
        gpt2.GPT2Config.from_hf({**hf, "activation_function": "swish_beta"})
