"""Teacher-forced scoring: the log-probability a model gives to continuations it did not write.

DAEMON's ``info`` metric and its perplexity under q, the sensibleness and attribution measures, and MAUVE's
features all read a model over ``prefix + continuation`` in one cache-free full-sequence ``apply``. The
rows are packed here once (:func:`pack_prefix_continuation`): prefix then continuation, right-padded to a
width bucket (``state.sequence_bucket``) so a new length rarely recompiles; under the causal mask the
padding changes nothing.

Prefixes come either as ``[B, P]`` arrays right-padded with ``-1`` (``GenerateOutput.prompt_tokens``'
layout) or as lists of token lists.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from infodec.batching import map_in_chunks
from infodec.decoding.engine import encode_prompts, prefill, teacher_force
from infodec.decoding.state import sequence_bucket


def prefix_lists(prefix, batch: int) -> list[list[int]]:
    """``prefix [batch, P]`` (right-padded with -1) as ``batch`` token lists without the padding."""
    if prefix is None:
        raise ValueError(
            "this metric compares the continuation with its prefix: pass prefix=[B, P] "
            "(prompt ids, right-padded with -1)"
        )
    prefix = np.asarray(prefix)
    if prefix.ndim != 2 or prefix.shape[0] != batch:
        raise ValueError(f"prefix must be [batch={batch}, P], got shape {prefix.shape}")
    return [[int(t) for t in row if t >= 0] for row in prefix]


def pack_prefix_continuation(
    model, prefixes: list[list[int]], tokens: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packs each row's prefix + continuation for one cache-free ``apply``: ``(ids [B, S], positions
    [B, S] (-1 after the text), starts [B])`` with ``S`` the ``sequence_bucket`` of the longest row and
    ``starts[b]`` the column of row b's first continuation token. Under the causal mask the right
    padding changes nothing."""
    batch = len(tokens)
    longest = max(len(p) + int(n) for p, n in zip(prefixes, lengths))
    if longest > model.max_length:
        raise ValueError(
            f"prefix + continuation of {longest} tokens exceeds the evaluator's context of {model.max_length}"
        )
    span = min(sequence_bucket(longest), model.max_length)
    full = np.zeros((batch, span), np.int32)
    positions = np.full((batch, span), -1, np.int32)
    starts = np.zeros(batch, np.int64)
    for b, p in enumerate(prefixes):
        n = int(lengths[b])
        full[b, : len(p)] = p
        full[b, len(p) : len(p) + n] = tokens[b, :n]
        positions[b, : len(p) + n] = np.arange(len(p) + n)
        starts[b] = len(p)
    return full, positions, starts


def continuation_log_probs(model, params, tokens, lengths, prefix, *, apply=None) -> tuple[np.ndarray, np.ndarray]:
    """``(logp [B, L], mask [B, L])``: log p(x_t | c, x_<t) of each continuation token under ``model``,
    from one cache-free full-sequence ``apply`` over prefix + continuation (right-padded to a
    ``sequence_bucket``; under the causal mask the padding changes nothing). Every prefix must be
    non-empty (its last token predicts the first continuation token).

    Args:
      tokens: ``[B, L]`` integer continuation ids, right-padded; ``lengths``: ``[B]`` valid lengths.
      prefix: ``[B, P]`` prompt ids right-padded with -1.
      apply: optional replacement for the jitted next-token scorer (tests pass an unjitted one).
    """
    tokens, lengths = check_continuations(tokens, lengths)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    prefixes = prefix_lists(prefix, len(tokens))
    if any(len(p) == 0 for p in prefixes):
        raise ValueError(
            "info needs a non-empty prefix for every row (its last token predicts the first "
            "continuation token); prepend BOS to empty prompts"
        )
    full, positions, starts = pack_prefix_continuation(model, prefixes, tokens, lengths)
    span, width = full.shape[1], tokens.shape[1]
    next_logp = np.asarray((apply or _next_token_log_probs)(model, params, jnp.asarray(full), jnp.asarray(positions)))
    # next_logp[b, s] = log p(full[b, s + 1] | full[b, :s + 1]); continuation token t sits at column
    # start + t, so it is next_logp[b, start + t - 1].
    index = np.minimum(starts[:, None] - 1 + np.arange(width)[None, :], span - 2)
    mask = np.arange(width)[None, :] < lengths[:, None]
    logp = np.take_along_axis(next_logp, index, axis=1)
    return np.where(mask, logp, 0.0), mask


@functools.partial(jax.jit, static_argnums=0)
def _next_token_log_probs(model, params, tokens, positions):
    """``[B, T - 1]`` log-probability of each token given the ones before it (one cache-free apply)."""
    logits, _ = model.apply(params, tokens, positions)
    log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[:, :, 0]


def scored_log_probs(
    model, params, tokens, lengths, prefixes: Sequence[Sequence[int]], *, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """``(logp [N, L], mask [N, L])``: log-probability of each output token given its prefix under
    ``model`` (float64; 0 where masked), by :func:`continuation_log_probs` in fixed-size row batches (the
    last padded by repeating its last row, so each width compiles once and the ``[rows, S, V]`` logits
    stay small).

    Args:
      tokens, lengths: the outputs ``[N, L]`` (right-padded) and their lengths ``[N]``.
      prefixes: N non-empty token lists the outputs are conditioned on.
      batch_size: rows per forward pass (bounds the ``[batch, S, V]`` logits in memory).
    """
    tokens, lengths = _outputs_with_prefixes(tokens, lengths, prefixes)
    width = max(1, max((len(p) for p in prefixes), default=1))
    padded = np.full((len(prefixes), width), -1, np.int64)
    for row, p in enumerate(prefixes):
        padded[row, : len(p)] = p
    logp, mask = map_in_chunks(
        lambda rows, _: continuation_log_probs(model, params, tokens[rows], lengths[rows], padded[rows]),
        len(tokens),
        min(batch_size, len(tokens)),
    )
    return logp.astype(np.float64), mask


def score(
    model,
    params,
    prefixes,
    continuations,
    *,
    policy=None,
    evidence=None,
    key=None,
    tokenizer=None,
    batch_size: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced scoring: ``(logp [N, L], mask [N, L])``, ``logp[n, t] = log p(y_t | x, y_<t)`` of
    each token of ``continuations[n]`` given ``prefixes[n]`` (float64, 0 where ``mask`` is False; ``L``
    the longest continuation). ``logp.sum(1)`` is each continuation's log-likelihood.

    With a ``policy``, ``logp[n, t] = log π(y_t | x, y_<t)`` instead: the probability the decoder ``policy``
    gives each token when the tokens before it are the given ones (``-inf``-like, about ``-1e30``, where
    the policy truncates the token away). The continuations are fed through the decode engine
    (``prefill``, then ``step`` with the given token in place of a sample), so the policy sees exactly the
    logits, context, hidden state and per-row state it sees when it decodes: for a text the engine
    sampled, this is the ``logp_policy`` it recorded.

    Args:
      model, params: from ``infodec.load``.
      prefixes: N non-empty prefixes: strings (with ``tokenizer``; encoded with its BOS convention) or
        token-id lists.
      continuations: N continuations: strings (encoded without BOS) or token-id lists; may be empty.
      policy: None (the model's own distribution, one cache-free ``apply`` over prefix + continuation) or
        an infodec ``Policy``.
      evidence: with a two-stream policy (classifier-free guidance), the N evidence prompts, as for
        ``generate``.
      key: PRNG key for policies that draw random numbers (``XTC``): their π is the one of this draw
        (default ``jax.random.key(0)``).
      batch_size: rows per forward pass (fixed: the last batch repeats its last row).
    """
    prefix_ids = encode_prompts(prefixes, tokenizer)
    continuation_ids = encode_prompts(continuations, tokenizer, add_bos=False, allow_empty=True)
    if len(prefix_ids) != len(continuation_ids):
        raise ValueError(f"got {len(prefix_ids)} prefixes for {len(continuation_ids)} continuations; pass one each")
    lengths = np.array([len(c) for c in continuation_ids], np.int32)
    tokens = np.zeros((len(continuation_ids), max(1, int(lengths.max()))), np.int32)
    for row, ids in enumerate(continuation_ids):
        tokens[row, : len(ids)] = ids
    if policy is None:
        logp, mask = scored_log_probs(model, params, tokens, lengths, prefix_ids, batch_size=batch_size)
    else:
        logp, mask = policy_log_probs(
            model, params, tokens, lengths, prefix_ids, policy, evidence=evidence, key=key, batch_size=batch_size
        )
    width = int(lengths.max())
    return logp[:, :width], mask[:, :width]


def policy_log_probs(
    model,
    params,
    tokens,
    lengths,
    prefixes: Sequence[Sequence[int]],
    policy,
    *,
    evidence=None,
    key=None,
    batch_size: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """``(logp [N, L], mask [N, L])``: log π of each output token under ``policy`` given its prefix and the
    output tokens before it (float64; 0 where masked), teacher-forced through ``prefill`` and
    ``engine.teacher_force`` in fixed batches of ``batch_size`` rows (see :func:`score`).

    Args:
      tokens, lengths: the outputs ``[N, L]`` (right-padded) and their lengths ``[N]``.
      prefixes: N non-empty token lists the outputs are conditioned on.
      evidence: N evidence prompts for a two-stream policy, else None.
    """
    tokens, lengths = _outputs_with_prefixes(tokens, lengths, prefixes)
    if evidence is not None and len(evidence) != len(tokens):
        raise ValueError(f"got {len(evidence)} evidence prompts for {len(tokens)} continuations; pass one each")
    key = jax.random.key(0) if key is None else key
    width = tokens.shape[1]

    def chunk(rows: np.ndarray, _) -> np.ndarray:
        state = prefill(
            model,
            params,
            [list(prefixes[r]) for r in rows],
            key,
            max_new_tokens=width,
            evidence=None if evidence is None else [evidence[r] for r in rows],
            policy=policy,
            stop_tokens=(),
        )
        state = teacher_force(model, params, policy, state, tokens[rows])
        return np.asarray(state.logp_policy[:, :width])

    logp = map_in_chunks(chunk, len(tokens), min(batch_size, len(tokens)))
    mask = np.arange(width)[None, :] < lengths[:, None]
    return np.where(mask, logp, 0.0).astype(np.float64), mask


def _outputs_with_prefixes(tokens, lengths, prefixes) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [N, L], lengths [N])`` as arrays; ValueError unless there is one prefix per output."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1] or len(prefixes) != len(tokens):
        raise ValueError(
            f"tokens [N, L], lengths [N] and N prefixes expected, got {tokens.shape}, "
            f"{lengths.shape} and {len(prefixes)} prefixes"
        )
    return tokens, lengths


def check_continuations(tokens, lengths) -> tuple[jax.Array, jax.Array]:
    """``(tokens int32 [B, L], lengths int32 [B] clipped to [0, L])``; ValueError naming a bad shape or dtype."""
    tokens = jnp.asarray(tokens)
    lengths = jnp.asarray(lengths)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    if lengths.shape != tokens.shape[:1]:
        raise ValueError(f"lengths {lengths.shape} must be [batch] = {tokens.shape[:1]}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer ids, got {tokens.dtype}")
    return tokens.astype(jnp.int32), jnp.clip(lengths.astype(jnp.int32), 0, tokens.shape[1])
