"""DAEMON [P3]: decoding as direct metric optimisation (docs/math.md §3); the algorithms only.

``q_µ(x|c) ∝ p_θ(x|c) · exp(−µᵀ f(x, c))`` with µ fitted so that ``E_q[f]`` matches the human metrics.

* :mod:`~infodec.daemon.metrics`: ``sr{n}``, ``tr{l}``, ``div``, ``coh``, ``info``, registered by name.
* :func:`fit_coefficients` / :func:`fit`: Algorithm 1 (weighted importance sampling, optax L-BFGS);
  :func:`cross_validate_l2` picks its ridge by held-out prefixes.
* :func:`resample` / :func:`sample`: Algorithm 2 (conditional SIR over M shared-prefix candidates).
* :func:`perplexity_under_q` / :func:`perplexity`: human-text perplexity under p_θ and q_µ;
  :func:`paired_log_perplexity_ci` (clustered CI over human texts), :func:`n_sweep` (the 1/N bias of
  ``log Ẑ``; :func:`doubling_check` tests its form), :func:`epsilon_perplexity` (Martins et al. 2020's
  ε-perplexity; :func:`epsilon_ladder_log_ratios` estimates ``Ẑ_ε`` from a mixture of smoothings).
* :mod:`~infodec.daemon.rerank`: best-of-N and MBR reranking of M candidates drawn once per prompt.

The paper's studies (DAEMON against the standard decoders on human text) are ``infodec.studies.daemon``.
"""

from infodec.daemon import metrics, rerank
from infodec.daemon.fitting import (
    FitReport,
    RidgeSelection,
    cross_validate_l2,
    dual_loss,
    fit,
    fit_coefficients,
    moments,
)
from infodec.daemon.metrics import METRICS, compute, get_metric, pooled_diversity, register
from infodec.daemon.sampling import DaemonOutput, log_weights, resample, sample
from infodec.daemon.tilted_perplexity import (
    DoublingCheck,
    NSweep,
    PerplexityReport,
    Spread,
    doubling_check,
    epsilon_ladder,
    epsilon_ladder_log_ratios,
    epsilon_log_probs,
    epsilon_log_ratios,
    epsilon_perplexity,
    n_sweep,
    paired_log_perplexity_ci,
    perplexity,
    perplexity_over_seeds,
    perplexity_under_q,
    spread,
)

__all__ = [
    "metrics",
    "rerank",
    "METRICS",
    "compute",
    "get_metric",
    "register",
    "pooled_diversity",
    "FitReport",
    "fit",
    "fit_coefficients",
    "dual_loss",
    "moments",
    "RidgeSelection",
    "cross_validate_l2",
    "DaemonOutput",
    "resample",
    "sample",
    "log_weights",
    "PerplexityReport",
    "Spread",
    "perplexity",
    "perplexity_under_q",
    "perplexity_over_seeds",
    "spread",
    "paired_log_perplexity_ci",
    "DoublingCheck",
    "NSweep",
    "doubling_check",
    "n_sweep",
    "epsilon_perplexity",
    "epsilon_log_probs",
    "epsilon_ladder",
    "epsilon_ladder_log_ratios",
    "epsilon_log_ratios",
]
