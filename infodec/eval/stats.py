"""Summary statistics with uncertainty, shared by every study: mean ± standard error and bootstrap CIs."""

from __future__ import annotations

import numpy as np


def mean_se(values) -> dict[str, float]:
    """``{"mean", "se", "n"}``: the mean and its standard error ``std(ddof=1)/sqrt(n)`` (NaN for n < 2)."""
    v = np.asarray(values, np.float64).reshape(-1)
    if len(v) == 0:
        raise ValueError("mean_se needs at least one value")
    se = float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": float(np.mean(v)), "se": se, "n": int(len(v))}


def clustered_mean_se(values, clusters) -> dict[str, float]:
    """``{"mean", "se", "n", "clusters"}``: the mean of ``values`` with a cluster-robust standard error.

    For texts cut from shared documents (several windows per document are not independent):
    ``se = sqrt(G / (G - 1) · Σ_g (Σ_{i∈g} (v_i − mean))²) / n`` over the ``G`` distinct ``clusters``
    (the CR1 sandwich estimator of a mean). With one value per cluster it is ``mean_se``'s SE.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    groups = np.asarray(clusters).reshape(-1)
    if len(v) != len(groups):
        raise ValueError(f"got {len(v)} values and {len(groups)} cluster labels")
    if len(v) == 0:
        raise ValueError("clustered_mean_se needs at least one value")
    _, label = np.unique(groups, return_inverse=True)
    count = int(label.max()) + 1
    sums = np.bincount(label, weights=v - v.mean(), minlength=count)
    se = float(np.sqrt(count / (count - 1) * np.sum(sums**2)) / len(v)) if count > 1 else float("nan")
    return {"mean": float(v.mean()), "se": se, "n": int(len(v)), "clusters": count}


def bootstrap_ci(
    values, statistic=np.mean, *, level: float = 0.95, resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Percentile bootstrap CI of ``statistic`` over ``values[N, ...]`` (resampling the first axis).

    For corpus-level statistics (self-BLEU, pooled distinct-n) whose standard error has no closed form.
    Returns ``{"value", "low", "high", "n"}``.
    """
    v = np.asarray(values)
    if len(v) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(v[rng.integers(0, len(v), len(v))]) for _ in range(resamples)])
    tail = (1.0 - level) / 2.0
    return {
        "value": float(statistic(v)),
        "low": float(np.quantile(draws, tail)),
        "high": float(np.quantile(draws, 1.0 - tail)),
        "n": int(len(v)),
    }


__all__ = ["mean_se", "clustered_mean_se", "bootstrap_ci"]
