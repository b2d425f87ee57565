"""Best-of-N and minimum-Bayes-risk (MBR) reranking of M candidates drawn once per prompt.

The candidates are DAEMON's: ``generate(..., num_samples=M)`` rows (prompt-major, sharing each prompt's
prefill; :func:`draw` draws them as ``daemon.sample`` does). Then, per prompt:

* best-of-N: ``argmax_i reward_i`` (a reward callable, or precomputed scores such as
  ``GenerateOutput.sequence_logp()[0]`` (log p_θ) or a discriminator's);
* MBR: ``argmax_i (1 / (M − 1)) Σ_{j ≠ i} U(i, j)``, the mean utility of candidate ``i`` as the
  hypothesis against every other candidate as the reference (sentence BLEU from ``infodec.eval``,
  embedding cosine similarity from ``infodec.eval.text_embedder``, any pairwise measure).

Ties go to the lowest candidate index; a NaN score counts as the worst (all NaN: candidate 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from infodec.decoding.engine import StopTokens, encode_prompts, generate
from infodec.decoding.state import GenerateOutput
from infodec.eval.diversity import rows, sentence_bleu
from infodec.policies.standard import Temperature

Reward = Callable[[list], Sequence[float]]  # the M candidates of one prompt -> [M]
Utility = Callable[[list], Any]  # the M candidates of one prompt -> [M, M], U[i, j]: i hypothesis, j reference


@dataclasses.dataclass(frozen=True)
class RerankOutput:
    """What :func:`best_of_n` and :func:`mbr` return (numpy; one row per prompt unless noted).

    Attributes:
      tokens: ``[P, L]`` the chosen candidate of each prompt, padded after ``lengths``.
      lengths: ``[P]``.
      index: ``[P]`` which of the M candidates was chosen.
      scores: ``[P, M]`` each candidate's reward (best-of-N) or expected utility (MBR).
      utility: ``[P, M, M]`` the utility matrices (MBR), None for best-of-N.
      candidates: the ``GenerateOutput`` of all ``P * M`` candidates.
      text: the chosen continuations' text, when the candidates have text.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    index: np.ndarray
    scores: np.ndarray
    utility: np.ndarray | None
    candidates: GenerateOutput
    text: list[str] | None = None


def draw(
    model,
    params,
    prompts,
    key,
    *,
    num_candidates: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    tokenizer=None,
    stop_tokens: StopTokens = ...,
) -> GenerateOutput:
    """``num_candidates`` continuations per prompt from ``Temperature(temperature)``, one shared prefill per
    prompt, prompts encoded with a BOS as DAEMON's candidates are (``daemon.fitting.draw_candidates``)."""
    if not isinstance(num_candidates, (int, np.integer)) or num_candidates < 1:
        raise ValueError(f"num_candidates must be an integer >= 1, got {num_candidates!r}")
    prompt_ids = encode_prompts(prompts, tokenizer, add_bos=True)
    policy = Temperature(float(temperature))
    return generate(
        model,
        params,
        prompt_ids,
        policy,
        key,
        max_new_tokens=max_new_tokens,
        num_samples=int(num_candidates),
        tokenizer=tokenizer,
        stop_tokens=stop_tokens,
    )


def best_of_n(candidates: GenerateOutput, reward, *, num_candidates: int, on: str = "tokens") -> RerankOutput:
    """The candidate of each prompt with the largest reward.

    Args:
      candidates: ``P * M`` rows, prompt-major (``generate(..., num_samples=M)`` or :func:`draw`).
      reward: a callable taking one prompt's M candidates (token lists, or texts with ``on="text"``) and
        returning M scores, or precomputed scores ``[P * M]`` or ``[P, M]``.
      num_candidates: ``M``.
      on: ``"tokens"`` or ``"text"`` (needs ``candidates.text``): what a callable reward receives.
    """
    groups = _groups(candidates, num_candidates, on, callable(reward))
    if callable(reward):
        scores = np.stack([_checked_row(reward(group), num_candidates, "reward") for group in groups])
    else:
        scores = _precomputed(reward, len(groups), num_candidates)
    return _chosen(candidates, scores, None)


def mbr(candidates: GenerateOutput, utility, *, num_candidates: int, on: str = "tokens") -> RerankOutput:
    """The candidate of each prompt with the largest mean utility against the other candidates.

    Args:
      candidates: as for :func:`best_of_n`.
      utility: a callable taking one prompt's M candidates and returning the ``[M, M]`` matrix
        ``U[i, j]`` (candidate ``i`` as hypothesis, ``j`` as reference; :func:`pairwise` builds one from
        a two-argument measure, :func:`bleu_utility` and :func:`embedding_utility` are ready-made), or
        precomputed matrices ``[P, M, M]``. The diagonal is ignored.
      num_candidates: ``M >= 2``.
      on: as for :func:`best_of_n`.
    """
    if not isinstance(num_candidates, (int, np.integer)) or num_candidates < 2:
        raise ValueError(
            f"MBR needs num_candidates >= 2 (a candidate is scored against the others), got {num_candidates!r}"
        )
    groups = _groups(candidates, num_candidates, on, callable(utility))
    m = num_candidates
    if callable(utility):
        matrices = np.stack([np.asarray(utility(group), np.float64) for group in groups])
    else:
        matrices = np.asarray(utility, np.float64)
    if matrices.shape != (len(groups), m, m):
        raise ValueError(
            f"utility must give [M, M] = [{m}, {m}] per prompt ([P, M, M] precomputed), got {matrices.shape}"
        )
    off_diagonal = np.where(np.eye(m, dtype=bool)[None], 0.0, matrices)
    scores = off_diagonal.sum(-1) / (m - 1)
    return _chosen(candidates, scores, matrices)


def pairwise(measure: Callable[[Any, Any], float]) -> Utility:
    """A utility matrix from a two-argument measure ``measure(hypothesis, reference)``."""
    return lambda items: np.array(
        [[measure(h, r) if i != j else np.nan for j, r in enumerate(items)] for i, h in enumerate(items)]
    )


def bleu_utility(max_n: int = 4) -> Utility:
    """Smoothed sentence BLEU (``infodec.eval.sentence_bleu``, NLTK's method 1) of each candidate against
    each other one, on tokens or on whitespace-split texts."""
    split = lambda x: x.split() if isinstance(x, str) else x
    return pairwise(lambda h, r: sentence_bleu(split(h), [split(r)], max_n=max_n))


def embedding_utility(embed: Callable[[Sequence[str]], np.ndarray]) -> Utility:
    """Cosine similarity of texts' embeddings (``embed``: ``infodec.eval.text_embedder``); use ``on="text"``."""

    def utility(texts):
        vectors = np.asarray(embed(list(texts)), np.float64)
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        return vectors @ vectors.T

    return utility


def first_best(scores: np.ndarray) -> np.ndarray:
    """``[P]`` per row of ``scores [P, M]``, the lowest index of the largest score; NaN is the worst,
    a row of NaN gives 0."""
    return np.argmax(np.where(np.isnan(scores), -np.inf, scores), axis=-1)


def _groups(candidates: GenerateOutput, m: int, on: str, needed: bool) -> list[list]:
    if not isinstance(candidates, GenerateOutput):
        raise ValueError(
            f"candidates must be a GenerateOutput (generate(..., num_samples=M)), got {type(candidates).__name__}"
        )
    if not isinstance(m, (int, np.integer)) or m < 1 or len(candidates.lengths) % m:
        raise ValueError(f"num_candidates must divide the {len(candidates.lengths)} candidate rows, got {m!r}")
    if on not in ("tokens", "text"):
        raise ValueError(f"on must be 'tokens' or 'text', got {on!r}")
    if on == "text" and needed and candidates.text is None:
        raise ValueError("on='text' needs candidates with text: generate them with tokenizer=...")
    items = candidates.text if on == "text" else rows(candidates.tokens, candidates.lengths)
    items = list(items or [])
    return [items[start : start + m] for start in range(0, len(candidates.lengths), m)]


def _checked_row(values, m: int, what: str) -> np.ndarray:
    row = np.asarray(values, np.float64)
    if row.shape != (m,):
        raise ValueError(f"{what} must return {m} scores per prompt, got shape {row.shape}")
    return row


def _precomputed(values, prompts: int, m: int) -> np.ndarray:
    scores = np.asarray(values, np.float64)
    if scores.size != prompts * m or scores.ndim not in (1, 2):
        raise ValueError(f"precomputed rewards must be [P * M] or [P, M] = [{prompts}, {m}], got {scores.shape}")
    return scores.reshape(prompts, m)


def _chosen(candidates: GenerateOutput, scores: np.ndarray, utility: np.ndarray | None) -> RerankOutput:
    m = scores.shape[1]
    index = first_best(scores)
    picked = np.arange(len(index)) * m + index
    text = None if candidates.text is None else [candidates.text[r] for r in picked]
    return RerankOutput(
        tokens=candidates.tokens[picked],
        lengths=candidates.lengths[picked],
        index=index,
        scores=scores,
        utility=utility,
        candidates=candidates,
        text=text,
    )


__all__ = [
    "RerankOutput",
    "draw",
    "best_of_n",
    "mbr",
    "pairwise",
    "bleu_utility",
    "embedding_utility",
    "first_best",
]
