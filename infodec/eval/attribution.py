"""Attribution of an output to its evidence, three ways (no NLI model is reachable offline; ``docs/guides/data.md``).

* **PMI under a fixed evaluator LM** (:func:`evidence_pmi`): per output token,
  ``log p(y_t | evidence + query, y_<t) − log p(y_t | query, y_<t)``, averaged over the output's
  tokens; two teacher-forced passes (``decoding.scoring.scored_log_probs``). Positive = the evidence makes
  the output more likely. Its expectation under ``P(·|s,c)`` is the per-step information gain of the
  evidence (``docs/math.md`` §1).
* **Content n-gram precision** (:func:`content_precision`): the share of the output's content n-grams
  (lower-cased words that are not stopwords, :data:`STOPWORDS`) found in the evidence's content n-grams,
  counts clipped as in BLEU (an n-gram used k times in the output is credited at most as often as the
  evidence has it). NaN for an output without a content n-gram.
* **Encoder similarity** (:func:`encoder_similarity`): cosine of sentence embeddings (MiniLM,
  :func:`text_embedder`) of output and evidence.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from infodec.batching import map_in_chunks
from infodec.decoding.scoring import scored_log_probs
from infodec.decoding.state import sequence_bucket
from infodec.eval.diversity import ngrams
from infodec.eval.sensibleness import mean_log_prob

# A small English stopword list: function words, auxiliaries, pronouns, frequent adverbs.
STOPWORDS = frozenset(
    """
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how however i if in into is it its itself just me
more most my myself no nor not now of off on once only or other our ours ourselves out over own same
she should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves s t d ll m re ve also one may might must shall us
""".split()
)

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def content_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters and digits, inner apostrophes kept) minus :data:`STOPWORDS`."""
    words = (w.replace("’", "'") for w in _WORD.findall(text.lower()))
    return [w for w in words if w not in STOPWORDS and w.split("'")[0] not in STOPWORDS]


def content_precision(output: str, evidence: str, n: int = 1) -> float:
    """Clipped precision of the output's content n-grams against the evidence's (see the module
    docstring); NaN when the output has no content n-gram."""
    out = collections.Counter(ngrams(content_words(output), n))
    if not out:
        return float("nan")
    ev = collections.Counter(ngrams(content_words(evidence), n))
    return sum(min(c, ev[g]) for g, c in out.items()) / sum(out.values())


def evidence_pmi(
    model,
    params,
    tokens,
    lengths,
    with_evidence: Sequence[Sequence[int]] | None,
    without_evidence: Sequence[Sequence[int]] | None,
    *,
    batch_size: int = 8,
    logp_with_evidence=None,
    logp_without_evidence=None,
) -> dict[str, np.ndarray]:
    """PMI of each output with the evidence under the evaluator ``model``.

    Args:
      tokens, lengths: outputs ``[N, L]`` and lengths ``[N]`` in the evaluator's token ids.
      with_evidence: N prefixes holding evidence + query; without_evidence: N prefixes, the query alone.
      logp_with_evidence, logp_without_evidence: optional ``[N, L]`` log p(y_t | evidence + query, y_<t)
        and log p(y_t | query, y_<t) already known — when the evaluator is the decoding model, the
        engine's ``logp_model`` (stream 0 read evidence + query) and, for a two-stream decoder,
        ``logp_model − diagnostics["pmi"]`` (stream 1 read the query alone). The pass for a term given
        here is skipped and its prefixes may be None.
    Returns ``{"pmi": [N] mean per-token PMI, "logp": [N, L] log p(y | evidence + query), "mask": [N, L]}``
    (``logp`` also gives the perplexity under the evaluator; NaN PMI for an empty output).
    """
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]

    def term(known, prefixes, name):
        if known is not None:
            return np.where(mask, np.asarray(known, np.float64)[:, : tokens.shape[1]], 0.0)
        if prefixes is None:
            raise ValueError(f"pass {name} prefixes or logp_{name}")
        return scored_log_probs(model, params, tokens, lengths, prefixes, batch_size=batch_size)[0]

    logp = term(logp_with_evidence, with_evidence, "with_evidence")
    logp_query = term(logp_without_evidence, without_evidence, "without_evidence")
    return {"pmi": mean_log_prob(logp - logp_query, mask), "logp": logp, "mask": mask}


def text_embedder(
    encoder, params, tokenizer, *, batch_size: int = 32, max_length: int | None = None
) -> Callable[[Sequence[str]], np.ndarray]:
    """``embed(texts) -> [N, D]`` L2-normalised sentence embeddings (``infodec.load("minilm-l6")``).

    Texts are encoded with the encoder's tokenizer (``[CLS] … [SEP]``); longer ones keep their first
    ``max_length − 1`` tokens and their last. Rows go through in batches of ``batch_size`` (the last one
    padded) with widths bucketed (``state.sequence_bucket``), so few shapes compile.
    """
    limit = min(max_length or encoder.max_length, encoder.max_length)
    encode = jax.jit(encoder.encode)

    def embed(texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            raise ValueError("embed needs at least one text")
        ids = [list(x) for x in tokenizer.encode_batch(texts)]
        ids = [x if len(x) <= limit else x[: limit - 1] + x[-1:] for x in ids]

        def chunk(rows: np.ndarray, _: int) -> jax.Array:
            width = min(sequence_bucket(max(len(ids[r]) for r in rows)), limit)
            tokens = np.zeros((len(rows), width), np.int32)
            mask = np.zeros((len(rows), width), np.int32)
            for row, r in enumerate(rows):
                tokens[row, : len(ids[r])], mask[row, : len(ids[r])] = ids[r], 1
            return encode(params, jnp.asarray(tokens), jnp.asarray(mask))

        return map_in_chunks(chunk, len(ids), batch_size)

    return embed


def encoder_similarity(
    outputs: Sequence[str], evidence: Sequence[str], embed: Callable[[Sequence[str]], np.ndarray]
) -> np.ndarray:
    """``[N]`` cosine similarity of ``embed(outputs[i])`` and ``embed(evidence[i])``; an empty output
    scores NaN. Each distinct evidence text is embedded once."""
    if len(outputs) != len(evidence):
        raise ValueError(f"{len(outputs)} outputs but {len(evidence)} evidence texts")
    unique = list(dict.fromkeys(evidence))
    ev = embed(unique)
    ev = ev / np.maximum(np.linalg.norm(ev, axis=-1, keepdims=True), 1e-12)
    index = {t: i for i, t in enumerate(unique)}
    filled = [i for i, o in enumerate(outputs) if o.strip()]
    sims = np.full(len(outputs), np.nan)
    if filled:
        out = embed([outputs[i] for i in filled])
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
        sims[filled] = np.sum(out * ev[[index[evidence[i]] for i in filled]], axis=-1)
    return sims


__all__ = ["STOPWORDS", "content_words", "content_precision", "evidence_pmi", "text_embedder", "encoder_similarity"]
