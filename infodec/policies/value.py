"""Value-function policies [P1]: every decoder as the optimum of an information-theoretic objective.

One-step lemma (``docs/math.md`` §1): for ``β > 0``, ``β + γ > 0`` and a score ``g(s, a)``::

    J_s(π) = λ·E_π[g] − β·KL(π ‖ P_G) + γ·H(π)
    argmax_π J_s = softmax((β·log P_G + λ·g) / (β + γ))

``ValuePolicy`` (``policies.value_policy``) implements that closed form with a pluggable score, and the
named decoders are cases of it (each has ``as_value_policy()``, and the tests check the two agree):

| decoder | β | γ | λ | g |
|---|---|---|---|---|
| ``Temperature(T)`` | 1 | T − 1 | 0 | — |
| ``ClassifierFreeGuidance(w)`` | 1 | 0 | w − 1 | PMI between the streams |
| ``ClassifierGuidance(D, s)`` | 1 | 0 | s | log P_D(c \\| s, a) |
| ``KLGuidedTemperature`` | 1 | T(s) − 1, T(s) from the streams' KL | 0 | — |

Two-stream policies read ``logits[:, 0]`` (prompt with evidence, the anchor P_G) and ``logits[:, 1]``
(without evidence).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from infodec.policies.base import (
    MASK_VALUE,
    MIN_TEMPERATURE,
    Diagnostics,
    Policy,
    StepInfo,
    check_range,
    greedy_logits,
    per_row,
)
from infodec.policies.standard import TopK, TopP, mass_prefix_keep
from infodec.policies.value_policy import PMI, FunctionScore, ValuePolicy, stream_diagnostics

Array = jax.Array


# --- named decoders ---------------------------------------------------------------------------------


@flax.struct.dataclass
class ClassifierFreeGuidance(Policy):
    """``logits = ℓ_u + w·(ℓ_c − ℓ_u)`` on log-softmaxed streams (the convention of ``docs/math.md`` §1):
    ``w = 1`` is plain conditional sampling, ``w = 0`` unconditional, ``w > 1`` sharpens toward the evidence. Equals
    ``ValuePolicy(β=1, γ=0, λ=w−1, PMI())``; ``temperature`` divides the result (γ = T − 1)."""

    scale: ArrayLike = 1.5
    temperature: ArrayLike = 1.0

    num_streams = 2

    def __post_init__(self):
        check_range("temperature", self.temperature, 0.0, float("inf"), low_open=True, allowed="> 0")

    def as_value_policy(self) -> ValuePolicy:
        return ValuePolicy(
            beta=1.0, gamma=jnp.asarray(self.temperature) - 1.0, lam=jnp.asarray(self.scale) - 1.0, score=PMI()
        )

    def log_probs(self, logits: Array, step: StepInfo | None) -> tuple[Array, Diagnostics]:
        return self.as_value_policy().log_probs(logits, step)


@flax.struct.dataclass
class KLGuidedTemperature(Policy):
    """KL-divergence guided temperature [P2], the official code's rule (``docs/math.md`` §2)::

        KL = max(0, Σ p (log p − log p'))     p, p' = clip(softmax(ℓ), 1e-7, 1), unrenormalised
        T  = t0 · 2^(−KL / half_life)         (half_life = 0 disables the rule: T = t0)
        π  = softmax(truncate(ℓ / max(T, 1e-4)))   top-k then top-p, after the temperature

    ``exact=False`` computes the KL from log-softmax differences without clipping (the textbook KL;
    it differs from the official one only where some probability is below 1e-7). ``top_k = 0`` and
    ``top_p = 1`` disable truncation (the defaults: the official code's ``topk=1`` default is greedy
    and is not copied). ``t0 <= 1e-4`` is greedy on ``ℓ``. Fields are traced.

    One difference from the official code by default: top-p keeps the tokens before the crossing token
    in descending order with **ties broken toward lower ids** (``TopP``'s rule, shared by every infodec
    decoder), so of several tokens tied with the crossing one only the lowest-id ones are kept. The
    official (T5X) code keeps every token whose logit reaches the crossing token's (``logits <
    cutoff_logit`` are masked); ``official_ties=True`` does that. The two differ only where logits tie
    exactly at the boundary.
    """

    t0: ArrayLike = 1.0
    half_life: ArrayLike = 1.0
    top_k: ArrayLike = 0
    top_p: ArrayLike = 1.0
    exact: bool = flax.struct.field(pytree_node=False, default=True)
    official_ties: bool = flax.struct.field(pytree_node=False, default=False)

    num_streams = 2

    def __post_init__(self):
        check_range("t0", self.t0, 0.0, float("inf"), allowed=">= 0 (0 = greedy)")
        check_range("half_life", self.half_life, 0.0, float("inf"), allowed=">= 0 nats (0 disables)")
        check_range("top_k", self.top_k, 0, float("inf"), allowed=">= 0 (0 = off)")
        check_range("top_p", self.top_p, 0.0, 1.0, allowed="in [0, 1] (1 = off)")

    def stream_kl(self, logits: Array) -> Array:
        if self.exact:
            p = jnp.clip(jax.nn.softmax(logits[:, 0]), 1e-7, 1.0)
            q = jnp.clip(jax.nn.softmax(logits[:, 1]), 1e-7, 1.0)
            kl = jnp.sum(p * (jnp.log(p) - jnp.log(q)), axis=-1)
        else:
            log_p, log_q = jax.nn.log_softmax(logits[:, 0]), jax.nn.log_softmax(logits[:, 1])
            kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
        return jnp.maximum(kl, 0.0)

    def temperature(self, kl: Array) -> Array:
        t0 = jnp.broadcast_to(jnp.asarray(self.t0, jnp.float32), kl.shape)
        h = jnp.broadcast_to(jnp.asarray(self.half_life, jnp.float32), kl.shape)
        return jnp.where(h > 0, t0 * jnp.exp2(-kl / jnp.where(h > 0, h, 1.0)), t0)

    def as_value_policy(self, logits: Array) -> ValuePolicy:
        """The untruncated policy at these logits: ``ValuePolicy(β=1, γ=T(s)−1)`` per row."""
        return ValuePolicy(beta=1.0, gamma=self.temperature(self.stream_kl(logits)) - 1.0)

    def log_probs(self, logits: Array, step: StepInfo | None) -> tuple[Array, Diagnostics]:
        kl = self.stream_kl(logits)
        t = self.temperature(kl)
        conditional = logits[:, 0]
        scaled = conditional / jnp.maximum(t, MIN_TEMPERATURE)[:, None]
        scaled = jnp.where(per_row(self.t0) <= MIN_TEMPERATURE, greedy_logits(conditional), scaled)
        k = jnp.broadcast_to(jnp.asarray(self.top_k, jnp.int32), kl.shape)
        p = jnp.broadcast_to(jnp.asarray(self.top_p, jnp.float32), kl.shape)
        # Truncations that are off for every row are skipped at run time, not computed and discarded.
        scaled = jax.lax.cond(
            jnp.all(k <= 0), lambda x: x, lambda x: TopK(jnp.where(k > 0, k, x.shape[-1])).transform(x, step), scaled
        )
        top_p = (lambda x: official_top_p(x, p)) if self.official_ties else (lambda x: TopP(p).transform(x, step))
        scaled = jax.lax.cond(jnp.all(p >= 1), lambda x: x, top_p, scaled)
        return jax.nn.log_softmax(scaled), {"kl_streams": kl, "temperature": t}


def official_top_p(logits: Array, p: Array) -> Array:
    """Top-p as the official KL-guided (T5X) code applies it: every token whose logit reaches the crossing
    token's is kept, ties included. ``logits [B, V]``, ``p [B]``; ``p >= 1`` keeps all, ``p <= 0`` keeps
    the top token (and its ties); the rest become ``MASK_VALUE``."""
    keep = mass_prefix_keep(logits, jax.nn.softmax(logits, axis=-1), p)  # the prefix up to the crossing token
    crossing = jnp.min(jnp.where(keep, logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where((logits >= crossing) | (p >= 1)[:, None], logits, MASK_VALUE)


# --- the open question: λ or T as a function of the streams' KL ------------------------------------


@flax.struct.dataclass
class HalfLifeSchedule:
    """The official mapping [P2]: ``value(KL) = base · 2^(−KL / half_life)`` (non-increasing in KL).

    ``half_life = 0`` disables the schedule (``value = base``), as ``KLGuidedTemperature(half_life=0)``
    means ``T = t0`` (``docs/math.md`` §2: h = 0 gives plain temperature sampling), so
    ``DynamicValuePolicy(HalfLifeSchedule(t0, h))`` and ``KLGuidedTemperature(t0, h)`` agree for every
    ``h >= 0``."""

    base: ArrayLike = 1.0
    half_life: ArrayLike = 1.0

    def __post_init__(self):
        check_range("half_life", self.half_life, 0.0, float("inf"), allowed=">= 0 nats (0 disables)")

    def __call__(self, kl: Array) -> Array:
        h = jnp.asarray(self.half_life, jnp.float32)
        decay = jnp.where(h > 0, jnp.exp2(-kl / jnp.where(h > 0, h, 1.0)), 1.0)
        return jnp.asarray(self.base, jnp.float32) * decay


@flax.struct.dataclass
class SigmoidSchedule:
    """An alternative: ``low + (high − low) · sigmoid((KL − midpoint) / width)``. With ``high > low``
    for guidance it raises λ where the evidence matters (large KL) and leaves P_G alone elsewhere."""

    low: ArrayLike = 1.0
    high: ArrayLike = 3.0
    midpoint: ArrayLike = 0.5
    width: ArrayLike = 0.25

    def __call__(self, kl: Array) -> Array:
        low, high, midpoint, width = (
            jnp.asarray(v, jnp.float32) for v in (self.low, self.high, self.midpoint, self.width)
        )
        return low + (high - low) * jax.nn.sigmoid((kl - midpoint) / width)


@flax.struct.dataclass
class DynamicValuePolicy(Policy):
    """A value policy whose T or λ is ``schedule(KL(P(·|s,c) ‖ P(·|s)))`` at every step.

    ``target="temperature"``: ``π ∝ P(·|s,c)^(1/T)`` with ``T = schedule(KL)`` (γ = T − 1); with
    ``HalfLifeSchedule(t0, h)`` this is untruncated KL-guided temperature.
    ``target="guidance"``: ``π ∝ P(·|s,c) · exp(λ·PMI)`` with ``λ = schedule(KL)``, i.e. CFG with
    ``w = 1 + λ`` chosen per step. ``schedule`` is any pytree callable ``[B] -> [B]``.
    """

    schedule: Any = HalfLifeSchedule()
    target: str = flax.struct.field(pytree_node=False, default="temperature")

    num_streams = 2

    def __post_init__(self):
        if self.target not in ("temperature", "guidance"):
            raise ValueError(f"target must be 'temperature' or 'guidance', got {self.target!r}")

    def as_value_policy(self, logits: Array) -> ValuePolicy:
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        value = self.schedule(stream_diagnostics(log_probs)["kl_streams"])
        if self.target == "temperature":
            return ValuePolicy(beta=1.0, gamma=jnp.maximum(value, MIN_TEMPERATURE) - 1.0)
        return ValuePolicy(beta=1.0, gamma=0.0, lam=value, score=PMI())

    def log_probs(self, logits: Array, step: StepInfo | None) -> tuple[Array, Diagnostics]:
        log_pi, diagnostics = self.as_value_policy(logits).log_probs(logits, step)
        return log_pi, {**diagnostics, **stream_diagnostics(jax.nn.log_softmax(logits, axis=-1))}


__all__ = [
    "PMI",
    "FunctionScore",
    "ValuePolicy",
    "ClassifierFreeGuidance",
    "KLGuidedTemperature",
    "HalfLifeSchedule",
    "SigmoidSchedule",
    "DynamicValuePolicy",
    "official_top_p",
    "MASK_VALUE",
]
