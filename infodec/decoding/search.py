"""Deterministic search baselines on the engine's conventions: beam search and contrastive search.

Both follow the structure of ``infodec.decoding.engine``: prompts left-padded to a power-of-two bucket
(padding at position ``-1``), prefill once, then one jitted ``lax.while_loop`` on device with the
state donated, static shapes throughout and no host round-trip per step. The loop exits once every
row is settled or ``max_new_tokens`` is reached; ``max_new_tokens`` and the numeric knobs
(``length_penalty``, ``penalty_alpha``) are traced, so changing them never recompiles (output
buffers are rounded up to whole chunks of ``DEFAULT_CHUNK`` slots, as in ``generate``).

Semantics are HF transformers' (the reference the tests compare against):

* ``beam_search`` is ``model.generate(num_beams=k, do_sample=False, length_penalty=...,
  early_stopping=...)`` (the vectorised ``_beam_search`` of transformers 5): each step ranks all
  ``k * V`` continuations by summed log-probability; among the top ``k`` of them, those ending in a
  stop token (or reaching ``max_new_tokens``) become finished hypotheses scored
  ``sum_logp / generated_len ** length_penalty`` (generated length including the stop token); the
  best ``k`` non-finished continuations stay running; a prompt settles when its ``k`` finished slots
  are full and, by the ``early_stopping`` rule, no running beam can beat the worst of them.
* ``contrastive_search`` is ``model.generate(penalty_alpha=a, top_k=k)`` (HF 4.x ``_contrastive_search``,
  moved to the hub repo ``transformers-community/contrastive-search`` in transformers 5): the top ``k``
  tokens by probability are all run through the model in one batched call, and the pick maximises
  ``(1 - a) * p(v) - a * max_j cos(h_v, h_j)`` over the final-layer hidden states ``h_j`` (after the
  final norm, HF's ``hidden_states[-1]``) of every non-padding context token, prompt included.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from infodec.decoding import memory
from infodec.decoding.engine import (
    DEFAULT_CHUNK,
    StopTokens,
    advance,
    count_trace,
    encode_prompts,
    finish,
    gather_rows,
    left_pad,
    prefill,
    prompt_bucket,
    run_prompt,
    stop_array,
)
from infodec.decoding.state import DecodeState, GenerateOutput
from infodec.models.base import CausalLM
from infodec.models.layers import KVCache

Array = jax.Array

# Finite "minus infinity" for scores of impossible or masked candidates (HF uses -1e9 additively).
_NEG = -1e30

EARLY_STOPPING = (False, True, "never")


# --- beam search ------------------------------------------------------------------------------------


@flax.struct.dataclass
class BeamState:
    """Beam-search loop state, ``B`` prompts x ``K`` beams, ``L`` output slots.

    Attributes:
      running: the engine's ``DecodeState`` of the ``B * K`` running beams (row ``b * K + k``): KV cache,
        logits, tokens and their ``log p_θ``; ``select`` reorders it by beam origin every step.
      run_scores: ``[B, K]`` summed log-probabilities of the running beams (sorted, best first).
      fin_scores: ``[B, K]`` length-penalised scores of the finished hypotheses (sorted, best first;
        ``_NEG`` for empty slots).
      fin_tokens, fin_logp: ``[B, K, L]`` the finished hypotheses (``pad_id`` / 0 after their length).
      fin_lengths: ``[B, K]`` int32 generated length of each finished hypothesis (stop token included).
      fin_full: ``[B, K]`` bool, slots holding a finished hypothesis (HF's ``is_sent_finished``).
      open: ``[B]`` bool, prompts whose finished set can still change.
    """

    running: DecodeState
    run_scores: Array
    fin_scores: Array
    fin_tokens: Array
    fin_logp: Array
    fin_lengths: Array
    fin_full: Array
    open: Array


def beam_search(
    model: CausalLM,
    params: Any,
    prompts,
    key: Array | None = None,
    *,
    num_beams: int,
    max_new_tokens: int,
    tokenizer=None,
    stop_tokens: StopTokens = ...,
    length_penalty: float = 1.0,
    early_stopping: bool | str | None = False,
    pad_id: int = 0,
) -> GenerateOutput:
    """Beam search with HF transformers' semantics; returns the best finished hypothesis per prompt.

    Built on the engine's primitives: ``prefill`` with ``num_samples = K`` (the beams share the prompt's
    cache), then per step ``select`` (reorder the beams' rows, cache included, by origin) and ``advance``
    (feed the chosen tokens), inside one jitted ``while_loop``.

    Args:
      model, params: from ``infodec.load``.
      prompts: a string, a list of strings (needs ``tokenizer``), a list of token-id lists, or an int
        array ``[B, T]`` of unpadded prompts.
      key: unused (beam search is deterministic); accepted for signature parity with ``generate``.
      num_beams: beams per prompt (``K >= 1``; ``K = 1`` is greedy decoding).
      max_new_tokens: the most tokens generated per prompt.
      tokenizer: to encode string prompts and decode the output text.
      stop_tokens: ids that finish a hypothesis (HF's ``eos_token_id``); default: the tokenizer's
        end-of-generation ids (none without a tokenizer); None or () for none.
      length_penalty: finished hypotheses are ranked by ``sum_logp / generated_len ** length_penalty``
        (HF's default 1.0; > 0 favours longer, < 0 shorter sequences).
      early_stopping: HF's flag. False (default; None is the same): stop a prompt once the best
        running beam, scored at the current length, cannot beat the worst of the ``K`` finished
        hypotheses; True: stop as soon as ``K`` hypotheses are finished; ``"never"``: like False but
        scoring the running beam at ``max_new_tokens`` when ``length_penalty > 0`` (the canonical,
        exact stopping rule). Ignored for ``num_beams=1``, which is greedy decoding (as in HF, which
        then runs greedy search).
      pad_id: token id written after a hypothesis ends.

    Returns:
      ``GenerateOutput`` with one row per prompt: ``tokens``/``lengths``/``logp_model`` of the best
      hypothesis, ``logp_policy == logp_model`` (a deterministic search), and
      ``diagnostics["beam_score"]``: the hypothesis' length-penalised score, repeated on every
      generated position (0 after ``lengths``).
    """
    _check_int("num_beams", num_beams, 1)
    _check_int("max_new_tokens", max_new_tokens, 1)
    if early_stopping is None:
        early_stopping = False  # HF's unset default
    if not any(early_stopping is v or (isinstance(v, str) and early_stopping == v) for v in EARLY_STOPPING):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if not isinstance(length_penalty, (int, float, np.number)) or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if num_beams == 1:
        early_stopping = False  # HF runs greedy decoding for num_beams=1 and ignores early_stopping
    stops = stop_array(stop_tokens, tokenizer)
    num_stops = int(np.sum(np.asarray(stops) >= 0))
    if num_beams + num_stops > model.vocab_size:
        raise ValueError(
            f"num_beams={num_beams} plus {num_stops} stop tokens exceeds the vocabulary of {model.vocab_size} tokens"
        )
    token_lists = encode_prompts(prompts, tokenizer)
    _check_memory(model, params, token_lists, max_new_tokens, "beam", num_beams)
    running = prefill(
        model,
        params,
        token_lists,
        jax.random.key(0),  # unused: the search never samples
        max_new_tokens=max_new_tokens,
        num_samples=num_beams,
        stop_tokens=[int(t) for t in np.asarray(stops) if t >= 0],
        chunk=DEFAULT_CHUNK,  # whole chunks of output slots: fewer shapes to compile
        pad_id=pad_id,
    )
    state = beam_initial_state(running, len(token_lists), num_beams, pad_id)
    mode = EARLY_STOPPING.index(early_stopping) if isinstance(early_stopping, str) else int(bool(early_stopping))
    state = _beam_loop(model, params, state, jnp.float32(length_penalty), jnp.int32(mode))
    return beam_output(state, num_beams, max_new_tokens, tokenizer)


def beam_output(state: BeamState, num_beams: int, max_new_tokens: int, tokenizer=None) -> GenerateOutput:
    """The best finished hypothesis of each prompt of a finished search as a ``GenerateOutput`` (what
    ``beam_search`` returns: ``logp_policy == logp_model``, ``diagnostics["beam_score"]``)."""
    prompt_tokens = finish(state.running).prompt_tokens[::num_beams]
    host = jax.device_get(dataclasses.replace(state, running=None))  # the results, not the cache, to the host
    lengths = np.asarray(host.fin_lengths[:, 0])
    out_tokens = np.asarray(host.fin_tokens[:, 0, :max_new_tokens])
    logp = np.asarray(host.fin_logp[:, 0, :max_new_tokens])
    mask = np.arange(max_new_tokens)[None, :] < lengths[:, None]
    score = np.where(mask, np.asarray(host.fin_scores[:, 0])[:, None], 0.0).astype(np.float32)
    return GenerateOutput(
        tokens=out_tokens,
        lengths=lengths,
        logp_model=logp,
        logp_policy=logp.copy(),
        diagnostics={"beam_score": score},
        prompt_tokens=prompt_tokens,
        text=_decode(tokenizer, out_tokens, lengths),
    )


def beam_initial_state(running: DecodeState, batch: int, num_beams: int, pad_id: int) -> BeamState:
    """The search state over ``running``, the prefilled ``DecodeState`` of ``batch`` prompts x ``num_beams``
    rows (``prefill(..., num_samples=num_beams)``): no finished hypotheses yet, every prompt open."""
    # Only the first beam starts live (HF: the others at -1e9), so step 0 expands one beam, not K copies.
    run_scores = jnp.full((batch, num_beams), _NEG, jnp.float32).at[:, 0].set(0.0)
    shape = (batch, num_beams, running.tokens.shape[1])
    return BeamState(
        running=running,
        run_scores=run_scores,
        fin_scores=jnp.full((batch, num_beams), _NEG, jnp.float32),
        fin_tokens=jnp.full(shape, pad_id, jnp.int32),
        fin_logp=jnp.zeros(shape),
        fin_lengths=jnp.zeros((batch, num_beams), jnp.int32),
        fin_full=jnp.zeros((batch, num_beams), bool),
        open=jnp.ones((batch,), bool),
    )


def _gather_beams(x: Array, index: Array) -> Array:
    """``x[B, K', ...]`` gathered to ``[B, K, ...]`` by ``index[B, K]`` along the beam axis."""
    return x[jnp.arange(x.shape[0])[:, None], index]


def _beam_step(model, params, state: BeamState, length_penalty, mode) -> BeamState:
    """One step of beam search: log p_θ ranks the continuations (:func:`beam_choose`), then the rows are
    reordered by beam origin and the new tokens fed in one model call."""
    logp = jax.nn.log_softmax(state.running.logits[:, 0].astype(jnp.float32), axis=-1)
    state, source, token = beam_choose(state, logp, logp, length_penalty, mode)
    return dataclasses.replace(state, running=advance(model, params, gather_rows(state.running, source), token))


def beam_choose(state: BeamState, scores: Array, logp: Array, length_penalty, mode) -> tuple[BeamState, Array, Array]:
    """The bookkeeping of one beam-search step, for any per-token log-score: ``(state, source, token)``.

    ``scores[B * K, V]`` is what a beam's score accumulates for each next token (log p_θ for
    ``beam_search``; a contrastive decoding score, ``MASK_VALUE`` where a token is not allowed),
    ``logp[B * K, V]`` the log p_θ recorded for the finished hypotheses' tokens. The returned state has
    the new beam scores and finished hypotheses but still the old ``running`` rows: the caller reorders
    them (``gather_rows(running, source)``, ``source [B * K]`` row indices) and feeds ``token [B * K]``
    (``advance``), so a decoder with a second model (contrastive decoding's amateur) reorders and feeds
    that one the same way. ``length_penalty`` and ``mode`` as for ``beam_search`` (traced).
    """
    batch, beams = state.run_scores.shape
    running = state.running
    vocab = scores.shape[-1]
    step, max_new = running.step, running.max_new_tokens
    scores = (scores.reshape(batch, beams, vocab) + state.run_scores[:, :, None]).reshape(batch, beams * vocab)
    flat_logp = logp.reshape(batch, beams * vocab)
    is_stop = jnp.any(jnp.arange(vocab)[:, None] == running.stop_tokens[None, :], axis=-1)  # [V]
    last = step + 1 >= max_new
    generated = (step + 1).astype(jnp.float32)
    run_tokens = running.tokens.reshape(batch, beams, -1)
    run_logp = running.logp_model.reshape(batch, beams, -1)

    # 1. Finished hypotheses: only the top K continuations overall may finish (HF's top_num_beam_mask).
    #    Their histories: the origin beam's, plus the new token at ``step``.
    top_scores, top_index = _top_k_over_beams(scores, beams, vocab)
    origin, top_token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    write = lambda buf, value: jax.lax.dynamic_update_slice(
        _gather_beams(buf, origin), value[:, :, None].astype(buf.dtype), (0, 0, step)
    )
    top_tokens = write(run_tokens, top_token)
    top_logp = write(run_logp, jnp.take_along_axis(flat_logp, top_index, axis=-1))
    finishing = (is_stop[top_token] | last) & state.open[:, None]
    new_scores = jnp.where(finishing, top_scores / jnp.power(generated, length_penalty), _NEG)
    merged_scores = jnp.concatenate([state.fin_scores, new_scores], axis=1)
    keep = jax.lax.top_k(merged_scores, beams)[1]
    pick = lambda old, new: _gather_beams(jnp.concatenate([old, new], axis=1), keep)
    fin_scores = _gather_beams(merged_scores, keep)
    fin_tokens = pick(state.fin_tokens, top_tokens)
    fin_logp = pick(state.fin_logp, top_logp)
    fin_lengths = pick(state.fin_lengths, jnp.full((batch, beams), step + 1, jnp.int32))
    fin_full = pick(state.fin_full, finishing)

    # 2. Running beams: the best K continuations that do not end in a stop token. (HF takes them from
    #    the top (1 + #stop) * K, which always holds K of them: the same set.)
    run_scores, run_index = _top_k_over_beams(jnp.where(jnp.tile(is_stop, beams)[None, :], _NEG, scores), beams, vocab)
    origin, token = run_index // vocab, (run_index % vocab).astype(jnp.int32)
    source = (jnp.arange(batch)[:, None] * beams + origin).reshape(-1)

    # 3. Can the finished set still change? (HF's _check_early_stop_heuristic, per prompt.) ``mode``
    #    indexes EARLY_STOPPING: 0 False, 1 True, 2 "never" (traced: no recompile per flag).
    never = (mode == 2) & (length_penalty > 0)
    best_length = jnp.where(never, max_new.astype(jnp.float32), generated)
    best_running = run_scores[:, 0] / jnp.power(best_length, length_penalty)
    all_full = jnp.all(fin_full, axis=1)
    improvable = ~all_full | (best_running > jnp.min(fin_scores, axis=1))
    open_ = state.open & improvable & ~((mode == 1) & all_full)
    state = dataclasses.replace(
        state,
        run_scores=run_scores,
        fin_scores=fin_scores,
        fin_tokens=fin_tokens,
        fin_logp=fin_logp,
        fin_lengths=fin_lengths,
        fin_full=fin_full,
        open=open_,
    )
    return state, source, token.reshape(-1)


def _top_k_over_beams(scores: Array, k: int, vocab: int) -> tuple[Array, Array]:
    """``jax.lax.top_k(scores, k)`` of ``scores [B, K * V]`` (``K`` beams of ``V`` tokens), computed as the top
    ``k`` of each beam, then of those ``K * k``: the same values, flat indices and tie order (lower index
    first; a beam's survivors keep index order among equal values, and beams come in index order).

    Why: XLA's CPU backend can lower a flat top-k to a full sort of all ``K * V`` entries, which
    inside the search loop cost 10 s a step at Gemma 3's 262k vocabulary (per-beam top-k: 0.1 s)."""
    batch = scores.shape[0]
    values, index = jax.lax.top_k(scores.reshape(batch, -1, vocab), k)  # [B, K, k]
    flat_index = index + (jnp.arange(values.shape[1]) * vocab)[None, :, None]
    best, position = jax.lax.top_k(values.reshape(batch, -1), k)
    return best, jnp.take_along_axis(flat_index.reshape(batch, -1), position, axis=-1)


def _beam_loop_impl(model, params, state, length_penalty, mode):
    count_trace("beam_search")

    def keep_going(s):
        return (s.running.step < s.running.max_new_tokens) & jnp.any(s.open)

    return jax.lax.while_loop(keep_going, lambda s: _beam_step(model, params, s, length_penalty, mode), state)


_beam_loop = jax.jit(_beam_loop_impl, static_argnums=0, donate_argnums=2)


# --- contrastive search -----------------------------------------------------------------------------


@flax.struct.dataclass
class ContrastiveState:
    """Contrastive-search loop state, ``B`` prompts x ``k`` candidates, ``C = P + L`` context slots.

    Attributes:
      step: int32 scalar, tokens generated so far.
      cache: KV cache over ``B * k`` rows (row ``b * k + j``); the ``k`` rows of a prompt hold the same
        history, and each step's slot is overwritten with the chosen candidate's keys and values.
      logits: ``[B, V]`` next-token logits after the chosen tokens.
      next_position: ``[B]`` int32 position of the next token.
      context_hidden: ``[B, C, D]`` unit-normalised final hidden states of the context.
      context_mask: ``[B, C]`` bool, slots of ``context_hidden`` holding a real (non-padding) token.
      done, lengths, tokens, logp_model, penalty: as in the engine's ``DecodeState`` (``penalty``: the
        degeneration penalty, max cosine similarity, of each chosen token).
    """

    step: Array
    cache: KVCache
    logits: Array
    next_position: Array
    context_hidden: Array
    context_mask: Array
    done: Array
    lengths: Array
    tokens: Array
    logp_model: Array
    penalty: Array


def contrastive_search(
    model: CausalLM,
    params: Any,
    prompts,
    key: Array | None = None,
    *,
    top_k: int = 4,
    penalty_alpha: float = 0.6,
    max_new_tokens: int,
    tokenizer=None,
    stop_tokens: StopTokens = ...,
    pad_id: int = 0,
) -> GenerateOutput:
    """Contrastive search (Su et al. 2022) with HF transformers' semantics.

    Each step takes the ``top_k`` most likely tokens ``v``, runs the model once on all of them (``B * k``
    rows over a broadcast cache) and picks ``argmax (1 - alpha) * p(v) - alpha * max_j cos(h_v, h_j)``,
    ``h`` the final-layer hidden states (after the final norm) and ``j`` over every non-padding
    context token (prompt and generated). ``alpha = 0`` or ``top_k = 1`` is greedy decoding.

    Args:
      model, params, prompts, tokenizer, stop_tokens, pad_id: as in ``generate``.
      key: unused (deterministic); accepted for signature parity with ``generate``.
      top_k: candidates per step, ``>= 1``.
      penalty_alpha: the degeneration-penalty weight, in ``[0, 1]``.
      max_new_tokens: the most tokens generated per row.

    Returns:
      ``GenerateOutput``: ``logp_model`` = log p of each chosen token, ``logp_policy == logp_model``
      (a deterministic search), ``diagnostics["degeneration_penalty"]`` of each chosen token.
    """
    _check_int("top_k", top_k, 1)
    _check_int("max_new_tokens", max_new_tokens, 1)
    if isinstance(top_k, (int, np.integer)) and top_k > model.vocab_size:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary of {model.vocab_size} tokens")
    if (
        not isinstance(penalty_alpha, (int, float, np.number))
        or not math.isfinite(penalty_alpha)
        or not 0.0 <= penalty_alpha <= 1.0
    ):
        raise ValueError(f"penalty_alpha must be in [0, 1], got {penalty_alpha!r}")
    stops = stop_array(stop_tokens, tokenizer)
    token_lists, tokens, positions, buffer, prompt_tokens = _prepare(model, prompts, tokenizer, max_new_tokens, pad_id)
    _check_memory(model, params, token_lists, max_new_tokens, "contrastive", int(top_k))
    cache = model.init_cache(len(token_lists), tokens.shape[1] + buffer)
    logits, cache, hidden = run_prompt(
        model, params, jnp.asarray(tokens), jnp.asarray(positions), cache, with_hidden=True
    )
    hidden = _normalise(hidden)
    state = _contrastive_initial_state(logits, cache, hidden, positions, int(top_k), buffer, pad_id)
    del logits, cache, hidden  # freed before the loop, as in beam_search
    state = _contrastive_loop(
        model, params, state, stops, jnp.int32(max_new_tokens), jnp.float32(penalty_alpha), pad_id
    )
    host = jax.device_get(dataclasses.replace(state, cache=None, logits=None, context_hidden=None))  # not the cache
    trim = lambda x: np.asarray(x)[:, :max_new_tokens]
    lengths, out_tokens, logp = np.asarray(host.lengths), trim(host.tokens), trim(host.logp_model)
    return GenerateOutput(
        tokens=out_tokens,
        lengths=lengths,
        logp_model=logp,
        logp_policy=logp.copy(),
        diagnostics={"degeneration_penalty": trim(host.penalty)},
        prompt_tokens=prompt_tokens,
        text=_decode(tokenizer, out_tokens, lengths),
    )


def _normalise(h: Array) -> Array:
    h = h.astype(jnp.float32)
    return h / jnp.linalg.norm(h, axis=-1, keepdims=True)


def _contrastive_initial_state(logits, cache, hidden, positions, top_k, buffer, pad_id) -> ContrastiveState:
    batch, prompt_slots, dim = hidden.shape
    cache = dataclasses.replace(
        cache,
        k=jnp.repeat(cache.k, top_k, axis=1),
        v=jnp.repeat(cache.v, top_k, axis=1),
        positions=jnp.repeat(cache.positions, top_k, axis=0),
    )
    zeros = lambda: jnp.zeros((batch, buffer), jnp.float32)
    return ContrastiveState(
        step=jnp.int32(0),
        cache=cache,
        logits=logits,
        next_position=jnp.asarray(np.max(positions, axis=1) + 1, jnp.int32),
        context_hidden=jnp.concatenate([hidden, jnp.zeros((batch, buffer, dim), hidden.dtype)], axis=1),
        context_mask=jnp.concatenate([jnp.asarray(positions >= 0), jnp.zeros((batch, buffer), bool)], axis=1),
        done=jnp.zeros((batch,), bool),
        lengths=jnp.zeros((batch,), jnp.int32),
        tokens=jnp.full((batch, buffer), pad_id, jnp.int32),
        logp_model=zeros(),
        penalty=zeros(),
    )


def _contrastive_step(model, params, state: ContrastiveState, stops, max_new, alpha, pad_id) -> ContrastiveState:
    batch, vocab = state.logits.shape
    rows = state.cache.k.shape[1]
    k = rows // batch
    step = state.step
    log_p = jax.nn.log_softmax(state.logits, axis=-1)
    top_p, top_ids = jax.lax.top_k(jnp.exp(log_p), k)  # [B, k]; HF: softmax then topk
    slot = state.cache.index
    feed_positions = jnp.repeat(state.next_position, k)[:, None]
    logits, cache, hidden = model.apply(
        params, top_ids.reshape(rows, 1).astype(jnp.int32), feed_positions, state.cache, return_hidden=True
    )
    candidate = _normalise(hidden[:, 0]).reshape(batch, k, -1)
    cosine = jnp.einsum("bcd,bkd->bkc", state.context_hidden, candidate)
    penalty = jnp.max(jnp.where(state.context_mask[:, None, :], cosine, _NEG), axis=-1)  # [B, k]
    score = (1.0 - alpha) * top_p - alpha * penalty
    choice = jnp.argmax(score, axis=-1)  # first maximum, as torch.max
    pick = lambda x: jnp.take_along_axis(x, choice[:, None], axis=1)[:, 0]
    token = pick(top_ids).astype(jnp.int32)

    # Every row of a prompt takes the chosen candidate's keys/values in this step's cache slot.
    source = jnp.repeat(jnp.arange(batch) * k + choice, k)

    def settle(kv):
        new = jnp.take(jax.lax.dynamic_slice_in_dim(kv, slot, 1, axis=3), source, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(kv, new, slot, axis=3)

    cache = dataclasses.replace(cache, k=settle(cache.k), v=settle(cache.v))
    chosen_logits = logits[:, 0].reshape(batch, k, vocab)[jnp.arange(batch), choice]
    chosen_hidden = candidate[jnp.arange(batch), choice]
    context_slot = state.context_hidden.shape[1] - state.tokens.shape[1] + step

    live = ~state.done
    new_step = step + 1
    token = jnp.where(live, token, pad_id)
    record = lambda buf, value: jax.lax.dynamic_update_slice(buf, value[:, None].astype(buf.dtype), (0, step))
    done = state.done | jnp.any(token[:, None] == stops[None, :], axis=-1) | (new_step >= max_new)
    return dataclasses.replace(
        state,
        step=new_step,
        cache=cache,
        logits=chosen_logits,
        next_position=state.next_position + 1,
        context_hidden=jax.lax.dynamic_update_slice(state.context_hidden, chosen_hidden[:, None], (0, context_slot, 0)),
        context_mask=jax.lax.dynamic_update_slice(state.context_mask, live[:, None], (0, context_slot)),
        done=done,
        lengths=jnp.where(live, new_step, state.lengths),
        tokens=record(state.tokens, token),
        logp_model=record(state.logp_model, jnp.where(live, jnp.take_along_axis(log_p, token[:, None], 1)[:, 0], 0.0)),
        penalty=record(state.penalty, jnp.where(live, pick(penalty), 0.0)),
    )


def _contrastive_loop_impl(model, params, state, stops, max_new, alpha, pad_id):
    count_trace("contrastive_search")

    def keep_going(s):
        return (s.step < max_new) & ~jnp.all(s.done)

    return jax.lax.while_loop(
        keep_going, lambda s: _contrastive_step(model, params, s, stops, max_new, alpha, pad_id), state
    )


_contrastive_loop = jax.jit(_contrastive_loop_impl, static_argnums=(0, 6), donate_argnums=2)


# --- shared -----------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_memory(model, params, token_lists, max_new_tokens: int, decoder: str, width: int) -> None:
    """``decoding.memory``'s check before anything is allocated: one clear error if the search cannot fit."""
    longest = max(len(t) for t in token_lists)
    memory.check_memory(
        model,
        params,
        rows=len(token_lists),
        max_len=longest + max_new_tokens,
        prompt_len=longest,
        decoder=decoder,
        width=width,
        what="beam_search" if decoder == "beam" else "contrastive_search",
    )


def _prepare(model: CausalLM, prompts, tokenizer, max_new_tokens: int, pad_id: int):
    """Encodes and left-pads prompts: ``(lists, tokens[B, P], positions[B, P], buffer, prompt_tokens)``."""
    token_lists = encode_prompts(prompts, tokenizer)
    longest = max(len(t) for t in token_lists)
    if longest + max_new_tokens > model.max_length:
        raise ValueError(
            f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the "
            f"model's context of {model.max_length} tokens"
        )
    buffer = -(-max_new_tokens // DEFAULT_CHUNK) * DEFAULT_CHUNK  # whole chunks: fewer shapes to compile
    tokens, positions = left_pad(token_lists, prompt_bucket(longest), pad_id)
    prompt_tokens = np.full((len(token_lists), longest), -1, np.int32)
    for row, ids in enumerate(token_lists):
        prompt_tokens[row, : len(ids)] = ids
    return token_lists, tokens, positions, buffer, prompt_tokens


def _decode(tokenizer, tokens: np.ndarray, lengths: np.ndarray):
    if tokenizer is None:
        return None
    return tokenizer.decode_batch([row[:n] for row, n in zip(tokens, lengths)])
