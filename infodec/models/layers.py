"""Building blocks shared by the decoder-only models: KV cache, attention mask, RoPE, norms.

Conventions used by every model in ``infodec.models``:

* ``tokens[B, T]`` int32 and ``positions[B, T]`` int32. A position of ``-1`` marks padding: a padded
  token is never attended to, so left-padded rows give the same logits as their unpadded runs.
* The KV cache is head-major, ``k, v: [L, B, KVH, S, D]`` (faster than ``[B, S, KVH, D]`` on CPU at
  long lengths), with ``positions[B, S]`` recording the position held in each slot (``-1`` = empty)
  and ``index`` the next free slot, shared by all rows. A query at position ``p`` attends to the slots
  whose position ``q`` satisfies ``0 <= q <= p`` (and ``p - q < window`` for sliding-window layers),
  which covers causality, padding and the cache in one rule.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Finite stand-in for -inf: masked scores stay finite, so a fully masked row is uniform, never NaN.
MASK_VALUE = -1e30


@flax.struct.dataclass
class KVCache:
    """Key/value cache of a decoder-only model.

    Attributes:
      k: ``[L, B, KVH, S, D]`` keys per layer.
      v: ``[L, B, KVH, S, D]`` values per layer.
      positions: ``[B, S]`` int32 position stored in each slot, ``-1`` where the slot is empty or padding.
      index: int32 scalar, the next slot to write (the same for every row).
    """

    k: Array
    v: Array
    positions: Array
    index: Array

    @classmethod
    def zeros(
        cls, num_layers: int, batch: int, num_kv_heads: int, max_len: int, head_dim: int, dtype: Any = jnp.float32
    ) -> KVCache:
        shape = (num_layers, batch, num_kv_heads, max_len, head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            positions=jnp.full((batch, max_len), -1, jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def write_positions(self, positions: Array) -> KVCache:
        """Records ``positions[B, T]`` in slots ``[index, index + T)`` and advances ``index``."""
        updated = jax.lax.dynamic_update_slice(self.positions, positions.astype(jnp.int32), (0, self.index))
        return dataclasses.replace(self, positions=updated, index=self.index + positions.shape[1])


def open_cache(cache: KVCache | None, positions: Array) -> tuple[KVCache | None, Any, Array, Array | None]:
    """What a model's layers need of its cache for ``positions[B, T]``: ``(cache with the positions
    recorded, (k, v) or None, key positions [B, S] (the queries' own without a cache), write slot or None)``."""
    if cache is None:
        return None, None, positions, None
    index = cache.index
    cache = cache.write_positions(positions)
    return cache, (cache.k, cache.v), cache.positions, index


def close_cache(cache: KVCache | None, kv: Any) -> KVCache | None:
    """``cache`` holding the layers' updated ``(k, v)`` (None without a cache)."""
    return None if cache is None else dataclasses.replace(cache, k=kv[0], v=kv[1])


def write_layer(cache_kv: Array, layer: int | Array, index: Array, new: Array) -> Array:
    """Writes ``new[B, KVH, T, D]`` into layer ``layer`` of ``cache_kv[L, B, KVH, S, D]`` at slot ``index``."""
    return jax.lax.dynamic_update_slice(cache_kv, new[None].astype(cache_kv.dtype), (layer, 0, 0, index, 0))


def attention_mask(q_positions: Array, k_positions: Array, window: int | Array | None = None) -> Array:
    """``[B, T, S]`` boolean mask: query at position p sees keys at q with 0 <= q <= p (p - q < window)."""
    q = q_positions[:, :, None]
    k = k_positions[:, None, :]
    mask = (k >= 0) & (k <= q)
    if window is not None:
        mask &= (q - k) < window
    return mask


def dot_product_attention(
    q: Array, k: Array, v: Array, mask: Array, *, scale: float, softcap: float | None = None
) -> Array:
    """Grouped-query attention.

    Args:
      q: ``[B, T, H, D]`` queries.
      k, v: ``[B, KVH, S, D]`` keys and values (head-major); ``H`` is a multiple of ``KVH``.
      mask: ``[B, T, S]`` boolean, True where attending is allowed.
      scale: multiplier of the scores (``1/sqrt(D)`` for most models).
      softcap: if set, scores become ``softcap * tanh(scores / softcap)`` (Gemma 2 style).

    Returns:
      ``[B, T, H * D]``.
    """
    batch, length, heads, dim = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(batch, length, kv_heads, heads // kv_heads, dim)
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", weights, v)
    return out.reshape(batch, length, heads * dim)


def rope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None) -> Array:
    """Inverse frequencies of rotary embeddings, with HF's ``default``, ``linear``, ``llama3``, ``dynamic`` and
    ``yarn`` types (``yarn``'s cos/sin factor: :func:`rope_attention_factor`)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    scaling = scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        return jnp.where(
            wavelen > old_len / low, inv_freq / factor, jnp.where(wavelen < old_len / high, inv_freq, smoothed)
        )
    if kind == "dynamic":
        # The frequencies of a call whose positions stay below max_position_embeddings (the default ones);
        # a call's own, rescaled past it: rope_frequencies.
        return inv_freq
    if kind == "yarn":
        return _yarn_inv_freq(inv_freq, head_dim, theta, scaling)
    if kind in ("longrope", "su"):  # the short factors; longrope_inv_freq(..., long=True) the long ones
        return longrope_inv_freq(head_dim, theta, scaling, long=False)
    raise ValueError(
        f"unsupported rope scaling type {kind!r}; supported: default, linear, llama3, dynamic, yarn, longrope"
    )


def rope_frequencies(
    head_dim: int, theta: float, scaling: Mapping[str, Any] | None, positions: Array, max_position_embeddings: int
) -> Array:
    """The inverse frequencies of one forward call over ``positions[B, T]`` (``-1`` = padding).

    :func:`rope_inv_freq`'s, except for ``dynamic`` NTK scaling, which HF recomputes at every forward pass
    (``dynamic_rope_update``) from ``seq_len = max(positions) + 1`` over the whole batch: the base becomes
    ``theta * (factor * L / M - (factor - 1)) ** (d / (d - 2))`` with ``L = max(seq_len, M)``,
    ``M = max_position_embeddings``, so a call reaching past ``M`` uses rescaled frequencies and a call that
    stays below it the default ones. Cached keys keep the rotation of the call that wrote them, as in
    HF's cached decode. Padding (``-1``) never raises the maximum. (HF's rotary module also keeps the
    last rescaled frequencies for a later call with ``M <= seq_len`` below its longest so far; this rule
    is the stateless one, equal to HF's for a fresh model and for any decode whose positions grow.)
    """
    scaling = scaling or {}
    if scaling.get("rope_type", scaling.get("type", "default")) != "dynamic":
        return rope_inv_freq(head_dim, theta, scaling or None)
    seq_len = jnp.maximum(jnp.max(positions).astype(jnp.int32) + 1, max_position_embeddings).astype(jnp.float32)
    factor = scaling["factor"]
    base = theta * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (head_dim / (head_dim - 2))
    return 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def _yarn_inv_freq(inv_freq: Array, dim: int, theta: float, scaling: Mapping[str, Any]) -> Array:
    """YaRN frequencies (HF's ``_compute_yarn_parameters``): interpolated (``/ factor``) below the
    ``beta_slow`` rotation count over ``original_max_position_embeddings``, extrapolated (unchanged) above
    ``beta_fast``, a linear ramp between. ``factor`` must be resolved (HF's None = max / original)."""
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as HF: no singular ramp
    ramp = jnp.clip((jnp.arange(dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    return (inv_freq / factor) * (1 - extrapolation) + inv_freq * extrapolation


def longrope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any], *, long: bool) -> Array:
    """HF's ``longrope`` (``su``) frequencies: the default ones divided by ``long_factor`` (``long``) or
    ``short_factor``. HF takes the long ones when a forward pass reaches a sequence length beyond
    ``original_max_position_embeddings``; the model makes that choice (e.g. ``jnp.where``)."""
    factors = jnp.asarray(scaling["long_factor" if long else "short_factor"], jnp.float32)
    if factors.shape != (head_dim // 2,):
        raise ValueError(f"longrope factors have {factors.shape} entries; the rotary dimension needs {head_dim // 2}")
    return 1.0 / (factors * theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def longrope_attention_factor(scaling: Mapping[str, Any], max_position_embeddings: int) -> float:
    """HF's ``longrope`` multiplier of cos/sin: ``attention_factor``, else ``sqrt(1 + ln f / ln L0)`` with
    ``f = factor``, or ``max_position_embeddings / L0`` without one (``L0 = original_max_position_embeddings``)."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    original = scaling["original_max_position_embeddings"]
    factor = scaling.get("factor") or max_position_embeddings / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def rope_attention_factor(scaling: Mapping[str, Any] | None) -> float:
    """HF's ``attention_scaling`` of a RoPE type: the factor multiplying cos and sin (so q and k), 1 except
    for ``yarn`` (``attention_factor``, else ``0.1 * mscale * ln(factor) + 1`` (ratio with
    ``mscale_all_dim``)). A model applies it to q and k, or equivalently its square to the score scale."""
    scaling = scaling or {}
    if scaling.get("rope_type", scaling.get("type", "default")) != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor = scaling["factor"]
    mscale = lambda scale, m=1.0: 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
    m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
    return float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else float(mscale(factor))


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotary embedding in HF's rotate-half layout. ``x[B, T, H, D]``, ``positions[B, T]``."""
    angles = positions.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]  # [B, T, D/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def apply_partial_rope(x: Array, positions: Array, inv_freq: Array, rotary_dim: int | None) -> Array:
    """:func:`apply_rope` on the leading ``rotary_dim`` dimensions of each head of ``x[B, T, H, D]``, the rest
    passed through (GPT-NeoX's ``rotary_pct``, Phi's ``partial_rotary_factor``); all of them when None."""
    if rotary_dim is None:
        return apply_rope(x, positions, inv_freq)
    if rotary_dim == 0:
        return x
    rotated = apply_rope(x[..., :rotary_dim], positions, inv_freq)
    return jnp.concatenate([rotated, x[..., rotary_dim:]], axis=-1)


class RMSNorm(nn.Module):
    """RMS norm; ``offset=1`` gives Gemma's ``(1 + w)`` parametrisation."""

    eps: float
    offset: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            "scale", nn.initializers.zeros if self.offset else nn.initializers.ones, (x.shape[-1],), self.dtype
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * (self.offset + scale.astype(jnp.float32))).astype(x.dtype)


def layer_norm(eps: float, dtype: Any, name: str, *, affine: bool = True) -> nn.LayerNorm:
    """torch's ``LayerNorm``: two-pass variance (Flax's fast ``E[x^2] - E[x]^2`` loses ~1e-6), with weight
    (``scale``) and ``bias`` unless not ``affine``. ``dtype`` None: computed in the inputs' dtype, float32
    parameters."""
    return nn.LayerNorm(
        epsilon=eps,
        use_fast_variance=False,
        use_scale=affine,
        use_bias=affine,
        dtype=dtype,
        param_dtype=jnp.float32 if dtype is None else dtype,
        name=name,
    )


def lm_logits(x: Array, embed: nn.Embed | None, vocab_size: int, dtype: Any) -> Array:
    """``[B, T, V]`` float32 logits of the final states ``x[B, T, D]``, accumulated in float32 whatever
    the model dtype: from the tied embedding (``x @ embedding.T``) when ``embed`` is given, else from an
    ``lm_head`` projection. Call inside a compact module (the head is created as its submodule)."""
    if embed is not None:
        return jnp.einsum("btd,vd->btv", x, embed.embedding.astype(x.dtype), preferred_element_type=jnp.float32)
    head = nn.Dense(
        vocab_size,
        use_bias=False,
        dtype=dtype,
        param_dtype=dtype,
        dot_general=functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32),
        name="lm_head",
    )
    return head(x).astype(jnp.float32)


def default_scan_layers() -> bool:
    """Unrolled layers are ~1.6x faster per decode step on XLA:CPU; scanning compiles faster elsewhere."""
    return jax.default_backend() != "cpu"


def cached_attention(
    q: Array,
    k: Array,
    v: Array,
    positions: Array,
    k_positions: Array,
    kv: Any,
    layer: int | Array,
    index: Any,
    *,
    scale: float,
    window: int | Array | None = None,
    softcap: float | None = None,
) -> tuple[Array, Any]:
    """Attention of the new ``q[B, T, H, D]`` over the cache and the new ``k, v[B, T, KVH, D]`` (after RoPE).

    ``kv`` is ``(k_all, v_all)``, the whole ``[L, B, KVH, S, D]`` cache, or None for a cache-free call:
    the new keys/values are written straight into layer ``layer`` at slot ``index`` (in place under
    donation) and the layer's slice is read back. Returns ``([B, T, H * D], kv)``.
    """
    k = k.transpose(0, 2, 1, 3)  # [B, KVH, T, D]
    v = v.transpose(0, 2, 1, 3)
    if kv is not None:
        k_all = write_layer(kv[0], layer, index, k)
        v_all = write_layer(kv[1], layer, index, v)
        k = jax.lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False)
        v = jax.lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False)
        kv = (k_all, v_all)
    mask = attention_mask(positions, k_positions, window)
    return dot_product_attention(q, k, v, mask, scale=scale, softcap=softcap), kv


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads, optional (partial) RoPE, QK-norm, bias and sliding window.

    ``kv``, ``layer`` and ``index``: as :func:`cached_attention`. q/k norms (``qk_norm_eps``) are per head
    (Gemma 3, Qwen 3) or, with ``qk_norm_per_head=False``, over the whole projection before the split
    into heads (OLMo 2's ``[num_heads * head_dim]`` weights).
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    out_features: int
    scale: float
    qkv_bias: bool = False
    out_bias: bool = False
    use_rope: bool = True
    rotary_dim: int | None = None  # RoPE on each head's leading rotary_dim dimensions only; None: all of them
    qk_norm_eps: float | None = None  # Gemma 3 normalises q and k per head
    qk_norm_per_head: bool = True
    norm_offset: float = 0.0
    softcap: float | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        positions: Array,
        k_positions: Array,
        kv,
        layer,
        index,
        inv_freq: Array | None = None,
        window: int | Array | None = None,
    ):
        batch, length, _ = x.shape

        def project(heads: int, name: str) -> Array:
            dense = nn.Dense(
                heads * self.head_dim, use_bias=self.qkv_bias, dtype=self.dtype, param_dtype=self.dtype, name=name
            )
            return dense(x)

        def norm(y: Array, name: str) -> Array:
            eps = self.qk_norm_eps
            return y if eps is None else RMSNorm(eps, self.norm_offset, self.dtype, name=name)(y)

        split = lambda y, heads: y.reshape(batch, length, heads, -1)
        q, k = project(self.num_heads, "q_proj"), project(self.num_kv_heads, "k_proj")
        v = split(project(self.num_kv_heads, "v_proj"), self.num_kv_heads)
        if self.qk_norm_per_head:
            q, k = norm(split(q, self.num_heads), "q_norm"), norm(split(k, self.num_kv_heads), "k_norm")
        else:  # over the whole projection, before the split into heads
            q, k = split(norm(q, "q_norm"), self.num_heads), split(norm(k, "k_norm"), self.num_kv_heads)
        if self.use_rope:
            assert inv_freq is not None, "use_rope needs inv_freq"
            q = apply_partial_rope(q, positions, inv_freq, self.rotary_dim)
            k = apply_partial_rope(k, positions, inv_freq, self.rotary_dim)
        out, kv = cached_attention(
            q, k, v, positions, k_positions, kv, layer, index, scale=self.scale, window=window, softcap=self.softcap
        )
        out = nn.Dense(
            self.out_features, use_bias=self.out_bias, dtype=self.dtype, param_dtype=self.dtype, name="o_proj"
        )(out)
        return out, kv


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` (SwiGLU for Llama, GeGLU with tanh-GELU for Gemma)."""

    hidden: int
    out_features: int
    activation: str = "silu"
    use_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dense = lambda n, name: nn.Dense(n, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.dtype, name=name)
        gate = ACTIVATIONS[self.activation](dense(self.hidden, "gate_proj")(x))
        return dense(self.out_features, "down_proj")(gate * dense(self.hidden, "up_proj")(x))


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}


def run_layers(
    block: type[nn.Module],
    config: Any,
    scan: bool,
    x: Array,
    kv,
    *,
    layer_args: dict,
    return_layers: tuple[int, ...] | None = None,
    **shared,
):
    """Runs ``config.num_layers`` instances of ``block`` (unrolled, or as one ``nn.scan``).

    ``block(config, name=...)(x, kv, layer, **layer_args[i], **shared) -> (x, kv)``. ``layer_args``
    maps a keyword to a per-layer numpy array: unrolled, block ``i`` gets the Python scalar ``[i]``
    (static, e.g. a fixed window); scanned, it gets the traced element. Parameters are named
    ``layers_{i}`` unrolled and ``layers`` (stacked on axis 0) scanned.

    Returns ``(x, kv)``; with ``return_layers`` (static layer indices ``0 <= i < num_layers``) also the
    residual stream at the last position after the first ``i`` blocks, ``[K, B, D]`` in the order given
    (``i = 0``: the embeddings as block 0 receives them; HF's ``hidden_states[i]`` at position ``-1``).
    """
    num_layers = config.num_layers
    if not scan:
        states = [x[:, -1]]
        for i in range(num_layers):
            per_layer = {key: value[i].item() for key, value in layer_args.items()}
            x, kv = block(config, name=f"layers_{i}")(x, kv, i, **per_layer, **shared)
            states.append(x[:, -1])
        if return_layers is None:
            return x, kv
        return x, kv, jnp.stack([states[i] for i in return_layers])

    keys = tuple(layer_args)
    want_states = return_layers is not None

    class Step(nn.Module):
        @nn.compact
        def __call__(self, carry, xs, shared):
            x, kv = carry
            layer, *values = xs
            x, kv = block(config, name="block")(x, kv, layer, **dict(zip(keys, values)), **shared)
            return (x, kv), (x[:, -1] if want_states else None)

    in_axes: Any = (0, nn.broadcast)  # one entry per argument after the carry (flax annotates it as int)
    scanned = nn.scan(
        Step, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=in_axes, length=num_layers
    )
    xs = (jnp.arange(num_layers), *(jnp.asarray(layer_args[key]) for key in keys))
    first = x[:, -1]
    (x, kv), after = scanned(name="layers")((x, kv), xs, shared)
    if after is None:
        return x, kv
    states = jnp.concatenate([first[None], after], axis=0)  # [L + 1, B, D]: after 0, 1, ..., L blocks
    return x, kv, states[np.asarray(return_layers, np.int32)]


def run_decoder(
    block: type[nn.Module],
    config: Any,
    x: Array,
    positions: Array,
    cache: KVCache | None,
    *,
    layer_args: dict | None = None,
    return_layers: tuple[int, ...] | None = None,
    **shared,
):
    """:func:`run_layers` of a decoder (scanned when ``config.scan_layers``) over ``cache``: besides
    ``layer_args`` and ``shared``, every block gets the keywords ``positions``, ``k_positions`` and ``index``
    (:func:`open_cache`). Returns ``(x, cache)``, the cache holding the layers' new keys and values (None
    without one); with ``return_layers``, ``(x, cache, states [K, B, D])`` (:func:`run_layers`)."""
    cache, kv, k_positions, index = open_cache(cache, positions)
    x, kv, *states = run_layers(
        block,
        config,
        config.scan_layers,
        x,
        kv,
        layer_args=layer_args or {},
        return_layers=return_layers,
        positions=positions,
        k_positions=k_positions,
        index=index,
        **shared,
    )
    return (x, close_cache(cache, kv), *states)


def logits_with_layers(head: Callable[[Array], Array], x: Array, states: Array) -> tuple[Array, Array]:
    """One call of the LM ``head`` on the final states ``x[B, T, D]`` and the early-exit states
    ``states[K, B, D]`` (:func:`run_layers`' ``return_layers``): ``(logits [B, T, V], layer_logits [B, K, V])``.
    One call, so the head's parameters are created (and read) once."""
    length = x.shape[1]
    logits = head(jnp.concatenate([x, jnp.swapaxes(states, 0, 1).astype(x.dtype)], axis=1))
    return logits[:, :length], logits[:, length:]
