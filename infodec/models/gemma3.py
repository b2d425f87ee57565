"""Gemma 3 text models (HF ``Gemma3ForCausalLM``, model_type ``gemma3_text``), e.g. Gemma 3 270M/1B.

Sandwich-norm blocks, every norm Gemma's ``(1 + w)`` RMS norm::

    x += post_attention_norm(attn(input_norm(x)))
    x += post_feedforward_norm(geglu(pre_feedforward_norm(x)))

Attention has per-head q/k norms and scale ``query_pre_attn_scalar ** -0.5``. Layers are either
``sliding_attention`` (window ``sliding_window``, local RoPE base, 1e4 for Gemma 3) or
``full_attention`` (global RoPE base, 1e6, plus optional scaling such as linear x8 for 4B+). Embeddings
are scaled by ``sqrt(hidden_size)`` and the LM head is tied to them.

Multimodal Gemma 3 checkpoints (``Gemma3ForConditionalGeneration``, model_type ``gemma3``: Gemma 3
4B/12B/27B) load as their text model: the config's ``text_config`` (HF's defaults where it omits a field)
and the language model's weights (``language_model.model.*`` as transformers writes them, or
``model.language_model.*``). The vision tower and projector are not read: image inputs are not supported.
On text the two models give the same logits. Gemma 2 (:mod:`infodec.models.gemma2`) reuses these modules
with ``qk_norm=False``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from infodec.models.base import CausalLM, CheckpointMismatchError, HFWeights
from infodec.models.layers import (
    Attention,
    GatedMLP,
    RMSNorm,
    default_scan_layers,
    lm_logits,
    rope_inv_freq,
    run_decoder,
)

HF_MODEL_TYPES = ("gemma3_text", "gemma3")

# ``Gemma3TextConfig``'s defaults: a multimodal checkpoint's ``text_config`` may omit any of them.
TEXT_CONFIG_DEFAULTS = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "max_position_embeddings": 131_072,
}
# Prefixes of the language model's weights in a multimodal checkpoint (transformers' save format; the
# in-memory one of transformers 5), mapped to a text model's.
MULTIMODAL_PREFIXES = {
    "language_model.model.": "model.",
    "model.language_model.": "model.",
    "language_model.lm_head.": "lm_head.",
    "lm_head.": "lm_head.",
}

LAYER_TYPES = ("sliding_attention", "full_attention")
# HF's defaults when a config gives no RoPE base (``Gemma3TextConfig.default_theta``).
DEFAULT_GLOBAL_THETA = 1_000_000.0
DEFAULT_LOCAL_THETA = 10_000.0
# Window of full-attention layers when the window is traced (scanned layers): larger than any context.
NO_WINDOW = np.iinfo(np.int32).max

log = logging.getLogger(__name__)


ROPE_TYPES = ("default", "linear", "llama3")  # frequencies only: no per-call update, no cos/sin attention factor


def rope_items(params: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...] | None:
    """RoPE scaling as a hashable tuple of items, None for plain (``default``) RoPE."""
    params = {key: value for key, value in (params or {}).items() if key != "rope_theta"}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return None
    if kind not in ROPE_TYPES:
        raise ValueError(f"gemma: unsupported rope scaling type {kind!r}; supported: {', '.join(ROPE_TYPES)}")
    return tuple(sorted((key, tuple(value) if isinstance(value, list) else value) for key, value in params.items()))


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    query_pre_attn_scalar: float
    sliding_window: int | None
    layer_types: tuple[str, ...]  # "sliding_attention" / "full_attention", one per layer
    rope_theta: float  # full-attention (global) layers
    rope_local_theta: float  # sliding-attention (local) layers
    max_position_embeddings: int
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # global layers; items, so the config hashes
    rope_local_scaling: tuple[tuple[str, Any], ...] | None = None
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    hidden_act: str = "gelu_pytorch_tanh"
    final_logit_softcapping: float | None = None
    # Applied to attention scores when set. ``from_hf`` leaves it None: HF's Gemma 3 reads the config
    # field but never passes it to attention, and our logits must equal HF's on the same directory.
    attn_logit_softcapping: float | None = None
    qk_norm: bool = True  # per-head (1 + w) RMS norms of q and k (Gemma 3; not Gemma 2)
    scan_layers: bool = False
    model_type: str = "gemma3_text"
    dtype: str = "float32"  # parameters and activations (a name, so the config hashes)
    cache_dtype: str | None = None  # the KV cache; None = ``dtype``

    def __post_init__(self):
        if len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ValueError(f"unsupported Gemma 3 layer types {unknown}; supported: {', '.join(LAYER_TYPES)}")

    @property
    def is_global(self) -> np.ndarray:
        """``[num_layers]`` bool, True for full-attention layers."""
        return np.array([kind == "full_attention" for kind in self.layer_types], dtype=bool)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, scan_layers: bool | None = None) -> Gemma3Config:
        """Reads an HF ``config.json`` dict, in transformers 5's or the older format.

        transformers 5: ``layer_types`` and ``rope_parameters = {"full_attention": {...},
        "sliding_attention": {...}}``. Older: ``sliding_window_pattern`` (every N-th layer global),
        ``rope_theta`` + ``rope_scaling`` (global) and ``rope_local_base_freq`` (local). A multimodal
        ``gemma3`` config is read from its ``text_config`` (module docstring).
        """
        if hf.get("model_type") == "gemma3" or "text_config" in hf:
            text = {**TEXT_CONFIG_DEFAULTS, **(hf.get("text_config") or {})}
            text.setdefault("tie_word_embeddings", hf.get("tie_word_embeddings", True))
            if text.get("model_type", "gemma3_text") != "gemma3_text":
                raise ValueError(f"gemma3 text_config has model_type {text['model_type']!r}, expected 'gemma3_text'")
            return dataclasses.replace(cls.from_hf(text, scan_layers=scan_layers), model_type="gemma3")
        if hf.get("use_bidirectional_attention"):
            raise ValueError(
                "Gemma 3 with use_bidirectional_attention (an encoder, e.g. EmbeddingGemma) "
                "is not a causal LM and is not supported"
            )
        layers = hf["num_hidden_layers"]
        layer_types = hf.get("layer_types")
        if layer_types is None:
            pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
            layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]

        rope = hf.get("rope_parameters") or {}
        if set(rope) & set(LAYER_TYPES):  # transformers 5: one entry per layer type
            global_rope = dict(rope.get("full_attention") or {})
            local_rope = dict(rope.get("sliding_attention") or {})
        else:  # flat (global) parameters, or none
            global_rope, local_rope = dict(rope), {}
        if hf.get("rope_scaling"):  # old format: scaling of the global layers (HF merges it the same way)
            global_rope.update(hf["rope_scaling"])
        global_theta = global_rope.get("rope_theta", hf.get("rope_theta", DEFAULT_GLOBAL_THETA))
        local_theta = local_rope.get("rope_theta", hf.get("rope_local_base_freq", DEFAULT_LOCAL_THETA))
        if hf.get("attn_logit_softcapping") is not None:
            log.warning(
                "ignoring attn_logit_softcapping=%s: HF's Gemma3ForCausalLM does not apply it",
                hf["attn_logit_softcapping"],
            )
        return cls(
            **common_fields_from_hf(hf, scan_layers),
            layer_types=tuple(layer_types),
            rope_theta=float(global_theta),
            rope_local_theta=float(local_theta),
            max_position_embeddings=hf.get("max_position_embeddings", 131072),
            rope_scaling=rope_items(global_rope),
            rope_local_scaling=rope_items(local_rope),
            final_logit_softcapping=hf.get("final_logit_softcapping"),
        )

    def to_hf(self) -> dict[str, Any]:
        """The HF ``config.json`` (``Gemma3ForCausalLM.from_pretrained`` loads the same directory).

        Written in transformers 5's format, plus the older keys (``rope_theta``, ``rope_local_base_freq``,
        ``rope_scaling``, ``sliding_window_pattern`` when the layers follow one) older versions read.
        """
        global_rope = {"rope_type": "default", **dict(self.rope_scaling or ()), "rope_theta": self.rope_theta}
        local_rope = {
            "rope_type": "default",
            **dict(self.rope_local_scaling or ()),
            "rope_theta": self.rope_local_theta,
        }
        config = {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            **self.common_hf_fields(),
            "rope_parameters": {"full_attention": global_rope, "sliding_attention": local_rope},
            "rope_local_base_freq": self.rope_local_theta,
        }
        if self.rope_scaling:
            config["rope_scaling"] = dict(self.rope_scaling)
        for pattern in range(1, self.num_layers + 1):
            if self.layer_types == tuple(
                "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(self.num_layers)
            ):
                config["sliding_window_pattern"] = pattern
                break
        return config

    def common_hf_fields(self) -> dict[str, Any]:
        """The ``config.json`` fields Gemma 2 and Gemma 3 write alike: all but the architecture and the
        RoPE parameters (the inverse of :func:`common_fields_from_hf` and of the fields each family reads)."""
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "sliding_window": self.sliding_window,
            "layer_types": list(self.layer_types),
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_activation": self.hidden_act,
            "final_logit_softcapping": self.final_logit_softcapping,
            "attn_logit_softcapping": self.attn_logit_softcapping,
            "torch_dtype": "float32",
        }


def common_fields_from_hf(hf: Mapping[str, Any], scan_layers: bool | None) -> dict[str, Any]:
    """The config fields Gemma 2 and Gemma 3 read alike from an HF ``config.json`` (with the same defaults):
    sizes, heads, norms, window, bias, activation and ``scan_layers`` (the platform default when None)."""
    heads = hf["num_attention_heads"]
    return {
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "intermediate_size": hf["intermediate_size"],
        "num_layers": hf["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "rms_norm_eps": hf.get("rms_norm_eps", 1e-6),
        "query_pre_attn_scalar": hf.get("query_pre_attn_scalar", 256),
        "sliding_window": hf.get("sliding_window", 4096),
        "tie_word_embeddings": hf.get("tie_word_embeddings", True),
        "attention_bias": hf.get("attention_bias", False),
        "hidden_act": hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh",
        "scan_layers": default_scan_layers() if scan_layers is None else scan_layers,
    }


def _layer_rope_and_window(c: Gemma3Config, is_global, local_inv_freq, global_inv_freq):
    """The layer's RoPE frequencies and window: static for a Python bool, selected when traced."""
    if isinstance(is_global, (bool, np.bool_)):  # unrolled layers
        if is_global:
            return global_inv_freq, None
        return local_inv_freq, c.sliding_window
    inv_freq = jnp.where(is_global, global_inv_freq, local_inv_freq)
    window = None if c.sliding_window is None else jnp.where(is_global, NO_WINDOW, c.sliding_window)
    return inv_freq, window


class Gemma3Block(nn.Module):
    config: Gemma3Config

    @nn.compact
    def __call__(self, x, kv, layer, *, is_global, positions, k_positions, index, local_inv_freq, global_inv_freq):
        c = self.config
        norm = lambda name: RMSNorm(c.rms_norm_eps, offset=1.0, dtype=c.dtype, name=name)
        inv_freq, window = _layer_rope_and_window(c, is_global, local_inv_freq, global_inv_freq)
        attn = Attention(
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.hidden_size,
            scale=c.query_pre_attn_scalar**-0.5,
            qkv_bias=c.attention_bias,
            out_bias=c.attention_bias,
            qk_norm_eps=c.rms_norm_eps if c.qk_norm else None,
            norm_offset=1.0,
            softcap=c.attn_logit_softcapping,
            dtype=c.dtype,
            name="self_attn",
        )
        h, kv = attn(norm("input_layernorm")(x), positions, k_positions, kv, layer, index, inv_freq, window)
        x = x + norm("post_attention_layernorm")(h)
        mlp = GatedMLP(c.intermediate_size, c.hidden_size, c.hidden_act, dtype=c.dtype, name="mlp")
        return x + norm("post_feedforward_layernorm")(mlp(norm("pre_feedforward_layernorm")(x))), kv


class Gemma3(nn.Module):
    config: Gemma3Config

    @nn.compact
    def __call__(self, tokens, positions, cache):
        c = self.config
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=c.dtype, name="embed_tokens")
        x = embed(tokens)
        # HF multiplies by a float32 sqrt(hidden_size) cast to the weights' dtype (55.5, not 55.43, in bf16).
        x = x * jnp.asarray(np.float32(math.sqrt(c.hidden_size))).astype(x.dtype)
        x, cache = run_decoder(
            Gemma3Block,
            c,
            x,
            positions,
            cache,
            layer_args={"is_global": c.is_global},
            local_inv_freq=rope_inv_freq(c.head_dim, c.rope_local_theta, dict(c.rope_local_scaling or ()) or None),
            global_inv_freq=rope_inv_freq(c.head_dim, c.rope_theta, dict(c.rope_scaling or ()) or None),
        )
        x = RMSNorm(c.rms_norm_eps, offset=1.0, dtype=c.dtype, name="norm")(x)
        logits = lm_logits(x, embed if c.tie_word_embeddings else None, c.vocab_size, c.dtype)
        if c.final_logit_softcapping is not None:
            logits = c.final_logit_softcapping * jnp.tanh(logits / c.final_logit_softcapping)
        return logits, x, cache


def convert_hf_weights(config: Gemma3Config, tensors: Mapping[str, Any]) -> dict:
    """HF ``Gemma3ForCausalLM`` state dict (numpy, ``[out, in]`` linears, norms store ``w``) -> Flax params.

    A multimodal checkpoint's language-model weights are renamed to a text model's; the rest is not read."""
    c = config
    if c.model_type == "gemma3":
        tensors = text_weights(tensors)
    w = HFWeights(tensors)
    q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    bias = c.attention_bias
    layers = []
    for i in range(c.num_layers):
        p = f"layers.{i}"
        norms = (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        )
        layers.append(
            {
                **{name: w.norm(f"{p}.{name}", c.hidden_size) for name in norms},
                "self_attn": {
                    "q_proj": w.dense(f"{p}.self_attn.q_proj", q_dim, c.hidden_size, bias),
                    "k_proj": w.dense(f"{p}.self_attn.k_proj", kv_dim, c.hidden_size, bias),
                    "v_proj": w.dense(f"{p}.self_attn.v_proj", kv_dim, c.hidden_size, bias),
                    "o_proj": w.dense(f"{p}.self_attn.o_proj", c.hidden_size, q_dim, bias),
                    **(
                        {
                            "q_norm": w.norm(f"{p}.self_attn.q_norm", c.head_dim),
                            "k_norm": w.norm(f"{p}.self_attn.k_norm", c.head_dim),
                        }
                        if c.qk_norm
                        else {}
                    ),
                },
                "mlp": {
                    "gate_proj": w.dense(f"{p}.mlp.gate_proj", c.intermediate_size, c.hidden_size),
                    "up_proj": w.dense(f"{p}.mlp.up_proj", c.intermediate_size, c.hidden_size),
                    "down_proj": w.dense(f"{p}.mlp.down_proj", c.hidden_size, c.intermediate_size),
                },
            }
        )
    return w.decoder(c, layers)


def text_weights(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """The language model's tensors of a multimodal Gemma 3 checkpoint, under a text model's names."""
    renamed = {}
    for name, value in tensors.items():
        for prefix, target in MULTIMODAL_PREFIXES.items():
            if name.startswith(prefix):
                renamed[target + name.removeprefix(prefix)] = value
                break
    if not renamed:
        raise CheckpointMismatchError(
            "a gemma3 (multimodal) checkpoint without language-model weights (language_model.model.* or "
            "model.language_model.*)"
        )
    return renamed


def build(config: Gemma3Config) -> CausalLM:
    return CausalLM(config, Gemma3)


Config = Gemma3Config
