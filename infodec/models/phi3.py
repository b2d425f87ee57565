"""Phi-3 / Phi-3.5 / Phi-4 (HF ``Phi3ForCausalLM``, model_type ``phi3``), e.g. Phi-3-mini-4k/128k, Phi-4.

Llama's pre-norm blocks with fused projections in the checkpoint: ``qkv_proj`` (rows ``[q | k | v]``) and
``gate_up_proj`` (rows ``[gate | up]``), split into Llama's parameter names at load time (lazily, rows of
the stored tensors). A ``sliding_window`` in the config applies to every layer, as HF's mask does.

RoPE scaling ``longrope`` (``su``, and the legacy ``yarn`` name HF maps to it): the frequencies are divided
by ``short_factor`` or ``long_factor`` and cos/sin multiplied by an attention factor (applied here as its
square on the score scale). HF's forward pass takes the long factors when its largest position + 1
exceeds ``original_max_position_embeddings``; infodec applies the same rule on every call (the largest
position in the call, over the batch), whatever the cache size. So a prompt past the original context
runs long factors throughout, one within it short factors, as in HF. A cached decode that crosses the
boundary keeps the keys it cached with the short factors and computes new ones with the long factors: HF's
forward pass step by step, but not HF's ``generate``, which at the crossing step drops its cache and
re-prefills the whole sequence with the long factors (``Phi3ForCausalLM.prepare_inputs_for_generation``);
a static cache cannot, so from that step on the logits differ from ``generate``'s.

``partial_rotary_factor`` (Phi-4-mini: 0.75) rotates each head's leading ``int(head_dim * factor)``
dimensions only (longrope factors then have that many halves).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from infodec.models.base import CausalLM, HFWeights
from infodec.models.layers import (
    Attention,
    GatedMLP,
    RMSNorm,
    default_scan_layers,
    lm_logits,
    longrope_attention_factor,
    longrope_inv_freq,
    rope_inv_freq,
    run_decoder,
)
from infodec.models.tensors import split_rows

HF_MODEL_TYPES = ("phi3",)
LONGROPE_NAMES = ("longrope", "su", "yarn")  # HF's Phi3Config renames "su" and "yarn" to "longrope"


@dataclasses.dataclass(frozen=True)
class Phi3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    sliding_window: int | None = None
    partial_rotary_factor: float = 1.0  # the leading int(head_dim * factor) dimensions of a head are rotated
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    # longrope: items with long_factor/short_factor as tuples, original_max_position_embeddings resolved
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    scan_layers: bool = False
    model_type: str = "phi3"
    dtype: str = "float32"  # parameters and activations (a name, so the config hashes)
    cache_dtype: str | None = None  # the KV cache; None = ``dtype``

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, scan_layers: bool | None = None) -> Phi3Config:
        """Reads an HF ``config.json`` dict (old ``rope_theta``/``rope_scaling`` or new ``rope_parameters``)."""
        heads = hf["num_attention_heads"]
        rope = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
        theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        partial = rope.pop("partial_rotary_factor", None) or hf.get("partial_rotary_factor") or 1.0
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        if int(head_dim * partial) % 2 or not 0 < partial <= 1:
            raise ValueError(f"phi3: partial_rotary_factor={partial} gives an odd or empty rotary dimension")
        kind = rope.pop("rope_type", rope.pop("type", "default"))
        scaling = None
        if kind in LONGROPE_NAMES:
            original = (
                hf.get("original_max_position_embeddings")
                or rope.get("original_max_position_embeddings")
                or hf.get("max_position_embeddings", 4096)
            )
            rope.update(
                rope_type="longrope",
                original_max_position_embeddings=original,
                long_factor=tuple(rope["long_factor"]),
                short_factor=tuple(rope["short_factor"]),
            )
            scaling = tuple(sorted(rope.items()))
        elif kind != "default":
            raise ValueError(f"phi3: unsupported rope_type {kind!r}; supported: default, longrope (su)")
        if hf.get("attention_bias"):
            raise ValueError("phi3: attention_bias is not supported (Phi-3 projections have no bias)")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            sliding_window=hf.get("sliding_window"),
            partial_rotary_factor=float(partial),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            hidden_act=hf.get("hidden_act", "silu"),
            rope_scaling=scaling,
            scan_layers=default_scan_layers() if scan_layers is None else scan_layers,
        )

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def attention_factor(self) -> float:
        """longrope's multiplier of cos and sin (1 without longrope)."""
        if self.rope_scaling is None:
            return 1.0
        return longrope_attention_factor(dict(self.rope_scaling), self.max_position_embeddings)


def _inv_freq(c: Phi3Config, positions):
    """The call's RoPE frequencies: longrope's long factors when its largest position reaches past
    ``original_max_position_embeddings`` (HF's rule, module docstring), else the short ones."""
    if c.rope_scaling is None:
        return rope_inv_freq(c.rotary_dim, c.rope_theta)
    scaling = dict(c.rope_scaling)
    short = longrope_inv_freq(c.rotary_dim, c.rope_theta, scaling, long=False)
    long = longrope_inv_freq(c.rotary_dim, c.rope_theta, scaling, long=True)
    return jnp.where(jnp.max(positions) + 1 > scaling["original_max_position_embeddings"], long, short)


class Phi3Block(nn.Module):
    config: Phi3Config

    @nn.compact
    def __call__(self, x, kv, layer, *, positions, k_positions, index, inv_freq):
        c = self.config
        attn = Attention(
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.hidden_size,
            scale=c.head_dim**-0.5 * c.attention_factor**2,  # HF multiplies cos and sin, so q and k, by the factor
            rotary_dim=c.rotary_dim,
            dtype=c.dtype,
            name="self_attn",
        )
        norm = lambda name: RMSNorm(c.rms_norm_eps, dtype=c.dtype, name=name)
        h, kv = attn(norm("input_layernorm")(x), positions, k_positions, kv, layer, index, inv_freq, c.sliding_window)
        x = x + h
        mlp = GatedMLP(c.intermediate_size, c.hidden_size, c.hidden_act, dtype=c.dtype, name="mlp")
        return x + mlp(norm("post_attention_layernorm")(x)), kv


class Phi3(nn.Module):
    config: Phi3Config

    @nn.compact
    def __call__(self, tokens, positions, cache):
        c = self.config
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=c.dtype, name="embed_tokens")
        x = embed(tokens)
        x, cache = run_decoder(Phi3Block, c, x, positions, cache, inv_freq=_inv_freq(c, positions))
        x = RMSNorm(c.rms_norm_eps, dtype=c.dtype, name="norm")(x)
        return lm_logits(x, embed if c.tie_word_embeddings else None, c.vocab_size, c.dtype), x, cache


def convert_hf_weights(config: Phi3Config, tensors: Mapping[str, Any]) -> dict:
    """HF ``Phi3ForCausalLM`` state dict (``[out, in]`` linears, fused qkv and gate/up) -> Flax params."""
    c = config
    w = HFWeights(tensors)
    q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    layers = []
    for i in range(c.num_layers):
        p = f"layers.{i}"
        qkv = w.get(f"{p}.self_attn.qkv_proj.weight", (q_dim + 2 * kv_dim, c.hidden_size))
        q, k, v = split_rows(qkv, (q_dim, kv_dim, kv_dim))
        gate_up = w.get(f"{p}.mlp.gate_up_proj.weight", (2 * c.intermediate_size, c.hidden_size))
        gate, up = split_rows(gate_up, (c.intermediate_size, c.intermediate_size))
        layers.append(
            {
                "input_layernorm": w.norm(f"{p}.input_layernorm", c.hidden_size),
                "post_attention_layernorm": w.norm(f"{p}.post_attention_layernorm", c.hidden_size),
                "self_attn": {
                    "q_proj": {"kernel": q.T},
                    "k_proj": {"kernel": k.T},
                    "v_proj": {"kernel": v.T},
                    "o_proj": w.dense(f"{p}.self_attn.o_proj", c.hidden_size, q_dim),
                },
                "mlp": {
                    "gate_proj": {"kernel": gate.T},
                    "up_proj": {"kernel": up.T},
                    "down_proj": w.dense(f"{p}.mlp.down_proj", c.hidden_size, c.intermediate_size),
                },
            }
        )
    return w.decoder(c, layers)


def build(config: Phi3Config) -> CausalLM:
    return CausalLM(config, Phi3)


Config = Phi3Config
