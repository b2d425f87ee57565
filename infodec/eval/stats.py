"""Summary statistics with uncertainty, shared by every study: mean ± standard error, bootstrap CIs,
t-test p-values and the Holm–Bonferroni correction for many of them.

Texts cut from shared documents are not independent, so most estimates here take ``clusters`` (one
label per value, e.g. the document id) and use the CR1 cluster-robust standard error; a ``None`` label
vector means every value is its own cluster (the ordinary i.i.d. SE). Intervals use Student's t with
``G − 1`` degrees of freedom for ``G`` clusters (:func:`confidence_interval`).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as scipy_stats


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


def _labels(clusters, n: int):
    """``clusters`` or, for None, one cluster per value."""
    return np.arange(n) if clusters is None else clusters


def paired_difference(values, reference, clusters=None) -> dict[str, float]:
    """``{"mean", "se", "n", "clusters"}`` of ``values − reference``, paired row by row.

    For two measurements of the same rows (a decoder's and the human continuation's metric on the same
    prompts): the SE of the mean difference, clustered by ``clusters`` (default: one per row), counts
    the covariance of the pair, which the combined SE ``hypot(se_a, se_b)`` of two separate means ignores
    (it overstates the SE when the pair is positively correlated).
    """
    a = np.asarray(values, np.float64).reshape(-1)
    b = np.asarray(reference, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference needs as many values as reference values, got {len(a)} and {len(b)}")
    return clustered_mean_se(a - b, _labels(clusters, len(a)))


def clustered_ratio(numerators, denominators, clusters=None) -> dict[str, float]:
    """``{"ratio", "se", "n", "clusters"}``: ``R = Σ a_i / Σ b_i`` with its cluster-robust (CR1)
    delta-method SE.

    For per-token quantities pooled over texts of different lengths (``a_i`` a text's summed NLL, ``b_i``
    its token count): ``R`` is linearised as ``R + Σ_i (a_i − R b_i) / Σ b``, so
    ``se = sqrt(G / (G − 1) · Σ_g (Σ_{i∈g} (a_i − R b_i))²) / Σ_i b_i``. With equal ``b_i`` it is
    :func:`clustered_mean_se` of ``a_i / b``.
    """
    a = np.asarray(numerators, np.float64).reshape(-1)
    b = np.asarray(denominators, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"clustered_ratio needs as many numerators as denominators, got {len(a)} and {len(b)}")
    if len(a) == 0 or b.sum() <= 0:
        raise ValueError("clustered_ratio needs at least one value and a positive total denominator")
    ratio = float(a.sum() / b.sum())
    # the linearised residuals, scaled so their plain mean's clustered SE is the ratio's
    residual = (a - ratio * b) * len(b) / b.sum()
    spread = clustered_mean_se(residual, _labels(clusters, len(a)))
    return {"ratio": ratio, "se": spread["se"], "n": spread["n"], "clusters": spread["clusters"]}


def confidence_interval(estimate: float, se: float, clusters: int, *, level: float = 0.95) -> dict[str, float]:
    """``{"low", "high", "level", "dof"}``: ``estimate ± t_{G−1} · se``, Student's t with ``G − 1`` degrees of
    freedom for ``G = clusters`` (the usual small-sample choice for a cluster-robust SE). NaN bounds when
    ``G < 2`` or the SE is NaN."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    dof = int(clusters) - 1
    if dof < 1 or not np.isfinite(se):
        return {"low": float("nan"), "high": float("nan"), "level": level, "dof": dof}
    half = float(scipy_stats.t.ppf(0.5 + level / 2.0, dof)) * float(se)
    return {"low": float(estimate) - half, "high": float(estimate) + half, "level": level, "dof": dof}


def in_se_units(difference: float, se: float) -> float:
    """``difference / se``; ±inf for a nonzero difference over a zero SE, NaN for 0/0 or a NaN SE."""
    if not np.isfinite(se):
        return float("nan")
    if se == 0:
        return float("nan") if difference == 0 else float(np.copysign(np.inf, difference))
    return float(difference / se)


def combined_se(*ses: float) -> float:
    """``sqrt(Σ se²)``: the SE of a sum or difference of independent estimates."""
    return float(np.sqrt(np.sum(np.square(np.asarray(ses, np.float64)))))


def kish_ess(weights, axis: int = -1) -> np.ndarray:
    """Kish's effective sample size ``(Σ w)² / Σ w²`` of non-negative importance weights over ``axis``
    (float64; in ``[1, n]``, and ``1 / Σ w²`` for self-normalised weights). How many equally weighted
    samples carry the same information: 1 when one weight dominates, ``n`` when all are equal, and 0 for
    a row whose weights are all zero (no sample carries any); NaN where a row has a NaN weight (a fit
    that diverged reports it rather than stopping). Raises on a negative weight."""
    w = np.asarray(weights, np.float64)
    if (w < 0).any():
        raise ValueError(f"kish_ess needs non-negative weights; got {w[w < 0][0]:g}")
    total, squares = np.sum(w, axis=axis), np.sum(w * w, axis=axis)
    return np.divide(total**2, squares, out=np.zeros_like(total), where=squares != 0)


def t_test_p_value(values) -> float:
    """Two-sided p-value of Student's one-sample t-test of "the mean of ``values`` is 0" (``n − 1`` dof,
    i.i.d. values; a paired t-test when ``values`` are per-row differences).

    NaN for fewer than 2 values or any NaN value. With zero spread the test is degenerate: 0 for a
    nonzero mean (no doubt about its sign), 1 for a zero mean.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if len(v) < 2:
        return float("nan")
    s = mean_se(v)
    if s["se"] == 0:
        return 1.0 if s["mean"] == 0 else 0.0
    return float(2.0 * scipy_stats.t.sf(abs(s["mean"]) / s["se"], len(v) - 1))


def holm_adjust(p_values) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the order given.

    With the ``m`` non-NaN p-values sorted ascending, ``p_(1) ≤ … ≤ p_(m)``, the ``i``-th adjusted value
    is ``max_{j ≤ i} min(1, (m − j + 1) · p_(j))``. Rejecting the hypotheses whose adjusted value is
    below ``α`` keeps the family-wise error rate (the chance of any false rejection) at most ``α`` under
    any dependence between the tests, and rejects at least what Bonferroni (``m · p < α``) rejects.
    NaN entries (tests not made) stay NaN and do not count towards ``m``.
    """
    p = np.asarray(p_values, np.float64).reshape(-1)
    made = np.flatnonzero(~np.isnan(p))
    if np.any((p[made] < 0) | (p[made] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[made].tolist()}")
    order = made[np.argsort(p[made], kind="stable")]
    m = len(order)
    adjusted = np.full(p.shape, np.nan)
    # the running maximum keeps the adjusted values in the order of the raw ones (the step-down rule)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted


__all__ = [
    "mean_se",
    "clustered_mean_se",
    "bootstrap_ci",
    "paired_difference",
    "clustered_ratio",
    "confidence_interval",
    "in_se_units",
    "combined_se",
    "t_test_p_value",
    "holm_adjust",
]
