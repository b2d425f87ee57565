"""Mixture-of-experts routing (infodec.models.moe) and the Qwen3 / Qwen3-MoE / Mixtral configs.

The routing is checked against numpy by hand: a token's output is the weighted sum of its top-k experts'
gated MLPs, with the softmax over all experts and the top-k weights renormalised or not. The loader is
checked on features the parity set (tests/test_families.py) does not reach: scanned MoE layers (nested
lazy stacks), sliding windows, and the config errors.
"""

from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as t

import infodec
from infodec.models import mixtral, qwen3
from infodec.models.base import CheckpointMismatchError
from infodec.models.moe import MoEMLP, fused_expert_params, route
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


def fuse_experts(directory, out, layout: str) -> None:
    """Rewrites a per-expert checkpoint with fused 3-D experts, as transformers 5 holds them in memory
    (``out_in``: ``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``, Mixtral's block renamed ``mlp``) or
    transposed (``in_out``: ``[E, H, 2I]``, ``[E, I, H]``); keeps config.json."""
    from safetensors.numpy import load_file, save_file

    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    fused, experts = {}, {}
    for name, value in tensors.items():
        parts = name.replace(".block_sparse_moe.", ".mlp.").split(".")
        if "experts" in parts:
            at = parts.index("experts")
            linear = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}.get(parts[at + 2], parts[at + 2])
            experts.setdefault(".".join(parts[:at]), {}).setdefault(linear, {})[int(parts[at + 1])] = value
        else:
            fused[".".join(parts)] = value
    for block, linears in experts.items():
        stack = {key: np.stack([by_expert[e] for e in sorted(by_expert)]) for key, by_expert in linears.items()}
        gate_up = np.concatenate([stack["gate_proj"], stack["up_proj"]], axis=1)  # [E, 2I, H]
        down = stack["down_proj"]  # [E, H, I]
        if layout == "in_out":
            gate_up, down = gate_up.transpose(0, 2, 1), down.transpose(0, 2, 1)
        fused[f"{block}.experts.gate_up_proj"] = np.ascontiguousarray(gate_up)
        fused[f"{block}.experts.down_proj"] = np.ascontiguousarray(down)
    out.mkdir()
    save_file(fused, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text((directory / "config.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "layout", "scan"),
    [
        ("qwen3_moe", "out_in", False),
        ("qwen3_moe", "in_out", True),
        ("mixtral", "out_in", True),
        ("mixtral", "in_out", False),
    ],
)
def test_fused_expert_checkpoints_match_hf(family, layout, scan, tmp_path):
    torch.manual_seed(0)
    if family == "mixtral":  # intermediate 48 = 1.5 * hidden: the two layouts have different shapes
        hf = t.MixtralForCausalLM(t.MixtralConfig(**BASE, num_local_experts=4, num_experts_per_tok=2))
    else:  # 2 * moe_intermediate == hidden: gate_up_proj is [4, 32, 32] in both layouts, down_proj tells
        config = t.Qwen3MoeConfig(**BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
        hf = t.Qwen3MoeForCausalLM(config)
    hf.eval().save_pretrained(tmp_path / "experts")
    fuse_experts(tmp_path / "experts", tmp_path / "fused", layout)
    model, params, _ = infodec.load(tmp_path / "fused", dtype=jnp.float32, scan_layers=scan)
    tokens = np.random.RandomState(3).randint(0, 64, (2, 9))
    positions = np.broadcast_to(np.arange(9), tokens.shape)
    ours = np.asarray(model.apply(params, tokens, positions)[0])
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.numpy()
    assert np.abs(ours - theirs).max() < 1e-4


def test_fused_experts_are_read_lazily_expert_by_expert(tmp_path):
    """The fused tensors become references to each expert's own bytes (no read at conversion), and a
    slice of the stacked kernel reads the same values numpy computes from the whole tensor."""
    from safetensors.numpy import save_file

    from infodec.models.tensors import StackedRef, TensorRef, read_directory

    rng = np.random.RandomState(0)
    experts, hidden, inner = 3, 6, 4
    gate_up, down = rng.randn(experts, 2 * inner, hidden), rng.randn(experts, hidden, inner)
    save_file({"g": gate_up.astype(np.float32), "d": down.astype(np.float32)}, tmp_path / "model.safetensors")
    refs = read_directory(tmp_path)
    config = SimpleNamespace(num_experts=experts, hidden_size=hidden, moe_intermediate_size=inner)
    tree = fused_expert_params({"x.gate_up_proj": refs["g"], "x.down_proj": refs["d"]}, "x", config)
    for leaf in tree.values():
        assert isinstance(leaf, StackedRef) and all(isinstance(part, TensorRef) for part in leaf.parts)
    expected = {
        "gate_proj": gate_up[:, :inner].transpose(0, 2, 1),
        "up_proj": gate_up[:, inner:].transpose(0, 2, 1),
        "down_proj": down.transpose(0, 2, 1),
    }
    for key, value in expected.items():
        np.testing.assert_array_equal(tree[key].read(), value.astype(np.float32))
        index = (slice(1, 3), slice(2, 5), slice(1, 3))
        np.testing.assert_array_equal(tree[key].read(index), value.astype(np.float32)[index])
    with pytest.raises(CheckpointMismatchError, match="fit neither"):
        fused_expert_params({"x.gate_up_proj": refs["g"], "x.down_proj": refs["g"]}, "x", config)
