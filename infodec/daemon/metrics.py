"""DAEMON's per-sequence metrics ``f(x, c)`` (``docs/math.md`` §3, the metric table), on model token ids.

Every metric has the signature ``f(tokens[B, L], lengths[B], prefix[B, P] | None) -> Float[B]``:

* ``tokens`` are the continuations, padded after ``lengths`` (whatever the padding holds is ignored);
* ``prefix`` are the prompts, right-padded with ``-1`` (``GenerateOutput.prompt_tokens``' layout);
  only ``coh`` and ``info`` read it.

Token-level metrics (``sr{n}``, ``tr{l}``, ``div``) are jitted and exact (no hashing): distinct
n-grams are counted on device by a lexicographic multi-key ``lax.sort`` of the n-gram columns, so two
n-grams are the same only if all their tokens are. ``coh`` and ``info`` are built by the factories
:func:`coherence` and :func:`evaluator_nll` (a fixed evaluator LM, text re-tokenised; what the DAEMON
study uses) or :func:`model_nll` (an evaluator sharing the LM's token ids), since they need a model.

The registry maps names to metrics: ``get_metric("sr4")``, ``get_metric("tr32")``, ``"div"``,
``"coh"``, ``"info"`` (``n``/``l`` parsed from the name; ``sr``/``tr`` alone mean the defaults 4 and 32);
:func:`compute` stacks several into ``[B, K]``. Conventions (the project's, ``docs/math.md`` §3):

* ``sr{n} = 1 − |unique n-grams| / |n-grams|`` over the ``max(len − n + 1, 0)`` n-grams of the
  continuation; 0 when there is none.
* ``tr{l}``: fraction of the continuation's ``len`` positions whose token occurs among the previous
  ``l`` tokens of the continuation (the prompt is not looked at; the first position never repeats);
  0 for an empty continuation.
* ``div = Π_{n=2..4} (1 − sr_n)``; :func:`pooled_diversity` is the SimCTG corpus version (n-grams
  pooled over all sequences before counting).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from infodec.decoding.scoring import check_continuations, continuation_log_probs, prefix_lists, score
from infodec.eval.attribution import text_embedder

Array = jax.Array
Metric = Callable[..., Array]

DEFAULT_SR = 4
DEFAULT_TR = 32


# --- repetition and diversity (jit) ---------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="n")
def _unique_ngrams(tokens: Array, lengths: Array, n: int) -> tuple[Array, Array]:
    """``(unique, total)`` int32 ``[B]``: distinct and all n-grams of each row's first ``lengths`` tokens."""
    batch, length = tokens.shape
    slots = length - n + 1
    total = jnp.maximum(lengths - n + 1, 0)
    if slots <= 0:
        return jnp.zeros((batch,), jnp.int32), total
    columns = [tokens[:, k : k + slots] for k in range(n)]  # n-gram s is (columns[0][s], ..., columns[n-1][s])
    invalid = (jnp.arange(slots)[None, :] >= total[:, None]).astype(jnp.int32)
    # Lexicographic sort on (invalid, t_0, ..., t_{n-1}): real n-grams first, equal n-grams adjacent.
    ordered = jax.lax.sort((invalid, *columns), dimension=1, num_keys=n + 1)
    differs = jnp.zeros((batch, slots - 1), bool)
    for column in ordered[1:]:
        differs |= column[:, 1:] != column[:, :-1]
    first = jnp.concatenate([jnp.ones((batch, 1), bool), differs], axis=1)
    unique = jnp.sum(first & (ordered[0] == 0), axis=1, dtype=jnp.int32)
    return unique, total


def sequence_repetition(tokens, lengths, prefix=None, *, n: int = DEFAULT_SR) -> Array:
    """``sr{n}``: ``1 − |unique n-grams| / |n-grams|`` per row ``[B]`` (0 for rows without an n-gram)."""
    if n < 1:
        raise ValueError(f"n-gram order must be >= 1, got {n}")
    tokens, lengths = check_continuations(tokens, lengths)
    unique, total = _unique_ngrams(tokens, lengths, n)
    return jnp.where(total > 0, 1.0 - unique / jnp.maximum(total, 1), 0.0).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames="window")
def _token_repetition(tokens: Array, lengths: Array, window: int) -> Array:
    batch, length = tokens.shape
    position = jnp.arange(length)[None, :]

    def body(d, repeated):
        earlier = jnp.roll(tokens, d, axis=1)  # earlier[:, i] = tokens[:, i - d] where i >= d
        return repeated | ((tokens == earlier) & (position >= d))

    repeated = jax.lax.fori_loop(1, min(window, length - 1) + 1, body, jnp.zeros((batch, length), bool))
    counted = jnp.sum(repeated & (position < lengths[:, None]), axis=1)
    return jnp.where(lengths > 0, counted / jnp.maximum(lengths, 1), 0.0).astype(jnp.float32)


def token_repetition(tokens, lengths, prefix=None, *, window: int = DEFAULT_TR) -> Array:
    """``tr{l}``: fraction of each row's positions whose token occurs among the previous ``window``
    tokens ``[B]`` (0 for an empty row)."""
    if window < 1:
        raise ValueError(f"tr window must be >= 1, got {window}")
    tokens, lengths = check_continuations(tokens, lengths)
    return _token_repetition(tokens, lengths, window)


def diversity(tokens, lengths, prefix=None) -> Array:
    """``div = Π_{n=2..4} (1 − sr_n)`` per row ``[B]``."""
    tokens, lengths = check_continuations(tokens, lengths)
    out = jnp.ones(tokens.shape[:1], jnp.float32)
    for n in (2, 3, 4):
        unique, total = _unique_ngrams(tokens, lengths, n)
        out = out * jnp.where(total > 0, unique / jnp.maximum(total, 1), 1.0)
    return out


def sr(n: int = DEFAULT_SR) -> Metric:
    """The ``sr{n}`` metric function (``n >= 1``)."""
    if n < 1:
        raise ValueError(f"sr{{n}} needs an n-gram order n >= 1, got {n}")
    return functools.partial(sequence_repetition, n=n)


def tr(l: int = DEFAULT_TR) -> Metric:
    """The ``tr{l}`` metric function (``l >= 1``)."""
    if l < 1:
        raise ValueError(f"tr{{l}} needs a look-back window l >= 1, got {l}")
    return functools.partial(token_repetition, window=l)


def pooled_diversity(tokens, lengths, orders: Sequence[int] = (2, 3, 4)) -> dict[str, float]:
    """Corpus-level diversity, SimCTG style: n-grams of all rows pooled before counting.

    ``rep-n = 1 − |unique n-grams of the corpus| / |n-grams of the corpus|`` (n-grams never cross
    rows), ``diversity = Π_n (1 − rep-n)``. Returns ``{"rep-2": .., "rep-3": .., "rep-4": ..,
    "diversity": ..}`` (fractions, not percentages). Exact, in numpy.
    """
    tokens = np.asarray(tokens)
    lengths = np.clip(np.asarray(lengths), 0, tokens.shape[1])
    result, product = {}, 1.0
    for n in orders:
        grams = [tokens[b, s : s + n] for b in range(len(tokens)) for s in range(int(lengths[b]) - n + 1)]
        if grams:
            unique = len(np.unique(np.stack(grams), axis=0))
            rep = 1.0 - unique / len(grams)
        else:
            rep = 0.0
        result[f"rep-{n}"] = rep
        product *= 1.0 - rep
    result["diversity"] = product
    return result


# --- model-based metrics ---------------------------------------------------------------------------


def coherence(encoder, params, encoder_tokenizer, lm_tokenizer, *, max_length: int | None = None) -> Metric:
    """Builds ``coh``: cosine similarity of the sentence embeddings of prefix text and continuation text.

    Args:
      encoder, params: a ``SentenceEncoder`` (``infodec.load("minilm-l6")``) and its params; its
        ``encode`` returns L2-normalised embeddings, so the cosine is their dot product.
      encoder_tokenizer: the encoder's tokenizer (``encode_batch`` adds ``[CLS] … [SEP]``).
      lm_tokenizer: the LM's tokenizer, to turn ids back into text (``decode``).
      max_length: encoder tokens kept per text (default: the encoder's maximum); longer texts keep
        their first ``max_length − 1`` tokens and their last (``[SEP]``).
    Texts are embedded by ``eval.attribution.text_embedder`` (fixed-size batches, bucketed widths), and
    each distinct prefix text once: the candidates of one prompt share it.
    """
    embed = text_embedder(encoder, params, encoder_tokenizer, max_length=max_length)

    def coh(tokens, lengths, prefix=None) -> Array:
        tokens, lengths = check_continuations(tokens, lengths)
        tokens, lengths = np.asarray(tokens), np.asarray(lengths)
        prefix_text = [lm_tokenizer.decode(p) for p in prefix_lists(prefix, len(tokens))]
        continuation_text = [lm_tokenizer.decode(tokens[b, : lengths[b]]) for b in range(len(tokens))]
        distinct = {text: i for i, text in enumerate(dict.fromkeys(prefix_text))}
        a = embed(list(distinct))[[distinct[text] for text in prefix_text]]
        return jnp.asarray(np.sum(a * embed(continuation_text), axis=-1), jnp.float32)

    return coh


def model_nll(model, params) -> Metric:
    """Builds ``info``: mean token negative log-likelihood of the continuation given the prefix under an
    evaluator LM (``model``, ``params``), from one full-sequence apply; 0 for an empty continuation."""

    def info(tokens, lengths, prefix=None) -> Array:
        logp, mask = continuation_log_probs(model, params, tokens, lengths, prefix)
        count = mask.sum(1)
        return jnp.asarray(np.where(count > 0, -logp.sum(1) / np.maximum(count, 1), 0.0), jnp.float32)

    return info


def evaluator_nll(evaluator, evaluator_params, evaluator_tokenizer, lm_tokenizer, *, batch_size: int = 8) -> Metric:
    """Builds ``info`` scored by a fixed evaluator LM that need not share the decoding LM's tokenizer.

    Each row is turned back into text with ``lm_tokenizer.decode`` (prefix ids without the -1 padding, and
    the continuation's first ``lengths`` ids; special tokens are dropped, as in ``coh``), re-encoded with
    ``evaluator_tokenizer`` -- the prefix with the evaluator's BOS convention, the continuation on its own
    without BOS, so the boundary between them is the text's -- and scored teacher-forced
    (``infodec.decoding.scoring.score``): the value is the mean negative log-likelihood per *evaluator*
    token of the continuation given the prefix, 0 for a continuation whose text has no evaluator token.

    Args:
      evaluator, evaluator_params: the evaluator LM (``infodec.load``), kept fixed whatever decodes.
      evaluator_tokenizer: its tokenizer (``encode``); every prefix must encode to at least one token.
      lm_tokenizer: the decoding LM's tokenizer (``decode``).
      batch_size: rows per evaluator forward pass.
    Returns ``info(tokens [B, L], lengths [B], prefix [B, P]) -> Float[B]``.
    """
    if evaluator_tokenizer is None or lm_tokenizer is None:
        raise ValueError("evaluator_nll needs both tokenizers: evaluator_tokenizer= and lm_tokenizer=")

    def info(tokens, lengths, prefix=None) -> Array:
        tokens, lengths = check_continuations(tokens, lengths)
        tokens, lengths = np.asarray(tokens), np.asarray(lengths)
        prefix_text = [lm_tokenizer.decode(p) for p in prefix_lists(prefix, len(tokens))]
        continuation_text = [lm_tokenizer.decode(tokens[b, : lengths[b]]) for b in range(len(tokens))]
        logp, mask = score(
            evaluator,
            evaluator_params,
            prefix_text,
            continuation_text,
            tokenizer=evaluator_tokenizer,
            batch_size=batch_size,
        )
        count = mask.sum(1)
        return jnp.asarray(np.where(count > 0, -logp.sum(1) / np.maximum(count, 1), 0.0), jnp.float32)

    return info


# --- registry --------------------------------------------------------------------------------------


def _coh_factory(
    *, coh=None, encoder=None, encoder_params=None, encoder_tokenizer=None, lm_tokenizer=None, tokenizer=None, **_
):
    if coh is not None:
        return coh
    lm_tokenizer = lm_tokenizer or tokenizer
    if None in (encoder, encoder_params, encoder_tokenizer, lm_tokenizer):
        raise ValueError(
            "metric 'coh' needs coh=coherence(...) or encoder=, encoder_params=, "
            "encoder_tokenizer= and lm_tokenizer= (or tokenizer=)"
        )
    return coherence(encoder, encoder_params, encoder_tokenizer, lm_tokenizer)


def _info_factory(
    *,
    info=None,
    evaluator=None,
    evaluator_params=None,
    evaluator_tokenizer=None,
    lm_tokenizer=None,
    tokenizer=None,
    **_,
):
    if info is not None:
        return info
    if evaluator is None or evaluator_params is None:
        raise ValueError(
            "metric 'info' needs info=evaluator_nll(...) / model_nll(...), or evaluator= and evaluator_params= "
            "(with evaluator_tokenizer= and lm_tokenizer= when the evaluator's tokenizer is not the LM's)"
        )
    lm_tokenizer = lm_tokenizer or tokenizer
    if evaluator_tokenizer is None and lm_tokenizer is None:  # same token ids: score them directly
        return model_nll(evaluator, evaluator_params)
    return evaluator_nll(evaluator, evaluator_params, evaluator_tokenizer, lm_tokenizer)


# name pattern -> factory(argument or None, **deps) -> metric
METRICS: dict[str, Callable[..., Metric]] = {
    "sr": lambda arg=None, **_: sr(DEFAULT_SR if arg is None else arg),
    "tr": lambda arg=None, **_: tr(DEFAULT_TR if arg is None else arg),
    "div": lambda arg=None, **_: diversity,
    "coh": lambda arg=None, **deps: _coh_factory(**deps),
    "info": lambda arg=None, **deps: _info_factory(**deps),
}
_NAME = re.compile(r"^([a-z_]+?)(\d*)$")


def register(name: str, metric: Metric | Callable[..., Metric], *, factory: bool = False) -> None:
    """Adds a metric under ``name``: ``metric(tokens, lengths, prefix) -> [B]``, or with ``factory=True``
    a ``factory(arg, **deps) -> metric`` (``arg`` is the integer suffix of the requested name or None)."""
    if not _NAME.match(name) or any(c.isdigit() for c in name):
        raise ValueError(f"metric names are lowercase letters/underscores, got {name!r}")
    if factory:
        METRICS[name] = cast(Callable[..., Metric], metric)
    else:
        fixed = cast(Metric, metric)
        METRICS[name] = lambda arg=None, **_: fixed


def get_metric(name: str, **deps: Any) -> Metric:
    """The metric called ``name`` (``sr4``, ``tr32``, ``div``, ``coh``, ``info``, or a registered one).

    ``deps`` feed the model-based metrics: ``coh=`` / ``info=`` (prebuilt functions), or
    ``encoder, encoder_params, encoder_tokenizer, lm_tokenizer`` for ``coh`` and ``evaluator,
    evaluator_params`` for ``info`` (scored on the LM's token ids, :func:`model_nll`), plus
    ``evaluator_tokenizer, lm_tokenizer`` to score re-tokenised text (:func:`evaluator_nll`).
    """
    match = _NAME.match(name)
    if match and match.group(1) in METRICS:
        base, digits = match.groups()
        if digits and base in ("div", "coh", "info"):
            raise ValueError(f"metric {base!r} takes no number, got {name!r}")
        return METRICS[base](int(digits) if digits else None, **deps)
    if name in METRICS:
        return METRICS[name](None, **deps)
    raise ValueError(
        f"unknown metric {name!r}; known: sr{{n}}, tr{{l}}, " + ", ".join(k for k in METRICS if k not in ("sr", "tr"))
    )


def compute(names: Sequence[str], tokens, lengths, prefix=None, **deps: Any) -> Array:
    """``[B, K]`` float32: the metrics ``names`` (``K = len(names)``) of each row, in order."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("no metric names given")
    columns = [jnp.asarray(get_metric(name, **deps)(tokens, lengths, prefix), jnp.float32) for name in names]
    return jnp.stack(columns, axis=1)


def metric_functions(names: Sequence[str], **deps: Any) -> list[Metric]:
    """Resolves ``names`` once (so ``coh``/``info`` factories are built once, not per call)."""
    return [get_metric(name, **deps) for name in names]


def compute_with(functions: Sequence[Metric], tokens, lengths, prefix=None) -> Array:
    """Like :func:`compute` with functions already resolved by :func:`metric_functions`."""
    return jnp.stack([jnp.asarray(f(tokens, lengths, prefix), jnp.float32) for f in functions], axis=1)


__all__ = [
    "METRICS",
    "register",
    "get_metric",
    "compute",
    "metric_functions",
    "compute_with",
    "sr",
    "tr",
    "sequence_repetition",
    "token_repetition",
    "diversity",
    "pooled_diversity",
    "coherence",
    "model_nll",
    "evaluator_nll",
]
