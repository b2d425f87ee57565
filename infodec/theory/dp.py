"""Exact soft-Bellman dynamic programming over every sequence of a tiny model (``docs/math.md`` §1).

Setting. A state is a prefix ``s = y_<t`` of the continuation (the prompt and evidence are fixed);
an action is the next token ``a``. ``P_G(a|s)`` is the anchor (stream 0 of a ``PrefixTree``, the
model with the evidence). A per-step reward ``r(s, a) = λ·g(s, a)`` (``g`` = the PMI between the
streams, or any score) and a terminal reward ``R(y)`` on the ``H``-token sequence are given.

**One step (the lemma of ``docs/math.md`` §1).** For ``β > 0``, ``τ = β + γ > 0``::

    J_s(π) = λ·E_π[g] − β·KL(π ‖ P_G) + γ·H(π)
    argmax_π J_s = softmax((β log P_G(·|s) + λ g(s,·)) / τ),   max_π J_s = τ·logsumexp((β log P_G + λ g)/τ)

Every decoder of ``infodec.policies.value`` is this closed form; here it is ``myopic(...)``.

**Sequence level.** Over policies π (equivalently, over distributions q on the ``V**H`` sequences)::

    J(π) = E_π[Σ_t λ·g(s_t, y_t) + R(y)] − β·KL(π ‖ P_G) + γ·H(π)          (KL, H of the sequence law)
         = E_π[U(y)] + τ·H(π),    U(y) = β log P_G(y) + Σ_t r(s_t, y_t) + R(y)

(the second line because ``−β KL + γ H = β E[log P_G] − (β+γ) E[log π]``). By the chain rule for KL
and entropy, ``J`` is also the expected sum of the one-step objectives along the path plus ``R``, and
it is maximised by the soft Bellman recursion::

    V(y) = R(y) for |y| = H,     Q(s, a) = r(s, a) + V(s ⊕ a)
    V(s) = τ · logsumexp_a((β log P_G(a|s) + Q(s, a)) / τ)
    π*(a|s) = softmax_a((β log P_G(a|s) + Q(s, a)) / τ)

whose sequence law is the Gibbs distribution ``π*(y) ∝ exp(U(y)/τ) = P_G(y)^{β/τ}·exp((Σr + R)/τ)``,
with ``V(root) = max_π J(π) = τ·logsumexp_y(U(y)/τ)`` (the Gibbs variational principle;
``sequence_optimum`` computes it directly by enumeration, with no recursion).

**Hard limit.** As ``τ = β + γ → 0+`` logsumexp becomes max: ``V(s) = max_a(β log P_G + Q)``, π* is
one-hot and the sequence law is the point mass on the MAP/Viterbi sequence ``argmax_y U(y)``. At
``τ = 0`` (γ = −β) the objective is ``E_π[U]`` and the point mass is optimal; for ``τ < 0`` the
entropy term only lowers ``J``, so the same point mass is optimal too. ``hard=True`` (or ``τ ≤ 0``)
solves this case; ``gamma`` is then not used. Ties go to the lowest token (as ``Greedy``).

**When myopic decoding is exact.** The myopic policy (the closed form above, the future term
``V(s ⊕ a)`` dropped) equals π* — and then, τ > 0 making the optimum unique, has the same objective
— if and only if, at every state ``s``, ``R`` and the exact ``V(s ⊕ a)`` do not depend on the token
``a``. Cases where this holds, each tested in ``tests/test_theory.py``:

1. ``H = 1`` and ``R = 0``: the sequence problem is the one-step problem.
2. The last step, always when ``R = 0``: ``V(s ⊕ a) = 0`` at depth ``H − 1``, so π* there is the
   closed form ``ValuePolicy(β, γ, λ, g)`` at every prefix (with ``R``, the closed form with score
   ``λg + R``).
3. "Reward = change of model": ``r(s, a) = τ·log Q(a|s) − β·log P_G(a|s)`` for some other
   autoregressive model ``Q`` (``R = 0``). Then every one-step value is 0, ``V ≡ 0`` and
   ``π* = myopic = Q``. Special cases: no reward and ``γ = 0`` (``π* = P_G``, ``V ≡ 0``: plain
   sampling is optimal); ``Temperature(1)``; CFG with ``w = 1`` (conditional) or ``w = 0``
   (``λ = −1``, β = 1, γ = 0, g = PMI: π* = the evidence-free stream).
4. A context-free model (``P_G(·|s)`` and ``g(s,·)`` depend on the depth only, ``R = 0``): ``V(s)``
   depends on the depth only, so any β, γ, λ is exact.

Otherwise myopic decoding is generically suboptimal, even without rewards: per-step temperature
``T ≠ 1`` samples ``Π_t P_G(y_t|s_t)^{1/T}/Z_t(s_t)``, not the sequence-level optimum
``P_G(y)^{1/T}/Z`` (the state-dependent normalisers ``Z_t`` are exactly what ``V`` corrects for);
token-level CFG differs from sequence-level CFG the same way; greedy differs from Viterbi; and a
terminal reward is invisible to every myopic decoder.

Arrays: per-depth tables are numpy float64 of shape ``(V,)*t + (V,)`` (index ``[y_0..y_{t-1}, a]``),
per-state values ``(V,)*t``, sequence tables ``(V,)*H``; ``.reshape(-1)`` orders sequences as
``sequences(V, H)`` / ``sequence_index``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from infodec.policies.base import StepInfo
from infodec.policies.value_policy import PMI
from infodec.theory.tree import PrefixTree, accumulate, log_softmax, logsumexp, sequences

# --- rewards ----------------------------------------------------------------------------------------


def step_info(tree: PrefixTree, t: int) -> StepInfo:
    """The ``StepInfo`` a policy sees at depth ``t`` for every prefix (``[V**t]`` rows): the stream-0
    context (``tree.context`` then the prefix, ``-1`` after) and the step index ``t``."""
    prefixes = sequences(tree.vocab, t)
    width = len(tree.context) + tree.horizon
    context = np.full((tree.vocab**t, width), -1, np.int32)
    context[:, : len(tree.context)] = tree.context
    context[:, len(tree.context) : len(tree.context) + t] = prefixes
    return StepInfo(jnp.asarray(context), jnp.int32(t))


def _is_pmi(score: Any) -> bool:
    if isinstance(score, str):
        if score.lower() != "pmi":
            raise ValueError(f"the only named score is 'pmi', got {score!r}")
        return True
    return isinstance(score, PMI)


def score_tables(tree: PrefixTree, score: Any) -> list[np.ndarray] | None:
    """The score ``g(s, a)`` at every state as ``H`` tables of shape ``(V,)*(t+1)`` (float64).

    ``score``: None (no score); ``"pmi"`` or ``infodec.policies.value.PMI()`` (``log P(a|s,c) −
    log P(a|s)``, in float64 from the two streams); any other infodec score object, called as
    ``score(log_probs[N, S, V], step) -> [N, V]`` on every prefix; or a sequence of ``H`` arrays, the
    ``t``-th broadcastable to ``(V,)*(t+1)``.
    """
    if score is None:
        return None
    H, V = tree.horizon, tree.vocab
    if _is_pmi(score):
        return [tree.pmi(t) for t in range(H)]
    if callable(score):
        out = []
        for t in range(H):
            log_probs = jnp.asarray(tree.log_probs[t].reshape(V**t, tree.num_streams, V), jnp.float32)
            g = np.asarray(score(log_probs, step_info(tree, t)), np.float64)
            out.append(g.reshape((V,) * (t + 1)))
        return out
    if isinstance(score, (list, tuple)):
        if len(score) != H:
            raise ValueError(f"score needs one table per depth ({H}), got {len(score)}")
        out = []
        for t, table in enumerate(score):
            table = np.asarray(table, np.float64)
            try:
                out.append(np.broadcast_to(table, (V,) * (t + 1)).copy())
            except ValueError:
                raise ValueError(f"score[{t}] of shape {table.shape} does not broadcast to (V,)*{t + 1}") from None
        return out
    raise TypeError(
        f"score must be None, 'pmi', a score object or a sequence of per-depth arrays, got {type(score).__name__}"
    )


def reward_tables(tree: PrefixTree, lam: float = 0.0, score: Any = None) -> list[np.ndarray]:
    """Per-step rewards ``r(s, a) = λ·g(s, a)`` as ``H`` tables ``(V,)*(t+1)`` (zeros without a score)."""
    g = score_tables(tree, score)
    if g is None:
        return [np.zeros((tree.vocab,) * (t + 1)) for t in range(tree.horizon)]
    return [float(lam) * table for table in g]


def terminal_table(tree: PrefixTree, terminal_reward: Any = None) -> np.ndarray:
    """``R(y)`` as a ``(V,)*H`` float64 array (zeros if None); accepts ``(V,)*H`` or flat ``[V**H]``."""
    shape = (tree.vocab,) * tree.horizon
    if terminal_reward is None:
        return np.zeros(shape)
    table = np.asarray(terminal_reward, np.float64)
    if table.size != tree.num_sequences:
        raise ValueError(f"terminal_reward needs {tree.num_sequences} entries (shape {shape}), got {table.shape}")
    table = table.reshape(shape)
    if not np.all(np.isfinite(table)):
        raise ValueError("terminal_reward contains NaN or infinite values")
    return table


def _weights(beta: float, gamma: float, hard: bool) -> tuple[float, float, bool]:
    beta, gamma = float(beta), float(gamma)
    if not np.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not np.isfinite(gamma):
        raise ValueError(f"gamma must be finite, got {gamma}")
    tau = beta + gamma
    return beta, tau, bool(hard) or tau <= 0


# --- solutions --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Solution:
    """The result of ``solve`` (or ``myopic``) on a ``PrefixTree``.

    Attributes:
      values: ``H + 1`` arrays; ``values[t]`` has shape ``(V,)*t``: ``V(y_<t)``. ``values[0]`` is the
        root value (a 0-d array), ``values[H]`` the terminal reward ``R``. (For ``myopic``: the
        one-step maxima ``max_π J_s``, and zeros at depth ``H``.)
      q: ``H`` arrays ``(V,)*(t+1)``: ``Q(s, a) = r(s, a) + V(s ⊕ a)`` (``myopic``: ``r`` alone).
      log_policy: ``H`` arrays ``(V,)*(t+1)``: ``log π(a | s)`` at every state (``-inf`` off the argmax
        when hard).
      log_seq_probs: ``(V,)*H``: ``log π(y) = Σ_t log π(y_t | y_<t)``.
      beta, gamma, hard: the weights solved for (``hard``: the max/Viterbi recursion).
    """

    values: tuple[np.ndarray, ...]
    q: tuple[np.ndarray, ...]
    log_policy: tuple[np.ndarray, ...]
    log_seq_probs: np.ndarray
    beta: float
    gamma: float
    hard: bool

    @property
    def value(self) -> float:
        """``V(root)``: for ``solve``, ``max_π J(π)`` (soft) or ``max_y U(y)`` (hard)."""
        return float(self.values[0])

    @property
    def mode(self) -> np.ndarray:
        """``[H]`` the most likely sequence under ``log_seq_probs`` (lowest index on ties); for
        ``hard=True`` the MAP sequence ``argmax_y U(y)``."""
        return np.array(np.unravel_index(int(np.argmax(self.log_seq_probs)), self.log_seq_probs.shape))

    def policy_at(self, prefix: Sequence[int]) -> np.ndarray:
        """``[V]`` ``log π(· | prefix)`` for a prefix of fewer than ``H`` tokens."""
        return self.log_policy[len(prefix)][tuple(int(a) for a in prefix)]


def _backward(
    tree: PrefixTree,
    beta: float,
    gamma: float,
    lam: float,
    score: Any,
    terminal_reward: Any,
    hard: bool,
    lookahead: bool,
) -> Solution:
    beta, tau, hard = _weights(beta, gamma, hard)
    H, V = tree.horizon, tree.vocab
    rewards = reward_tables(tree, lam, score)
    terminal = terminal_table(tree, terminal_reward)
    values: list[np.ndarray] = [np.zeros(())] * H + [terminal if lookahead else np.zeros_like(terminal)]
    q: list[np.ndarray] = [np.zeros(())] * H
    log_policy: list[np.ndarray] = [np.zeros(())] * H
    for t in reversed(range(H)):
        q[t] = rewards[t] + values[t + 1] if lookahead else rewards[t]
        utility = beta * tree.log_model(t) + q[t]
        if hard:
            best = np.argmax(utility, axis=-1)  # first maximum: ties go to the lowest token
            values[t] = np.max(utility, axis=-1)
            log_policy[t] = np.where(np.arange(V) == best[..., None], 0.0, -np.inf)
        else:
            scaled = utility / tau
            values[t] = tau * logsumexp(scaled)
            log_policy[t] = log_softmax(scaled)
    return Solution(
        values=tuple(values),
        q=tuple(q),
        log_policy=tuple(log_policy),
        log_seq_probs=accumulate(log_policy),
        beta=beta,
        gamma=float(gamma),
        hard=hard,
    )


def solve(
    tree: PrefixTree,
    *,
    beta: float = 1.0,
    gamma: float = 0.0,
    lam: float = 0.0,
    score: Any = None,
    terminal_reward: Any = None,
    hard: bool = False,
) -> Solution:
    """Solves the soft Bellman recursion exactly (module docstring; ``docs/math.md`` §1, sequence level).

    Args:
      tree: the exact next-token logits at every prefix (``prefix_log_probs``, ``random_prefix_tree``).
      beta: weight of ``−KL(π ‖ P_G)``; > 0.
      gamma: weight of ``H(π)``; ``τ = β + γ > 0`` for the soft solution (``τ ≤ 0`` gives the hard one).
      lam: the per-step reward is ``r(s, a) = lam · g(s, a)`` (user arrays too: pass ``lam=1`` to use
        them as ``r`` itself; ``lam = 0`` means no per-step reward, as in ``ValuePolicy``).
      score: ``g``: None, ``"pmi"`` / ``PMI()`` (two-stream tree), a score object, or ``H`` arrays
        (``score_tables``).
      terminal_reward: ``R(y)``, ``(V,)*H`` or ``[V**H]``; None for 0.
      hard: the ``τ → 0+`` limit: max instead of logsumexp, one-hot π*, MAP sequence.
    Returns:
      a ``Solution`` with ``V``, ``Q``, ``π*`` at every state and the sequence law of π*.
    """
    return _backward(tree, beta, gamma, lam, score, terminal_reward, hard, lookahead=True)


def myopic(
    tree: PrefixTree, *, beta: float = 1.0, gamma: float = 0.0, lam: float = 0.0, score: Any = None, hard: bool = False
) -> Solution:
    """The per-step closed form (``docs/math.md`` §1 lemma) at every state: ``π(a|s) = softmax((β log P_G +
    λ g)/τ)``, i.e. what ``ValuePolicy(β, γ, λ, g)`` samples (``hard``: greedy on ``β log P_G + λ g``).
    The future value and any terminal reward are ignored; ``values`` are the one-step maxima."""
    return _backward(tree, beta, gamma, lam, score, None, hard, lookahead=False)


# --- sequence level, by enumeration -----------------------------------------------------------------


def sequence_utility(
    tree: PrefixTree, *, beta: float = 1.0, lam: float = 0.0, score: Any = None, terminal_reward: Any = None
) -> np.ndarray:
    """``(V,)*H``: ``U(y) = β log P_G(y) + Σ_t λ g(s_t, y_t) + R(y)`` for every sequence."""
    return (
        float(beta) * tree.sequence_log_model()
        + accumulate(reward_tables(tree, lam, score))
        + terminal_table(tree, terminal_reward)
    )


def sequence_optimum(
    tree: PrefixTree,
    *,
    beta: float = 1.0,
    gamma: float = 0.0,
    lam: float = 0.0,
    score: Any = None,
    terminal_reward: Any = None,
    hard: bool = False,
) -> tuple[np.ndarray, float]:
    """The sequence-level optimum by direct enumeration (no recursion): ``(log q*, max J)`` with
    ``q*(y) = softmax_y(U(y)/τ)`` and ``max J = τ·logsumexp_y(U(y)/τ)``; hard: the point mass on
    ``argmax_y U`` (lowest index on ties) and ``max_y U``. ``solve`` must agree with it."""
    beta, tau, hard = _weights(beta, gamma, hard)
    utility = sequence_utility(tree, beta=beta, lam=lam, score=score, terminal_reward=terminal_reward)
    if hard:
        best = np.zeros(utility.size, bool)
        best[np.argmax(utility)] = True
        return np.where(best, 0.0, -np.inf).reshape(utility.shape), float(np.max(utility))
    flat = utility.reshape(-1) / tau
    return log_softmax(flat).reshape(utility.shape), float(tau * logsumexp(flat))


# --- any infodec policy, exactly --------------------------------------------------------------------


@jax.jit
def _apply_policy(policy, logits, context, index):
    """One compilation per policy structure and shape; numeric fields are traced (policies are pytrees)."""
    return policy(logits, StepInfo(context, index))[0]


def policy_tables(tree: PrefixTree, policy) -> tuple[np.ndarray, ...]:
    """``log π(a | s)`` of an infodec policy at every state: ``H`` float64 tables ``(V,)*(t+1)``.

    The policy is applied once per depth to the raw logits of all ``V**t`` prefixes (``[V**t, S, V]``,
    every stream of the tree; stream 0 = with evidence) with ``step_info(tree, t)``; its float32
    output is renormalised in float64. Masked tokens keep their huge negative log-probability. The
    policy must act row by row (every infodec policy does): rows are padded to a common count.
    """
    # Every depth is padded to the V**(H-1) rows of the deepest one (policies act row by row), so the
    # policy's operations run at one shape: compiled once, not once per depth.
    rows = tree.vocab ** (tree.horizon - 1)
    tables = []
    for t in range(tree.horizon):
        count = tree.vocab**t
        logits = np.zeros((rows, tree.num_streams, tree.vocab), np.float32)
        logits[:count] = tree.flat_logits(t)
        info = step_info(tree, t)
        context = jnp.pad(info.context, ((0, rows - count), (0, 0)), constant_values=-1)
        try:
            log_pi = _apply_policy(policy, jnp.asarray(logits), context, info.index)
        except TypeError:  # a policy that is not a registered pytree: run it eagerly (errors re-raise here)
            log_pi = policy(jnp.asarray(logits), StepInfo(context, info.index))[0]
        log_pi = log_softmax(np.asarray(log_pi, np.float64)[:count])
        tables.append(log_pi.reshape((tree.vocab,) * (t + 1)))
    return tuple(tables)


def policy_distribution(tree: PrefixTree, policy) -> np.ndarray:
    """``(V,)*H`` float64: the exact sequence law ``log π(y) = Σ_t log π(y_t | y_<t)`` of an infodec
    policy (what ``infodec.generate`` samples for ``H`` new tokens when no stop token ends a row)."""
    return accumulate(policy_tables(tree, policy))


def sequence_log_probs(tables: Sequence[np.ndarray]) -> np.ndarray:
    """``(V,)*H``: the sequence law of per-state log-policies ``tables[t]: (V,)*(t+1)`` (chain rule)."""
    return accumulate(tables)


def _log_seq(tree: PrefixTree, dist: Any) -> np.ndarray:
    """Normalised ``(V,)*H`` float64 log q from a sequence law, per-state tables, a Solution or a policy."""
    shape = (tree.vocab,) * tree.horizon
    if isinstance(dist, Solution):
        log_q = dist.log_seq_probs
    elif isinstance(dist, (list, tuple)):
        if len(dist) != tree.horizon:
            raise ValueError(f"per-state log-policies need one table per depth ({tree.horizon}), got {len(dist)}")
        log_q = accumulate(dist)
    elif callable(dist):
        log_q = policy_distribution(tree, dist)
    else:
        log_q = np.asarray(dist, np.float64)
    if log_q.size != tree.num_sequences:
        raise ValueError(f"a sequence law needs {tree.num_sequences} entries (shape {shape}), got {log_q.shape}")
    log_q = log_q.reshape(shape)
    total = float(np.exp(logsumexp(log_q.reshape(-1))))
    if not np.isfinite(total) or abs(total - 1.0) > 1e-3:
        raise ValueError(f"log-probabilities must sum to 1 over sequences, got {total}")
    return log_q - np.log(total)


def sequence_terms(
    tree: PrefixTree, dist: Any, *, lam: float = 0.0, score: Any = None, terminal_reward: Any = None
) -> dict[str, float]:
    """The terms of ``J`` for a sequence law ``q``, exactly by enumeration over the ``V**H`` sequences.

    ``dist``: log-probabilities ``(V,)*H`` or ``[V**H]``, per-state log-policy tables, a ``Solution``
    or an infodec policy. Returns ``reward = E_q[Σ_t λ g + R]``, ``kl = KL(q ‖ P_G)``,
    ``entropy = H(q)`` (nats; sequence level; ``0·log 0 = 0``).
    """
    log_q = _log_seq(tree, dist)
    q = np.exp(log_q)
    support = q > 0
    log_q_safe = np.where(support, log_q, 0.0)
    rewards = accumulate(reward_tables(tree, lam, score)) + terminal_table(tree, terminal_reward)
    return {
        "reward": float(np.sum(q * rewards)),
        "kl": float(np.sum(np.where(support, q * (log_q_safe - tree.sequence_log_model()), 0.0))),
        "entropy": float(-np.sum(np.where(support, q * log_q_safe, 0.0))),
    }


def sequence_objective(
    tree: PrefixTree,
    dist: Any,
    *,
    beta: float = 1.0,
    gamma: float = 0.0,
    lam: float = 0.0,
    score: Any = None,
    terminal_reward: Any = None,
) -> float:
    """``J(q) = E_q[Σ_t λ·g(s_t, y_t) + R(y)] − β·KL(q ‖ P_G) + γ·H(q)`` at sequence level, exactly.

    ``dist`` as in ``sequence_terms``. ``max_q J = solve(...).value`` (``docs/math.md`` §1); with ``γ = −β`` it
    is ``E_q[U]``, maximised by the MAP point mass (``solve(..., hard=True).value``).
    """
    terms = sequence_terms(tree, dist, lam=lam, score=score, terminal_reward=terminal_reward)
    return terms["reward"] - float(beta) * terms["kl"] + float(gamma) * terms["entropy"]


__all__ = [
    "Solution",
    "solve",
    "myopic",
    "sequence_optimum",
    "sequence_utility",
    "policy_tables",
    "policy_distribution",
    "sequence_log_probs",
    "sequence_terms",
    "sequence_objective",
    "score_tables",
    "reward_tables",
    "terminal_table",
    "step_info",
]
