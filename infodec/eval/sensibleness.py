"""Sensibleness under a fixed evaluator LM: perplexity of the output, and the decoder's KL to its anchor.

* the scores are teacher-forced ``log p(y_t | prefix, y_<t)`` of every output token under an evaluator LM
  (``infodec.decoding.scoring.scored_log_probs``);
* :func:`mean_log_prob` and :func:`row_perplexity`: ``mean_t log p(y_t | ...)`` and its ``exp(−·)`` per row.
* KL to the anchor ``P_G`` is the decoder's own per-step diagnostic ``kl_to_model = KL(π ‖ P_G)``;
  its per-row mean is ``diversity.token_mean(diagnostics["kl_to_model"], lengths)``.
"""

from __future__ import annotations

import numpy as np


def mean_log_prob(logp, mask) -> np.ndarray:
    """``[N]``: the mean of ``logp[N, L]`` over each row's masked tokens (NaN for an empty row)."""
    logp, mask = np.asarray(logp, np.float64), np.asarray(mask, bool)
    count = mask.sum(1)
    return np.where(count > 0, np.where(mask, logp, 0.0).sum(1) / np.maximum(count, 1), np.nan)


def row_perplexity(logp, mask) -> np.ndarray:
    """``[N]``: ``exp(−mean log p)`` per row (NaN for an empty row)."""
    return np.exp(-mean_log_prob(logp, mask))


__all__ = ["mean_log_prob", "row_perplexity"]
