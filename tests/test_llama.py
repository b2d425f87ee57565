"""Llama family: parity with HF transformers on tiny random checkpoints, cache and padding semantics."""

import dataclasses

import jax
import numpy as np
import pytest

import infodec
from infodec.models import llama
from infodec.models.base import CheckpointMismatchError
from tests.hf_tiny import hf_logits, save_tiny_llama

VOCAB = 97


@pytest.fixture(scope="module", params=[False, True], ids=["unrolled", "scan"])
def tiny(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    hf_model = save_tiny_llama(directory)
    model, params, _ = infodec.load(directory, scan_layers=request.param)
    return hf_model, model, params


def _positions(batch, length):
    return np.broadcast_to(np.arange(length), (batch, length))


def test_logits_match_hf(tiny):
    hf_model, model, params = tiny
    tokens = np.random.RandomState(0).randint(0, VOCAB, (3, 20))
    logits, _ = jax.jit(model.apply)(params, tokens, _positions(3, 20))
    assert np.abs(np.asarray(logits) - hf_logits(hf_model, tokens)).max() < 1e-4


def test_cached_decode_equals_full_sequence(tiny):
    _, model, params = tiny
    tokens = np.random.RandomState(1).randint(0, VOCAB, (2, 12))
    apply = jax.jit(model.apply)
    full, _ = apply(params, tokens, _positions(2, 12))
    cache = model.init_cache(2, 16)
    pieces = []
    logits, cache = apply(params, tokens[:, :5], _positions(2, 12)[:, :5], cache)
    pieces.append(logits)
    for t in range(5, 12):
        logits, cache = apply(params, tokens[:, t : t + 1], _positions(2, 12)[:, t : t + 1], cache)
        pieces.append(logits)
    assert np.abs(np.concatenate(pieces, axis=1) - np.asarray(full)).max() < 1e-5


@pytest.mark.slow
def test_left_padded_row_equals_unpadded_run(tiny):
    _, model, params = tiny
    rng = np.random.RandomState(2)
    short, long = rng.randint(0, VOCAB, 6), rng.randint(0, VOCAB, 9)
    tokens = np.stack([np.concatenate([rng.randint(0, VOCAB, 3), short]), long])  # garbage pad ids
    positions = np.stack([np.concatenate([[-1] * 3, np.arange(6)]), np.arange(9)])
    apply = jax.jit(model.apply)
    batch, _ = apply(params, tokens, positions)
    alone, _ = apply(params, short[None], _positions(1, 6))
    assert np.abs(np.asarray(batch)[0, 3:] - np.asarray(alone)[0]).max() < 1e-5
    # Per-row positions through the cache as well: one decode step after the padded prefill.
    cache = model.init_cache(2, 12)
    _, cache = apply(params, tokens, positions, cache)
    step, _ = apply(params, np.array([[5], [5]]), np.array([[6], [9]]), cache)
    _, alone_cache = apply(params, short[None], _positions(1, 6), model.init_cache(1, 12))
    expect, _ = apply(params, np.array([[5]]), np.array([[6]]), alone_cache)
    assert np.abs(np.asarray(step)[0] - np.asarray(expect)[0]).max() < 1e-5


@pytest.mark.slow
def test_qwen2_style_qkv_bias_and_tied_embeddings(tmp_path):
    hf_model = save_tiny_llama(tmp_path, attention_bias=True, tie_word_embeddings=True)
    with __import__("torch").no_grad():  # random biases: zero-initialised ones would test nothing
        for name, p in hf_model.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    hf_model.save_pretrained(tmp_path)
    model, params, _ = infodec.load(tmp_path)
    tokens = np.random.RandomState(3).randint(0, VOCAB, (2, 10))
    logits, _ = model.apply(params, tokens, _positions(2, 10))
    assert model.config.qkv_bias and model.config.tie_word_embeddings
    assert np.abs(np.asarray(logits) - hf_logits(hf_model, tokens)).max() < 1e-4


@pytest.mark.slow
def test_llama3_rope_scaling_matches_hf(tmp_path):
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    hf_model = save_tiny_llama(tmp_path, rope_parameters={"rope_theta": 500000.0, **scaling})
    model, params, _ = infodec.load(tmp_path)
    tokens = np.random.RandomState(4).randint(0, VOCAB, (1, 40))
    logits, _ = model.apply(params, tokens, _positions(1, 40))
    assert np.abs(np.asarray(logits) - hf_logits(hf_model, tokens)).max() < 1e-4


def test_config_weight_mismatch_is_one_clear_error(tmp_path):
    save_tiny_llama(tmp_path)
    config = llama.LlamaConfig.from_hf(
        {**__import__("json").loads((tmp_path / "config.json").read_text()), "intermediate_size": 96}
    )
    from infodec.models.tensors import read_directory

    with pytest.raises(CheckpointMismatchError, match=r"mlp.gate_proj.weight.*shape \(80, 48\).*\(96, 48\)"):
        llama.convert_hf_weights(config, read_directory(tmp_path))
    fewer_layers = dataclasses.replace(
        llama.LlamaConfig.from_hf(__import__("json").loads((tmp_path / "config.json").read_text())), num_layers=2
    )
    with pytest.raises(CheckpointMismatchError, match=r"weights for layer\(s\) \[2\] but the config has 2 layers"):
        llama.convert_hf_weights(fewer_layers, read_directory(tmp_path))


def test_apply_rejects_bad_input(tiny):
    _, model, params = tiny
    with pytest.raises(ValueError, match="longer than the model's context of 64"):
        model.apply(params, np.zeros((1, 65), int), _positions(1, 65))
    with pytest.raises(ValueError, match="must have the shape of tokens"):
        model.apply(params, np.zeros((1, 4), int), np.zeros((1, 5), int))
    with pytest.raises(ValueError, match="overflows the cache"):
        model.apply(params, np.zeros((1, 9), int), _positions(1, 9), model.init_cache(1, 8))
