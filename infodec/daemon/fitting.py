"""DAEMON Algorithm 1: fitting the coefficients µ by weighted importance sampling (``docs/math.md`` §3).

``q_µ(x|c) ∝ p_θ(x|c) · exp(−µᵀ f(x, c))`` with one global µ. Given ``N`` samples per prefix from a
proposal ``r`` with features ``f_{j,i}`` and log ratios ``ρ_{j,i} = log p_θ − log r``, the sample dual

    L̂(µ) = mean_j [logsumexp_i(ρ_{j,i} − µᵀ f_{j,i}) − log N] + µᵀ F

is convex in µ (its Hessian is a weighted covariance); its gradient ``F − Ê_µ[f]`` vanishes where the
reweighted samples match the target moments. The samples are reused: only the weights change.

* ``normalization="prefix"`` (default, the spec's): every prefix has its own normaliser ``Z(c_j)``,
  ``w_j = softmax_i(lw_j)``, ``Ê_µ[f] = mean_j Σ_i w_{j,i} f_{j,i}``.
* ``normalization="global"``: one normaliser over all pairs,
  ``L̂(µ) = logsumexp_{j,i}(lw) − log(J N) + µᵀ F`` and ``Ê_µ[f] = Σ_{j,i} w_{j,i} f_{j,i}`` with
  ``w = softmax`` over all ``(j, i)``. This is the projection of the *joint* ``p(c) p_θ(x|c)``, which
  may also reweight prefixes (prefixes whose samples look more like the target get more mass); with
  one prefix the two coincide. It is also the **paper's pooled form** as third-party reconstructions
  read [P3]: the ``J·N`` samples are one pooled sample bank, weighted by ``softmax(ρ − µᵀ f)`` over the
  whole bank (a reconstruction: [P3]'s own code is not public).

Two objectives pick µ (``objective=``):

* ``"dual"`` (default): the convex dual above, minimised with L-BFGS and polished with Newton steps.
* ``"relative_error"``: the paper's objective as third-party reconstructions describe it, the root mean
  squared *relative* moment error ``E(µ) = sqrt(mean_k ((Ê_µ[f]_k − F_k) / F_k)²)``, minimised with
  Adam (``optax.adam``; learning rate :data:`RELATIVE_ERROR_LEARNING_RATE`) until ``E < tol``
  (:data:`RELATIVE_ERROR_TOL`) or ``steps``; the lowest-``E`` µ seen is returned. Where ``F`` is
  attainable both objectives vanish at the same moment match, so they reach the same µ (the dual's
  minimiser is unique when the features' weighted covariance is non-singular); where it is not, the
  dual's µ diverges (without a ridge) while Adam's stops wherever the step cap leaves it. The learning
  rate 0.005 and tolerance 0.001 are the reconstruction's reading of [P3]'s implementation details
  (Appendix J), not checked against the paper's text here.

Metrics are standardised (zero mean, unit variance over all samples of the proposal) before fitting
(``standardize=True``): the fit finds ``ν`` on ``g = (f − m)/s``, and ``µ = ν / s`` on the raw scale (the
shift ``m`` cancels in every normaliser). Both are reported.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from infodec.daemon import metrics as metrics_lib
from infodec.decoding import memory
from infodec.decoding.engine import StopTokens, encode_prompts, generate
from infodec.eval.stats import kish_ess
from infodec.policies.standard import Temperature

Array = jax.Array

NORMALIZATIONS = ("prefix", "global")
OBJECTIVES = ("dual", "relative_error")
# The relative-error objective's Adam learning rate and stopping tolerance (module docstring: the
# reconstruction's reading of [P3]'s implementation details).
RELATIVE_ERROR_LEARNING_RATE = 0.005
RELATIVE_ERROR_TOL = 1e-3
# Maximum optimiser steps when ``fit_coefficients(steps=None)``: L-BFGS converges in tens of steps,
# Adam at a fixed small learning rate needs thousands.
DEFAULT_STEPS = {"dual": 200, "relative_error": 5000}


@dataclasses.dataclass(frozen=True)
class FitReport:
    """What :func:`fit_coefficients` found (numpy arrays).

    Attributes:
      mu: ``[K]`` coefficients on the raw metric scale (``q ∝ p_θ exp(−µᵀ f)``).
      mu_standardized: ``[K]`` coefficients on the standardised scale (``µ · s``).
      feature_mean, feature_std: ``[K]`` the standardisation ``m``, ``s`` (0 and 1 when off).
      fitted_moments: ``[K]`` ``Ê_µ[f]`` on the raw scale at the returned µ.
      target: ``[K]`` ``F``.
      residual: ``[K]`` ``F − Ê_µ[f]`` (raw scale); residual_norm its Euclidean norm and
        residual_norm_standardized the norm of ``(F − Ê_µ[f]) / s`` (the gradient the optimiser saw).
      ess: ``[J]`` effective sample size ``1/Σ_i w_{j,i}²`` of each prefix's self-normalised weights
        (for the global variant too: each prefix's weights renormalised).
      ess_global: ``1/Σ w²`` of the weights normalised over all ``(j, i)``.
      weights: ``[J, N]`` the normalised weights (per prefix, or over all pairs for "global").
      loss_history: ``[steps + 1]`` L̂ (standardised parametrisation, same value) before each step.
      steps: optax steps taken; converged: for ``objective="dual"`` whether the dual's gradient norm
        (``residual_norm_standardized`` when ``l2 = 0``) is below ``tol``, for ``"relative_error"`` whether
        ``relative_error`` is.
      normalization: "prefix" or "global" (the pooled bank).
      objective: "dual" or "relative_error" (module docstring).
      relative_error: ``sqrt(mean_k (residual_k / F_k)²)`` at the returned µ, whichever the objective
        (nan when some ``F_k = 0``).
      metric_names, human_features ``[J, K]``, sample_features ``[J, N, K]``, log_ratios ``[J, N]``:
        filled in by :func:`fit` (None from :func:`fit_coefficients`).
    """

    mu: np.ndarray
    mu_standardized: np.ndarray
    feature_mean: np.ndarray
    feature_std: np.ndarray
    fitted_moments: np.ndarray
    target: np.ndarray
    residual: np.ndarray
    residual_norm: float
    residual_norm_standardized: float
    ess: np.ndarray
    ess_global: float
    weights: np.ndarray
    loss_history: np.ndarray
    steps: int
    converged: bool
    normalization: str
    objective: str = "dual"
    relative_error: float = float("nan")
    metric_names: tuple[str, ...] | None = None
    human_features: np.ndarray | None = None
    sample_features: np.ndarray | None = None
    log_ratios: np.ndarray | None = None

    @property
    def standardization(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)``: pass as ``sample(..., standardization=)`` with ``mu_standardized``."""
        return self.feature_mean, self.feature_std


def dual_loss(nu: Array, g: Array, rho: Array, target: Array, normalization: str = "prefix", l2: float = 0.0) -> Array:
    """``L̂(ν) + l2/2 ‖ν‖²`` for standardised features ``g[J, N, K]``, log ratios ``rho[J, N]``, ``target[K]``."""
    lw = rho - jnp.einsum("jnk,k->jn", g, nu)
    num_prefixes, num_samples = lw.shape
    if normalization == "prefix":
        log_z = jnp.mean(jax.nn.logsumexp(lw, axis=1)) - jnp.log(num_samples)
    else:
        log_z = jax.nn.logsumexp(lw) - jnp.log(num_prefixes * num_samples)
    return log_z + jnp.dot(nu, target) + 0.5 * l2 * jnp.dot(nu, nu)


def _normalized_weights(lw: Array, normalization: str) -> Array:
    if normalization == "prefix":
        return jax.nn.softmax(lw, axis=1)
    return jax.nn.softmax(lw.reshape(-1)).reshape(lw.shape)


def moments(mu: Array, features: Array, log_ratios: Array | None = None, normalization: str = "prefix") -> Array:
    """``Ê_µ[f]`` ``[K]``: the self-normalised importance-weighted feature means at ``mu``."""
    features = jnp.asarray(features, jnp.float32)
    rho = jnp.zeros(features.shape[:2]) if log_ratios is None else jnp.asarray(log_ratios, jnp.float32)
    w = _normalized_weights(rho - jnp.einsum("jnk,k->jn", features, jnp.asarray(mu, jnp.float32)), normalization)
    total = jnp.einsum("jn,jnk->k", w, features)
    return total / features.shape[0] if normalization == "prefix" else total


def relative_error_loss(nu: Array, g: Array, rho: Array, target: Array, normalization: str, scale: Array) -> Array:
    """``sqrt(mean_k ((Ê_ν[f]_k − F_k) / F_k)²)`` for standardised features ``g[J, N, K]`` (``f = m + s·g``),
    log ratios ``rho[J, N]`` and the standardised target ``target[K]`` (``(F − m) / s``): the raw moment
    error ``F_k − Ê[f]_k`` is ``s_k (G_k − Ê[g]_k)``, so ``scale[K] = s / F``."""
    relative = (moments(nu, g, rho, normalization) - target) * scale
    return jnp.sqrt(jnp.mean(relative**2) + 1e-30)  # + tiny: a finite gradient at an exact match


def _run(optimizer, nu0, g, rho, target, normalization, steps, tol, l2, objective, scale):
    """Minimises ``objective`` in a ``while_loop``. The dual stops at ``steps`` or once ‖∇‖ < tol and returns
    the last ν; the relative error stops once it is below tol and returns the lowest-error ν seen (Adam
    does not descend monotonically)."""
    if objective == "dual":
        loss = lambda nu: dual_loss(nu, g, rho, target, normalization, l2)
        criterion = lambda nu: jnp.linalg.norm(jax.grad(loss)(nu))
    else:
        loss = lambda nu: relative_error_loss(nu, g, rho, target, normalization, scale)
        criterion = loss
    value_and_grad = jax.value_and_grad(loss)
    history = jnp.full((steps + 1,), jnp.nan, jnp.float32)

    def cond(carry):
        step, _, _, _, value, _, _ = carry
        return (step < steps) & (value >= tol)

    def body(carry):
        step, nu, state, history, _, best_nu, best = carry
        value, grad = value_and_grad(nu)
        history = history.at[step].set(value)
        updates, state = optimizer.update(grad, state, nu, value=value, grad=grad, value_fn=loss)
        nu = cast(Array, optax.apply_updates(nu, updates))
        now = criterion(nu)
        better = now < best
        best_nu, best = jnp.where(better, nu, best_nu), jnp.where(better, now, best)
        return step + 1, nu, state, history, now, best_nu, best

    state = optimizer.init(nu0)
    first = criterion(nu0)
    start = (jnp.int32(0), nu0, state, history, first, nu0, first)
    step, nu, _, history, value, best_nu, _ = jax.lax.while_loop(cond, body, start)
    if objective != "dual":
        nu = best_nu
    history = history.at[step].set(loss(nu))
    return nu, step, history, value


_run_jit = jax.jit(_run, static_argnums=(0, 5, 6, 9))


@functools.lru_cache(maxsize=16)
def _default_optimizer(learning_rate):
    """L-BFGS, cached so repeated fits reuse the compiled loop (the optimiser is a static argument)."""
    return optax.with_extra_args_support(optax.lbfgs(learning_rate=learning_rate))


@functools.lru_cache(maxsize=16)
def _adam(learning_rate):
    """The relative-error objective's Adam, cached like :func:`_default_optimizer`."""
    return optax.with_extra_args_support(optax.adam(learning_rate))


def fit_coefficients(
    features,
    log_ratios,
    target,
    *,
    normalization: str = "prefix",
    objective: str = "dual",
    standardize: bool = True,
    steps: int | None = None,
    learning_rate: float | None = None,
    optimizer: optax.GradientTransformation | None = None,
    tol: float | None = None,
    mu_init=None,
    polish: bool | None = None,
    l2: float = 0.0,
) -> tuple[np.ndarray, FitReport]:
    """Algorithm 1 on arrays: ``µ = argmin L̂(µ)``, or the relative-error fit (module docstring), no model needed.

    Args:
      features: ``[J, N, K]`` metrics of ``N`` proposal samples for each of ``J`` prefixes.
      log_ratios: ``[J, N]`` ``ρ = log p_θ(x|c) − log r(x|c)`` (zeros when sampling from p_θ), or None.
      target: ``[K]`` ``F``, the human metric means.
      normalization: "prefix" (per-prefix normalisers, the spec's) or "global" (one pooled bank, the
        paper's form as reconstructed; module docstring).
      objective: "dual" (the convex dual, default) or "relative_error" (the paper's RMS relative moment
        error with Adam, as reconstructed; needs every ``F_k != 0`` and ``l2 = 0``).
      standardize: fit on standardised metrics (zero mean, unit variance over the samples); a metric
        with zero variance keeps scale 1. (The relative error is on the raw scale either way; this only
        changes the parametrisation Adam steps in.)
      steps: maximum optimiser steps (None: :data:`DEFAULT_STEPS` of the objective).
      tol: the dual's target for ‖∇L̂‖ = ‖(F − Ê_µ[f]) / s‖ (standardised scale; None: 1e-6), or the
        relative error's target (None: :data:`RELATIVE_ERROR_TOL`); ``converged`` reports whether it was
        met. For the dual the float32 optax loop stops at ``max(tol, 1e-4)`` when ``polish`` (float32
        line searches cannot resolve much less), the float64 polish goes on.
      learning_rate: for the default optimiser: the dual's L-BFGS (``optax.lbfgs``; None uses its line
        search), or the relative error's Adam (None: :data:`RELATIVE_ERROR_LEARNING_RATE`).
      optimizer: any optax transformation instead (e.g. ``optax.adam(0.05)``); it is called with
        ``value``, ``grad`` and ``value_fn`` extra arguments (``optax.with_extra_args_support``).
      mu_init: ``[K]`` starting µ on the raw scale (default zeros).
      polish: dual only (None: True): after the (float32, on-device) optax loop, take damped Newton steps
        in float64 on the host (Hessian = the weighted feature covariance, K x K), so the moments match
        to float64 precision. The relative-error fit is the paper's Adam loop alone (None: False).
      l2: ridge ``l2/2 ‖ν‖²`` on the standardised coefficients (dual only). 0 (default) is the exact
        moment match; a small value (1e-3) keeps µ finite when ``F`` is outside the samples' hull
        (finite-sample fits of many metrics), at a moment residual of ``l2·ν`` in standard deviations.

    Returns ``(mu [K], FitReport)``. If ``F`` lies outside the convex hull of the samples' features, no
    finite µ matches it; the optimiser then stops at ``steps`` with ``converged=False``.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    dual = objective == "dual"
    if not dual and polish:
        raise ValueError("polish refines the dual's optimum; the relative-error fit takes polish=None or False")
    if not dual and l2 != 0:
        raise ValueError(f"the relative-error objective has no ridge (its step cap bounds µ): pass l2=0, got {l2}")
    steps = DEFAULT_STEPS[objective] if steps is None else steps
    tol = (1e-6 if dual else RELATIVE_ERROR_TOL) if tol is None else tol
    polish = dual if polish is None else polish
    f = np.asarray(features, np.float64)
    if f.ndim != 3:
        raise ValueError(f"features must be [J prefixes, N samples, K metrics], got shape {f.shape}")
    num_prefixes, num_samples, k = f.shape
    if num_prefixes < 1 or num_samples < 1 or k < 1:
        raise ValueError(f"features must be non-empty, got shape {f.shape}")
    rho = np.zeros((num_prefixes, num_samples)) if log_ratios is None else np.asarray(log_ratios, np.float64)
    if rho.shape != (num_prefixes, num_samples):
        raise ValueError(f"log_ratios {rho.shape} must be [J, N] = {(num_prefixes, num_samples)}")
    target = np.asarray(target, np.float64).reshape(-1)
    if target.shape != (k,):
        raise ValueError(f"target {target.shape} must be [K] = ({k},)")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(target)) and not np.any(np.isnan(rho))):
        raise ValueError("features, target and log_ratios must be finite (log_ratios may be -inf)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not dual and np.any(target == 0):
        raise ValueError(f"the relative moment error divides by the target; target {target.tolist()} has a zero")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    if standardize:
        mean, std = _standardization(f)
    else:
        mean, std = np.zeros(k), np.ones(k)
    g = jnp.asarray((f - mean) / std, jnp.float32)
    big_f = jnp.asarray((target - mean) / std, jnp.float32)
    rho_j = jnp.asarray(np.nan_to_num(rho, neginf=-1e30), jnp.float32)
    nu0 = jnp.zeros(k, jnp.float32) if mu_init is None else jnp.asarray(np.asarray(mu_init) * std, jnp.float32)
    if optimizer is not None:
        optimizer = optax.with_extra_args_support(optimizer)
    elif dual:
        optimizer = _default_optimizer(learning_rate)
    else:
        optimizer = _adam(RELATIVE_ERROR_LEARNING_RATE if learning_rate is None else learning_rate)
    nu, taken, history, _ = _run_jit(
        optimizer,
        nu0,
        g,
        rho_j,
        big_f,
        normalization,
        int(steps),
        jnp.float32(max(tol, 1e-4) if polish else tol),
        jnp.float32(l2),
        objective,
        jnp.asarray(std / np.where(target == 0, 1.0, target), jnp.float32),
    )
    nu = np.asarray(nu, np.float64)
    if polish:
        nu = _newton_polish(nu, (f - mean) / std, rho, (target - mean) / std, normalization, l2)
    mu = nu / std

    # Diagnostics in float64 on the host.
    lw = rho - np.einsum("jnk,k->jn", f, mu)
    per_prefix = softmax(lw, axis=1)
    weights = per_prefix if normalization == "prefix" else softmax(lw.reshape(-1)).reshape(lw.shape)
    fitted = np.einsum("jn,jnk->k", weights, f) / (num_prefixes if normalization == "prefix" else 1)
    joint = softmax(lw.reshape(-1))
    residual = target - fitted
    relative_error = float(np.sqrt(np.mean((residual / target) ** 2))) if np.all(target != 0) else float("nan")
    report = FitReport(
        mu=mu,
        mu_standardized=nu,
        feature_mean=mean,
        feature_std=std,
        fitted_moments=fitted,
        target=target,
        residual=residual,
        residual_norm=float(np.linalg.norm(residual)),
        residual_norm_standardized=float(np.linalg.norm(residual / std)),
        ess=kish_ess(per_prefix, axis=1),
        ess_global=float(kish_ess(joint)),
        weights=weights,
        loss_history=np.asarray(history[: int(taken) + 1], np.float64),
        steps=int(taken),
        converged=(float(np.linalg.norm(residual / std + l2 * nu)) if dual else relative_error) < tol,
        normalization=normalization,
        objective=objective,
        relative_error=relative_error,
    )
    return mu, report


def _standardization(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [K], std [K])`` of ``f [J, N, K]`` over all samples; a metric with (numerically) zero
    variance keeps scale 1."""
    flat = f.reshape(-1, f.shape[-1])
    mean, std = flat.mean(0), flat.std(0)
    return mean, np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)


@dataclasses.dataclass(frozen=True)
class RidgeSelection:
    """What :func:`cross_validate_l2` found (numpy arrays).

    Attributes:
      l2: the chosen ridge (the candidate with the lowest ``score``; the larger one on a tie).
      l2_values: ``[V]`` the candidates, ascending.
      held_out_moments: ``[V, K]`` the out-of-fold moments: each prefix's ``Σ_i w_{j,i} f_{j,i}`` under the µ
        fitted without its fold, averaged over all ``J`` prefixes (raw scale).
      score: ``[V]`` the mean over folds of ``‖(F − fold's held-out moments) / s‖²`` (``s``: the samples'
        standard deviations).
      folds: the number of folds.
    """

    l2: float
    l2_values: np.ndarray
    held_out_moments: np.ndarray
    score: np.ndarray
    folds: int


def cross_validate_l2(
    features, log_ratios, target, l2_values: Sequence[float], *, folds: int = 4, seed: int = 0, **fit_kwargs
) -> RidgeSelection:
    """Chooses ``fit_coefficients``' ridge by ``folds``-fold cross-validation over prefixes.

    A fit matches the target on its own samples exactly; with few samples per prefix (low ESS) the
    matching µ can also fit their noise, and on new prefixes the reweighted moments then miss the target.
    Each prefix's held-out moment ``Σ_i w_{j,i} f_{j,i}`` (per-prefix weights under the µ of
    the other folds) is what SIR with ``M = N`` candidates decodes in expectation on that prefix, so the
    score is the expected mismatch of decoded text, in the samples' standard deviations.

    Args: ``features [J, N, K]``, ``log_ratios [J, N]`` (or None), ``target [K]`` as for
    :func:`fit_coefficients` (per-prefix normalisation); ``l2_values``: candidates (>= 0); ``folds``: 2..J;
    ``seed``: the prefixes' assignment to folds; ``fit_kwargs``: passed on to :func:`fit_coefficients`.
    """
    f = np.asarray(features, np.float64)
    if f.ndim != 3:
        raise ValueError(f"features must be [J prefixes, N samples, K metrics], got shape {f.shape}")
    values = np.sort(np.asarray(list(l2_values), np.float64).reshape(-1))
    if values.size == 0 or np.any(values < 0) or not np.all(np.isfinite(values)):
        raise ValueError(f"l2_values must be one or more finite numbers >= 0, got {list(l2_values)}")
    num_prefixes = f.shape[0]
    if not 2 <= folds <= num_prefixes:
        raise ValueError(f"folds must be between 2 and the number of prefixes ({num_prefixes}), got {folds}")
    if fit_kwargs.get("normalization", "prefix") != "prefix":
        raise ValueError("cross_validate_l2 scores per-prefix moments; it needs normalization='prefix'")
    if fit_kwargs.get("objective", "dual") != "dual":
        raise ValueError("cross_validate_l2 chooses the dual's ridge; the relative-error objective has none")
    rho = np.zeros(f.shape[:2]) if log_ratios is None else np.asarray(log_ratios, np.float64)
    target = np.asarray(target, np.float64).reshape(-1)
    fold_of = np.random.default_rng(seed).permutation(num_prefixes) % folds
    _, std = _standardization(f)
    held_out = np.zeros((len(values), num_prefixes, f.shape[2]))
    score = np.zeros(len(values))
    for fold in range(folds):
        train, test = fold_of != fold, fold_of == fold
        for v, l2 in enumerate(values):
            mu, _ = fit_coefficients(f[train], rho[train], target, l2=float(l2), **fit_kwargs)
            w = softmax(rho[test] - np.einsum("jnk,k->jn", f[test], mu), axis=1)
            held_out[v, test] = np.einsum("jn,jnk->jk", w, f[test])
            # squared per fold, then averaged: averaging the folds' moments first would cancel the noise
            # each training fit matched (a fold's train and test sample means sum to the total's)
            score[v] += np.sum(((target - held_out[v, test].mean(0)) / std) ** 2) / folds
    best = len(values) - 1 - int(np.argmin(score[::-1]))  # ties go to the larger ridge
    return RidgeSelection(
        l2=float(values[best]), l2_values=values, held_out_moments=held_out.mean(1), score=score, folds=folds
    )


def _dual64(nu, g, rho, big_f, normalization, l2=0.0):
    """``(L̂, ∇L̂, ∇²L̂)`` (with the ridge) in float64 on the host (standardised parametrisation)."""
    lw = rho - g @ nu
    num_prefixes, num_samples = lw.shape
    if normalization == "prefix":
        m = np.max(lw, axis=1, keepdims=True)
        log_z = m[:, 0] + np.log(np.sum(np.exp(lw - m), axis=1))
        w = np.exp(lw - log_z[:, None]) / num_prefixes  # each prefix carries 1/J of the mass
        loss = log_z.mean() - np.log(num_samples)
    else:
        m = np.max(lw)
        log_z = m + np.log(np.sum(np.exp(lw - m)))
        w = np.exp(lw - log_z)
        loss = log_z - np.log(num_prefixes * num_samples)
    means = np.einsum("jn,jnk->jk", w, g)
    mean = means.sum(0)
    if normalization == "prefix":
        means = means * num_prefixes  # per-prefix means
        centred = g - means[:, None, :]
    else:
        centred = g - mean
    k = g.shape[-1]
    flat = centred.reshape(-1, k)
    hessian = (flat * w.reshape(-1, 1)).T @ flat
    return (loss + nu @ big_f + 0.5 * l2 * nu @ nu, big_f - mean + l2 * nu, hessian + l2 * np.eye(len(nu)))


def _newton_polish(nu, g, rho, big_f, normalization, l2=0.0, iters: int = 30):
    """Damped Newton on the convex dual from ``nu`` (float64); never returns a worse point."""
    rho = np.where(np.isneginf(rho), -1e300, rho)
    loss, grad, hessian = _dual64(nu, g, rho, big_f, normalization, l2)
    for _ in range(iters):
        if not np.all(np.isfinite(grad)) or np.linalg.norm(grad) < 1e-11:
            break
        step = np.linalg.solve(hessian + 1e-12 * np.eye(len(nu)) * max(1.0, np.trace(hessian)), grad)
        t, moved = 1.0, False
        while t > 1e-4:
            trial = nu - t * step
            new = _dual64(trial, g, rho, big_f, normalization, l2)
            if np.isfinite(new[0]) and new[0] <= loss + 1e-4 * t * (grad @ -step):
                nu, (loss, grad, hessian), moved = trial, new, True
                break
            t *= 0.5
        if not moved:
            break
    return nu


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Normalised weights ``exp(x) / Σ exp(x)`` along ``axis``, in float64 numpy (log weights in, weights out)."""
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


# --- with a model ----------------------------------------------------------------------------------


def pad_rows(rows: Sequence[Sequence[int]], width: int | None = None, fill: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [B, W], lengths [B])`` from id lists, right-padded with ``fill`` (truncated to ``width``)."""
    rows = [[int(t) for t in np.asarray(r).reshape(-1)] for r in rows]
    if width is not None:
        rows = [r[:width] for r in rows]
    w = max(1, max((len(r) for r in rows), default=0)) if width is None else width
    tokens = np.full((len(rows), w), fill, np.int32)
    for b, r in enumerate(rows):
        tokens[b, : len(r)] = r
    return tokens, np.array([len(r) for r in rows], np.int32)


def human_features(
    prefixes,
    continuations,
    metric_names: Sequence[str],
    *,
    max_new_tokens: int | None = None,
    tokenizer=None,
    **metric_deps,
) -> np.ndarray:
    """``[J, K]`` metrics of human continuations (truncated to ``max_new_tokens`` when given)."""
    prefix_ids = encode_prompts(prefixes, tokenizer, add_bos=True)
    cont_ids = encode_prompts(continuations, tokenizer, add_bos=False, allow_empty=True)
    if len(prefix_ids) != len(cont_ids):
        raise ValueError(f"got {len(cont_ids)} human continuations for {len(prefix_ids)} prefixes")
    tokens, lengths = pad_rows(cont_ids, max_new_tokens)
    prefix, _ = pad_rows(prefix_ids, fill=-1)
    deps = dict(metric_deps)
    if tokenizer is not None:
        deps.setdefault("tokenizer", tokenizer)
    return np.asarray(metrics_lib.compute(metric_names, tokens, lengths, prefix, **deps), np.float64)


def check_candidates_fit(
    model, params, prompt_ids, *, num_samples: int, max_new_tokens: int, proposal_temperature: float, mesh, what: str
) -> None:
    """``decoding.memory``'s check of :func:`draw_candidates`' decode (``len(prompt_ids) x num_samples`` rows),
    run before anything slow: one :class:`~infodec.decoding.memory.MemoryPlanError` naming the most rows
    that fit. Requests ``generate`` rejects for other reasons (context length, τ <= 0) are left to it."""
    longest = max(len(p) for p in prompt_ids)
    if longest + max_new_tokens > model.max_length or not proposal_temperature > 0:
        return
    memory.check_memory(
        model,
        params,
        rows=len(prompt_ids) * num_samples,
        max_len=longest + max_new_tokens,
        prompt_len=longest,
        num_samples=num_samples,
        policy=Temperature(float(proposal_temperature)),
        mesh=mesh,
        num_diagnostics=memory.DEFAULT_DIAGNOSTICS,
        what=what,
    )


def draw_candidates(
    model,
    params,
    prompts,
    metric_names,
    *,
    num_samples: int,
    max_new_tokens: int,
    key,
    proposal_temperature: float = 1.0,
    proposal=None,
    tokenizer=None,
    stop_tokens: StopTokens = ...,
    functions=None,
    mesh=None,
    **metric_deps,
):
    """Draws ``num_samples`` continuations per prompt from ``Temperature(τ)``, or from the policy
    ``proposal`` if given (one shared prefill), and returns ``(output, features [P, M, K], log_ratios
    [P, M])``; ``ρ = Σ_t (log p_θ − log r)`` over the generated tokens, exactly 0 for ``Temperature(1)``.
    ``mesh``: as for ``infodec.generate`` (the ``P * M`` candidate rows on the data axis, parameters on the
    model axis; same candidates as one device)."""
    if proposal_temperature <= 0:
        raise ValueError(f"proposal_temperature must be > 0, got {proposal_temperature}")
    if proposal is not None and proposal_temperature != 1.0:
        raise ValueError("give a proposal policy or a proposal_temperature, not both")
    exact = proposal is None and proposal_temperature == 1.0
    prompt_ids = encode_prompts(prompts, tokenizer, add_bos=True)
    out = generate(
        model,
        params,
        prompt_ids,
        Temperature(float(proposal_temperature)) if proposal is None else proposal,
        key,
        max_new_tokens=max_new_tokens,
        num_samples=num_samples,
        tokenizer=tokenizer,
        stop_tokens=stop_tokens,
        mesh=mesh,
    )
    deps = dict(metric_deps)
    if tokenizer is not None:
        deps.setdefault("tokenizer", tokenizer)
    functions = functions or metrics_lib.metric_functions(metric_names, **deps)
    feats = np.asarray(metrics_lib.compute_with(functions, out.tokens, out.lengths, out.prompt_tokens), np.float64)
    logp_model, logp_policy = out.sequence_logp()
    rho = (
        np.zeros_like(logp_model, np.float64)
        if exact
        else (logp_model.astype(np.float64) - logp_policy.astype(np.float64))
    )
    num_prompts = len(prompt_ids)
    return out, feats.reshape(num_prompts, num_samples, -1), rho.reshape(num_prompts, num_samples)


def fit(
    model,
    params,
    prefixes,
    human_continuations,
    metric_names: Sequence[str],
    *,
    num_samples: int,
    max_new_tokens: int,
    key,
    proposal_temperature: float = 1.0,
    tokenizer=None,
    stop_tokens: StopTokens = ...,
    normalization: str = "prefix",
    objective: str = "dual",
    standardize: bool = True,
    steps: int | None = None,
    learning_rate: float | None = None,
    optimizer=None,
    mesh=None,
    **metric_deps,
) -> tuple[np.ndarray, FitReport]:
    """Algorithm 1 end to end (``docs/math.md`` §3).

    1. ``F = mean_j f(x_j^human, c_j)`` (human continuations truncated to ``max_new_tokens`` tokens, so
       they are measured on the same budget as the samples);
    2. ``N = num_samples`` continuations per prefix, drawn once with ``infodec.generate(...,
       num_samples=N)`` from ``Temperature(proposal_temperature)``; ``ρ`` from the per-token
       ``logp_model − logp_policy`` (0 when τ = 1);
    3. :func:`fit_coefficients` on the features (``normalization``, ``objective``, ``standardize``,
       ``steps``, ``learning_rate``, ``optimizer`` as there).

    ``prefixes`` / ``human_continuations``: strings (with ``tokenizer``) or token-id lists. Prefix
    strings are encoded with BOS, continuations without. ``metric_deps`` feed ``coh``/``info``
    (see ``metrics.get_metric``). ``mesh``: where the samples are drawn (``draw_candidates``). Returns
    ``(mu, report)`` with the features in the report.
    """
    names, deps, functions, prefix_ids, human_ids = encode_study_inputs(
        prefixes, human_continuations, metric_names, tokenizer, metric_deps
    )
    check_candidates_fit(
        model,
        params,
        prefix_ids,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        proposal_temperature=proposal_temperature,
        mesh=mesh,
        what=f"daemon.fit ({len(prefix_ids)} prefixes x num_samples={num_samples})",
    )
    human = human_features(
        prefix_ids, human_ids, names, max_new_tokens=max_new_tokens, **{**deps, **_resolved(names, functions)}
    )
    _, feats, rho = draw_candidates(
        model,
        params,
        prefix_ids,
        names,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        key=key,
        proposal_temperature=proposal_temperature,
        tokenizer=tokenizer,
        stop_tokens=stop_tokens,
        functions=functions,
        mesh=mesh,
    )
    mu, report = fit_coefficients(
        feats,
        rho,
        human.mean(0),
        normalization=normalization,
        objective=objective,
        standardize=standardize,
        steps=steps,
        learning_rate=learning_rate,
        optimizer=optimizer,
    )
    return mu, dataclasses.replace(
        report, metric_names=names, human_features=human, sample_features=feats, log_ratios=rho
    )


def encode_study_inputs(prefixes, human_continuations, metric_names, tokenizer, metric_deps):
    """What ``fit`` and ``perplexity`` share: ``(names, deps, functions, prefix_ids, human_ids)`` with the
    metric functions built once (``tokenizer`` joins the deps) and the texts encoded (prefixes with BOS,
    continuations without)."""
    names = tuple(metric_names)
    deps = dict(metric_deps)
    if tokenizer is not None:
        deps.setdefault("tokenizer", tokenizer)
    functions = metrics_lib.metric_functions(names, **deps)
    prefix_ids = encode_prompts(prefixes, tokenizer, add_bos=True)
    human_ids = encode_prompts(human_continuations, tokenizer, add_bos=False, allow_empty=True)
    return names, deps, functions, prefix_ids, human_ids


def _resolved(names, functions) -> dict[str, Any]:
    """Passes already-built ``coh``/``info`` functions on, so they are not rebuilt."""
    return {n: fn for n, fn in zip(names, functions) if n in ("coh", "info")}
