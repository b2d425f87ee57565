"""Perplexity of human text under p_θ and under ``q_µ`` (``docs/math.md`` §3).

    log q_µ(x_h|c) = log p_θ(x_h|c) − µᵀ f(x_h, c) − log Ẑ(c, µ),
    log Ẑ(c, µ)   = logsumexp_i(ρ_i − µᵀ f(x_i, c)) − log N,     x_i ~ r(·|c)   (ρ = 0 for r = p_θ)

Token-level normalisation: ``ppl = exp(−Σ_j log q(x_j|c_j) / Σ_j T_j)`` with ``T_j`` the number of tokens
of human continuation ``j`` (pass ``num_tokens``; without it every continuation counts as one unit, i.e.
a per-sequence perplexity). Since ``E[log Ẑ] ≤ log Z`` (Jensen), a small ``N`` makes q's perplexity look
optimistic: report ``N`` and the spread over seeds (:func:`spread`, :func:`perplexity_over_seeds`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy.special import logsumexp

from infodec.daemon import fitting as fit_lib
from infodec.daemon import metrics as metrics_lib
from infodec.daemon import sampling as sampling_lib
from infodec.decoding.engine import StopTokens
from infodec.decoding.scoring import continuation_log_probs


@dataclasses.dataclass(frozen=True)
class PerplexityReport:
    """Attributes:
    num_samples: ``N`` samples per prefix behind ``Ẑ``.
    num_tokens: total human tokens ``Σ_j T_j`` (or ``J`` for per-sequence normalisation).
    log_z: ``[J]`` ``log Ẑ(c_j, µ)``; log_q ``[J]`` ``log q_µ(x_j|c_j)``; log_p ``[J]`` ``log p_θ(x_j|c_j)``.
    nll_p, nll_q: mean negative log-likelihood per token under p_θ and q.
    ppl_p, ppl_q: ``exp`` of those.
    """

    num_samples: int
    num_tokens: float
    log_z: np.ndarray
    log_q: np.ndarray
    log_p: np.ndarray
    nll_p: float
    nll_q: float
    ppl_p: float
    ppl_q: float


def perplexity_under_q(
    human_logp_model,
    human_features,
    sample_features,
    mu,
    *,
    num_tokens=None,
    sample_log_ratios=None,
    standardization=None,
) -> PerplexityReport:
    """Human-text perplexity under p_θ and under ``q_µ`` with the ``Ẑ`` estimator (module docstring).

    Args:
      human_logp_model: ``[J]`` ``log p_θ(x_j^human | c_j)`` (summed over tokens).
      human_features: ``[J, K]`` the human continuations' metrics.
      sample_features: ``[J, N, K]`` metrics of ``N`` samples per prefix (from p_θ, or from ``r`` with
        ``sample_log_ratios`` ``[J, N]`` = ``log p_θ − log r``).
      mu: ``[K]`` (raw scale, or standardised with ``standardization``).
      num_tokens: ``[J]`` tokens per human continuation (or a total); None -> per-sequence.
    """
    log_p = np.asarray(human_logp_model, np.float64).reshape(-1)
    hf = np.asarray(human_features, np.float64)
    sf = np.asarray(sample_features, np.float64)
    if hf.ndim != 2 or hf.shape[0] != log_p.shape[0]:
        raise ValueError(f"human_features must be [J={log_p.shape[0]}, K], got {hf.shape}")
    if sf.ndim != 3 or sf.shape[0] != hf.shape[0] or sf.shape[2] != hf.shape[1]:
        raise ValueError(f"sample_features must be [J, N, K] = [{hf.shape[0]}, N, {hf.shape[1]}], got {sf.shape}")
    num = sf.shape[1]
    lw = sampling_lib.log_weights(mu, sf, sample_log_ratios, standardization=standardization)  # [J, N]
    log_z = logsumexp(lw, axis=1) - np.log(num)
    human_lw = sampling_lib.log_weights(mu, hf[:, None, :], standardization=standardization)[:, 0]
    log_q = log_p + human_lw - log_z
    total = float(len(log_p)) if num_tokens is None else float(np.sum(num_tokens))
    nll_p = float(-log_p.sum() / total)
    nll_q = float(-log_q.sum() / total)
    return PerplexityReport(
        num_samples=num,
        num_tokens=total,
        log_z=log_z,
        log_q=log_q,
        log_p=log_p,
        nll_p=nll_p,
        nll_q=nll_q,
        ppl_p=float(np.exp(nll_p)),
        ppl_q=float(np.exp(nll_q)),
    )


@dataclasses.dataclass(frozen=True)
class Spread:
    """Summary of one number over seeds: mean, std (ddof=1; 0 for one seed), min, max, the values."""

    mean: float
    std: float
    min: float
    max: float
    values: np.ndarray


def spread(values) -> Spread:
    v = np.asarray(values, np.float64).reshape(-1)
    return Spread(
        mean=float(v.mean()),
        std=float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        min=float(v.min()),
        max=float(v.max()),
        values=v,
    )


def perplexity_over_seeds(
    human_logp_model,
    human_features,
    sample_features_per_seed,
    mu,
    *,
    num_tokens=None,
    sample_log_ratios_per_seed=None,
    standardization=None,
) -> tuple[Spread, list[PerplexityReport]]:
    """``ppl_q`` spread over ``S`` independent sample sets ``[S, J, N, K]`` (one per seed)."""
    reports = []
    for s, feats in enumerate(sample_features_per_seed):
        ratios = None if sample_log_ratios_per_seed is None else sample_log_ratios_per_seed[s]
        reports.append(
            perplexity_under_q(
                human_logp_model,
                human_features,
                feats,
                mu,
                num_tokens=num_tokens,
                sample_log_ratios=ratios,
                standardization=standardization,
            )
        )
    return spread([r.ppl_q for r in reports]), reports


def perplexity(
    model,
    params,
    prefixes,
    human_continuations,
    mu,
    metric_names: Sequence[str],
    *,
    num_samples: int,
    max_new_tokens: int,
    key,
    tokenizer=None,
    stop_tokens: StopTokens = ...,
    standardization=None,
    **metric_deps,
) -> PerplexityReport:
    """Human-text perplexity under p_θ and ``q_µ`` with a model: ``log p_θ`` of the human continuations
    (truncated to ``max_new_tokens``) from one full-sequence apply, their metrics, and ``N = num_samples``
    samples per prefix from p_θ (``Temperature(1)``, one shared prefill) for ``Ẑ``. Token-level."""
    names, _, functions, prefix_ids, cont_ids = fit_lib.encode_study_inputs(
        prefixes, human_continuations, metric_names, tokenizer, metric_deps
    )
    tokens, lengths = fit_lib.pad_rows(cont_ids, max_new_tokens)
    prefix, _ = fit_lib.pad_rows(prefix_ids, fill=-1)
    logp, mask = continuation_log_probs(model, params, tokens, lengths, prefix)
    human = np.asarray(metrics_lib.compute_with(functions, tokens, lengths, prefix), np.float64)
    _, feats, _ = fit_lib.draw_candidates(
        model,
        params,
        prefix_ids,
        names,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        key=key,
        tokenizer=tokenizer,
        stop_tokens=stop_tokens,
        functions=functions,
    )
    return perplexity_under_q(logp.sum(1), human, feats, mu, num_tokens=mask.sum(1), standardization=standardization)
