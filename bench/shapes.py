"""Shapes of real models, for benchmarks that need no download: random weights, the real architecture.

Decode speed does not depend on the weights' values, so ``bench.decode --random_model=<shape>`` builds
one of these configs and fills its parameters with random numbers directly in the target dtype (an
accelerator machine may have no internet). Each ``config`` holds the values of the model's published
HF ``config.json`` (hub id in ``source``) that set the shapes and the work per token; it goes through
the architecture's own ``Config.from_hf``, the path a real checkpoint takes.

The shapes, their sources and sizes are tabled in ``bench/README.md``.

Qwen3 is not an infodec architecture: its blocks are Llama's plus an RMS norm of each query and key
head (``q_norm``, ``k_norm``: ``[head_dim]`` weights per layer) before RoPE. ``qwen3-1.7b`` runs
infodec's Llama module with Qwen3's shapes (no attention bias, as in Qwen3), so it lacks those two
per-head norms: 2 x 28 x 128 = 7,168 parameters of 1.72 billion, and a few elementwise operations per
layer; the bytes read per token, which bound batch-1 decoding, differ by under 0.001%.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from infodec.models import checkpoints
from infodec.models.base import CausalLM


@dataclasses.dataclass(frozen=True)
class Shape:
    """A real model's architecture without its weights.

    Attributes:
      source: the hub id whose ``config.json`` the values come from.
      architecture: the infodec module that runs it (a key of ``checkpoints.ARCHITECTURES``).
      config: the ``config.json`` values that matter for shapes and work per token.
      note: how the infodec module differs from the source architecture, if it does.
    """

    source: str
    architecture: str
    config: dict[str, Any]
    note: str = ""


_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0}

SHAPES: dict[str, Shape] = {
    "smollm2-135m": Shape(
        source="HuggingFaceTB/SmolLM2-135M",
        architecture="llama",
        config={
            "model_type": "llama",
            "vocab_size": 49152,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "head_dim": 64,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "max_position_embeddings": 8192,
            "tie_word_embeddings": True,
        },
    ),
    "llama-3.2-1b": Shape(
        source="meta-llama/Llama-3.2-1B",
        architecture="llama",
        config={
            "model_type": "llama",
            "vocab_size": 128256,
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "rope_scaling": {**_LLAMA3_ROPE, "factor": 32.0, "original_max_position_embeddings": 8192},
            "max_position_embeddings": 131072,
            "tie_word_embeddings": True,
        },
    ),
    "qwen3-1.7b": Shape(
        source="Qwen/Qwen3-1.7B",
        architecture="llama",
        config={
            "model_type": "llama",  # Qwen3's model_type is "qwen3"; infodec has no Qwen3 module
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 40960,
            "tie_word_embeddings": True,
            "attention_bias": False,
        },
        note="Llama module with Qwen3's shapes: no per-head q/k RMS norm (7,168 of 1.72B parameters)",
    ),
    "gemma-3-1b": Shape(
        source="google/gemma-3-1b-pt",
        architecture="gemma3_text",
        config={
            "model_type": "gemma3_text",
            "vocab_size": 262144,
            "hidden_size": 1152,
            "intermediate_size": 6912,
            "num_hidden_layers": 26,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 256,
            "rms_norm_eps": 1e-6,
            "query_pre_attn_scalar": 256,
            "sliding_window": 512,
            "sliding_window_pattern": 6,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "max_position_embeddings": 32768,
            "hidden_activation": "gelu_pytorch_tanh",
            "tie_word_embeddings": True,
        },
    ),
    "llama-3.1-8b": Shape(
        source="meta-llama/Llama-3.1-8B",
        architecture="llama",
        config={
            "model_type": "llama",
            "vocab_size": 128256,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "rope_scaling": {**_LLAMA3_ROPE, "factor": 8.0, "original_max_position_embeddings": 8192},
            "max_position_embeddings": 131072,
            "tie_word_embeddings": False,
        },
    ),
}


def build(name: str, *, dtype: Any, scan_layers: bool | None = None) -> CausalLM:
    """The ``CausalLM`` of shape ``name`` (no parameters). ``dtype`` goes into the config where the
    architecture's config has a ``dtype`` field (parameter and activation dtype)."""
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; known shapes: {', '.join(SHAPES)}")
    shape = SHAPES[name]
    architecture = checkpoints.ARCHITECTURES[shape.architecture]
    config = architecture.Config.from_hf(shape.config, scan_layers=scan_layers)
    if "dtype" in {field.name for field in dataclasses.fields(config)}:
        config = dataclasses.replace(config, dtype=jnp.dtype(dtype).name)
    return architecture.build(config)


def abstract_params(model: CausalLM, dtype: Any) -> Any:
    """The parameter tree as ``jax.ShapeDtypeStruct`` leaves in ``dtype``: traced, nothing allocated."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    tree = jax.eval_shape(lambda: model.module(model.config).init(jax.random.key(0), tokens, tokens, None))
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, jnp.dtype(dtype)), tree["params"])


def random_params(model: CausalLM, key: jax.Array, dtype: Any) -> Any:
    """Random parameters made directly in ``dtype`` on the default device, leaf by leaf
    (``infodec.models.checkpoints.random_params``; ``dtype`` must be the model's own)."""
    if jnp.dtype(dtype) != model.dtype:
        raise ValueError(f"the model was built in {model.dtype}, not {jnp.dtype(dtype)}")
    return checkpoints.random_params(model, key)


def tree_bytes(tree: Any) -> int:
    """Bytes of every array (or ``ShapeDtypeStruct``) leaf of ``tree``."""
    return sum(int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def tree_size(tree: Any) -> int:
    """Number of elements in every leaf of ``tree``."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
