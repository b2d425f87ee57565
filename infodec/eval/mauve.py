"""MAUVE (Pillutla et al., 2021) between human and decoded text, on features of a fixed model.

The score itself comes from the ``mauve-text`` library (``pip install "infodec[eval]"``; it imports
torch). The features are ours: the final hidden state (after the final norm) at the last token of
``prefix + continuation`` under a fixed causal LM, as MAUVE does with GPT-2 large — here the default
LM unless a caller passes another. The same featuriser must be used for both sides of a comparison.

MAUVE quantises the pooled features with k-means into ``n / 10`` buckets by default, so with a few
dozen texts per side it is coarse and seed-dependent: :func:`mauve_score` averages over several
k-means seeds and reports their spread.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from infodec.batching import map_in_chunks
from infodec.decoding.scoring import pack_prefix_continuation


@functools.partial(jax.jit, static_argnums=0)
def _hidden_at(model, params, tokens, positions, last):
    """``[B, D]`` final hidden state at column ``last[b]`` of each row (one cache-free apply)."""
    _, _, hidden = model.apply(params, tokens, positions, return_hidden=True)  # [B, T, D]
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


def features(model, params, tokens, lengths, prefix=None, *, batch_size: int = 16) -> np.ndarray:
    """``[B, D]`` MAUVE features: the LM's final hidden state at the last token of prefix + continuation.

    Args:
      tokens: ``[B, L]`` continuation ids (right-padded); ``lengths``: ``[B]`` valid lengths (> 0).
      prefix: optional ``[B, P]`` prompt ids (``-1`` = padding) read before each continuation, as MAUVE
        features a prompt together with its continuation.
      batch_size: rows per forward pass (the last chunk is padded, so each width compiles once).
    """
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    if tokens.ndim != 2 or lengths.shape != (len(tokens),) or (lengths < 1).any():
        raise ValueError(
            f"tokens must be [B, L] with lengths [B] of at least 1, got {tokens.shape} and lengths {lengths.tolist()}"
        )
    prefixes = (
        [[] for _ in tokens]
        if prefix is None
        else [[int(t) for t in np.asarray(row) if t >= 0] for row in np.asarray(prefix)]
    )

    def chunk(rows: np.ndarray, _) -> np.ndarray:
        ids, positions, starts = pack_prefix_continuation(
            model, [prefixes[r] for r in rows], tokens[rows], lengths[rows]
        )
        last = (starts + lengths[rows] - 1).astype(np.int32)
        return _hidden_at(model, params, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(last))

    return map_in_chunks(chunk, len(tokens), batch_size).astype(np.float32)


def mauve_score(p_features, q_features, *, seeds=(1, 2, 3, 4, 5), num_buckets="auto") -> dict[str, float]:
    """MAUVE of ``p_features[N, D]`` (e.g. human) against ``q_features[M, D]`` (e.g. decoded), averaged
    over k-means ``seeds``; returns ``{"mauve", "spread" (std over seeds), "n_p", "n_q"}``."""
    try:
        import mauve
    except ImportError as e:
        raise ImportError('MAUVE needs the mauve-text library: pip install "infodec[eval]"') from e
    p, q = np.asarray(p_features, np.float32), np.asarray(q_features, np.float32)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D, got {p.shape} and {q.shape}")
    if min(len(p), len(q)) < 2:
        raise ValueError(f"MAUVE needs at least 2 texts per side, got {len(p)} and {len(q)}")
    scores = [
        mauve.compute_mauve(p_features=p, q_features=q, num_buckets=num_buckets, seed=s, verbose=False).mauve
        for s in seeds
    ]
    return {"mauve": float(np.mean(scores)), "spread": float(np.std(scores)), "n_p": len(p), "n_q": len(q)}


__all__ = ["features", "mauve_score"]
