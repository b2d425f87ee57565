"""Diversity measures for several samples per input: distinct-n, self-BLEU, mean per-token entropy.

All functions work on token-id sequences (model ids; any hashable items work). Decoded rows come in
``GenerateOutput`` order, ``row = input * num_samples + sample``; :func:`by_input` regroups them.

* ``distinct-n`` of a group of sequences: ``|unique n-grams| / |n-grams|`` with the n-grams of every
  sequence in the group pooled (n-grams never cross sequences). Pooled over the samples of one input,
  it is low both when each sample repeats itself and when the samples repeat each other.
* ``self-BLEU`` of a group: the mean over its members of sentence BLEU with that member as the
  hypothesis and the other members as references (Zhu et al., 2018, Texygen). High = the samples
  are alike. BLEU is implemented here (:func:`sentence_bleu`) with NLTK's conventions: clipped
  n-gram precisions, denominators ``max(1, count)``, the closest reference length for the brevity
  penalty (ties: the shorter), 0 when no unigram matches, and "method 1" smoothing (a zero
  numerator becomes ``epsilon``).
* mean per-token entropy: the masked mean of a per-step diagnostic such as ``H(π)``
  (:func:`token_mean`).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Hashable, Sequence

import numpy as np

Sequence_ = Sequence[Hashable]


def ngrams(sequence: Sequence_, n: int) -> list[tuple]:
    """The ``max(len − n + 1, 0)`` n-grams of ``sequence``, as tuples, in order."""
    if n < 1:
        raise ValueError(f"n-gram order must be >= 1, got {n}")
    items = tuple(sequence)
    return [items[i : i + n] for i in range(len(items) - n + 1)]


def distinct_n(sequences: Sequence[Sequence_], n: int = 2) -> float:
    """``|unique n-grams| / |n-grams|`` with the n-grams of all ``sequences`` pooled; NaN if there is
    no n-gram at all (every sequence shorter than ``n``)."""
    grams = [g for s in sequences for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def sentence_bleu(
    hypothesis: Sequence_, references: Sequence[Sequence_], *, max_n: int = 4, epsilon: float = 0.1
) -> float:
    """Smoothed sentence BLEU of one hypothesis against references (uniform weights over orders
    ``1..max_n``), with NLTK's ``sentence_bleu`` + ``SmoothingFunction().method1`` conventions (see
    the module docstring). Returns a value in [0, 1]; 0 for an empty hypothesis or no references."""
    hypothesis = tuple(hypothesis)
    references = [tuple(r) for r in references]
    if not hypothesis or not references:
        return 0.0
    log_precisions = []
    for n in range(1, max_n + 1):
        counts = collections.Counter(ngrams(hypothesis, n))
        most = collections.Counter()
        for ref in references:
            for gram, c in collections.Counter(ngrams(ref, n)).items():
                most[gram] = max(most[gram], c)
        matched = sum(min(c, most[gram]) for gram, c in counts.items())
        total = max(1, sum(counts.values()))
        if n == 1 and matched == 0:
            return 0.0
        log_precisions.append(math.log((matched if matched else epsilon) / total))
    length = len(hypothesis)
    closest = min((len(r) for r in references), key=lambda r: (abs(r - length), r))
    brevity = 0.0 if length > closest else 1.0 - closest / length  # log of the brevity penalty
    return math.exp(brevity + sum(log_precisions) / max_n)


def self_bleu(samples: Sequence[Sequence_], *, max_n: int = 4, epsilon: float = 0.1) -> float:
    """Mean over ``samples`` of ``sentence_bleu(sample_i, the other samples)``; NaN for fewer than two."""
    samples = [tuple(s) for s in samples]
    if len(samples) < 2:
        return float("nan")
    return float(
        np.mean(
            [
                sentence_bleu(s, samples[:i] + samples[i + 1 :], max_n=max_n, epsilon=epsilon)
                for i, s in enumerate(samples)
            ]
        )
    )


def rows(tokens, lengths) -> list[list[int]]:
    """Token lists from padded ``tokens[N, L]`` and ``lengths[N]``."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
        raise ValueError(f"tokens must be [N, L] with lengths [N], got {tokens.shape} and {lengths.shape}")
    return [[int(t) for t in row[: int(n)]] for row, n in zip(tokens, lengths)]


def by_input(items: Sequence, num_samples: int) -> list[list]:
    """Groups a flat list in ``row = input * num_samples + sample`` order into one list per input."""
    if num_samples < 1 or len(items) % num_samples:
        raise ValueError(f"{len(items)} rows are not a whole number of groups of num_samples={num_samples}")
    return [list(items[i : i + num_samples]) for i in range(0, len(items), num_samples)]


def distinct_per_input(tokens, lengths, num_samples: int, n: int = 2) -> np.ndarray:
    """``[B]``: distinct-n of each input's ``num_samples`` continuations pooled (``tokens[B * M, L]``)."""
    return np.array([distinct_n(group, n) for group in by_input(rows(tokens, lengths), num_samples)])


def self_bleu_per_input(tokens, lengths, num_samples: int, *, max_n: int = 4) -> np.ndarray:
    """``[B]``: self-BLEU among each input's ``num_samples`` continuations (NaN when ``num_samples < 2``)."""
    return np.array([self_bleu(group, max_n=max_n) for group in by_input(rows(tokens, lengths), num_samples)])


def token_mean(values, lengths) -> np.ndarray:
    """``[N]``: the mean of per-step ``values[N, L]`` over each row's first ``lengths`` steps (NaN for an
    empty row). With ``diagnostics["entropy"]`` this is the mean per-token entropy of π."""
    values, lengths = np.asarray(values, np.float64), np.asarray(lengths)
    if values.ndim != 2 or lengths.shape != values.shape[:1]:
        raise ValueError(f"values must be [N, L] with lengths [N], got {values.shape} and {lengths.shape}")
    mask = np.arange(values.shape[1])[None, :] < lengths[:, None]
    count = mask.sum(1)
    total = np.where(mask, values, 0.0).sum(1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


__all__ = [
    "ngrams",
    "distinct_n",
    "sentence_bleu",
    "self_bleu",
    "rows",
    "by_input",
    "distinct_per_input",
    "self_bleu_per_input",
    "token_mean",
]
