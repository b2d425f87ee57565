"""Mixture-of-experts routing (infodec.models.moe) and the Qwen3 / Qwen3-MoE / Mixtral configs.

The routing is checked against numpy by hand: a token's output is the weighted sum of its top-k experts'
gated MLPs, with the softmax over all experts and the top-k weights renormalised or not. The loader is
checked on features the parity set (tests/test_families.py) does not reach: scanned MoE layers (nested
lazy stacks), sliding windows, and the config errors.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as t

import infodec
from infodec.models import mixtral, qwen3
from infodec.models.moe import MoEMLP, route
from infodec.models.partitioning import MODEL, param_spec

E, K, D, I = 6, 2, 8, 5
BASE: dict[str, Any] = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    initializer_range=0.1,
)


def silu(x):
    return x / (1 + np.exp(-x))


def by_hand(params, x, normalize):
    """Each token's output: its top-k experts' gated MLPs weighted by the renormalised (or raw) softmax."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    logits = x @ p["gate"]["kernel"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for n in range(x.shape[0]):
        top = np.argsort(-probs[n])[:K]
        weights = probs[n, top] / (probs[n, top].sum() if normalize else 1.0)
        for e, weight in zip(top, weights):
            ex = p["experts"]
            h = silu(x[n] @ ex["gate_proj"][e]) * (x[n] @ ex["up_proj"][e])
            out[n] += weight * (h @ ex["down_proj"][e])
    return out


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("tokens", [1, 2, 7])  # 1 and 2 tokens: gather dispatch (N * k < E); 7: dense
def test_moe_output_is_weighted_sum_of_top_k_experts(normalize, tokens):
    module = MoEMLP(E, K, I, normalize)
    x = np.random.RandomState(tokens).randn(1, tokens, D).astype(np.float32)
    params = module.init(jax.random.key(0), x)["params"]
    ours = np.asarray(module.apply({"params": params}, x))[0]
    np.testing.assert_allclose(ours, by_hand(params, x[0].astype(np.float64), normalize), atol=1e-5)


def test_route_matches_softmax_top_k():
    logits = np.random.RandomState(0).randn(5, E).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    weights, experts = route(jnp.asarray(logits), K, normalize=False)
    np.testing.assert_array_equal(np.asarray(experts), np.argsort(-probs, -1)[:, :K])
    np.testing.assert_allclose(np.asarray(weights), np.sort(probs, -1)[:, ::-1][:, :K], rtol=1e-6)
    weights, _ = route(jnp.asarray(logits), K, normalize=True)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-6)


def test_dense_and_gather_dispatch_agree():
    module = MoEMLP(E, K, I, True)
    x = np.random.RandomState(0).randn(1, 7, D).astype(np.float32)
    params = module.init(jax.random.key(1), x)["params"]
    dense = np.asarray(module.apply({"params": params}, x))  # 7 * 2 >= 6 experts: dense
    gathered = np.concatenate([np.asarray(module.apply({"params": params}, x[:, i : i + 1])) for i in range(7)], 1)
    np.testing.assert_allclose(dense, gathered, atol=1e-6)


def hf_logits_error(hf_model, directory, tokens, **load_kwargs):
    hf_model.eval().save_pretrained(directory, max_shard_size="50KB")
    model, params, _ = infodec.load(directory, dtype=jnp.float32, **load_kwargs)
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    ours = np.asarray(model.apply(params, tokens, positions)[0])
    with torch.no_grad():
        theirs = hf_model(torch.tensor(tokens)).logits.numpy()
    return model, params, float(np.abs(ours - theirs).max())


def test_scanned_moe_layers_load_lazily_and_match_hf(tmp_path):
    torch.manual_seed(0)
    hf = t.Qwen3MoeForCausalLM(
        t.Qwen3MoeConfig(**BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True)
    )
    tokens = np.random.RandomState(0).randint(0, 64, (2, 9))
    model, params, error = hf_logits_error(hf, tmp_path, tokens, scan_layers=True)
    assert model.config.scan_layers and model.config.norm_topk_prob
    assert params["layers"]["block"]["mlp"]["experts"]["gate_proj"].shape == (2, 4, 32, 16)
    assert error < 1e-4


@pytest.mark.parametrize("family", ["mixtral", "qwen3"])
def test_sliding_window_matches_hf(family, tmp_path):
    torch.manual_seed(0)
    if family == "mixtral":
        hf = t.MixtralForCausalLM(t.MixtralConfig(**BASE, num_local_experts=4, num_experts_per_tok=2, sliding_window=3))
    else:
        config = t.Qwen3Config(**BASE, head_dim=8, use_sliding_window=True, sliding_window=3, max_window_layers=1)
        assert config.layer_types == ["full_attention", "sliding_attention"]
        hf = t.Qwen3ForCausalLM(config)
    tokens = np.random.RandomState(1).randint(0, 64, (2, 10))
    model, _, error = hf_logits_error(hf, tmp_path, tokens)
    assert model.config.layer_windows is not None
    assert error < 1e-4


def hf_dict(config_class, **fields):
    return config_class(**BASE, **fields).to_dict()


def test_config_errors_name_the_field():
    mixed = hf_dict(t.Qwen3MoeConfig, num_experts=4, num_experts_per_tok=2, mlp_only_layers=[0])
    with pytest.raises(ValueError, match="mlp_only_layers"):
        qwen3.Config.from_hf(mixed, scan_layers=True)
    assert not qwen3.Config.from_hf(mixed).scan_layers  # mixed layers run unrolled by default
    assert qwen3.Config.from_hf(mixed).moe_layers == (False, True)
    sparse_step = hf_dict(t.Qwen3MoeConfig, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2)
    assert qwen3.Config.from_hf(sparse_step, scan_layers=False).moe_layers == (False, True)
    unknown_rope = {
        **hf_dict(t.Qwen3Config),
        "rope_parameters": {"rope_type": "no_such_rope", "rope_theta": 1e4, "factor": 4.0},
    }
    with pytest.raises(ValueError, match="rope"):
        qwen3.Config.from_hf(unknown_rope)
    with pytest.raises(ValueError, match="hidden_act"):
        qwen3.Config.from_hf({**hf_dict(t.Qwen3Config), "hidden_act": "no_such_act"})
    config = mixtral.Config.from_hf(hf_dict(t.MixtralConfig, num_local_experts=8, num_experts_per_tok=2))
    assert config.norm_topk_prob and not config.qk_norm and config.num_experts == 8


def test_experts_split_on_the_model_axis():
    config = qwen3.Config.from_hf(hf_dict(t.Qwen3MoeConfig, num_experts=8, num_experts_per_tok=2))
    spec = param_spec("layers_0/mlp/experts/gate_proj", (8, 32, 16), config, 4)
    assert spec == jax.sharding.PartitionSpec(MODEL, None, None)
    assert param_spec("layers/block/mlp/experts/down_proj", (2, 8, 16, 32), config, 4)[1] == MODEL
    assert param_spec("layers_0/mlp/experts/gate_proj", (8, 32, 16), config, 3) == jax.sharding.PartitionSpec()


def test_qwen3_attention_bias_and_tied_embeddings_match_hf(tmp_path):
    torch.manual_seed(0)
    hf = t.Qwen3ForCausalLM(t.Qwen3Config(**BASE, head_dim=8, attention_bias=True, tie_word_embeddings=True))
    tokens = np.random.RandomState(2).randint(0, 64, (2, 7))
    model, params, error = hf_logits_error(hf, tmp_path, tokens)
    assert model.config.attention_bias and "lm_head" not in params
    assert error < 1e-4
