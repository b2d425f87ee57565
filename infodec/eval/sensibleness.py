"""Sensibleness under a fixed evaluator LM: perplexity of the output, and the decoder's KL to its anchor.

* :func:`scored_log_probs`: teacher-forced ``log p(y_t | prefix, y_<t)`` of every output token under an
  evaluator LM, in fixed-size row batches (``infodec.daemon.metrics.continuation_log_probs`` per
  batch; the last batch is padded by repeating its last row, so each width compiles once and the
  ``[rows, S, V]`` logits stay small).
* :func:`perplexity`: ``exp(−mean_t log p(y_t | ...))`` per row.
* KL to the anchor ``P_G`` is the decoder's own per-step diagnostic ``kl_to_model = KL(π ‖ P_G)``;
  its per-row mean is ``diversity.token_mean(diagnostics["kl_to_model"], lengths)``.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from infodec.daemon import metrics


def fixed_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Row indices ``[batch_size]`` covering ``range(n)`` in order, the last batch padded by repeating its
    last row; yields ``(indices, kept)`` where the first ``kept`` indices are the real rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        real = np.arange(start, min(start + batch_size, n))
        yield np.concatenate([real, np.full(batch_size - len(real), real[-1])]), len(real)


def scored_log_probs(model, params, tokens, lengths, prefixes: Sequence[Sequence[int]], *,
                     batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(logp [N, L], mask [N, L])``: log-probability of each output token given its prefix under
    ``model`` (float64; 0 where masked).

    Args:
      tokens, lengths: the outputs ``[N, L]`` (right-padded) and their lengths ``[N]``.
      prefixes: N non-empty token lists the outputs are conditioned on.
      batch_size: rows per forward pass (bounds the ``[batch, S, V]`` logits in memory).
    """
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1] or len(prefixes) != len(tokens):
        raise ValueError(f"tokens [N, L], lengths [N] and N prefixes expected, got {tokens.shape}, "
                         f"{lengths.shape} and {len(prefixes)} prefixes")
    width = max(1, max((len(p) for p in prefixes), default=1))
    padded = np.full((len(prefixes), width), -1, np.int64)
    for row, p in enumerate(prefixes):
        padded[row, :len(p)] = p
    logp = np.zeros(tokens.shape, np.float64)
    mask = np.zeros(tokens.shape, bool)
    for rows, kept in fixed_batches(len(tokens), min(batch_size, len(tokens))):
        part, part_mask = metrics.continuation_log_probs(model, params, tokens[rows], lengths[rows], padded[rows])
        logp[rows[:kept]], mask[rows[:kept]] = part[:kept], part_mask[:kept]
    return logp, mask


def mean_log_prob(logp, mask) -> np.ndarray:
    """``[N]``: the mean of ``logp[N, L]`` over each row's masked tokens (NaN for an empty row)."""
    logp, mask = np.asarray(logp, np.float64), np.asarray(mask, bool)
    count = mask.sum(1)
    return np.where(count > 0, np.where(mask, logp, 0.0).sum(1) / np.maximum(count, 1), np.nan)


def perplexity(logp, mask) -> np.ndarray:
    """``[N]``: ``exp(−mean log p)`` per row (NaN for an empty row)."""
    return np.exp(-mean_log_prob(logp, mask))


__all__ = ["fixed_batches", "scored_log_probs", "mean_log_prob", "perplexity"]
