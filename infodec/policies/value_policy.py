"""The general value-function policy of [P1] and its scores (``docs/math.md`` §1).

For ``β > 0``, ``β + γ > 0`` and a score ``g(s, a)``, the one-step objective
``J_s(π) = λ·E_π[g] − β·KL(π ‖ P_G) + γ·H(π)`` has the closed-form optimum
``softmax((β·log P_G + λ·g) / (β + γ))``, which ``ValuePolicy`` implements. The named decoders that are
cases of it live in ``policies.standard`` (temperature), ``policies.value`` (two-stream guidance,
KL-guided temperature) and ``policies.guidance`` (classifier guidance); this module sits below all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jax.typing import ArrayLike

from infodec.policies.base import Diagnostics, Policy, StepInfo, check_range, per_row

Array = jax.Array


# --- scores g(s, a) ---------------------------------------------------------------------------------


@flax.struct.dataclass
class PMI:
    """``g(s, a) = log P(a | s, c) − log P(a | s)``: pointwise mutual information of the next token and
    the evidence ``c``, from the two streams."""

    num_streams = 2

    def __call__(self, log_probs: Array, step: StepInfo | None) -> Array:
        return log_probs[:, 0] - log_probs[:, 1]


@flax.struct.dataclass
class FunctionScore:
    """A user score ``fn(log_probs[B, S, V], step) -> g[B, V]`` (``fn`` must be hashable: a function)."""

    fn: Callable = flax.struct.field(pytree_node=False)
    num_streams: int = flax.struct.field(pytree_node=False, default=1)

    def __call__(self, log_probs: Array, step: StepInfo | None) -> Array:
        return self.fn(log_probs, step)


# --- the general policy -----------------------------------------------------------------------------


@flax.struct.dataclass
class ValuePolicy(Policy):
    """``π = softmax((β·log P_G + λ·g) / (β + γ))``, the optimum of ``λ·E_π[g] − β·KL(π‖P_G) + γ·H(π)``.

    Attributes:
      beta: weight of sensibleness (KL to the model); > 0.
      gamma: weight of diversity (entropy); ``beta + gamma > 0``.
      lam: weight of the score (attribution when ``g`` is PMI or a discriminator).
      score: ``g``, called as ``score(log_probs[B, S, V], step) -> [B, V]``; None for ``g = 0``.
    Scalars or per-row ``[B]`` arrays; all traced.
    """

    beta: ArrayLike = 1.0
    gamma: ArrayLike = 0.0
    lam: ArrayLike = 0.0
    score: Any = None

    def __post_init__(self):
        check_range("beta", self.beta, 0.0, float("inf"), low_open=True, allowed="> 0")
        if isinstance(self.beta, Tracer) or isinstance(self.gamma, Tracer):
            return
        try:
            total = np.asarray(self.beta, np.float64) + np.asarray(self.gamma, np.float64)
        except (TypeError, ValueError):  # pytree internals rebuild policies with placeholder leaves
            return
        check_range(
            "beta + gamma",
            total,
            0.0,
            float("inf"),
            low_open=True,
            allowed="> 0 (the policy's effective temperature (β+γ)/β must be positive)",
        )

    @property
    def num_streams(self) -> int:
        return 1 if self.score is None else self.score.num_streams

    def log_probs(self, logits: Array, step: StepInfo | None) -> tuple[Array, Diagnostics]:
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        beta, gamma, lam = per_row(self.beta), per_row(self.gamma), per_row(self.lam)
        utility = beta * log_probs[:, 0]
        if self.score is not None:
            utility = utility + lam * self.score(log_probs, step)
        rows = logits.shape[0]
        extra = {
            "temperature": jnp.broadcast_to((beta + gamma) / beta, (rows, 1))[:, 0],
            "guidance": jnp.broadcast_to(lam / beta, (rows, 1))[:, 0],
        }
        return jax.nn.log_softmax(utility / (beta + gamma)), {**extra, **stream_diagnostics(log_probs)}


def stream_diagnostics(log_probs: Array) -> Diagnostics:
    """``kl_streams = KL(P(·|s,c) ‖ P(·|s))`` per row for two-stream input, nothing for one stream."""
    if log_probs.shape[1] < 2:
        return {}
    p = jnp.exp(log_probs[:, 0])
    return {"kl_streams": jnp.maximum(jnp.sum(p * (log_probs[:, 0] - log_probs[:, 1]), axis=-1), 0.0)}
