"""The standard sampling policies: greedy, temperature, truncations, repetition penalty, chains.

Semantics follow HF transformers' logits processors (the reference the tests compare against), with
masked tokens at a finite ``MASK_VALUE`` instead of ``-inf``. Truncation thresholds are found without
sorting the vocabulary: ``lax.top_k`` over a few hundred candidates settles almost every row, and an
exact 32-step bisection over the float ordering handles the rest.
"""

from __future__ import annotations

from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from infodec.policies.base import (
    MASK_VALUE,
    MIN_TEMPERATURE,
    Policy,
    StepInfo,
    Transform,
    check_range,
    first_argmax_mask,
    greedy_logits,
    per_row,
)
from infodec.policies.value_policy import ValuePolicy

Array = jax.Array

# Candidates examined by lax.top_k before falling back to the exact bisection.
_CANDIDATES = 256


@flax.struct.dataclass
class Greedy(Transform):
    """Argmax decoding (the T -> 0 limit of temperature sampling)."""

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        return greedy_logits(logits)


@flax.struct.dataclass
class Temperature(Transform):
    """``logits / T``; ``T < 1e-4`` (including 0) is greedy. ``temperature``: scalar or ``[B]``."""

    temperature: ArrayLike = 1.0

    def __post_init__(self):
        check_range("temperature", self.temperature, 0.0, float("inf"), allowed="a number >= 0 (0 = greedy)")

    def as_value_policy(self):
        """The same policy as a value function: ``ValuePolicy(β=1, γ=T−1)`` (for T > 0)."""
        return ValuePolicy(beta=1.0, gamma=jnp.asarray(self.temperature) - 1.0)

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        t = per_row(self.temperature)
        scaled = logits / jnp.maximum(t, MIN_TEMPERATURE)
        return jnp.where(t < MIN_TEMPERATURE, greedy_logits(logits), scaled)


@flax.struct.dataclass
class TopK(Transform):
    """Keeps the ``k`` largest logits (and every token tied with the k-th), as HF's TopKLogitsWarper."""

    k: ArrayLike = 50

    def __post_init__(self):
        check_range("top_k", self.k, 1, float("inf"), allowed="an integer >= 1")

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        k = jnp.minimum(jnp.broadcast_to(jnp.asarray(self.k, jnp.int32), logits.shape[:1]), logits.shape[-1])
        threshold = kth_largest(logits, k)
        return jnp.where(logits < threshold[:, None], MASK_VALUE, logits)


@flax.struct.dataclass
class TopP(Transform):
    """Nucleus sampling: the smallest set of most likely tokens whose mass reaches ``p``, including the
    token that crosses ``p``. ``p <= 0`` keeps the top token, ``p >= 1`` keeps all. Ties at the
    boundary are broken toward lower indices (HF breaks them by an unstable sort, i.e. arbitrarily).
    """

    p: ArrayLike = 0.9
    min_tokens_to_keep: int = flax.struct.field(pytree_node=False, default=1)

    def __post_init__(self):
        check_range("top_p", self.p, 0.0, 1.0, allowed="in [0, 1]")
        check_min_tokens(self.min_tokens_to_keep)

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        probs = jax.nn.softmax(logits, axis=-1)
        p = jnp.broadcast_to(jnp.asarray(self.p, jnp.float32), logits.shape[:1])
        keep = mass_prefix_keep(logits, probs, p) | (p >= 1)[:, None]  # rounded prefix sums may reach 1 early
        return _keep_at_least(logits, keep, self.min_tokens_to_keep)


@flax.struct.dataclass
class MinP(Transform):
    """Keeps tokens with probability >= ``p_min * max_prob`` (HF's MinPLogitsWarper)."""

    p: ArrayLike = 0.05
    min_tokens_to_keep: int = flax.struct.field(pytree_node=False, default=1)

    def __post_init__(self):
        check_range("min_p", self.p, 0.0, 1.0, allowed="in [0, 1]")
        check_min_tokens(self.min_tokens_to_keep)

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        probs = jax.nn.softmax(logits, axis=-1)
        keep = probs >= per_row(self.p) * jnp.max(probs, axis=-1, keepdims=True)
        return _keep_at_least(logits, keep, self.min_tokens_to_keep)


@flax.struct.dataclass
class Typical(Transform):
    """Locally typical sampling (Meister et al.): tokens ordered by ``|-log p - H|`` until mass ``p``.

    As HF's TypicalLogitsWarper: the kept set is every token whose surprise gap is at most the gap of
    the token that crosses the mass (so ties at that gap are all kept).
    """

    p: ArrayLike = 0.9
    min_tokens_to_keep: int = flax.struct.field(pytree_node=False, default=1)

    def __post_init__(self):
        check_range("typical_p", self.p, 0.0, 1.0, low_open=True, high_open=True, allowed="in (0, 1)")
        check_min_tokens(self.min_tokens_to_keep)

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        probs = jnp.exp(log_probs)
        entropy = -jnp.sum(probs * log_probs, axis=-1, keepdims=True)
        gap = jnp.abs(-log_probs - entropy)
        # HF counts the tokens (in gap order) whose cumulative mass is below p, then keeps every token
        # whose gap is <= the gap at that count (0-based), i.e. the gap of the crossing token.
        p = jnp.broadcast_to(jnp.asarray(self.p, jnp.float32), logits.shape[:1])
        threshold = _crossing_value(-gap, probs, p)
        keep = -gap >= threshold[:, None]
        return _keep_at_least(logits, keep, self.min_tokens_to_keep, order=-gap)


@flax.struct.dataclass
class Epsilon(Transform):
    """Epsilon sampling (Hewitt et al.): drops tokens with probability below ``epsilon``."""

    epsilon: ArrayLike = 3e-4
    min_tokens_to_keep: int = flax.struct.field(pytree_node=False, default=1)

    def __post_init__(self):
        check_range("epsilon", self.epsilon, 0.0, 1.0, low_open=True, high_open=True, allowed="in (0, 1)")
        check_min_tokens(self.min_tokens_to_keep)

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        keep = jax.nn.softmax(logits, axis=-1) >= per_row(self.epsilon)
        return _keep_top_values(logits, keep, self.min_tokens_to_keep)


@flax.struct.dataclass
class Eta(Transform):
    """Eta sampling (Hewitt et al.): threshold ``min(ε, sqrt(ε) · exp(-H(p)))``."""

    epsilon: ArrayLike = 3e-4
    min_tokens_to_keep: int = flax.struct.field(pytree_node=False, default=1)

    def __post_init__(self):
        check_range("eta", self.epsilon, 0.0, 1.0, low_open=True, high_open=True, allowed="in (0, 1)")
        check_min_tokens(self.min_tokens_to_keep)

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        probs = jnp.exp(log_probs)
        entropy = -jnp.sum(probs * log_probs, axis=-1, keepdims=True)
        epsilon = per_row(self.epsilon)
        eta = jnp.minimum(epsilon, jnp.sqrt(epsilon) * jnp.exp(-entropy))
        return _keep_top_values(logits, probs >= eta, self.min_tokens_to_keep)


@flax.struct.dataclass
class EpsilonSmoothing(Transform):
    """Martins et al. (2020)'s ε-smoothing: ``π = (p + ε) / (1 + ε|V|)``, ``p`` the distribution the chain so
    far leaves (so ``chain(TopK(k), EpsilonSmoothing(ε))`` is ε-smoothed top-k: truncated tokens get ``ε``
    back) and ``|V|`` the possible tokens. Not a truncation: it *adds* mass; the ε-perplexity of DAEMON's
    ``q_µ`` samples it (``infodec.daemon.tilted_perplexity``)."""

    epsilon: ArrayLike = 1e-6
    adds_mass: ClassVar[bool] = True

    def __post_init__(self):
        check_range("epsilon", self.epsilon, 0.0, 1.0, low_open=True, high_open=True, allowed="in (0, 1)")

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        return jnp.logaddexp(jax.nn.log_softmax(logits, axis=-1), jnp.log(per_row(self.epsilon)))


@flax.struct.dataclass
class RepetitionPenalty(Transform):
    """CTRL's penalty (as HF): logits of tokens already in the context are divided by ``penalty`` if
    positive and multiplied if negative. Needs ``step`` (the engine passes it)."""

    penalty: ArrayLike = 1.2

    def __post_init__(self):
        check_range("repetition_penalty", self.penalty, 0.0, float("inf"), low_open=True, allowed="> 0")

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        if step is None:
            raise ValueError("RepetitionPenalty needs the decode context: call it with step=StepInfo(...)")
        vocab = logits.shape[-1]
        context = jnp.where(step.context < 0, vocab, step.context)  # empty slots go to a dropped column
        seen = (
            jnp.zeros((logits.shape[0], vocab + 1), bool)
            .at[jnp.arange(logits.shape[0])[:, None], context]
            .set(True)[:, :vocab]
        )
        penalty = per_row(self.penalty)
        penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
        return jnp.where(seen, penalised, logits)


@flax.struct.dataclass
class Chain(Transform):
    """Transforms applied left to right (``chain(Temperature(0.7), TopP(0.9))``: temperature first)."""

    transforms: tuple[Transform, ...]

    @property
    def adds_mass(self) -> bool:  # type: ignore[override]
        return any(t.adds_mass for t in self.transforms)

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        for transform in self.transforms:
            logits = transform.transform(logits, step)
        return logits


def chain(*transforms: Transform) -> Chain:
    """Composes one-stream transforms, applied in the order given."""
    for transform in transforms:
        if not isinstance(transform, Transform):
            raise TypeError(
                f"chain() takes one-stream transforms (Temperature, TopK, TopP, ...), got {type(transform).__name__}"
            )
    return Chain(tuple(transforms))


def check_min_tokens(min_tokens_to_keep: int) -> None:
    if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep must be an integer >= 1, got {min_tokens_to_keep!r}")


# --- sort-free thresholds ---------------------------------------------------------------------------


def _order_key(x: Array) -> Array:
    """Maps float32 to uint32 preserving order, so thresholds can be bisected exactly over the bits."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _from_order_key(key: Array) -> Array:
    bits = jnp.where(key >> 31 == 1, key & jnp.uint32(0x7FFFFFFF), ~key)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _bisect_threshold(values: Array, weights: Array, target: Array) -> Array:
    """Per row, the largest ``t`` among ``values`` with ``sum(weights[values >= t]) >= target``.

    Exact: 32 halvings of the uint32 order keys. ``values, weights: [B, V]``; ``target: [B]``.
    """
    keys = _order_key(values)
    target = target[:, None]

    def body(_, bounds):
        lo, hi = bounds  # invariant: mass(>= lo) >= target; the answer is in [lo, hi]
        mid = lo + (hi - lo + 1) // 2
        ok = jnp.sum(jnp.where(keys >= mid, weights, 0.0), axis=-1, keepdims=True) >= target
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo = jnp.min(keys, axis=-1, keepdims=True)
    hi = jnp.max(keys, axis=-1, keepdims=True)
    lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return _from_order_key(lo[:, 0])


def _crossing_value(values: Array, weights: Array, target: Array) -> Array:
    """Value of the token at which the weight, accumulated in descending ``values`` order, reaches
    ``target`` (exclusive prefix ``< target``). Tries the top candidates first, bisects otherwise."""
    count = min(_CANDIDATES, values.shape[-1])
    top_values, top_index = jax.lax.top_k(values, count)
    top_weights = jnp.take_along_axis(weights, top_index, axis=-1)
    before = jnp.cumsum(top_weights, axis=-1) - top_weights
    crossing = jnp.sum(before < target[:, None], axis=-1)  # >= 1: the first token has nothing before it
    settled = crossing < count
    position = jnp.clip(crossing, 1, count) - 1  # p <= 0 counts nothing: the top token then
    from_candidates = jnp.take_along_axis(top_values, position[:, None], axis=-1)[:, 0]
    return jax.lax.cond(
        jnp.all(settled),
        lambda: from_candidates,
        lambda: jnp.where(settled, from_candidates, _bisect_threshold(values, weights, target)),
    )


def kth_largest(logits: Array, k: Array) -> Array:
    """``[B]`` value of the k-th largest logit per row (``k: [B]`` int, traced)."""
    return _crossing_value(logits, jnp.ones_like(logits), k.astype(jnp.float32))


def mass_prefix_keep(logits: Array, probs: Array, p: Array) -> Array:
    """Nucleus mask ``[B, V]``: in descending order (ties: lower index first), a token is kept while
    the mass strictly before it is below ``p``. (HF orders ties by an unstable sort, i.e. arbitrarily.)"""
    threshold = _crossing_value(logits, probs, p)[:, None]
    above = logits > threshold
    tied = logits == threshold
    mass_above = jnp.sum(jnp.where(above, probs, 0.0), axis=-1, keepdims=True)
    tie_prob = jnp.max(jnp.where(tied, probs, 0.0), axis=-1, keepdims=True)

    def tie_ranks():  # tied tokens with a lower index; a vocabulary-wide cumsum, so only when needed
        return jnp.cumsum(tied, axis=-1) - tied

    several_tied = jnp.any(jnp.sum(tied, axis=-1) > 1)
    tied_before = jax.lax.cond(several_tied, tie_ranks, lambda: jnp.zeros(tied.shape, jnp.int32))
    return above | (tied & (mass_above + tied_before * tie_prob < p[:, None]))


def _keep_top_values(logits: Array, keep: Array, min_tokens: int) -> Array:
    """Masks ``~keep`` but keeps every token whose logit reaches the ``min_tokens``-th largest (ties too)."""
    keep |= logits >= jax.lax.top_k(logits, min_tokens)[0][:, -1:]
    return jnp.where(keep, logits, MASK_VALUE)


def _keep_at_least(logits: Array, keep: Array, min_tokens: int, order: Array | None = None) -> Array:
    """Masks ``~keep`` but always keeps the ``min_tokens`` best tokens by ``order`` (default: logits)."""
    order = logits if order is None else order
    if min_tokens == 1:
        keep |= first_argmax_mask(order)
    else:
        _, best = jax.lax.top_k(order, min_tokens)  # ties go to the lowest index
        keep |= jnp.any(jnp.arange(logits.shape[-1])[None, :, None] == best[:, None, :], axis=-1)
    return jnp.where(keep, logits, MASK_VALUE)


__all__ = [
    "Greedy",
    "Temperature",
    "TopK",
    "TopP",
    "MinP",
    "Typical",
    "Epsilon",
    "Eta",
    "RepetitionPenalty",
    "Chain",
    "chain",
    "Policy",
]
