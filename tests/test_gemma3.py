"""Gemma 3 against HF transformers' Gemma3ForCausalLM on tiny random models (CPU, float32)."""

import dataclasses
import json
from typing import Any

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from infodec.models import gemma3
from infodec.models.base import CheckpointMismatchError

SEQ = 16  # longer than the sliding window (4), so windowed and global layers differ
TINY: dict[str, Any] = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=7,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    query_pre_attn_scalar=24,
    sliding_window=4,
    # layers 2 and 5 global, the others sliding; bases far apart so a local/global mixup shows.
    layer_types=["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(7)],
    rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
    },
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    initializer_range=0.05,
)
SOFTCAPPED = dict(TINY, final_logit_softcapping=0.5, attn_logit_softcapping=2.0)


def _make_hf(tmp_path, overrides, seed=0):
    torch.manual_seed(seed)
    hf = Gemma3ForCausalLM(Gemma3TextConfig(**overrides, attn_implementation="eager")).eval()  # pyright: ignore[reportCallIssue] (a PreTrainedConfig kwarg)
    with torch.no_grad():  # HF initialises norms to 0 (a multiplier of 1): make them matter
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    hf.save_pretrained(tmp_path)
    return hf


def _hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def _load(directory, scan_layers=False):
    config = gemma3.Config.from_hf(json.loads((directory / "config.json").read_text()), scan_layers=scan_layers)
    params = gemma3.convert_hf_weights(config, load_file(directory / "model.safetensors"))
    return gemma3.build(config), params


def _jit(model):
    """``model.apply`` compiled once per shape (far faster than op-by-op dispatch on CPU)."""
    return jax.jit(model.apply)


def _tokens(batch=1, length=SEQ, seed=1):
    return np.random.default_rng(seed).integers(0, TINY["vocab_size"], (batch, length), dtype=np.int32)


def _positions(tokens):
    return np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gemma3")
    return directory, _make_hf(directory, TINY)


@pytest.fixture(scope="module", params=[False, True], ids=["unrolled", "scanned"])
def loaded(request, tiny):
    """``(model, params, jitted apply)`` of the tiny model, shared so each input shape compiles once."""
    model, params = _load(tiny[0], scan_layers=request.param)
    return model, params, _jit(model)


def test_logits_match_hf(tiny, loaded):
    _, hf = tiny
    model, params, apply = loaded
    assert model.config.layer_types == tuple(TINY["layer_types"])
    tokens = _tokens(batch=2)
    logits, _ = apply(params, tokens, _positions(tokens))
    delta = np.abs(np.asarray(logits) - _hf_logits(hf, tokens)).max()
    print(f"max |logits - HF| (scan_layers={model.config.scan_layers}): {delta:.2e}")
    assert delta < 1e-4


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.slow
def test_softcapped_logits_match_hf(tmp_path, scan_layers):
    hf = _make_hf(tmp_path, SOFTCAPPED)
    tokens = _tokens(batch=2)
    expected = _hf_logits(hf, tokens)
    cap = SOFTCAPPED["final_logit_softcapping"]
    assert cap >= np.abs(expected).max() > 0.8 * cap  # the cap is active
    model, params = _load(tmp_path, scan_layers)
    assert model.config.final_logit_softcapping == cap
    logits, _ = _jit(model)(params, tokens, _positions(tokens))
    delta = np.abs(np.asarray(logits) - expected).max()
    print(f"max |softcapped logits - HF| (scan_layers={scan_layers}): {delta:.2e}")
    assert delta < 1e-4


@pytest.mark.slow
def test_hf_ignores_attn_logit_softcapping(tmp_path):
    """Why ``from_hf`` drops ``attn_logit_softcapping``: HF's Gemma 3 never applies it."""
    tokens = _tokens()
    with_cap = _hf_logits(_make_hf(tmp_path / "a", dict(TINY, attn_logit_softcapping=0.1)), tokens)
    without = _hf_logits(_make_hf(tmp_path / "b", TINY), tokens)
    np.testing.assert_array_equal(with_cap, without)
    config = gemma3.Config.from_hf(dict(TINY, attn_logit_softcapping=0.1, model_type="gemma3_text"))
    assert config.attn_logit_softcapping is None


def test_attn_softcap_applies_when_set_directly(loaded):
    model, params, apply = loaded
    capped = gemma3.build(dataclasses.replace(model.config, attn_logit_softcapping=0.1))
    tokens = _tokens(batch=2)
    plain, _ = apply(params, tokens, _positions(tokens))
    soft, _ = _jit(capped)(params, tokens, _positions(tokens))
    assert np.abs(np.asarray(plain) - np.asarray(soft)).max() > 1e-3


def test_incremental_decode_matches_full(loaded):
    model, params, apply = loaded
    tokens = _tokens(batch=2)
    positions = _positions(tokens)
    full, _ = apply(params, tokens, positions)
    cache = model.init_cache(2, SEQ + 1)
    prefill, cache = apply(params, tokens[:, :5], positions[:, :5], cache)
    steps = [prefill]
    for t in range(5, SEQ):
        step, cache = apply(params, tokens[:, t : t + 1], positions[:, t : t + 1], cache)
        steps.append(step)
    delta = np.abs(np.concatenate([np.asarray(s) for s in steps], axis=1) - np.asarray(full)).max()
    print(f"max |incremental - full| (scan_layers={model.config.scan_layers}): {delta:.2e}")
    assert delta < 1e-5
    assert int(cache.index) == SEQ


def test_left_padding_matches_unpadded_row(loaded):
    model, params, apply = loaded
    pad = 3
    real = _tokens(length=SEQ - pad, seed=2)
    tokens = np.concatenate([np.concatenate([[[7, 99, 0]], real], axis=1), _tokens(seed=3)]).astype(np.int32)
    positions = np.stack([np.r_[[-1] * pad, np.arange(SEQ - pad)], np.arange(SEQ)]).astype(np.int32)
    batch, _ = apply(params, tokens, positions)
    alone, _ = apply(params, real, _positions(real))
    delta = np.abs(np.asarray(batch)[0, pad:] - np.asarray(alone)[0]).max()
    print(f"max |padded row - unpadded run| (scan_layers={model.config.scan_layers}): {delta:.2e}")
    assert delta < 1e-5
    # Through the cache as well: prefill all but the last column, then decode it.
    cache = model.init_cache(2, SEQ + 1)
    _, cache = apply(params, tokens[:, :-1], positions[:, :-1], cache)
    step, _ = apply(params, tokens[:, -1:], positions[:, -1:], cache)
    assert np.abs(np.asarray(step)[:, 0] - np.asarray(batch)[:, -1]).max() < 1e-5


def test_hf_config_formats_agree(tiny):
    directory, _ = tiny
    new = gemma3.Config.from_hf(json.loads((directory / "config.json").read_text()))
    old = gemma3.Config.from_hf(
        {
            "model_type": "gemma3_text",
            "vocab_size": 128,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 7,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "query_pre_attn_scalar": 24,
            "sliding_window": 4,
            "sliding_window_pattern": 3,
            "rope_theta": 5000.0,
            "rope_local_base_freq": 50.0,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0},
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "hidden_activation": "gelu_pytorch_tanh",
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
        }
    )
    assert old == new
    assert new.rope_theta == 5000.0 and new.rope_local_theta == 50.0
    assert new.rope_scaling is not None
    assert dict(new.rope_scaling) == {"rope_type": "linear", "factor": 2.0} and new.rope_local_scaling is None
    assert gemma3.Config.from_hf(new.to_hf()) == new
    # HF's defaults when the config names no RoPE bases: 1e6 global, 1e4 local, every 6th layer global.
    bare = gemma3.Config.from_hf(
        {
            k: v
            for k, v in old.to_hf().items()
            if k
            not in (
                "rope_parameters",
                "rope_theta",
                "rope_local_base_freq",
                "rope_scaling",
                "layer_types",
                "sliding_window_pattern",
            )
        }
    )
    assert (bare.rope_theta, bare.rope_local_theta) == (1e6, 1e4)
    assert bare.layer_types == ("sliding_attention",) * 5 + ("full_attention", "sliding_attention")


@pytest.mark.slow
def test_to_hf_loads_in_transformers(tiny, tmp_path):
    directory, hf = tiny
    model, _ = _load(directory)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_hf()))
    save_file(load_file(directory / "model.safetensors"), tmp_path / "model.safetensors", metadata={"format": "pt"})
    reloaded = Gemma3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert reloaded.config.layer_types == TINY["layer_types"]
    assert reloaded.config.rope_parameters == TINY["rope_parameters"]
    tokens = _tokens()
    np.testing.assert_array_equal(_hf_logits(reloaded, tokens), _hf_logits(hf, tokens))


def test_config_weights_mismatch(tiny):
    directory, _ = tiny
    hf_config = json.loads((directory / "config.json").read_text())
    tensors = load_file(directory / "model.safetensors")
    wrong_ffn = gemma3.Config.from_hf(dict(hf_config, intermediate_size=128))
    with pytest.raises(CheckpointMismatchError, match=r"gate_proj.weight.*\(96, 64\).*\(128, 64\).*disagree"):
        gemma3.convert_hf_weights(wrong_ffn, tensors)
    wrong_head_dim = gemma3.Config.from_hf(dict(hf_config, head_dim=16))
    with pytest.raises(CheckpointMismatchError, match="q_proj.weight"):
        gemma3.convert_hf_weights(wrong_head_dim, tensors)
    too_many = gemma3.Config.from_hf(dict(hf_config, num_hidden_layers=8, layer_types=None))
    with pytest.raises(CheckpointMismatchError, match="no tensor 'layers.7"):
        gemma3.convert_hf_weights(too_many, tensors)
    too_few = gemma3.Config.from_hf(dict(hf_config, num_hidden_layers=6, layer_types=TINY["layer_types"][:6]))
    with pytest.raises(CheckpointMismatchError, match=r"layer\(s\) \[6\].*6 layers"):
        gemma3.convert_hf_weights(too_few, tensors)
    untied = gemma3.Config.from_hf(dict(hf_config, tie_word_embeddings=False))
    with pytest.raises(CheckpointMismatchError, match="no tensor 'lm_head.weight'"):
        gemma3.convert_hf_weights(untied, tensors)
