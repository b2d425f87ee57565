"""DAEMON Algorithm 2: conditional sampling-importance-resampling (``docs/math.md`` §3).

For each prompt: ``M`` candidates from the proposal ``r`` (``Temperature(τ)``; the ``M`` rows share the
prompt's prefilled KV cache via ``generate(..., num_samples=M)``), log weights
``lw_i = ρ_i − µᵀ f(x_i, c)`` with ``ρ_i = log p_θ(x_i|c) − log r(x_i|c)`` (dropped when
``correct_proposal=False``), and ``x_{i*}`` with ``i* ~ Categorical(lw)``. ``M = 1`` is plain
proposal sampling; as ``M → ∞`` the output follows ``q_µ`` with a point-wise relative error O(1/M).

**The paper's τ < 1 heuristic** (as third-party reconstructions describe [P3]; its code is not public):
µ fitted at τ = 1, candidates from ``Temperature(τ)`` and log weights ``lw_i = −µᵀ f(x_i, c)`` with no
``ρ`` term, i.e. ``sample(..., proposal_temperature=τ, correct_proposal=False)`` with that µ. As
``M → ∞`` it follows ``r_τ(x|c) · exp(−µᵀ f) / Z`` with ``r_τ = Π_t softmax(ℓ_t / τ)[x_t]``, not ``q_µ``:
the temperature's sharpening stays in the output, and µ (fitted against ``p_θ``'s moments) no longer
matches the target moments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from infodec.daemon import fitting as fit_lib
from infodec.decoding.engine import StopTokens, encode_prompts

Array = jax.Array


def sanitize_log_weights(log_weights: Array) -> Array:
    """Finite-safe log weights: NaN -> -inf; if a row has +inf entries, those share the mass equally;
    a row with no finite entry (all -inf) becomes uniform."""
    lw = jnp.asarray(log_weights, jnp.float32)
    lw = jnp.where(jnp.isnan(lw), -jnp.inf, lw)
    pos = jnp.isposinf(lw)
    lw = jnp.where(jnp.any(pos, axis=-1, keepdims=True), jnp.where(pos, 0.0, -jnp.inf), lw)
    dead = jnp.all(jnp.isneginf(lw), axis=-1, keepdims=True)
    return jnp.where(dead, 0.0, lw)


@jax.jit
def _resample(key, log_weights):
    lw = sanitize_log_weights(log_weights)
    index = jax.random.categorical(key, lw, axis=-1)
    w = jax.nn.softmax(lw, axis=-1)
    return index.astype(jnp.int32), 1.0 / jnp.sum(w * w, axis=-1)


def resample(key: Array, log_weights) -> tuple[Array, Array]:
    """``(index [B], ess [B])``: ``index[b] ~ Categorical(softmax(log_weights[b]))`` and the effective
    sample size ``1/Σ_i w_{b,i}²`` of each row's normalised weights (in ``[1, M]``).

    Works in log space (``jax.random.categorical`` takes the log weights), so weights like ``−1e4·f``
    or identical candidates are fine. NaN counts as ``-inf``; a row of all ``-inf`` is uniform; a row
    with ``+inf`` entries picks uniformly among them.
    """
    log_weights = jnp.asarray(log_weights)
    if log_weights.ndim != 2 or log_weights.shape[1] < 1:
        raise ValueError(f"log_weights must be [B, M] with M >= 1, got shape {log_weights.shape}")
    return _resample(key, log_weights)


def _scale(standardization) -> np.ndarray | None:
    if standardization is None:
        return None
    if isinstance(standardization, fit_lib.FitReport):
        return np.asarray(standardization.feature_std, np.float64)
    _, std = standardization
    return np.asarray(std, np.float64)


def log_weights(mu, features, log_ratios=None, *, standardization=None) -> np.ndarray:
    """``[B, M]`` ``lw = ρ − µᵀ f``. With ``standardization`` (a ``FitReport`` or ``(mean, std)``), ``mu`` is
    on the standardised scale and ``f`` is standardised first (the mean cancels in the softmax, so only
    ``std`` matters); without it, ``mu`` is on the raw scale."""
    f = np.asarray(features, np.float64)
    mu = np.asarray(mu, np.float64).reshape(-1)
    if f.ndim != 3 or f.shape[-1] != mu.shape[0]:
        raise ValueError(f"features must be [B, M, K={mu.shape[0]}], got shape {f.shape}")
    scale = _scale(standardization)
    if scale is not None:
        mu = mu / scale
    lw = -np.einsum("bmk,k->bm", f, mu)
    if log_ratios is not None:
        lw = lw + np.asarray(log_ratios, np.float64)
    return lw


@dataclasses.dataclass(frozen=True)
class DaemonOutput:
    """What :func:`sample` returns (numpy; one row per prompt unless noted).

    Attributes:
      tokens: ``[P, L]`` the chosen continuation of each prompt, padded after ``lengths``.
      lengths: ``[P]``.
      index: ``[P]`` which candidate was chosen.
      log_weights: ``[P, M]`` every candidate's unnormalised log weight ``ρ − µᵀ f``.
      ess: ``[P]`` effective sample size of each prompt's weights.
      features: ``[P, M, K]`` candidate metrics (raw scale); log_ratios ``[P, M]`` their ``ρ``.
      candidates: the underlying ``GenerateOutput`` (``P * M`` rows, prompt-major).
      text: decoded chosen continuations when a tokenizer was given.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    index: np.ndarray
    log_weights: np.ndarray
    ess: np.ndarray
    features: np.ndarray
    log_ratios: np.ndarray
    candidates: Any
    text: list[str] | None = None


def sample(
    model,
    params,
    prompts,
    mu,
    metric_names: Sequence[str],
    *,
    num_candidates: int,
    max_new_tokens: int,
    key,
    proposal_temperature: float = 1.0,
    correct_proposal: bool = True,
    standardization=None,
    tokenizer=None,
    stop_tokens: StopTokens = ...,
    mesh=None,
    **metric_deps,
) -> DaemonOutput:
    """Algorithm 2: one DAEMON sample per prompt by SIR over ``num_candidates`` proposal candidates.

    Args:
      model, params, prompts, tokenizer, stop_tokens: as for ``infodec.generate``.
      mu: ``[K]`` coefficients for ``metric_names`` (raw scale, or standardised with ``standardization``).
      num_candidates: ``M``; the candidates share the prompt's prefilled cache (``num_samples=M``).
      key: split once into the generation key and the resampling key (``jax.random.split(key)``), so
        ``M = 1`` returns exactly ``generate(..., Temperature(τ), split(key)[0])``.
      proposal_temperature: ``τ`` of the proposal ``r``.
      correct_proposal: include ``ρ = log p_θ − log r`` in the weights (targets ``q_µ``); False targets
        ``r · exp(−µᵀ f)`` instead (with µ fitted at τ = 1: the paper's τ < 1 heuristic, module
        docstring). Irrelevant at ``τ = 1`` (``ρ = 0``).
      standardization: ``FitReport`` or ``(mean, std)`` when ``mu`` is on the standardised scale.
      mesh: a ``jax.sharding.Mesh`` (``infodec.sharding``): the ``P * M`` candidates on its data axis,
        parameters on its model axis; the candidates, weights and choices equal one device's.
      metric_deps: for ``coh``/``info`` (see ``metrics.get_metric``).
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    prompt_ids = encode_prompts(prompts, tokenizer, add_bos=True)
    fit_lib.check_candidates_fit(
        model,
        params,
        prompt_ids,
        num_samples=num_candidates,
        max_new_tokens=max_new_tokens,
        proposal_temperature=proposal_temperature,
        mesh=mesh,
        what=f"daemon.sample ({len(prompt_ids)} prompts x num_candidates={num_candidates})",
    )
    gen_key, pick_key = jax.random.split(key)
    out, feats, rho = fit_lib.draw_candidates(
        model,
        params,
        prompt_ids,
        metric_names,
        num_samples=num_candidates,
        max_new_tokens=max_new_tokens,
        key=gen_key,
        proposal_temperature=proposal_temperature,
        tokenizer=tokenizer,
        stop_tokens=stop_tokens,
        mesh=mesh,
        **metric_deps,
    )
    lw = log_weights(mu, feats, rho if correct_proposal else None, standardization=standardization)
    index, ess = resample(pick_key, lw)
    index, ess = np.asarray(index), np.asarray(ess)
    rows = np.arange(len(index)) * num_candidates + index
    text = None if out.text is None else [out.text[r] for r in rows]
    return DaemonOutput(
        tokens=out.tokens[rows],
        lengths=out.lengths[rows],
        index=index,
        log_weights=lw,
        ess=ess,
        features=feats,
        log_ratios=rho,
        candidates=out,
        text=text,
    )
