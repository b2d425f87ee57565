"""Every prefix of a tiny model, enumerated: the exact next-token distributions the DP works on.

A ``PrefixTree`` holds, for each depth ``t = 0 .. H-1`` (tokens generated so far), the raw next-token
logits at **every** prefix ``y_<t`` of that depth, as one array of shape ``(V,)*t + (S, V)``: index
``[y_0, ..., y_{t-1}, stream, a]``. Flattening the leading ``t`` axes (row-major) orders the prefixes
lexicographically, the order of ``sequences(V, t)`` and ``sequence_index``. Streams follow the
engine's convention (``infodec.generate``): stream 0 reads the evidence followed by the prompt (the
anchor ``P_G``), stream 1 the prompt alone.

Everything is enumerated, so the sizes are tiny by design: ``V**H`` sequences (vocabulary ≤ 8,
horizon ≤ 4 is the intended range; at most ``MAX_SEQUENCES`` are allowed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The largest number of sequences (V ** H) enumerated.
MAX_SEQUENCES = 1 << 16


def sequences(vocab: int, horizon: int) -> np.ndarray:
    """``[V**H, H]`` int64: every token sequence of length ``horizon``, in lexicographic order (row ``i``
    is the sequence with ``sequence_index == i``; the first token is the most significant digit)."""
    if horizon == 0:
        return np.zeros((1, 0), np.int64)
    return np.indices((vocab,) * horizon).reshape(horizon, -1).T.astype(np.int64)


def sequence_index(tokens, vocab: int) -> np.ndarray:
    """``[N]`` int64 row index of each ``[N, H]`` token sequence in ``sequences(vocab, H)`` order, i.e. its
    position in a flattened ``(V,)*H`` array. Raises on tokens outside ``[0, vocab)``."""
    tokens = np.asarray(tokens, np.int64)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [num_samples, horizon], got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        raise ValueError(f"tokens must lie in [0, {vocab}), got range [{tokens.min()}, {tokens.max()}]")
    weights = vocab ** np.arange(tokens.shape[1] - 1, -1, -1, dtype=np.int64)
    return tokens @ weights


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Float64 log-softmax (numpy; ``-inf`` entries stay ``-inf``)."""
    x = np.asarray(x, np.float64)
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return x - top - np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True))


def logsumexp(x: np.ndarray, axis: int | tuple[int, ...] | None = -1) -> np.ndarray:
    """Float64 logsumexp over ``axis`` (numpy)."""
    x = np.asarray(x, np.float64)
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    out = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


@dataclasses.dataclass(frozen=True, eq=False)
class PrefixTree:
    """Exact next-token logits at every prefix of a tiny model, for one or two streams.

    Attributes:
      logits: ``H`` float32 arrays; ``logits[t]`` has shape ``(V,)*t + (S, V)``: the raw next-token
        logits after prefix ``y_<t`` (index ``logits[t][y_0, ..., y_{t-1}, stream]``). What a policy
        sees at that state.
      context: the stream-0 tokens before the first generated token (evidence + prompt), or ``()``
        for a model-free tree; used to build the ``StepInfo`` that stateful policies read.
      log_probs: derived, ``H`` float64 arrays of the same shapes: ``log_softmax(logits)``.
    """

    logits: tuple[np.ndarray, ...]
    context: tuple[int, ...] = ()
    log_probs: tuple[np.ndarray, ...] = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        logits = tuple(np.asarray(x, np.float32) for x in self.logits)
        if not logits:
            raise ValueError("a PrefixTree needs a horizon of at least one token")
        vocab, streams = logits[0].shape[-1], logits[0].shape[-2] if logits[0].ndim >= 2 else 0
        for t, x in enumerate(logits):
            expected = (vocab,) * t + (streams, vocab)
            if x.shape != expected:
                raise ValueError(f"logits[{t}] must have shape (V,)*{t} + (S, V) = {expected}, got {x.shape}")
            if not np.all(np.isfinite(x)):
                raise ValueError(f"logits[{t}] contains NaN or infinite values")
        if streams not in (1, 2):
            raise ValueError(f"a PrefixTree has 1 or 2 streams, got {streams}")
        if vocab ** len(logits) > MAX_SEQUENCES:
            raise ValueError(f"{vocab}**{len(logits)} sequences is too many to enumerate (max {MAX_SEQUENCES})")
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "context", tuple(int(c) for c in self.context))
        object.__setattr__(self, "log_probs", tuple(log_softmax(x) for x in logits))

    @property
    def vocab(self) -> int:
        return self.logits[0].shape[-1]

    @property
    def horizon(self) -> int:
        return len(self.logits)

    @property
    def num_streams(self) -> int:
        return self.logits[0].shape[-2]

    @property
    def num_sequences(self) -> int:
        return self.vocab**self.horizon

    def log_model(self, t: int) -> np.ndarray:
        """``(V,)*t + (V,)`` float64: ``log P_G(a | y_<t)``, the anchor (stream 0, with evidence)."""
        return self.log_probs[t][..., 0, :]

    def pmi(self, t: int) -> np.ndarray:
        """``(V,)*t + (V,)`` float64: ``PMI(a; c | y_<t) = log P(a | y_<t, c) − log P(a | y_<t)`` (two streams)."""
        if self.num_streams < 2:
            raise ValueError(
                "the PMI needs two streams (with and without evidence): build the tree with "
                "evidence_tokens=... or num_streams=2"
            )
        return self.log_probs[t][..., 0, :] - self.log_probs[t][..., 1, :]

    def flat_logits(self, t: int) -> np.ndarray:
        """``[V**t, S, V]`` float32: the depth-``t`` logits, prefixes in lexicographic order."""
        return self.logits[t].reshape(self.vocab**t, self.num_streams, self.vocab)

    def sequence_log_model(self) -> np.ndarray:
        """``(V,)*H`` float64: ``log P_G(y) = Σ_t log P_G(y_t | y_<t)`` for every sequence."""
        return accumulate([self.log_model(t) for t in range(self.horizon)])


def accumulate(tables: Sequence[np.ndarray]) -> np.ndarray:
    """Sums per-step tables along every path: ``out[y] = Σ_t tables[t][y_0, ..., y_t]``.

    ``tables[t]`` has shape ``(V,)*(t+1)``; the result has shape ``(V,)*H``. (For log-policies this is
    the chain rule ``log π(y) = Σ_t log π(y_t | y_<t)``.)
    """
    total = np.zeros(())
    for table in tables:
        total = total[..., None] + np.asarray(table, np.float64)
    return total


def _check_tokens(name: str, tokens, vocab: int, allow_empty: bool) -> list[int]:
    tokens = [int(x) for x in np.asarray(tokens, np.int64).reshape(-1)]
    if not tokens and not allow_empty:
        raise ValueError(f"{name} must contain at least one token")
    bad = [x for x in tokens if not 0 <= x < vocab]
    if bad:
        raise ValueError(f"{name} has token ids outside the vocabulary [0, {vocab}): {bad}")
    return tokens


def _apply_impl(model, params, tokens, positions):
    return model.apply(params, tokens, positions)[0]


_apply = jax.jit(_apply_impl, static_argnums=0)


def prefix_log_probs(model, params, prompt_tokens, horizon: int, evidence_tokens=None) -> PrefixTree:
    """The exact next-token logits of ``model`` at every continuation prefix of ``prompt_tokens``.

    Streams follow ``infodec.generate``: without evidence one stream (the prompt); with evidence,
    stream 0 is ``evidence + prompt`` (evidence prepended) and stream 1 the prompt alone. For each depth
    ``t < horizon`` and each of the ``V**t`` prefixes ``y_<t``, the logits are those of a full-sequence
    ``model.apply`` (no cache) on ``stream_context + y_<t`` at positions ``0, 1, ...``, read at its last
    token. All prefixes of all depths and both streams run as one batch: rows are right-padded to a
    common width, which under the causal mask does not change the logits at the last real token.

    Args:
      model, params: a ``CausalLM`` (``model.apply(params, tokens, positions)``) and its parameters;
        ``model.vocab_size ** horizon`` must be at most ``MAX_SEQUENCES``.
      prompt_tokens: the prompt, a non-empty sequence of token ids.
      horizon: ``H``, the number of generated tokens (≥ 1).
      evidence_tokens: optional evidence ``c`` (non-empty); gives the two-stream tree.
    Returns:
      a ``PrefixTree`` whose ``context`` is the stream-0 prompt (evidence + prompt).
    """
    vocab = int(model.vocab_size)
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
    if vocab**horizon > MAX_SEQUENCES:
        raise ValueError(
            f"{vocab}**{horizon} sequences is too many to enumerate (max {MAX_SEQUENCES}); "
            "infodec.theory is for tiny vocabularies"
        )
    prompt = _check_tokens("prompt_tokens", prompt_tokens, vocab, allow_empty=False)
    streams = [prompt]
    if evidence_tokens is not None:
        evidence = _check_tokens("evidence_tokens", evidence_tokens, vocab, allow_empty=False)
        streams = [evidence + prompt, prompt]
    width = max(len(s) for s in streams) + horizon - 1
    if width > model.max_length:
        raise ValueError(f"prompt, evidence and horizon need {width} positions; the model has {model.max_length}")

    rows, last = [], []
    for t in range(horizon):
        prefixes = sequences(vocab, t)
        for prefix in prefixes:
            for base in streams:
                rows.append(base + prefix.tolist())
                last.append(len(base) + t - 1)
    tokens = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    positions = np.broadcast_to(np.arange(width, dtype=np.int32), tokens.shape)
    logits = np.asarray(_apply(model, params, jnp.asarray(tokens), jnp.asarray(positions)), np.float32)
    logits = logits[np.arange(len(rows)), np.asarray(last)]  # [rows, V]

    out, start = [], 0
    for t in range(horizon):
        count = vocab**t * len(streams)
        out.append(logits[start : start + count].reshape((vocab,) * t + (len(streams), vocab)))
        start += count
    return PrefixTree(tuple(out), context=tuple(streams[0]))


def random_prefix_tree(
    key_or_seed: Any, vocab: int, horizon: int, num_streams: int = 1, sharpness: float = 2.0
) -> PrefixTree:
    """A model-free tree: independent Gaussian logits ``sharpness · N(0, 1)`` at every prefix and stream.

    ``key_or_seed`` is an int (numpy ``default_rng``) or a JAX PRNG key. Larger ``sharpness`` gives
    peakier, more context-dependent next-token distributions (2 is far from uniform for V ≤ 8).
    """
    if vocab < 2 or horizon < 1:
        raise ValueError(f"need vocab >= 2 and horizon >= 1, got vocab={vocab}, horizon={horizon}")
    if num_streams not in (1, 2):
        raise ValueError(f"num_streams must be 1 or 2, got {num_streams}")
    if vocab**horizon > MAX_SEQUENCES:
        raise ValueError(f"{vocab}**{horizon} sequences is too many to enumerate (max {MAX_SEQUENCES})")
    total = sum(vocab**t for t in range(horizon))
    shape = (total, num_streams, vocab)
    if isinstance(key_or_seed, (int, np.integer)):
        z = np.random.default_rng(int(key_or_seed)).standard_normal(shape)
    else:
        z = np.asarray(jax.random.normal(key_or_seed, shape), np.float64)
    z = (sharpness * z).astype(np.float32)
    out, start = [], 0
    for t in range(horizon):
        out.append(z[start : start + vocab**t].reshape((vocab,) * t + (num_streams, vocab)))
        start += vocab**t
    return PrefixTree(tuple(out))


__all__ = [
    "MAX_SEQUENCES",
    "PrefixTree",
    "prefix_log_probs",
    "random_prefix_tree",
    "sequences",
    "sequence_index",
    "accumulate",
    "log_softmax",
    "logsumexp",
]
