"""The policy contract and the information diagnostics every policy reports.

A policy maps raw model logits to the log-probabilities of the sampling distribution π::

    policy(logits[B, S, V] or [B, V], step=None) -> (log_pi[B, V], diagnostics: dict[str, Float[B]])

``S`` is the number of streams (1, or 2 for policies that compare the prompt with and without
evidence: stream 0 with evidence, stream 1 without). Policies are frozen pytree dataclasses: numeric
fields are traced leaves (a new temperature never recompiles; per-row ``[B]`` arrays are allowed),
structural fields are static.

Masked (truncated) tokens get the large finite logit ``MASK_VALUE`` rather than ``-inf``, so
entropies and KLs never see ``0 * inf = NaN``.

Logits may contain ``-inf`` (a banned token, a masked vocabulary slot): ``__call__`` treats a token that is
``-inf`` in any stream as impossible, gives it ``MASK_VALUE`` in every stream before the policy sees the
logits, and ``log_pi = MASK_VALUE`` (probability exactly 0) afterwards, so no policy can give it mass and
the diagnostics stay finite. A row must keep at least one possible token. NaN logits are an error: called
on concrete arrays, a policy raises ``ValueError``; inside the engine (traced), ``finish`` raises when a
row's chosen token had a NaN log-probability.

Per-row policy state (stateful policies such as ``MirostatV2``; every other policy is stateless and
unaffected). A policy node with ``stateful = True`` implements:

* ``initial_state(rows) -> state``: a pytree of ``[rows, ...]`` arrays, made at prefill;
* ``with_state(state) -> policy``: a copy of the node that reads ``state`` in its ``transform``;
* ``next_state(state, log_pi[B, V], token[B]) -> state``: the state after ``token`` was sampled from the
  final ``log_pi`` of the step (so a chain's stateful member sees the chain's law, not its own).

Stateful nodes may sit anywhere in a policy's pytree (inside a ``chain``, say): ``initial_policy_state``,
``bind_policy_state`` and ``next_policy_state`` find them in pytree order, and the whole policy's state
is a tuple with one entry per stateful node, or None when there are none (the engine's compiled step then
stays exactly what it was). The engine keeps it in ``DecodeState.policy_state``, binds it before the
policy runs, advances it after sampling (live rows only) and gathers it with its rows in ``select``.
Called outside the engine, a stateful node uses its documented default state.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from infodec.models.layers import MASK_VALUE

Array = jax.Array
Diagnostics = dict[str, Array]

# Temperatures below this are greedy (T5X's convention), avoiding division by ~0.
MIN_TEMPERATURE = 1e-4


@flax.struct.dataclass
class StepInfo:
    """What stateful policies may read at a decode step.

    Attributes:
      context: ``[B, C]`` int32, the prompt and the tokens generated so far (``-1`` where empty).
      index: int32 scalar, the number of tokens generated so far.
      hidden: ``[B, D]`` float32, the model's final (post-norm) hidden state of stream 0 at the current
        decode position (the state whose logits the policy is scoring), or None. The engine computes it
        only for policies with ``needs_hidden = True``.
      key: ``[B]`` PRNG keys, each row's sampling key for this step (the engine samples the token with
        it), or None. Policies that draw random numbers (``XTC``) fold a constant of their own into it, so
        their draws are independent of the token's and a forked row (``select``) repeats its parent's.
    """

    context: Array
    index: Array
    hidden: Array | None = None
    key: Array | None = None


class Policy:
    """Base class: subclasses implement ``log_probs`` and may set ``num_streams = 2``.

    ``needs_hidden = True`` asks the engine for ``StepInfo.hidden`` (one more output of every model call;
    other policies do not pay for it).
    """

    num_streams: ClassVar[int] = 1
    needs_hidden: ClassVar[bool] = False
    stateful: ClassVar[bool] = False  # carries per-row state across steps (module docstring)
    # gives mass to masked tokens (EpsilonSmoothing): __call__ then renormalises over the possible ones
    adds_mass: ClassVar[bool] = False

    def initial_state(self, rows: int) -> Any:
        """Stateful policies: the state at prefill, a pytree of ``[rows, ...]`` arrays."""
        raise NotImplementedError(f"{type(self).__name__} is stateless")

    def with_state(self, state: Any) -> Policy:
        """Stateful policies: a copy that reads ``state`` (from ``initial_state``/``next_state``)."""
        return self

    def next_state(self, state: Any, log_pi: Array, token: Array) -> Any:
        """Stateful policies: the state after ``token [B]`` was sampled from ``log_pi [B, V]``."""
        return state

    def __call__(self, logits: Array, step: StepInfo | None = None) -> tuple[Array, Diagnostics]:
        logits = as_streams(logits, self.num_streams, type(self).__name__)
        logits, impossible = mask_impossible(logits)
        log_pi, extra = self.log_probs(logits, step)
        if self.adds_mass:  # static: an impossible token may have got mass; it goes back to the possible ones
            log_pi = jnp.where(impossible, -jnp.inf, log_pi)
            log_pi = log_pi - jax.nn.logsumexp(log_pi, axis=-1, keepdims=True)
        log_pi = jnp.where(impossible, MASK_VALUE, log_pi)
        return log_pi, {**information_diagnostics(log_pi, jax.nn.log_softmax(logits[:, 0])), **extra}

    def log_probs(self, logits: Array, step: StepInfo | None) -> tuple[Array, Diagnostics]:
        """``logits[B, S, V]`` float32 -> ``(log_pi[B, V], extra diagnostics)``."""
        raise NotImplementedError


class Transform(Policy):
    """A one-stream logit transform (temperature, truncation, penalty); chains compose them."""

    def log_probs(self, logits: Array, step: StepInfo | None) -> tuple[Array, Diagnostics]:
        return jax.nn.log_softmax(self.transform(logits[:, 0], step)), {}

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        """``logits[B, V]`` -> transformed logits ``[B, V]`` (masked entries at ``MASK_VALUE``)."""
        raise NotImplementedError


def as_streams(logits: Array, num_streams: int, name: str) -> Array:
    """Accepts ``[B, V]`` (one stream) or ``[B, S, V]`` and returns float32 ``[B, S, V]``."""
    logits = jnp.asarray(logits)
    if logits.ndim == 2:
        logits = logits[:, None, :]
    if logits.ndim != 3:
        raise ValueError(f"{name}: logits must be [batch, vocab] or [batch, streams, vocab], got {logits.shape}")
    if logits.shape[1] < num_streams:
        raise ValueError(
            f"{name} needs {num_streams} streams (with and without evidence) but got "
            f"{logits.shape[1]}; pass evidence=... to generate()"
        )
    logits = logits.astype(jnp.float32)
    if not isinstance(logits, Tracer):
        check_logits(np.asarray(logits), name)
    return logits


def check_logits(logits: np.ndarray, name: str) -> None:
    """Raises ValueError for NaN logits or a row with no possible token (every entry ``-inf``)."""
    nan_rows = np.flatnonzero(np.isnan(logits).reshape(logits.shape[0], -1).any(-1))
    if nan_rows.size:
        raise ValueError(
            f"{name}: logits contain NaN (rows {nan_rows[:8].tolist()}); logits must be finite or -inf "
            "(-inf marks an impossible token)"
        )
    dead = np.flatnonzero(np.isneginf(logits).all(-1).any(-1))
    if dead.size:
        raise ValueError(f"{name}: every logit of rows {dead[:8].tolist()} is -inf; a row needs a possible token")


def mask_impossible(logits: Array) -> tuple[Array, Array]:
    """``logits[B, S, V]`` -> (the logits with every token that is ``-inf`` in any stream at ``MASK_VALUE`` in
    all streams, ``impossible[B, V]`` bool). Finite ``MASK_VALUE`` keeps ``0 * log 0`` terms at 0, not NaN."""
    impossible = jnp.any(jnp.isneginf(logits), axis=1)
    return jnp.where(impossible[:, None, :], MASK_VALUE, logits), impossible


def information_diagnostics(log_pi: Array, log_p: Array) -> Diagnostics:
    """Entropy ``H(π)`` and ``KL(π ‖ P_G)`` per row (nats), from log-probabilities ``[B, V]``."""
    pi = jnp.exp(log_pi)
    # Terms of zero-probability tokens are 0 even where a transform pushed log π to -inf (0 * -inf = NaN).
    entropy = jnp.maximum(-jnp.sum(jnp.where(pi > 0, pi * log_pi, 0.0), axis=-1), 0.0)
    kl = jnp.sum(jnp.where(pi > 0, pi * (log_pi - log_p), 0.0), axis=-1)
    return {"entropy": entropy, "kl_to_model": jnp.maximum(kl, 0.0)}


def per_row(value: Any) -> Array:
    """A scalar or ``[B]`` parameter as something that broadcasts against ``[B, V]``."""
    value = jnp.asarray(value, jnp.float32)
    return value[:, None] if value.ndim == 1 else value


def greedy_logits(logits: Array) -> Array:
    """0 at the first argmax of each row, ``MASK_VALUE`` elsewhere (ties go to the lowest index, as in HF)."""
    return jnp.where(first_argmax_mask(logits), 0.0, MASK_VALUE)


def first_argmax_mask(values: Array) -> Array:
    """``[B, V]`` bool, True at the first maximum of each row.

    Two plain reductions (max, then the lowest index holding it): XLA:CPU's variadic-reduce argmax
    is ~5x slower over a 49k vocabulary.
    """
    vocab = jnp.arange(values.shape[-1])
    is_max = values == jnp.max(values, axis=-1, keepdims=True)
    return vocab == jnp.min(jnp.where(is_max, vocab, values.shape[-1]), axis=-1, keepdims=True)


def check_range(
    name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False, allowed: str
) -> None:
    """Raises a clear ValueError if a concrete parameter is outside its range (tracers pass)."""
    if isinstance(value, Tracer):
        return
    try:
        array = np.asarray(value, np.float64)
    except (TypeError, ValueError):  # pytree internals rebuild policies with placeholder leaves
        return
    bad = np.isnan(array) | (array <= low if low_open else array < low) | (array >= high if high_open else array > high)
    if np.any(bad):
        raise ValueError(f"{name} must be {allowed}, got {value}")


# --- per-row policy state (module docstring) ----------------------------------------------------------


def _is_stateful(node: Any) -> bool:
    return isinstance(node, Policy) and node.stateful


def stateful_nodes(policy: Policy) -> list[Policy]:
    """The stateful nodes of ``policy`` (itself, members of a chain, ...) in pytree order."""
    return [node for node in jax.tree.leaves(policy, is_leaf=_is_stateful) if _is_stateful(node)]


def initial_policy_state(policy: Policy, rows: int) -> tuple | None:
    """The state of every stateful node of ``policy`` (pytree order) for ``rows`` rows; None if none."""
    nodes = stateful_nodes(policy)
    return tuple(node.initial_state(rows) for node in nodes) if nodes else None


def bind_policy_state(policy: Policy, state: tuple | None) -> Policy:
    """``policy`` with each stateful node reading its entry of ``state`` (None: ``policy`` itself)."""
    if state is None:
        return policy
    states = iter(state)
    return jax.tree.map(lambda n: n.with_state(next(states)) if _is_stateful(n) else n, policy, is_leaf=_is_stateful)


def next_policy_state(policy: Policy, state: tuple | None, log_pi: Array, token: Array) -> tuple | None:
    """Every stateful node's ``next_state`` after ``token [B]`` was sampled from ``log_pi [B, V]``."""
    if state is None:
        return None
    return tuple(node.next_state(s, log_pi, token) for node, s in zip(stateful_nodes(policy), state, strict=True))
