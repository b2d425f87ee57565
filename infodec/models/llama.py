"""Llama family: SmolLM2, TinyLlama, Llama 2/3, Mistral-style and Qwen2-style (qkv bias) models.

One config-driven file. Pre-norm blocks: ``x += attn(rms(x))``, ``x += swiglu(rms(x))``; RoPE in
HF's rotate-half layout (GGUF checkpoints have their Q/K permutation undone at load time).

RoPE scaling: ``linear``, ``llama3``, ``yarn`` (its cos/sin factor folded into the score scale as its
square) and ``dynamic``: HF's dynamic NTK, recomputed per forward call from the call's largest position
(:func:`~infodec.models.layers.rope_frequencies`; plain RoPE below ``max_position_embeddings``, a rescaled
base past it, cached keys keeping the rotation they were written with, as HF's cached decode).

Sliding windows: Mistral's ``sliding_window`` on every layer (a query at p sees keys at q > p - window, as
HF's mask), Qwen2's on the layers ``layer_types`` (or ``max_window_layers``) mark, when
``use_sliding_window``. Config fields that would change the computation but are not implemented raise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from infodec.models.base import CausalLM, HFWeights
from infodec.models.layers import (
    ACTIVATIONS,
    Attention,
    GatedMLP,
    RMSNorm,
    default_scan_layers,
    lm_logits,
    logits_with_layers,
    rope_attention_factor,
    rope_frequencies,
    rope_inv_freq,
    run_decoder,
)

HF_MODEL_TYPES = ("llama", "mistral", "qwen2")

# Window of a full-attention layer among sliding ones (the window is a per-layer array): beyond any context.
NO_WINDOW = np.iinfo(np.int32).max
# RoPE types this file runs as HF does (longrope's long/short switch and its cos/sin factor are not here).
ROPE_TYPES = ("default", "linear", "llama3", "dynamic", "yarn")


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
    sliding_window: int | None = None  # keys at q > p - window only; None = full attention
    sliding_layers: tuple[bool, ...] | None = None  # which layers the window applies to; None = all

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(sorted(ACTIVATIONS))}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be a positive number of tokens, got {self.sliding_window}")
        if self.sliding_layers is not None and len(self.sliding_layers) != self.num_layers:
            raise ValueError(f"sliding_layers has {len(self.sliding_layers)} entries for {self.num_layers} layers")
        scaling = dict(self.rope_scaling or ())
        try:
            rope_inv_freq(self.head_dim, self.rope_theta, scaling)
        except KeyError as error:
            raise ValueError(f"rope_scaling {scaling} lacks the field {error}") from None

    @property
    def attention_scale(self) -> float:
        """``1/sqrt(head_dim)``, times the square of YaRN's cos/sin factor (it multiplies both q and k)."""
        return self.head_dim**-0.5 * rope_attention_factor(dict(self.rope_scaling or ())) ** 2

    def layer_windows(self) -> np.ndarray | None:
        """Per-layer windows (``NO_WINDOW`` where a layer attends fully), None without a sliding window."""
        if self.sliding_window is None:
            return None
        sliding = self.sliding_layers or (True,) * self.num_layers
        return np.array([self.sliding_window if s else NO_WINDOW for s in sliding], np.int32)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, scan_layers: bool | None = None) -> LlamaConfig:
        """Reads an HF ``config.json`` dict (old ``rope_theta``/``rope_scaling`` or new ``rope_parameters``)."""
        heads = hf["num_attention_heads"]
        model_type = hf.get("model_type", "llama")
        max_positions = hf.get("max_position_embeddings", 2048)
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        if any(isinstance(value, Mapping) for value in rope.values()):
            raise ValueError(f"per-layer-type rope_parameters are not supported by {model_type}: {rope}")
        theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise ValueError(
                f"unsupported rope scaling type {kind!r} for {model_type}; supported: {', '.join(ROPE_TYPES)}"
            )
        partial = rope.pop("partial_rotary_factor", hf.get("partial_rotary_factor")) or 1.0
        if partial != 1.0:
            raise ValueError(f"partial_rotary_factor {partial} is not supported by {model_type} (full rotary only)")
        if kind == "yarn":  # HF's defaults: the trained length is max_position_embeddings, factor their ratio
            if hf.get("original_max_position_embeddings") is not None:
                rope["original_max_position_embeddings"] = hf["original_max_position_embeddings"]
            rope.setdefault("original_max_position_embeddings", max_positions)
            if rope.get("factor") is None:
                rope["factor"] = max_positions / rope["original_max_position_embeddings"]
        window, sliding = None, None
        if model_type == "mistral":  # HF's MistralModel windows every layer (it ignores layer_types)
            window = hf.get("sliding_window")
        elif model_type == "qwen2" and hf.get("use_sliding_window"):
            window = hf.get("sliding_window")
            layer_types = hf.get("layer_types") or [
                "sliding_attention" if i >= hf.get("max_window_layers", 28) else "full_attention"
                for i in range(hf["num_hidden_layers"])
            ]
            unknown = sorted(set(layer_types) - {"sliding_attention", "full_attention"})
            if unknown:
                raise ValueError(f"unsupported layer_types {unknown} for qwen2")
            sliding = tuple(layer == "sliding_attention" for layer in layer_types)
        # Mistral and Qwen2 have no bias settings in HF (Qwen2: q/k/v bias always, o-proj and MLP none).
        bias = model_type == "llama" and hf.get("attention_bias", False)
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
            max_position_embeddings=max_positions,
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            qkv_bias=model_type == "qwen2" or bias,
            out_bias=bias,
            mlp_bias=model_type == "llama" and hf.get("mlp_bias", False),
            hidden_act=hf.get("hidden_act", "silu"),
            rope_scaling=None if kind == "default" else tuple(sorted(rope.items())),
            scan_layers=default_scan_layers() if scan_layers is None else scan_layers,
            model_type=model_type,
            sliding_window=window,
            sliding_layers=sliding,
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
            **self._hf_window(),
        }

    def _hf_window(self) -> dict[str, Any]:
        if self.sliding_window is None:
            return {}
        if self.sliding_layers is None:  # every layer: Mistral
            mistral = {"architectures": ["MistralForCausalLM"], "model_type": "mistral"}
            return {**mistral, "sliding_window": self.sliding_window}
        raise ValueError("a per-layer sliding window has no llama config.json (it is a qwen2 checkpoint's)")


class LlamaBlock(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, kv, layer, *, positions, k_positions, index, inv_freq, window=None):
        c = self.config
        attn = Attention(
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.hidden_size,
            scale=c.attention_scale,
            qkv_bias=c.qkv_bias,
            out_bias=c.out_bias,
            dtype=c.dtype,
            name="self_attn",
        )
        norm = lambda name: RMSNorm(c.rms_norm_eps, dtype=c.dtype, name=name)
        h, kv = attn(norm("input_layernorm")(x), positions, k_positions, kv, layer, index, inv_freq, window)
        x = x + h
        mlp = GatedMLP(c.intermediate_size, c.hidden_size, c.hidden_act, c.mlp_bias, dtype=c.dtype, name="mlp")
        return x + mlp(norm("post_attention_layernorm")(x)), kv


class Llama(nn.Module):
    config: LlamaConfig
    RETURNS_LAYERS = True  # CausalLM.apply(..., return_layers=...): early-exit logits

    @nn.compact
    def __call__(self, tokens, positions, cache, return_layers=None, norm_layers=False):
        c = self.config
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=c.dtype, name="embed_tokens")
        x = embed(tokens)
        scaling = dict(c.rope_scaling or ()) or None
        inv_freq = rope_frequencies(c.head_dim, c.rope_theta, scaling, positions, c.max_position_embeddings)
        windows = c.layer_windows()
        x, cache, *states = run_decoder(
            LlamaBlock,
            c,
            x,
            positions,
            cache,
            layer_args={} if windows is None else {"window": windows},
            return_layers=return_layers,
            inv_freq=inv_freq,
        )
        norm = RMSNorm(c.rms_norm_eps, dtype=c.dtype, name="norm")
        x = norm(x)
        head = lambda h: lm_logits(h, embed if c.tie_word_embeddings else None, c.vocab_size, c.dtype)
        if not states:
            return head(x), x, cache
        logits, layer_logits = logits_with_layers(head, x, norm(states[0]) if norm_layers else states[0])
        return logits, x, cache, layer_logits


def convert_hf_weights(config: LlamaConfig, tensors: Mapping[str, Any]) -> dict:
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
