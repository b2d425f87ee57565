"""OPT family (HF ``OPTForCausalLM``, model_type ``opt``): OPT-125m ... OPT-66B.

Learned absolute positions stored with an offset of 2 (row ``p + 2`` holds position ``p``); HF derives
positions from the attention mask (``cumsum - 1``), which for left padding are exactly the explicit
per-row positions infodec passes. Blocks are pre-LayerNorm (``do_layer_norm_before``, every size but 350m)::

    x += attn(self_attn_layer_norm(x));  x += fc2(relu(fc1(final_layer_norm(x))))

or post-LayerNorm (OPT-350m): ``x = self_attn_layer_norm(x + attn(x))``, ``x = final_layer_norm(x + mlp(x))``,
without the decoder's final norm. When ``word_embed_proj_dim`` differs from ``hidden_size`` (350m), the
embeddings are ``project_in`` to the hidden size and the final states ``project_out`` back before the
LM head, which is tied to the token embedding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from infodec.models.base import CausalLM, EvenHeads, HFWeights, check_heads_and_activation, checked, layer_params
from infodec.models.layers import (
    ACTIVATIONS,
    Attention,
    default_scan_layers,
    layer_norm,
    lm_logits,
    run_decoder,
)

HF_MODEL_TYPES = ("opt",)

POSITION_OFFSET = 2  # OPTLearnedPositionalEmbedding.offset


@dataclasses.dataclass(frozen=True)
class OPTConfig(EvenHeads):
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # HF's ffn_dim
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    word_embed_proj_dim: int
    do_layer_norm_before: bool = True
    final_layer_norm: bool = True  # the decoder's last norm (pre-norm models, unless _remove_final_layer_norm)
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    activation: str = "relu"
    tie_word_embeddings: bool = True
    scan_layers: bool = False
    model_type: str = "opt"
    dtype: str = "float32"  # parameters and activations (a name, so the config hashes)
    cache_dtype: str | None = None  # the KV cache; None = ``dtype``

    def __post_init__(self):
        check_heads_and_activation(self.hidden_size, self.num_heads, self.activation, "OPT activation_function")

    @property
    def projects(self) -> bool:
        """Whether embeddings are projected in and out (``word_embed_proj_dim != hidden_size``)."""
        return self.word_embed_proj_dim != self.hidden_size

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, scan_layers: bool | None = None) -> OPTConfig:
        """Reads an HF OPT ``config.json`` dict."""
        hidden = hf["hidden_size"]
        pre_norm = hf.get("do_layer_norm_before", True)
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            intermediate_size=hf["ffn_dim"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            word_embed_proj_dim=hf.get("word_embed_proj_dim") or hidden,
            do_layer_norm_before=pre_norm,
            final_layer_norm=pre_norm and not hf.get("_remove_final_layer_norm", False),
            enable_bias=hf.get("enable_bias", True),
            layer_norm_elementwise_affine=hf.get("layer_norm_elementwise_affine", True),
            activation=hf.get("activation_function", "relu"),
            tie_word_embeddings=hf.get("tie_word_embeddings", True),
            scan_layers=default_scan_layers() if scan_layers is None else scan_layers,
        )

    def to_hf(self) -> dict[str, Any]:
        """The HF ``config.json`` for this architecture (HF transformers can load the same directory)."""
        return {
            "architectures": ["OPTForCausalLM"],
            "model_type": "opt",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "ffn_dim": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "word_embed_proj_dim": self.word_embed_proj_dim,
            "do_layer_norm_before": self.do_layer_norm_before,
            "_remove_final_layer_norm": self.do_layer_norm_before and not self.final_layer_norm,
            "enable_bias": self.enable_bias,
            "layer_norm_elementwise_affine": self.layer_norm_elementwise_affine,
            "activation_function": self.activation,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
        }


def _layer_norm(config: OPTConfig, name: str) -> nn.LayerNorm:
    # torch's default eps (OPT's config has none); no weight or bias without elementwise affine.
    return layer_norm(1e-5, config.dtype, name, affine=config.layer_norm_elementwise_affine)


class OPTBlock(nn.Module):
    config: OPTConfig

    @nn.compact
    def __call__(self, x, kv, layer, *, positions, k_positions, index):
        c = self.config
        attn = Attention(
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.hidden_size,
            scale=c.head_dim**-0.5,
            qkv_bias=c.enable_bias,
            out_bias=c.enable_bias,
            use_rope=False,
            dtype=c.dtype,
            name="self_attn",
        )
        dense = lambda features, name: nn.Dense(
            features, use_bias=c.enable_bias, dtype=c.dtype, param_dtype=c.dtype, name=name
        )
        attn_norm, mlp_norm = _layer_norm(c, "self_attn_layer_norm"), _layer_norm(c, "final_layer_norm")
        pre = c.do_layer_norm_before
        h, kv = attn(attn_norm(x) if pre else x, positions, k_positions, kv, layer, index)
        x = x + h
        if not pre:
            x = attn_norm(x)
        h = dense(c.hidden_size, "fc2")(
            ACTIVATIONS[c.activation](dense(c.intermediate_size, "fc1")(mlp_norm(x) if pre else x))
        )
        x = x + h
        return (x if pre else mlp_norm(x)), kv


class OPT(nn.Module):
    config: OPTConfig

    @nn.compact
    def __call__(self, tokens, positions, cache):
        c = self.config
        embed = nn.Embed(c.vocab_size, c.word_embed_proj_dim, dtype=c.dtype, param_dtype=c.dtype, name="embed_tokens")
        table = c.max_position_embeddings + POSITION_OFFSET
        embed_positions = nn.Embed(table, c.hidden_size, dtype=c.dtype, param_dtype=c.dtype, name="embed_positions")
        project = lambda features, name: nn.Dense(
            features, use_bias=False, dtype=c.dtype, param_dtype=c.dtype, name=name
        )
        x = embed(tokens)
        if c.projects:
            x = project(c.hidden_size, "project_in")(x)
        # Padding (-1) is clipped to a valid row: padded tokens are never attended to.
        x = x + embed_positions(jnp.clip(positions, 0, c.max_position_embeddings - 1) + POSITION_OFFSET)
        x, cache = run_decoder(OPTBlock, c, x, positions, cache)
        if c.final_layer_norm:
            x = _layer_norm(c, "final_layer_norm")(x)
        if c.projects:
            x = project(c.word_embed_proj_dim, "project_out")(x)
        return lm_logits(x, embed if c.tie_word_embeddings else None, c.vocab_size, c.dtype), x, cache


def convert_hf_weights(config: OPTConfig, tensors: Mapping[str, Any]) -> dict:
    """HF ``OPTForCausalLM`` state dict (``[out, in]`` linears) -> Flax params. Names are accepted with or
    without the ``model.`` prefix (``OPTModel`` checkpoints such as facebook/opt-350m's carry none)."""
    c = config
    d = c.hidden_size
    w = HFWeights({name.removeprefix("model."): value for name, value in tensors.items()}, prefix="decoder.")
    t = w.tensors

    def with_norms(tree: dict, names: dict[str, str]) -> dict:
        """``tree`` plus the norms that have parameters (none without elementwise affine)."""
        affine = c.layer_norm_elementwise_affine
        return {**tree, **{key: w.layer_norm(name, d) for key, name in names.items() if affine}}

    bias = c.enable_bias
    layers = []
    for i in range(c.num_layers):
        p = f"layers.{i}"
        layer = {
            "self_attn": {
                "q_proj": w.dense(f"{p}.self_attn.q_proj", d, d, bias),
                "k_proj": w.dense(f"{p}.self_attn.k_proj", d, d, bias),
                "v_proj": w.dense(f"{p}.self_attn.v_proj", d, d, bias),
                "o_proj": w.dense(f"{p}.self_attn.out_proj", d, d, bias),
            },
            "fc1": w.dense(f"{p}.fc1", c.intermediate_size, d, bias),
            "fc2": w.dense(f"{p}.fc2", d, c.intermediate_size, bias),
        }
        names = {"self_attn_layer_norm": f"{p}.self_attn_layer_norm", "final_layer_norm": f"{p}.final_layer_norm"}
        layers.append(with_norms(layer, names))
    w.check_layers("layers.", c.num_layers)
    table = c.max_position_embeddings + POSITION_OFFSET
    params = {
        "embed_tokens": {"embedding": checked(t, "embed_tokens.weight", (c.vocab_size, c.word_embed_proj_dim))},
        "embed_positions": {"embedding": checked(t, "embed_positions.weight", (table, d))},
        **layer_params(layers, c.scan_layers),
    }
    if c.final_layer_norm:
        params = with_norms(params, {"final_layer_norm": "final_layer_norm"})
    if c.projects:
        params["project_in"] = w.dense("project_in", d, c.word_embed_proj_dim)
        params["project_out"] = w.dense("project_out", c.word_embed_proj_dim, d)
    if not c.tie_word_embeddings:
        # The head is outside the decoder: "lm_head.weight" in the original names.
        head = checked(tensors, "lm_head.weight", (c.vocab_size, c.word_embed_proj_dim))
        params["lm_head"] = {"kernel": head.T}
    return params


def build(config: OPTConfig) -> CausalLM:
    return CausalLM(config, OPT)


Config = OPTConfig
