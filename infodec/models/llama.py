"""Llama family: SmolLM2, TinyLlama, Llama 2/3, Mistral-style and Qwen2-style (qkv bias) models.

One config-driven file. Pre-norm blocks: ``x += attn(rms(x))``, ``x += swiglu(rms(x))``; RoPE in
HF's rotate-half layout (GGUF checkpoints have their Q/K permutation undone at load time).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from infodec.models.base import CausalLM, HFWeights
from infodec.models.layers import (
    Attention,
    GatedMLP,
    RMSNorm,
    default_scan_layers,
    lm_logits,
    rope_inv_freq,
    run_layers,
)

HF_MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
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
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # a tuple of items, so the config hashes
    scan_layers: bool = False
    model_type: str = "llama"
    dtype: str = "float32"  # parameters and activations (a name, so the config hashes)
    cache_dtype: str | None = None  # the KV cache; None = ``dtype``

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, scan_layers: bool | None = None) -> LlamaConfig:
        """Reads an HF ``config.json`` dict (old ``rope_theta``/``rope_scaling`` or new ``rope_parameters``)."""
        heads = hf["num_attention_heads"]
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        kind = rope.get("rope_type", rope.get("type", "default"))
        model_type = hf.get("model_type", "llama")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            qkv_bias=model_type == "qwen2" or hf.get("attention_bias", False),
            out_bias=model_type != "qwen2" and hf.get("attention_bias", False),
            mlp_bias=hf.get("mlp_bias", False),
            hidden_act=hf.get("hidden_act", "silu"),
            rope_scaling=None if kind == "default" else tuple(sorted(rope.items())),
            scan_layers=default_scan_layers() if scan_layers is None else scan_layers,
            model_type=model_type,
        )

    def to_hf(self) -> dict[str, Any]:
        """The HF ``config.json`` for this architecture (HF transformers can load the same directory)."""
        rope = {"rope_type": "default", **dict(self.rope_scaling or ()), "rope_theta": self.rope_theta}
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.qkv_bias,
            "mlp_bias": self.mlp_bias,
            "hidden_act": self.hidden_act,
            "torch_dtype": "float32",
        }


class LlamaBlock(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, kv, layer, *, positions, k_positions, index, inv_freq):
        c = self.config
        attn = Attention(
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.hidden_size,
            scale=c.head_dim**-0.5,
            qkv_bias=c.qkv_bias,
            out_bias=c.out_bias,
            dtype=c.dtype,
            name="self_attn",
        )
        norm = lambda name: RMSNorm(c.rms_norm_eps, dtype=c.dtype, name=name)
        h, kv = attn(norm("input_layernorm")(x), positions, k_positions, kv, layer, index, inv_freq)
        x = x + h
        mlp = GatedMLP(c.intermediate_size, c.hidden_size, c.hidden_act, c.mlp_bias, dtype=c.dtype, name="mlp")
        return x + mlp(norm("post_attention_layernorm")(x)), kv


class Llama(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, tokens, positions, cache):
        c = self.config
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=c.dtype, name="embed_tokens")
        x = embed(tokens)
        index, kv, k_positions = None, None, positions
        if cache is not None:
            index = cache.index
            cache = cache.write_positions(positions)
            kv, k_positions = (cache.k, cache.v), cache.positions
        inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, dict(c.rope_scaling or ()) or None)
        x, kv = run_layers(
            LlamaBlock,
            c,
            c.scan_layers,
            x,
            kv,
            layer_args={},
            positions=positions,
            k_positions=k_positions,
            index=index,
            inv_freq=inv_freq,
        )
        x = RMSNorm(c.rms_norm_eps, dtype=c.dtype, name="norm")(x)
        logits = lm_logits(x, embed if c.tie_word_embeddings else None, c.vocab_size, c.dtype)
        if cache is not None:
            cache = cache.replace(k=kv[0], v=kv[1])
        return logits, x, cache


def convert_hf_weights(config: LlamaConfig, tensors: Mapping[str, np.ndarray]) -> dict:
    """HF ``LlamaForCausalLM`` state dict (numpy, ``[out, in]`` linears) -> Flax params."""
    c = config
    w = HFWeights(tensors)
    q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    layers = []
    for i in range(c.num_layers):
        p = f"layers.{i}"
        layers.append(
            {
                "input_layernorm": w.norm(f"{p}.input_layernorm", c.hidden_size),
                "post_attention_layernorm": w.norm(f"{p}.post_attention_layernorm", c.hidden_size),
                "self_attn": {
                    "q_proj": w.dense(f"{p}.self_attn.q_proj", q_dim, c.hidden_size, c.qkv_bias),
                    "k_proj": w.dense(f"{p}.self_attn.k_proj", kv_dim, c.hidden_size, c.qkv_bias),
                    "v_proj": w.dense(f"{p}.self_attn.v_proj", kv_dim, c.hidden_size, c.qkv_bias),
                    "o_proj": w.dense(f"{p}.self_attn.o_proj", c.hidden_size, q_dim, c.out_bias),
                },
                "mlp": {
                    "gate_proj": w.dense(f"{p}.mlp.gate_proj", c.intermediate_size, c.hidden_size, c.mlp_bias),
                    "up_proj": w.dense(f"{p}.mlp.up_proj", c.intermediate_size, c.hidden_size, c.mlp_bias),
                    "down_proj": w.dense(f"{p}.mlp.down_proj", c.hidden_size, c.intermediate_size, c.mlp_bias),
                },
            }
        )
    return w.decoder(c, layers)


def build(config: LlamaConfig) -> CausalLM:
    return CausalLM(config, Llama)


Config = LlamaConfig
