"""The model-as-pure-function contract the decoding engine relies on.

The engine never sees a Flax module, only a static, hashable ``CausalLM``::

    model.apply(params, tokens[B, T], positions[B, T], cache) -> (logits[B, T, V], cache)
    model.init_cache(batch, max_len, dtype) -> cache

Each architecture file defines a frozen ``Config`` dataclass and a Linen module taking
``(tokens, positions, cache)``; ``CausalLM`` binds the two and validates input at the boundary.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import flax.linen as nn
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from infodec.models.layers import ACTIVATIONS, KVCache
from infodec.models.tensors import is_lazy, stack_layers

Array = jax.Array
Params = Mapping[str, Any]


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the architecture its config describes."""


@dataclasses.dataclass(frozen=True)
class CausalLM:
    """A decoder-only language model as a pair of pure functions (hashable, so jit-static).

    Attributes:
      config: the architecture's frozen config dataclass (``num_layers``, ``num_kv_heads``,
        ``head_dim``, ``vocab_size``, ``max_position_embeddings``).
      module: the Linen module class, constructed from ``config``.
    """

    config: Any
    module: type[nn.Module]

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_length(self) -> int:
        """The model's context length: positions at or beyond it are out of range."""
        return self.config.max_position_embeddings

    @property
    def dtype(self) -> jnp.dtype:
        """Dtype of the parameters and activations (``config.dtype``; float32 for configs without one)."""
        return jnp.dtype(getattr(self.config, "dtype", "float32"))

    @property
    def cache_dtype(self) -> jnp.dtype:
        """Dtype of the KV cache: ``config.cache_dtype``, or the model dtype when that is None."""
        return jnp.dtype(getattr(self.config, "cache_dtype", None) or self.dtype)

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> KVCache:
        """An empty cache of ``max_len`` slots (slots, not positions: padding uses slots too), in
        ``dtype`` (default :attr:`cache_dtype`)."""
        c = self.config
        dtype = self.cache_dtype if dtype is None else dtype
        return KVCache.zeros(c.num_layers, batch, c.num_kv_heads, max_len, c.head_dim, dtype)

    def apply(
        self,
        params: Params,
        tokens: ArrayLike,
        positions: ArrayLike,
        cache: KVCache | None = None,
        *,
        return_hidden: bool = False,
        return_layers: Sequence[int] | None = None,
        norm_layers: bool = False,
    ):
        """Runs the model on ``tokens[B, T]`` at ``positions[B, T]`` (``-1`` = padding).

        With a cache, the new keys/values go into slots ``[cache.index, cache.index + T)`` and the new
        cache is returned; without one, the tokens attend only to each other and the returned cache is
        None. Returns ``(logits[B, T, V] float32, cache)``, plus the final hidden states ``[B, T, D]``
        float32 (after the final norm) as a third element when ``return_hidden``, whatever the model
        dtype: everything handed to policies, searches and metrics is float32.

        ``return_layers`` (static layer indices ``0 <= i < num_layers``) appends, last, the early-exit
        logits ``[B, K, V]`` float32 at the last position ``T - 1``: the LM head applied to the residual
        stream after the first ``i`` blocks (``i = 0``: the embeddings), HF's
        ``lm_head(hidden_states[i][:, -1])``, in the order given. As in HF and the DoLa authors' code, the
        final norm is not applied to them unless ``norm_layers``. Families whose module sets
        ``RETURNS_LAYERS`` support it (Llama / Mistral / Qwen2, GPT-2); others raise ValueError.
        """
        self._check_inputs(tokens, positions, cache)
        extra = {}
        if return_layers is not None:
            extra = {"return_layers": self.check_layers(return_layers), "norm_layers": bool(norm_layers)}
        outputs = self.module(self.config).apply(
            {"params": params}, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32), cache, **extra
        )
        logits, hidden, new_cache, *layer_logits = cast(tuple[Any, ...], outputs)
        result = (logits, new_cache, hidden.astype(jnp.float32)) if return_hidden else (logits, new_cache)
        return (*result, *layer_logits)

    def check_layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        """``layers`` as a tuple of ints after checking the family can return early-exit logits and each
        index is a layer ``0 <= i < num_layers``; one clear ValueError otherwise."""
        family = getattr(self.config, "model_type", self.module.__name__)
        if not getattr(self.module, "RETURNS_LAYERS", False):
            raise ValueError(
                f"{family} models cannot return early-exit layer logits (return_layers); supported: "
                "the llama family (llama, mistral, qwen2) and gpt2"
            )
        layers = tuple(layers)
        bad = [i for i in layers if not isinstance(i, (int, np.integer)) or isinstance(i, bool)]
        bad += [i for i in layers if i not in bad and not 0 <= i < self.config.num_layers]
        if not layers or bad:
            raise ValueError(
                f"layers must be a non-empty list of layer indices 0 <= i < {self.config.num_layers} "
                f"(0 = the embeddings, i = after i blocks), got {list(layers)}"
            )
        return tuple(int(i) for i in layers)

    def _check_inputs(self, tokens, positions, cache) -> None:
        if np.ndim(tokens) != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {np.shape(tokens)}")
        if np.shape(positions) != np.shape(tokens):
            raise ValueError(f"positions {np.shape(positions)} must have the shape of tokens {np.shape(tokens)}")
        if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
            raise ValueError(f"tokens must be integers, got {jnp.result_type(tokens)}")
        length = np.shape(tokens)[1]
        if cache is None:
            if length > self.max_length:
                raise ValueError(
                    f"input of {length} tokens is longer than the model's context of {self.max_length} tokens"
                )
            return
        if cache.k.shape[1] != np.shape(tokens)[0]:
            raise ValueError(f"cache batch {cache.k.shape[1]} != tokens batch {np.shape(tokens)[0]}")
        if not isinstance(cache.index, jax.core.Tracer) and int(cache.index) + length > cache.max_len:
            raise ValueError(
                f"writing {length} tokens at slot {int(cache.index)} overflows the cache of "
                f"{cache.max_len} slots; allocate a longer cache (at most {self.max_length})"
            )


class EvenHeads:
    """Config mixin of the families whose heads split ``hidden_size`` evenly, each with its own keys and
    values (GPT-2, OPT, GPT-NeoX, BERT): ``head_dim`` and ``num_kv_heads`` follow from the two fields."""

    hidden_size: int
    num_heads: int

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def check_heads_and_activation(hidden_size: int, num_heads: int, activation: str, field: str) -> None:
    """One clear error for a hidden size the heads do not split evenly, or an activation infodec does not
    have (``field``: the family and its config's name of it, e.g. ``"GPT-2 activation_function"``)."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden size {hidden_size} is not a multiple of {num_heads} heads")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unsupported {field} {activation!r}; supported: {', '.join(sorted(ACTIVATIONS))}")


def checked(tensors: Mapping[str, Any], name: str, shape: tuple[int, ...]) -> Any:
    """``tensors[name]`` (an array or a :class:`~infodec.models.tensors.TensorRef`) after checking it
    exists, has ``shape`` and holds floating-point weights; one clear error otherwise."""
    if name not in tensors:
        raise CheckpointMismatchError(f"checkpoint has no tensor {name!r} that the config requires")
    value = tensors[name]
    if tuple(value.shape) != tuple(shape):
        raise CheckpointMismatchError(
            f"tensor {name!r} has shape {tuple(value.shape)} but the config implies {tuple(shape)}: "
            "config.json and the weights disagree"
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise CheckpointMismatchError(f"tensor {name!r} holds {np.dtype(value.dtype).name}, not floating-point weights")
    return value


class HFWeights:
    """HF tensors (``[out, in]`` linears) read by name, with shape checks, as Flax parameter trees.

    The tensors are arrays or lazy :class:`~infodec.models.tensors.TensorRef` s; the trees built from
    them hold the same kind (the loader reads references only when it places them on a device)."""

    def __init__(self, tensors: Mapping[str, Any], prefix: str = "model."):
        self.tensors = {name.removeprefix(prefix): value for name, value in tensors.items()}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        return checked(self.tensors, name, shape)

    def dense(self, name: str, out_dim: int, in_dim: int, bias: bool = False) -> dict:
        params = {"kernel": self.get(f"{name}.weight", (out_dim, in_dim)).T}
        if bias:
            params["bias"] = self.get(f"{name}.bias", (out_dim,))
        return params

    def norm(self, name: str, dim: int) -> dict:
        return {"scale": self.get(f"{name}.weight", (dim,))}

    def layer_norm(self, name: str, dim: int) -> dict:
        """A LayerNorm's weight and bias (``scale``/``bias``, as :func:`~infodec.models.layers.layer_norm`)."""
        return {"scale": self.get(f"{name}.weight", (dim,)), "bias": self.get(f"{name}.bias", (dim,))}

    def check_layers(self, prefix: str, num_layers: int) -> None:
        """One clear error when the checkpoint holds layers (``{prefix}{i}.``) beyond ``num_layers``:
        ``checked`` only notices missing tensors, not surplus ones."""
        pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
        extra = sorted(
            {int(m.group(1)) for name in self.tensors if (m := pattern.match(name)) and int(m.group(1)) >= num_layers}
        )
        if extra:
            raise CheckpointMismatchError(
                f"checkpoint has weights for layer(s) {extra[:5]}{'...' if len(extra) > 5 else ''} but the "
                f"config has {num_layers} layers (num_hidden_layers): config.json and the weights disagree"
            )

    def decoder(self, config: Any, layers: list[dict]) -> dict:
        """The full tree of a Llama-style decoder: embedding, layers, final norm, optional LM head."""
        self.check_layers("layers.", config.num_layers)
        shape = (config.vocab_size, config.hidden_size)
        params = {
            "embed_tokens": {"embedding": self.get("embed_tokens.weight", shape)},
            "norm": self.norm("norm", config.hidden_size),
            **layer_params(layers, config.scan_layers),
        }
        if not config.tie_word_embeddings:
            params["lm_head"] = {"kernel": self.get("lm_head.weight", shape).T}
        return params


def layer_params(layers: list[dict], scan: bool) -> dict:
    """Names per-layer trees as ``run_layers`` expects them: ``layers_{i}`` unrolled, or one tree
    stacked along a new leading axis under ``layers/block`` for ``scan_layers``."""
    if scan:
        return {"layers": {"block": jax.tree.map(lambda *xs: stack_layers(xs), *layers, is_leaf=is_lazy)}}
    return {f"layers_{i}": layer for i, layer in enumerate(layers)}


def to_device(params: Any, dtype: Any) -> Any:
    """Moves a numpy parameter tree to the default device as ``dtype`` arrays."""
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
