"""Sequential Monte Carlo decoding on the public decode primitives (``docs/guides/smc.md``).

``M`` particles per prompt advance one token at a time by ``step`` under a proposal policy ``π`` and
carry log weights. With a potential ``φ`` (a log twist of the prefix so far, ``φ`` of the empty
continuation = 0), the weight of a particle after a check at step ``t`` has grown by::

    Σ_{new tokens} (log p_θ − log π)  +  φ_t(prefix) − φ_{t'}(prefix at the previous check t')

so a particle that has not been resampled carries ``log p_θ(x) − log π(x) + φ(x)``: at the last step
the target is ``p_θ(x) exp(φ(x)) / Z``. Every ``resample_every`` steps the effective sample size
``ESS = (Σ w)² / Σ w²`` of each prompt's ``M`` weights is checked; a prompt whose ESS falls below
``ess_threshold · M`` is resampled (multinomial, systematic or residual) with ``select`` and fresh keys,
and its weights all become the group's ``log mean exp``. So the final weights' ``log mean exp`` is the
standard normaliser estimate ``log Ẑ`` (the sum over resampling epochs of the log mean incremental
weight), and ``Ẑ`` is unbiased for ``Z = E_π[exp(log p_θ − log π + φ)]``.

Potentials (any callable ``(tokens [N, L], lengths [N], prefix [N, P]) -> [N]``; tokens are padded
after ``lengths``, prefixes are the prompts right-padded with ``-1``):

* :class:`DaemonPotential`: ``−µᵀ f(prefix so far)`` with DAEMON's metrics; the final weight is exactly
  DAEMON's ``ρ − µᵀ f`` and the target ``q_µ``. ``ess_threshold=0`` (never resample) is DAEMON's SIR.
* :class:`ValueTwist`: ``V(prefix) / τ`` for a learned or rollout value ``V`` (twisted SMC); at a finished
  sequence ``V`` must be the sequence-level reward. :func:`exact_twist` builds the exact twist of a
  ``theory.solve`` solution, whose target is the sequence-level Bellman optimum.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from infodec.daemon import log_weights as daemon_log_weights
from infodec.daemon import metrics as metrics_lib
from infodec.daemon import resample as daemon_resample
from infodec.daemon.sampling import sanitize_log_weights
from infodec.decoding import GenerateOutput, finish, prefill, select, step
from infodec.decoding.engine import StopTokens, encode_prompts
from infodec.eval.stats import kish_ess
from infodec.policies import Policy
from infodec.theory import PrefixTree, Solution, reward_tables, sequence_index
from infodec.theory.tree import logsumexp

Array = jax.Array

RESAMPLING = ("multinomial", "systematic", "residual")


class Potential(Protocol):
    """A log twist of the prefix so far: ``(tokens [N, L], lengths [N], prefix [N, P]) -> [N]`` float."""

    def __call__(self, tokens: Any, lengths: Any, prefix: Any) -> Any: ...


# --- resampling ------------------------------------------------------------------------------------


def normalized_weights(log_weights: Array) -> Array:
    """``softmax`` over the last axis of DAEMON's sanitised log weights (NaN counts as ``-inf``, ``+inf``
    entries share the mass, a row of all ``-inf`` is uniform)."""
    return jax.nn.softmax(sanitize_log_weights(log_weights), axis=-1)


def multinomial(key: Array, log_weights: Array) -> Array:
    """``[M]`` ancestor indices: ``M`` i.i.d. draws from ``softmax(log_weights[M])``."""
    w = normalized_weights(log_weights)
    return jax.random.categorical(key, jnp.log(w), shape=w.shape).astype(jnp.int32)


def _invert(cdf: Array, u: Array) -> Array:
    """Index ``i`` with ``cdf[i-1] <= u < cdf[i]`` (the last index when rounding leaves ``u >= cdf[-1]``)."""
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"), cdf.shape[0] - 1).astype(jnp.int32)


def systematic(key: Array, log_weights: Array) -> Array:
    """``[M]`` ancestor indices from one uniform: ``u_k = (U + k) / M``, inverted through the weights' CDF.
    Particle ``i`` gets ``⌊M w_i⌋`` or ``⌈M w_i⌉`` offspring, ``M w_i`` on average."""
    w = normalized_weights(log_weights)
    m = w.shape[0]
    u = (jax.random.uniform(key, dtype=jnp.float32) + jnp.arange(m, dtype=jnp.float32)) / m
    cdf = jnp.cumsum(w)
    return _invert(cdf / cdf[-1], u)


def residual(key: Array, log_weights: Array) -> Array:
    """``[M]`` ancestor indices: ``⌊M w_i⌋`` copies of each particle, the other ``R = M − Σ⌊M w_i⌋`` drawn
    multinomially from the residuals ``M w_i − ⌊M w_i⌋`` (``M w_i`` offspring on average)."""
    w = normalized_weights(log_weights)
    m = w.shape[0]
    scaled = m * w
    copies = jnp.floor(scaled)
    kept = jnp.cumsum(copies)  # slot j < kept[-1] holds the particle whose block of copies contains j
    slots = jnp.arange(m, dtype=jnp.float32)
    fixed = _invert(kept, slots)
    rest = jnp.maximum(scaled - copies, 0.0)
    rest = jnp.where(jnp.sum(rest) > 0, rest, jnp.ones_like(rest))  # no residual mass: draws are unused
    drawn = jax.random.categorical(key, jnp.log(rest), shape=(m,)).astype(jnp.int32)
    return jnp.where(slots < kept[-1], fixed, drawn)


RESAMPLERS: dict[str, Callable[[Array, Array], Array]] = {
    "multinomial": multinomial,
    "systematic": systematic,
    "residual": residual,
}


@functools.partial(jax.jit, static_argnames="scheme")
def resample_groups(key: Array, log_weights: Array, scheme: str = "systematic") -> Array:
    """``[G, M]`` ancestor indices (within each group) for ``[G, M]`` log weights, one key per group."""
    keys = jax.random.split(key, log_weights.shape[0])
    return jax.vmap(RESAMPLERS[scheme])(keys, log_weights)


def log_mean_exp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Float64 ``log mean exp`` over ``axis`` (``-inf`` when every entry is ``-inf``): the theory module's
    ``logsumexp`` less ``log n``."""
    x = np.asarray(x, np.float64)
    with np.errstate(divide="ignore"):
        return logsumexp(x, axis) - np.log(x.shape[axis])


def effective_sample_size(log_weights: np.ndarray) -> np.ndarray:
    """``(Σ w)² / Σ w²`` over the last axis, in ``[1, M]`` (``M`` for a row with no finite weight)."""
    return kish_ess(normalized_weights(jnp.asarray(log_weights)))


# --- potentials -------------------------------------------------------------------------------------


class DaemonPotential:
    """DAEMON's energy applied to the prefix so far: ``φ(x_{≤t}) = −µᵀ f(x_{≤t}, c)``.

    ``mu``, ``metric_names``, ``standardization`` and ``metric_deps`` are those of ``daemon.sample``; the
    arithmetic is ``daemon.log_weights``'s, so a particle's final weight is DAEMON's ``ρ − µᵀ f``.
    """

    def __init__(self, mu, metric_names: Sequence[str], *, standardization=None, **metric_deps):
        if isinstance(metric_names, str):
            metric_names = [metric_names]
        self.mu = np.asarray(mu, np.float64).reshape(-1)
        self.metric_names = tuple(metric_names)
        if len(self.metric_names) != self.mu.shape[0]:
            raise ValueError(f"mu has {self.mu.shape[0]} coefficients for {len(self.metric_names)} metrics")
        self.standardization = standardization
        self.functions = metrics_lib.metric_functions(self.metric_names, **metric_deps)

    def features(self, tokens, lengths, prefix) -> np.ndarray:
        """``[N, K]`` float64 raw metrics of each prefix."""
        return np.asarray(metrics_lib.compute_with(self.functions, tokens, lengths, prefix), np.float64)

    def __call__(self, tokens, lengths, prefix) -> np.ndarray:
        f = self.features(tokens, lengths, prefix)
        return daemon_log_weights(self.mu, f[None], standardization=self.standardization)[0]


class ValueTwist:
    """Twisted SMC with a value of the prefix: ``φ(x_{≤t}) = V(x_{≤t}) / temperature``.

    ``value(tokens [N, L], lengths [N], prefix [N, P]) -> [N]``: a learned value, a rollout estimate or a
    classifier's log-probability. At a finished sequence it must return the sequence-level reward, so
    the final target is ``p_θ(x) exp(R(x) / temperature)``; the closer ``V`` is to the soft value
    ``temperature · log E_{p_θ}[exp(R / temperature) | prefix]``, the more even the weights.
    """

    def __init__(self, value: Callable[..., Any], temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.value = value
        self.temperature = float(temperature)

    def __call__(self, tokens, lengths, prefix) -> np.ndarray:
        return np.asarray(self.value(tokens, lengths, prefix), np.float64) / self.temperature


def exact_twist(tree: PrefixTree, solution: Solution, *, lam: float = 0.0, score: Any = None) -> ValueTwist:
    """The exact twist of a soft ``theory.solve`` solution, for SMC with proposal ``p_θ`` (``Temperature(1)``).

    ``φ(s) = (β/τ − 1) log P_G(s) + (Σ_{past} r + V(s)) / τ`` (``τ = β + γ``; ``lam``/``score`` the
    per-step reward the solution was solved with). Each intermediate target ``P_G(s) exp(φ(s))`` is then
    the exact prefix marginal of the sequence law of π*, and the final target is π* itself.
    """
    if solution.hard:
        raise ValueError("the exact twist needs a soft solution (beta + gamma > 0)")
    beta, tau = solution.beta, solution.beta + solution.gamma
    rewards = reward_tables(tree, lam, score)
    tables = [np.zeros(())]
    log_model, cum_reward = np.zeros(()), np.zeros(())
    for t in range(tree.horizon):
        log_model = log_model[..., None] + tree.log_model(t)
        cum_reward = cum_reward[..., None] + rewards[t]
        tables.append((beta / tau - 1.0) * log_model + (cum_reward + solution.values[t + 1]) / tau)
    vocab = tree.vocab

    def value(tokens, lengths, prefix=None):
        tokens, lengths = np.asarray(tokens), np.asarray(lengths)
        out = np.zeros(len(tokens), np.float64)
        for t in np.unique(lengths):
            rows = lengths == t
            index = sequence_index(tokens[rows, :t], vocab) if t else np.zeros(int(rows.sum()), np.int64)
            out[rows] = tables[int(t)].reshape(-1)[index]
        return out

    return ValueTwist(value, temperature=1.0)


# --- the sampler ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SMCOutput:
    """What :func:`smc` returns (numpy). ``P`` prompts, ``M`` particles each, ``C`` checks.

    Attributes:
      tokens, lengths, text: ``[P * M, L]``, ``[P * M]`` and (with a tokenizer) the decoded text of the
        final particles, prompt-major (``prompt * M + particle``).
      log_weights: ``[P, M]`` final log weights (their ``log mean exp`` is ``log_z``).
      index: ``[P]`` the particle drawn from each prompt's final weights; sample_tokens ``[P, L]``,
        sample_lengths ``[P]``, sample_text: that draw (one per prompt, like ``daemon.sample``).
      log_z: ``[P]`` the normaliser estimate ``log Ẑ``.
      ess: ``[C, P]`` effective sample size at each check (before any resampling there).
      check_steps: ``[C]`` the step (tokens generated) of each check.
      resampled: ``[C, P]`` bool, which prompts were resampled at each check.
      particles: the final particles as a ``GenerateOutput`` (log-probabilities, prompts, diagnostics).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    text: list[str] | None
    log_weights: np.ndarray
    index: np.ndarray
    sample_tokens: np.ndarray
    sample_lengths: np.ndarray
    sample_text: list[str] | None
    log_z: np.ndarray
    ess: np.ndarray
    check_steps: np.ndarray
    resampled: np.ndarray
    particles: GenerateOutput

    @property
    def resample_steps(self) -> list[list[int]]:
        """Per prompt, the steps at which it was resampled."""
        return [self.check_steps[self.resampled[:, p]].tolist() for p in range(self.resampled.shape[1])]


def _check_args(num_particles, max_new_tokens, resample_every, ess_threshold, resampling):
    if not isinstance(num_particles, (int, np.integer)) or num_particles < 1:
        raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(resample_every, (int, np.integer)) or resample_every < 1:
        raise ValueError(f"resample_every must be an integer >= 1, got {resample_every!r}")
    if not 0.0 <= float(ess_threshold) <= 1.0:
        raise ValueError(f"ess_threshold must lie in [0, 1] (a fraction of num_particles), got {ess_threshold}")
    if resampling not in RESAMPLERS:
        raise ValueError(f"unknown resampling scheme {resampling!r}; known: {', '.join(RESAMPLING)}")


@jax.jit
def _log_ratio(state) -> Array:
    """``[N]`` ``Σ_t (log p_θ − log π)`` over the tokens generated so far (0 after a row is done)."""
    return jnp.sum(state.logp_model - state.logp_policy, axis=1)


def _potential(potential, tokens, lengths, prefix, rows: int) -> np.ndarray:
    value = np.asarray(potential(tokens, lengths, prefix), np.float64)
    if value.shape != (rows,):
        raise ValueError(
            f"the potential must return one float per particle, shape ({rows},); "
            f"{type(potential).__name__} returned shape {value.shape}"
        )
    return value


def smc(
    model,
    params,
    prompts,
    proposal_policy: Policy,
    potential: Potential | Callable[..., Any],
    key: Array,
    *,
    num_particles: int,
    max_new_tokens: int,
    resample_every: int = 1,
    ess_threshold: float = 0.5,
    resampling: str = "systematic",
    tokenizer=None,
    stop_tokens: StopTokens = ...,
    evidence=None,
    mesh=None,
) -> SMCOutput:
    """Sequential Monte Carlo towards ``p_θ(x|c) exp(φ(x)) / Z`` with ``num_particles`` particles per prompt.

    Args:
      model, params, prompts, tokenizer, stop_tokens, evidence, mesh: as for ``infodec.generate``
        (string prompts are encoded with a BOS, as ``daemon.sample`` does).
      proposal_policy: ``π``, the policy particles are advanced with (its ``log π`` corrects the weights).
      potential: ``φ`` (module docstring); evaluated at every check on the prefix so far; a finished
        particle's potential is its final value.
      key: split into the particles' key and the resampling key (``jax.random.split(key)``, as
        ``daemon.sample``); with ``ess_threshold=0`` the result's draw equals ``daemon.sample``'s.
      num_particles: ``M`` per prompt (>= 1).
      max_new_tokens: ``T``.
      resample_every: steps between checks (the ESS is computed and, below the threshold, resampled);
        the last step is always checked but never resampled.
      ess_threshold: resample a prompt when its ESS < ``ess_threshold · M``; 0: never (SIR), 1: nearly
        always.
      resampling: "systematic", "multinomial" or "residual".
    Returns:
      an :class:`SMCOutput`.
    """
    _check_args(num_particles, max_new_tokens, resample_every, ess_threshold, resampling)
    prompt_ids = encode_prompts(prompts, tokenizer, add_bos=True)
    num_prompts, m = len(prompt_ids), int(num_particles)
    live_rows = num_prompts * m
    gen_key, pick_key = jax.random.split(key)
    state = prefill(
        model,
        params,
        prompt_ids,
        gen_key,
        max_new_tokens=max_new_tokens,
        tokenizer=tokenizer,
        evidence=evidence,
        num_samples=m,
        policy=proposal_policy,
        stop_tokens=stop_tokens,
        mesh=mesh,
    )
    total_rows = state.num_rows  # > P * M only on a mesh whose data axis pads the rows
    prefix = np.full((live_rows, max(len(p) for p in prompt_ids)), -1, np.int32)
    for row in range(live_rows):
        ids = prompt_ids[row // m]
        prefix[row, : len(ids)] = ids

    log_w = np.zeros(live_rows, np.float64)
    rho_prev = np.zeros(live_rows, np.float64)
    phi_prev = np.zeros(live_rows, np.float64)
    ess_trace, steps, resampled = [], [], []
    for t in range(1, max_new_tokens + 1):
        state = step(model, params, proposal_policy, state, donate=True)
        last = t == max_new_tokens or bool(np.all(np.asarray(state.done)[:live_rows]))
        if not (last or t % resample_every == 0):
            continue
        rho = np.asarray(_log_ratio(state), np.float64)[:live_rows]
        tokens, lengths = state.tokens[:live_rows], state.lengths[:live_rows]
        phi = _potential(potential, tokens, lengths, prefix, live_rows)
        log_w = log_w + (rho - rho_prev) + (phi - phi_prev)
        rho_prev, phi_prev = rho, phi
        groups = log_w.reshape(num_prompts, m)
        ess = effective_sample_size(groups)
        ess_trace.append(ess)
        steps.append(t)
        low = np.zeros(num_prompts, bool) if last else ess < float(ess_threshold) * m
        resampled.append(low)
        if last:
            break
        if low.any():
            check_key = jax.random.fold_in(pick_key, len(steps))
            ancestors = np.asarray(resample_groups(check_key, jnp.asarray(groups), scheme=resampling))
            within = np.where(low[:, None], ancestors, np.arange(m)[None, :])
            rows = (np.arange(num_prompts)[:, None] * m + within).reshape(-1)
            rows = np.concatenate([rows, np.arange(live_rows, total_rows)])
            state = select(state, rows, key=jax.random.fold_in(check_key, 1 << 20))
            mean = log_mean_exp(groups, axis=1)
            groups = np.where(low[:, None], mean[:, None], groups)
            log_w = groups.reshape(-1)
            rho_prev, phi_prev = rho_prev[rows[:live_rows]], phi_prev[rows[:live_rows]]

    out = finish(state, tokenizer)
    final = log_w.reshape(num_prompts, m)
    index = np.asarray(daemon_resample(pick_key, final)[0])
    chosen = np.arange(num_prompts) * m + index
    keep = lambda x: x[:live_rows]
    text = None if out.text is None else out.text[:live_rows]
    return SMCOutput(
        tokens=keep(out.tokens),
        lengths=keep(out.lengths),
        text=text,
        log_weights=final,
        index=index,
        sample_tokens=out.tokens[chosen],
        sample_lengths=out.lengths[chosen],
        sample_text=None if text is None else [text[r] for r in chosen],
        log_z=log_mean_exp(final, axis=1),
        ess=np.stack(ess_trace),
        check_steps=np.asarray(steps, np.int32),
        resampled=np.stack(resampled),
        particles=out,
    )


__all__ = [
    "smc",
    "SMCOutput",
    "Potential",
    "DaemonPotential",
    "ValueTwist",
    "exact_twist",
    "multinomial",
    "systematic",
    "residual",
    "RESAMPLERS",
    "resample_groups",
    "normalized_weights",
    "effective_sample_size",
    "log_mean_exp",
]
