"""OLMo 2 (HF ``Olmo2ForCausalLM``, model_type ``olmo2``), e.g. OLMo-2-0425-1B, OLMo-2-1124-7B/13B.

Llama's parts in a post-norm arrangement: the norms act on the outputs of attention and MLP, before the
residual add, and there is no norm on a block's input::

    x += post_attention_norm(attn(x))
    x += post_feedforward_norm(swiglu(x))

The q and k projections are RMS-normalised over the whole projection (``[num_heads * head_dim]`` and
``[num_kv_heads * head_dim]`` weights), before RoPE and before the split into heads, unlike the per-head
q/k norms of Qwen 3 and Gemma 3. Plain RMS norms (``w``, not ``1 + w``); the LM head is untied by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from infodec.models.base import CausalLM, HFWeights
from infodec.models.layers import (
    Attention,
    GatedMLP,
    RMSNorm,
    default_scan_layers,
    lm_logits,
    rope_inv_freq,
    run_decoder,
)

HF_MODEL_TYPES = ("olmo2",)


@dataclasses.dataclass(frozen=True)
class Olmo2Config:
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
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    hidden_act: str = "silu"
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # a tuple of items, so the config hashes
    scan_layers: bool = False
    model_type: str = "olmo2"
    dtype: str = "float32"  # parameters and activations (a name, so the config hashes)
    cache_dtype: str | None = None  # the KV cache; None = ``dtype``

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, scan_layers: bool | None = None) -> Olmo2Config:
        """Reads an HF ``config.json`` dict (old ``rope_theta``/``rope_scaling`` or new ``rope_parameters``)."""
        heads = hf["num_attention_heads"]
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        partial = rope.pop("partial_rotary_factor", None) or 1.0
        if partial != 1.0:
            raise ValueError(f"olmo2: partial_rotary_factor={partial} is not supported")
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ("default", "linear", "llama3"):
            raise ValueError(f"olmo2: unsupported rope_type {kind!r}; supported: default, linear, llama3")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            attention_bias=hf.get("attention_bias", False),
            hidden_act=hf.get("hidden_act", "silu"),
            rope_scaling=None if kind == "default" else tuple(sorted(rope.items())),
            scan_layers=default_scan_layers() if scan_layers is None else scan_layers,
        )


class Olmo2Block(nn.Module):
    config: Olmo2Config

    @nn.compact
    def __call__(self, x, kv, layer, *, positions, k_positions, index, inv_freq):
        c = self.config
        norm = lambda name: RMSNorm(c.rms_norm_eps, dtype=c.dtype, name=name)
        attn = Attention(
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.hidden_size,
            scale=c.head_dim**-0.5,
            qkv_bias=c.attention_bias,
            out_bias=c.attention_bias,
            qk_norm_eps=c.rms_norm_eps,
            qk_norm_per_head=False,  # over the whole q and k projections (module docstring)
            dtype=c.dtype,
            name="self_attn",
        )
        h, kv = attn(x, positions, k_positions, kv, layer, index, inv_freq)
        x = x + norm("post_attention_layernorm")(h)
        mlp = GatedMLP(c.intermediate_size, c.hidden_size, c.hidden_act, dtype=c.dtype, name="mlp")
        return x + norm("post_feedforward_layernorm")(mlp(x)), kv


class Olmo2(nn.Module):
    config: Olmo2Config

    @nn.compact
    def __call__(self, tokens, positions, cache):
        c = self.config
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=c.dtype, name="embed_tokens")
        x = embed(tokens)
        inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, dict(c.rope_scaling or ()) or None)
        x, cache = run_decoder(Olmo2Block, c, x, positions, cache, inv_freq=inv_freq)
        x = RMSNorm(c.rms_norm_eps, dtype=c.dtype, name="norm")(x)
        return lm_logits(x, embed if c.tie_word_embeddings else None, c.vocab_size, c.dtype), x, cache


def convert_hf_weights(config: Olmo2Config, tensors: Mapping[str, Any]) -> dict:
    """HF ``Olmo2ForCausalLM`` state dict (``[out, in]`` linears) -> Flax params."""
    c = config
    w = HFWeights(tensors)
    q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    bias = c.attention_bias
    layers = []
    for i in range(c.num_layers):
        p = f"layers.{i}"
        layers.append(
            {
                "post_attention_layernorm": w.norm(f"{p}.post_attention_layernorm", c.hidden_size),
                "post_feedforward_layernorm": w.norm(f"{p}.post_feedforward_layernorm", c.hidden_size),
                "self_attn": {
                    "q_proj": w.dense(f"{p}.self_attn.q_proj", q_dim, c.hidden_size, bias),
                    "k_proj": w.dense(f"{p}.self_attn.k_proj", kv_dim, c.hidden_size, bias),
                    "v_proj": w.dense(f"{p}.self_attn.v_proj", kv_dim, c.hidden_size, bias),
                    "o_proj": w.dense(f"{p}.self_attn.o_proj", c.hidden_size, q_dim, bias),
                    "q_norm": w.norm(f"{p}.self_attn.q_norm", q_dim),
                    "k_norm": w.norm(f"{p}.self_attn.k_norm", kv_dim),
                },
                "mlp": {
                    "gate_proj": w.dense(f"{p}.mlp.gate_proj", c.intermediate_size, c.hidden_size),
                    "up_proj": w.dense(f"{p}.mlp.up_proj", c.intermediate_size, c.hidden_size),
                    "down_proj": w.dense(f"{p}.mlp.down_proj", c.hidden_size, c.intermediate_size),
                },
            }
        )
    return w.decoder(c, layers)


def build(config: Olmo2Config) -> CausalLM:
    return CausalLM(config, Olmo2)


Config = Olmo2Config
