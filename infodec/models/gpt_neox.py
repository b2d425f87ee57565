"""GPT-NeoX family (HF ``GPTNeoXForCausalLM``, model_type ``gpt_neox``): Pythia, GPT-NeoX-20B.

Pre-LayerNorm blocks (norms with bias), either parallel (``use_parallel_residual``, Pythia's default)::

    x = x + attn(input_layernorm(x)) + mlp(post_attention_layernorm(x))

or sequential (``x += attn(ln1(x))``, then ``x += mlp(ln2(x))``). Rotary embeddings on the first
``rotary_pct`` (``partial_rotary_factor``) of each head's dimensions only, in the rotate-half layout.
The fused ``query_key_value`` projection stores its output rows per head, ``[heads, 3, head_dim]``; it is
kept fused (its kernel is the checkpoint's ``.T``) and its output is split per head, so a column split
of the kernel on the model axis is a split by heads. The LM head ``embed_out`` is untied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from infodec.models.base import CausalLM, EvenHeads, HFWeights, check_heads_and_activation, layer_params
from infodec.models.layers import (
    ACTIVATIONS,
    apply_partial_rope,
    cached_attention,
    default_scan_layers,
    layer_norm,
    lm_logits,
    rope_attention_factor,
    rope_frequencies,
    rope_inv_freq,
    run_decoder,
)

HF_MODEL_TYPES = ("gpt_neox",)
# RoPE types run as HF does (longrope's long/short switch and its cos/sin factor are not here).
ROPE_TYPES = ("default", "linear", "llama3", "dynamic", "yarn")


@dataclasses.dataclass(frozen=True)
class GPTNeoXConfig(EvenHeads):
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    rotary_dim: int  # leading dimensions of each head that are rotated (int(head_dim * rotary_pct))
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # a tuple of items, so the config hashes
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    use_parallel_residual: bool = True
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    scan_layers: bool = False
    model_type: str = "gpt_neox"
    dtype: str = "float32"  # parameters and activations (a name, so the config hashes)
    cache_dtype: str | None = None  # the KV cache; None = ``dtype``

    def __post_init__(self):
        check_heads_and_activation(self.hidden_size, self.num_heads, self.hidden_act, "gpt_neox hidden_act")
        if self.rotary_dim % 2 or not 0 <= self.rotary_dim <= self.head_dim:
            raise ValueError(
                f"rotary dimension {self.rotary_dim} (head_dim x rotary_pct) must be even and at most the "
                f"head dimension {self.head_dim}"
            )
        scaling = dict(self.rope_scaling or ())
        try:
            rope_inv_freq(self.rotary_dim, self.rope_theta, scaling)
        except KeyError as error:
            raise ValueError(f"rope_scaling {scaling} lacks the field {error}") from None

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, scan_layers: bool | None = None) -> GPTNeoXConfig:
        """Reads an HF ``config.json`` dict: old (``rotary_pct``, ``rotary_emb_base``, ``rope_scaling``) or
        transformers 5 (``rope_parameters`` with ``rope_theta`` and ``partial_rotary_factor``)."""
        heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
        partial = rope.pop("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)))
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise ValueError(f"unsupported rope scaling type {kind!r} for gpt_neox; supported: {', '.join(ROPE_TYPES)}")
        if kind in ("yarn", "llama3"):
            rope.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings", 2048))
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rotary_dim=int(hidden // heads * partial),
            rope_theta=float(theta),
            rope_scaling=None if kind == "default" else tuple(sorted(rope.items())),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
            hidden_act=hf.get("hidden_act", "gelu"),
            use_parallel_residual=hf.get("use_parallel_residual", True),
            attention_bias=hf.get("attention_bias", True),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            scan_layers=default_scan_layers() if scan_layers is None else scan_layers,
        )

    def to_hf(self) -> dict[str, Any]:
        """The HF ``config.json`` for this architecture (HF transformers can load the same directory)."""
        rope = {"rope_type": "default", **dict(self.rope_scaling or ())}
        return {
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_parameters": {
                **rope,
                "rope_theta": self.rope_theta,
                "partial_rotary_factor": self.rotary_dim / self.head_dim,
            },
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": self.hidden_act,
            "use_parallel_residual": self.use_parallel_residual,
            "attention_bias": self.attention_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
        }


def _layer_norm(config: GPTNeoXConfig, name: str) -> nn.LayerNorm:
    return layer_norm(config.layer_norm_eps, config.dtype, name)


class GPTNeoXAttention(nn.Module):
    """Multi-head attention with the fused per-head ``query_key_value`` projection and partial RoPE."""

    config: GPTNeoXConfig

    @nn.compact
    def __call__(self, x, positions, k_positions, kv, layer, index, inv_freq):
        c = self.config
        batch, length, _ = x.shape
        dense = lambda features, name: nn.Dense(
            features, use_bias=c.attention_bias, dtype=c.dtype, param_dtype=c.dtype, name=name
        )
        qkv = dense(3 * c.hidden_size, "query_key_value")(x).reshape(batch, length, c.num_heads, 3, c.head_dim)
        q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        q = apply_partial_rope(q, positions, inv_freq, c.rotary_dim)
        k = apply_partial_rope(k, positions, inv_freq, c.rotary_dim)
        # YaRN's cos/sin factor multiplies q and k: its square scales the scores.
        scale = c.head_dim**-0.5 * rope_attention_factor(dict(c.rope_scaling or ())) ** 2
        out, kv = cached_attention(q, k, v, positions, k_positions, kv, layer, index, scale=scale)
        return dense(c.hidden_size, "dense")(out), kv


class GPTNeoXMLP(nn.Module):
    config: GPTNeoXConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        dense = lambda features, name: nn.Dense(features, dtype=c.dtype, param_dtype=c.dtype, name=name)
        return dense(c.hidden_size, "dense_4h_to_h")(
            ACTIVATIONS[c.hidden_act](dense(c.intermediate_size, "dense_h_to_4h")(x))
        )


class GPTNeoXBlock(nn.Module):
    config: GPTNeoXConfig

    @nn.compact
    def __call__(self, x, kv, layer, *, positions, k_positions, index, inv_freq):
        c = self.config
        attn = GPTNeoXAttention(c, name="attention")
        h, kv = attn(_layer_norm(c, "input_layernorm")(x), positions, k_positions, kv, layer, index, inv_freq)
        mlp = GPTNeoXMLP(c, name="mlp")
        post_norm = _layer_norm(c, "post_attention_layernorm")
        if c.use_parallel_residual:
            return mlp(post_norm(x)) + h + x, kv  # HF's order of the sum
        x = h + x
        return mlp(post_norm(x)) + x, kv


class GPTNeoX(nn.Module):
    config: GPTNeoXConfig

    @nn.compact
    def __call__(self, tokens, positions, cache):
        c = self.config
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=c.dtype, name="embed_in")
        x = embed(tokens)
        scaling = dict(c.rope_scaling or ()) or None
        inv_freq = rope_frequencies(c.rotary_dim, c.rope_theta, scaling, positions, c.max_position_embeddings)
        x, cache = run_decoder(GPTNeoXBlock, c, x, positions, cache, inv_freq=inv_freq)
        x = _layer_norm(c, "final_layer_norm")(x)
        return lm_logits(x, embed if c.tie_word_embeddings else None, c.vocab_size, c.dtype), x, cache


def convert_hf_weights(config: GPTNeoXConfig, tensors: Mapping[str, Any]) -> dict:
    """HF ``GPTNeoXForCausalLM`` state dict (``[out, in]`` linears) -> Flax params. HF's buffers in old
    checkpoints (``attention.bias``, ``attention.masked_bias``, ``rotary_emb.inv_freq``) are ignored."""
    c = config
    d = c.hidden_size
    w = HFWeights(tensors, prefix="gpt_neox.")
    layers = []
    for i in range(c.num_layers):
        p = f"layers.{i}"
        layers.append(
            {
                "input_layernorm": w.layer_norm(f"{p}.input_layernorm", d),
                "post_attention_layernorm": w.layer_norm(f"{p}.post_attention_layernorm", d),
                "attention": {
                    "query_key_value": w.dense(f"{p}.attention.query_key_value", 3 * d, d, c.attention_bias),
                    "dense": w.dense(f"{p}.attention.dense", d, d, c.attention_bias),
                },
                "mlp": {
                    "dense_h_to_4h": w.dense(f"{p}.mlp.dense_h_to_4h", c.intermediate_size, d, bias=True),
                    "dense_4h_to_h": w.dense(f"{p}.mlp.dense_4h_to_h", d, c.intermediate_size, bias=True),
                },
            }
        )
    w.check_layers("layers.", c.num_layers)
    params = {
        "embed_in": {"embedding": w.get("embed_in.weight", (c.vocab_size, d))},
        "final_layer_norm": w.layer_norm("final_layer_norm", d),
        **layer_params(layers, c.scan_layers),
    }
    if not c.tie_word_embeddings:
        params["lm_head"] = {"kernel": w.get("embed_out.weight", (c.vocab_size, d)).T}
    return params


def build(config: GPTNeoXConfig) -> CausalLM:
    return CausalLM(config, GPTNeoX)


Config = GPTNeoXConfig
