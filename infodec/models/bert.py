"""BERT encoder for sentence embeddings (all-MiniLM-L6-v2 and other ``BertModel`` checkpoints).

Post-LayerNorm blocks, bidirectional attention over the tokens that ``mask`` keeps::

    x = LN(word[tokens] + position[0..T) + token_type[types])
    x = LN(x + attn(x));  x = LN(x + out(gelu(intermediate(x))))      # per layer

``SentenceEncoder.encode`` follows sentence-transformers: mean of the last hidden states over the
kept tokens, then L2 normalisation. Positions are ``0..T-1`` whatever the mask, as in HF, so batches
should be right-padded (as sentence-transformers pads them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from infodec.models.base import EvenHeads, HFWeights, Params, check_heads_and_activation, checked, layer_params
from infodec.models.layers import ACTIVATIONS, default_scan_layers, dot_product_attention, layer_norm, run_layers

Array = jax.Array

HF_MODEL_TYPES = ("bert",)


@dataclasses.dataclass(frozen=True)
class BertConfig(EvenHeads):
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    scan_layers: bool = False
    model_type: str = "bert"

    def __post_init__(self):
        check_heads_and_activation(self.hidden_size, self.num_heads, self.hidden_act, "BERT hidden_act")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, scan_layers: bool | None = None) -> BertConfig:
        """Reads an HF BERT ``config.json`` dict."""
        kind = hf.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"unsupported BERT position_embedding_type {kind!r}; only 'absolute' is supported")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError("BERT as a decoder / with cross-attention is not supported, only the encoder")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            hidden_act=hf.get("hidden_act", "gelu"),
            pad_token_id=hf.get("pad_token_id") or 0,
            scan_layers=default_scan_layers() if scan_layers is None else scan_layers,
            model_type=hf.get("model_type", "bert"),
        )

    def to_hf(self) -> dict[str, Any]:
        """The HF ``config.json`` for this architecture (HF transformers can load the same directory)."""
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": self.hidden_act,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
            "torch_dtype": "float32",
        }


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    return layer_norm(config.layer_norm_eps, None, name)


class BertLayer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, kv, layer, *, mask):
        """``x[B, T, D]``, ``mask[B, T, T]`` (True where a query may attend to a key); ``kv`` is unused."""
        c = self.config
        batch, length, _ = x.shape

        def heads(name: str) -> Array:
            return nn.Dense(c.hidden_size, name=name)(x).reshape(batch, length, c.num_heads, c.head_dim)

        q = heads("query")
        k = heads("key").transpose(0, 2, 1, 3)  # [B, H, T, D], head-major as dot_product_attention wants
        v = heads("value").transpose(0, 2, 1, 3)
        attended = dot_product_attention(q, k, v, mask, scale=c.head_dim**-0.5)
        x = _layer_norm(c, "attention_norm")(x + nn.Dense(c.hidden_size, name="attention_output")(attended))
        h = ACTIVATIONS[c.hidden_act](nn.Dense(c.intermediate_size, name="intermediate")(x))
        x = _layer_norm(c, "output_norm")(x + nn.Dense(c.hidden_size, name="output")(h))
        return x, kv


class Bert(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, tokens, mask, token_types):
        c = self.config
        length = tokens.shape[1]
        x = (
            nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(tokens)
            + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(
                jnp.arange(length)[None, :]
            )
            + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(token_types)
        )
        x = _layer_norm(c, "embeddings_norm")(x)
        # Keys are masked, queries are not (padded rows compute values nobody reads), as in HF.
        attention = jnp.broadcast_to(mask[:, None, :], (tokens.shape[0], length, length))
        x = run_layers(BertLayer, c, c.scan_layers, x, None, layer_args={}, mask=attention)[0]
        return x


@dataclasses.dataclass(frozen=True)
class SentenceEncoder:
    """A BERT sentence encoder as pure functions (hashable, so jit-static)."""

    config: BertConfig

    @property
    def max_length(self) -> int:
        return self.config.max_position_embeddings

    def apply(self, params: Params, tokens: ArrayLike, mask: ArrayLike, token_types: ArrayLike | None = None) -> Array:
        """Last-layer hidden states ``[B, T, D]`` of ``tokens[B, T]``; ``mask[B, T]`` is 1/True for real tokens.

        ``token_types`` (segment ids, ``[B, T]``) default to 0, as for single sentences.
        """
        self._check_inputs(tokens, mask, token_types)
        tokens = jnp.asarray(tokens, jnp.int32)
        token_types = jnp.zeros_like(tokens) if token_types is None else jnp.asarray(token_types, jnp.int32)
        hidden = Bert(self.config).apply({"params": params}, tokens, jnp.asarray(mask) != 0, token_types)
        return cast(Array, hidden)

    def encode(self, params: Params, tokens: ArrayLike, mask: ArrayLike, token_types: ArrayLike | None = None) -> Array:
        """Sentence embeddings ``[B, D]``: masked mean pooling of ``apply``, then L2 normalisation.

        A row with no kept token gets the zero vector (never NaN), like sentence-transformers.
        """
        hidden = self.apply(params, tokens, mask, token_types)
        weights = (jnp.asarray(mask) != 0).astype(hidden.dtype)[:, :, None]
        pooled = jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
        norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
        return pooled / jnp.maximum(norm, 1e-12)

    def _check_inputs(self, tokens, mask, token_types) -> None:
        if np.ndim(tokens) != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {np.shape(tokens)}")
        if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
            raise ValueError(f"tokens must be integers, got {jnp.result_type(tokens)}")
        if np.shape(mask) != np.shape(tokens):
            raise ValueError(f"mask {np.shape(mask)} must have the shape of tokens {np.shape(tokens)}")
        if token_types is not None and np.shape(token_types) != np.shape(tokens):
            raise ValueError(f"token_types {np.shape(token_types)} must have the shape of tokens {np.shape(tokens)}")
        length = np.shape(tokens)[1]
        if length > self.max_length:
            raise ValueError(
                f"input of {length} tokens is longer than the encoder's maximum of "
                f"{self.max_length} positions; truncate it"
            )


def convert_hf_weights(config: BertConfig, tensors: Mapping[str, Any]) -> dict:
    """HF ``BertModel`` state dict (numpy, ``[out, in]`` linears) -> Flax params.

    Names are accepted with or without the ``bert.`` prefix; the pooler, MLM/NSP heads and the
    ``position_ids`` buffer are ignored.
    """
    c = config
    d = c.hidden_size
    weights = HFWeights(tensors, prefix="bert.")
    t = weights.tensors

    dense = lambda name, out_dim, in_dim: weights.dense(name, out_dim, in_dim, bias=True)

    def norm(name: str) -> dict:
        # Very old checkpoints call LayerNorm's parameters gamma/beta.
        scale, bias = ("weight", "bias") if f"{name}.weight" in t or f"{name}.gamma" not in t else ("gamma", "beta")
        return {"scale": checked(t, f"{name}.{scale}", (d,)), "bias": checked(t, f"{name}.{bias}", (d,))}

    layers = []
    for i in range(c.num_layers):
        p = f"encoder.layer.{i}"
        layers.append(
            {
                "query": dense(f"{p}.attention.self.query", d, d),
                "key": dense(f"{p}.attention.self.key", d, d),
                "value": dense(f"{p}.attention.self.value", d, d),
                "attention_output": dense(f"{p}.attention.output.dense", d, d),
                "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
                "intermediate": dense(f"{p}.intermediate.dense", c.intermediate_size, d),
                "output": dense(f"{p}.output.dense", d, c.intermediate_size),
                "output_norm": norm(f"{p}.output.LayerNorm"),
            }
        )
    weights.check_layers("encoder.layer.", c.num_layers)
    return {
        "word_embeddings": {"embedding": checked(t, "embeddings.word_embeddings.weight", (c.vocab_size, d))},
        "position_embeddings": {
            "embedding": checked(t, "embeddings.position_embeddings.weight", (c.max_position_embeddings, d))
        },
        "token_type_embeddings": {
            "embedding": checked(t, "embeddings.token_type_embeddings.weight", (c.type_vocab_size, d))
        },
        "embeddings_norm": norm("embeddings.LayerNorm"),
        **layer_params(layers, c.scan_layers),
    }


def build(config: BertConfig) -> SentenceEncoder:
    return SentenceEncoder(config)


Config = BertConfig
