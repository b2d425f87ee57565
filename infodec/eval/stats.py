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


def bootstrap_ci(values, statistic=np.mean, *, level: float = 0.95, resamples: int = 1000,
                 seed: int = 0) -> dict[str, float]:
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
    return {"value": float(statistic(v)), "low": float(np.quantile(draws, tail)),
            "high": float(np.quantile(draws, 1.0 - tail)), "n": int(len(v))}


__all__ = ["mean_se", "bootstrap_ci"]
