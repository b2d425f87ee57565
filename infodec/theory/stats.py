"""Checks of samples against exact sequence distributions: a pooled chi-square test and a sampler.

Used to compare what ``infodec.generate`` samples with ``policy_distribution`` / ``solve``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from infodec.theory.tree import sequence_index


class ChiSquare(NamedTuple):
    statistic: float
    dof: int
    p_value: float


def _vocab_of(log_probs: np.ndarray, horizon: int) -> int:
    if log_probs.ndim == horizon and horizon > 0 and len(set(log_probs.shape)) == 1:
        return log_probs.shape[0]
    vocab = int(round(log_probs.size ** (1.0 / max(horizon, 1))))
    for v in (vocab - 1, vocab, vocab + 1):
        if v >= 1 and v**horizon == log_probs.size:
            return v
    raise ValueError(f"{log_probs.size} probabilities are not V**{horizon} for any vocabulary V")


def chi_square(samples, log_probs, min_expected: float = 5.0) -> ChiSquare:
    """Pearson's goodness-of-fit test of sampled sequences against an exact sequence law.

    Args:
      samples: ``[N, H]`` int token sequences.
      log_probs: the law over the ``V**H`` sequences, ``(V,)*H`` or ``[V**H]`` in ``sequence_index``
        order (renormalised here).
    Cells with expected count ``N·p < min_expected`` are pooled into one cell (merged into the smallest
    large cell if the pool itself is still under ``min_expected``). Cells of probability exactly 0 are
    left out; a sample in one is impossible under the law and gives ``statistic = inf``, ``p = 0``.
    Returns ``(statistic, dof, p_value)`` with ``dof = cells − 1`` (``p = 1`` when one cell is left).
    """
    samples = np.asarray(samples)
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise ValueError(f"samples must be a non-empty [num_samples, horizon] array, got shape {samples.shape}")
    log_probs = np.asarray(log_probs, np.float64)
    vocab = _vocab_of(log_probs, samples.shape[1])
    log_probs = log_probs.reshape(-1)
    if np.any(np.isnan(log_probs)):
        raise ValueError("log_probs contains NaN")
    prob = np.exp(log_probs - np.max(log_probs))
    prob /= prob.sum()
    observed = np.bincount(sequence_index(samples, vocab), minlength=prob.size).astype(np.float64)
    n = observed.sum()
    support = prob > 0
    if observed[~support].sum() > 0:
        return ChiSquare(float("inf"), max(int(support.sum()) - 1, 0), 0.0)
    expected = n * prob
    big = support & (expected >= min_expected)
    small = support & ~big
    obs, exp = list(observed[big]), list(expected[big])
    if small.any():
        pooled_obs, pooled_exp = observed[small].sum(), expected[small].sum()
        if pooled_exp >= min_expected or not exp:
            obs.append(pooled_obs)
            exp.append(pooled_exp)
        else:
            i = int(np.argmin(exp))
            obs[i] += pooled_obs
            exp[i] += pooled_exp
    obs, exp = np.asarray(obs), np.asarray(exp)
    dof = len(obs) - 1
    if dof < 1:
        return ChiSquare(0.0, 0, 1.0)
    statistic = float(np.sum((obs - exp) ** 2 / exp))
    return ChiSquare(statistic, dof, float(stats.chi2.sf(statistic, dof)))


def sample_sequences(seed: Any, log_probs, num_samples: int) -> np.ndarray:
    """``[num_samples, H]`` int64 i.i.d. draws from an exact law ``(V,)*H`` (numpy ``default_rng(seed)``)."""
    log_probs = np.asarray(log_probs, np.float64)
    prob = np.exp(log_probs.reshape(-1) - np.max(log_probs))
    prob /= prob.sum()
    index = np.random.default_rng(seed).choice(prob.size, size=num_samples, p=prob)
    return np.stack(np.unravel_index(index, log_probs.shape), axis=1).astype(np.int64)


__all__ = ["ChiSquare", "chi_square", "sample_sequences"]
