"""GPT-2 family (HF ``GPT2LMHeadModel``): learned absolute positions, pre-LayerNorm blocks.

``x += attn(ln_1(x))``, ``x += mlp(ln_2(x))``, ``ln_f`` at the end, lm head tied to ``wte``. HF's
``Conv1D`` weights are stored ``[in, out]`` (already Flax's kernel layout); ``attn.c_attn`` is the
fused q/k/v projection, split into ``Attention``'s ``q_proj``/``k_proj``/``v_proj`` at load time.
Position embeddings are looked up at each row's ``positions``; padding (``-1``) is clipped to a valid
index, since padded tokens are masked out of attention anyway.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from infodec.models.base import CausalLM, EvenHeads, HFWeights, check_heads_and_activation, checked, layer_params
from infodec.models.layers import (
    ACTIVATIONS,
    Attention,
    default_scan_layers,
    layer_norm,
    lm_logits,
    logits_with_layers,
    run_decoder,
)
from infodec.models.tensors import split_columns

HF_MODEL_TYPES = ("gpt2",)


@dataclasses.dataclass(frozen=True)
class GPT2Config(EvenHeads):
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_new"
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    scan_layers: bool = False
    model_type: str = "gpt2"
    dtype: str = "float32"  # parameters and activations (a name, so the config hashes)
    cache_dtype: str | None = None  # the KV cache; None = ``dtype``

    def __post_init__(self):
        check_heads_and_activation(self.hidden_size, self.num_heads, self.activation, "GPT-2 activation_function")

    def attention_scales(self) -> np.ndarray:
        """Per-layer score multipliers: ``1/sqrt(head_dim)`` (if scaled), times ``1/(layer+1)`` if set."""
        base = self.head_dim**-0.5 if self.scale_attn_weights else 1.0
        divisors = (
            np.arange(1, self.num_layers + 1) if self.scale_attn_by_inverse_layer_idx else np.ones(self.num_layers)
        )
        return (base / divisors).astype(np.float32)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, scan_layers: bool | None = None) -> GPT2Config:
        """Reads an HF GPT-2 ``config.json`` dict (``n_embd``/``n_head``/... or their aliases)."""
        if hf.get("add_cross_attention"):
            raise ValueError("GPT-2 with cross-attention (an encoder-decoder) is not supported")
        hidden = hf.get("n_embd", hf.get("hidden_size"))
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            intermediate_size=hf.get("n_inner") or 4 * hidden,
            num_layers=hf.get("n_layer", hf.get("num_hidden_layers")),
            num_heads=hf.get("n_head", hf.get("num_attention_heads")),
            max_position_embeddings=hf.get("n_positions", hf.get("max_position_embeddings", 1024)),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            activation=hf.get("activation_function", "gelu_new"),
            scale_attn_weights=hf.get("scale_attn_weights", True),
            scale_attn_by_inverse_layer_idx=hf.get("scale_attn_by_inverse_layer_idx", False),
            tie_word_embeddings=hf.get("tie_word_embeddings", True),
            scan_layers=default_scan_layers() if scan_layers is None else scan_layers,
            model_type=hf.get("model_type", "gpt2"),
        )

    def to_hf(self) -> dict[str, Any]:
        """The HF ``config.json`` for this architecture (HF transformers can load the same directory)."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_embd": self.hidden_size,
            "n_inner": self.intermediate_size,
            "n_layer": self.num_layers,
            "n_head": self.num_heads,
            "n_positions": self.max_position_embeddings,
            "layer_norm_epsilon": self.layer_norm_eps,
            "activation_function": self.activation,
            "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
        }


def _layer_norm(config: GPT2Config, name: str) -> nn.LayerNorm:
    return layer_norm(config.layer_norm_eps, config.dtype, name)


class GPT2MLP(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x):
        c = self.config
        dense = lambda features, name: nn.Dense(features, dtype=c.dtype, param_dtype=c.dtype, name=name)
        h = ACTIVATIONS[c.activation](dense(c.intermediate_size, "c_fc")(x))
        return dense(c.hidden_size, "c_proj")(h)


class GPT2Block(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x, kv, layer, *, scale, positions, k_positions, index):
        c = self.config
        attn = Attention(
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.hidden_size,
            scale=scale,
            qkv_bias=True,
            out_bias=True,
            use_rope=False,
            dtype=c.dtype,
            name="attn",
        )
        h, kv = attn(_layer_norm(c, "ln_1")(x), positions, k_positions, kv, layer, index)
        x = x + h
        return x + GPT2MLP(c, name="mlp")(_layer_norm(c, "ln_2")(x)), kv


class GPT2(nn.Module):
    config: GPT2Config
    RETURNS_LAYERS = True  # CausalLM.apply(..., return_layers=...): early-exit logits

    @nn.compact
    def __call__(self, tokens, positions, cache, return_layers=None, norm_layers=False):
        c = self.config
        wte = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=c.dtype, name="wte")
        wpe = nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=c.dtype, param_dtype=c.dtype, name="wpe")
        x = wte(tokens) + wpe(jnp.clip(positions, 0, c.max_position_embeddings - 1))
        x, cache, *states = run_decoder(
            GPT2Block, c, x, positions, cache, layer_args={"scale": c.attention_scales()}, return_layers=return_layers
        )
        norm = _layer_norm(c, "ln_f")
        x = norm(x)
        head = lambda h: lm_logits(h, wte if c.tie_word_embeddings else None, c.vocab_size, c.dtype)
        if not states:
            return head(x), x, cache
        logits, layer_logits = logits_with_layers(head, x, norm(states[0]) if norm_layers else states[0])
        return logits, x, cache, layer_logits


def convert_hf_weights(config: GPT2Config, tensors: Mapping[str, Any]) -> dict:
    """HF ``GPT2LMHeadModel`` state dict (numpy, Conv1D ``[in, out]`` weights) -> Flax params.

    Names are accepted with or without the ``transformer.`` prefix; HF's attention-mask buffers
    (``attn.bias``, ``attn.masked_bias`` in old checkpoints) are ignored.
    """
    c = config
    d = c.hidden_size
    weights = HFWeights(tensors, prefix="transformer.")
    t = weights.tensors

    def conv1d(name: str, in_dim: int, out_dim: int) -> dict:
        return {
            "kernel": checked(t, f"{name}.weight", (in_dim, out_dim)),
            "bias": checked(t, f"{name}.bias", (out_dim,)),
        }

    layers = []
    for i in range(c.num_layers):
        p = f"h.{i}"
        qkv = conv1d(f"{p}.attn.c_attn", d, 3 * d)
        kernels = split_columns(qkv["kernel"], 3)
        biases = split_columns(qkv["bias"], 3)
        layers.append(
            {
                "ln_1": weights.layer_norm(f"{p}.ln_1", d),
                "ln_2": weights.layer_norm(f"{p}.ln_2", d),
                "attn": {
                    **{
                        name: {"kernel": kernel, "bias": bias}
                        for name, kernel, bias in zip(("q_proj", "k_proj", "v_proj"), kernels, biases)
                    },
                    "o_proj": conv1d(f"{p}.attn.c_proj", d, d),
                },
                "mlp": {
                    "c_fc": conv1d(f"{p}.mlp.c_fc", d, c.intermediate_size),
                    "c_proj": conv1d(f"{p}.mlp.c_proj", c.intermediate_size, d),
                },
            }
        )
    weights.check_layers("h.", c.num_layers)
    params = {
        "wte": {"embedding": checked(t, "wte.weight", (c.vocab_size, d))},
        "wpe": {"embedding": checked(t, "wpe.weight", (c.max_position_embeddings, d))},
        "ln_f": weights.layer_norm("ln_f", d),
        **layer_params(layers, c.scan_layers),
    }
    if not c.tie_word_embeddings:
        # HF's Linear lm head is [out, in].
        params["lm_head"] = {"kernel": checked(t, "lm_head.weight", (c.vocab_size, d)).T}
    return params


def build(config: GPT2Config) -> CausalLM:
    return CausalLM(config, GPT2)


Config = GPT2Config
