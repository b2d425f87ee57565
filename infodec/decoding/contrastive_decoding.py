"""Contrastive decoding (Li et al. 2023, "Contrastive Decoding: Open-ended Text Generation as Optimization",
ACL 2023, arXiv:2210.15097): an expert and a smaller amateur model sharing a tokenizer.

At each step the token ``x`` scores

    CD(x) = log p_EXP(x | x_<t) - β · log p_AMA,τ(x | x_<t)    for x in V_head,
    V_head = {x : p_EXP(x | x_<t) >= α · max_w p_EXP(w | x_<t)},

``p_AMA,τ = softmax(amateur_logits / τ)`` (the amateur at its own temperature), and tokens outside the
plausible set ``V_head`` are excluded. Greedy CD takes the argmax; sampled CD draws from
``softmax(CD / T)`` over ``V_head``; CD beam search (the paper's "CD", beam 5) is beam search with ``CD``
as the per-token log-score, with ``infodec.decoding.search``'s bookkeeping (``beam_choose``).

The engine runs the amateur as a second model alongside the expert: two ``DecodeState`` (``prefill`` of
each model), both advanced with the same token by ``engine.advance`` and reordered together by
``gather_rows`` in beam search; one model call per model per step, inside one jitted ``while_loop``
(no host round trip per step). ``α``, ``β``, ``τ`` and ``T`` are traced: new values never recompile.

Defaults follow the authors' code (github.com/XiangLi1999/ContrastiveDecoding, ``text-generation/``):
``α = 0.1`` (``relative_top = 0.1`` hard-coded in ``transformers/src/transformers/generation_utils.py``),
``β = 1`` (``--st_coef 1.0`` in the README's command), amateur temperature ``τ = 0.5``
(``student_temperature = 0.5`` in ``submit_decoding.py`` for GPT-2 XL / GPT-2 small) and 5 beams
(``--num_beam`` defaults to 5 in ``run_generation.py``). Where this implementation differs from that
code, it follows the paper:

* the amateur's log-probabilities are ``log_softmax(logits / τ)`` (a distribution); the code divides
  ``log_softmax(logits)`` by ``τ``, which differs by a per-row constant: the same greedy and sampled
  choices, but a per-beam offset in beam search;
* the code's beam search ranks only the ``2K`` continuations likeliest under the expert's per-step
  log-probability and keeps at least 2 tokens in ``V_head`` (HF's ``min_tokens_to_keep``); here every
  continuation in ``V_head`` is ranked by its cumulative CD score;
* the code's greedy mode (``--do_sample greedy``) applies no plausibility constraint; here it does;
* the authors' runs suppress the stop token until the full length (``min_length``), so hypotheses all have
  one length and their score is the plain sum; here stop tokens end hypotheses, scored as in
  ``beam_search`` (sum over length, HF's ``length_penalty = 1``).

Recent context: ``amateur_context = k`` lets the amateur see only the last ``k`` prompt tokens and every
generated token, as the paper's §3.4 ("condition only on the last token of x_pre") and the code's
``--ignore_prefix yes`` (``k = 1``, used by ``submit_decoding.py`` for the main runs; the README's example
uses ``--ignore_prefix no``, i.e. ``None``). The amateur reads its truncated prompt from position 0; the
code keeps its absolute positions, which is the same for rotary-position models and differs for learned
absolute positions (GPT-2).

Vocabularies: the models must share a tokenizer; their vocabulary sizes may differ by padding (slots
rounded up to a multiple of 64 or 128). Only the shared ids ``0 .. min(V_e, V_a) - 1`` can be chosen;
``log p_EXP`` is the expert's full-vocabulary law.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from infodec.decoding.engine import (
    DEFAULT_CHUNK,
    StopTokens,
    advance,
    count_trace,
    encode_prompts,
    finish,
    gather_rows,
    prefill,
    sample_tokens,
    stop_array,
)
from infodec.decoding.search import EARLY_STOPPING, beam_choose, beam_initial_state, beam_output
from infodec.decoding.state import GenerateOutput
from infodec.models.base import CausalLM
from infodec.models.layers import MASK_VALUE
from infodec.policies.base import Policy, greedy_logits, information_diagnostics

Array = jax.Array

# The authors' settings (module docstring).
DEFAULT_ALPHA = 0.1
DEFAULT_BETA = 1.0
DEFAULT_AMATEUR_TEMPERATURE = 0.5
DEFAULT_NUM_BEAMS = 5
# Padding may round a vocabulary up; ids that differ by more than this are not the same tokenizer.
MAX_VOCAB_PADDING = 1024
# An amateur log-probability of -inf (a token it bans) would make the score +inf; below float32's
# smallest normal number it counts as that number instead (β · 87.3 nats of bonus, finite).
_AMATEUR_LOG_FLOOR = float(np.log(np.finfo(np.float32).tiny))


@flax.struct.dataclass
class Contrast:
    """The CD scoring rule's parameters, all traced (a new value never recompiles).

    Attributes:
      alpha: the plausibility threshold α in ``[0, 1]``.
      beta: the amateur's weight β (``>= 0``).
      amateur_temperature: τ ``> 0``.
      temperature: T ``> 0`` of sampled CD's ``softmax(CD / T)`` (unused by greedy and beam search).
    """

    alpha: Array
    beta: Array
    amateur_temperature: Array
    temperature: Array


def contrastive_scores(
    expert_logits: Array, amateur_logits: Array, contrast: Contrast, vocab: int | None = None
) -> tuple[Array, Array]:
    """The CD score of every shared token: ``(scores [N, V], logp_expert [N, V_e])``.

    Args:
      expert_logits: ``[N, V_e]`` raw expert logits (``-inf`` entries allowed).
      amateur_logits: ``[N, V_a]`` raw amateur logits (``-inf`` entries allowed).
      contrast: α, β and τ.
      vocab: ``V``, the shared ids ``0 .. V - 1`` (default ``min(V_e, V_a)``).

    Returns:
      ``scores``: ``log p_e - β log p_a,τ`` on ``V_head`` (the shared ids with ``p_e >= α max p_e`` and
      ``p_e > 0``), ``MASK_VALUE`` elsewhere; ``logp_expert``: the expert's log-softmax over its vocabulary.
    """
    vocab = min(expert_logits.shape[-1], amateur_logits.shape[-1]) if vocab is None else vocab
    logp_e = jax.nn.log_softmax(expert_logits.astype(jnp.float32), axis=-1)
    tau = jnp.asarray(contrast.amateur_temperature, jnp.float32)
    logp_a = jax.nn.log_softmax(amateur_logits.astype(jnp.float32) / tau, axis=-1)[:, :vocab]
    shared = logp_e[:, :vocab]
    # In log space, as the authors' warper: log p >= max log p + log α (log 0 = -inf keeps every token).
    threshold = jnp.max(shared, axis=-1, keepdims=True) + jnp.log(jnp.asarray(contrast.alpha, jnp.float32))
    head = (shared >= threshold) & (shared > -jnp.inf)
    score = shared - contrast.beta * jnp.maximum(logp_a, _AMATEUR_LOG_FLOOR)
    return jnp.where(head, score, MASK_VALUE), logp_e


class _Layout(Policy):
    """What the expert's state is prefilled for: one stream and the diagnostics CD records."""

    def log_probs(self, logits, step):
        return jax.nn.log_softmax(logits[:, 0]), {"contrast": jnp.zeros(logits.shape[:1])}


_LAYOUT = _Layout()
jax.tree_util.register_static(_Layout)


def contrastive_decoding(
    expert: CausalLM,
    expert_params: Any,
    amateur: CausalLM,
    amateur_params: Any,
    prompts,
    key: Array | None = None,
    *,
    max_new_tokens: int,
    tokenizer=None,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    amateur_temperature: float = DEFAULT_AMATEUR_TEMPERATURE,
    amateur_context: int | None = None,
    num_beams: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    stop_tokens: StopTokens = ...,
    num_samples: int = 1,
    pad_id: int = 0,
) -> GenerateOutput:
    """Contrastive decoding (module docstring): greedy, sampled or beam search over the CD score.

    Args:
      expert, expert_params: the expert LM (``infodec.load``).
      amateur, amateur_params: the amateur LM; it must share the expert's tokenizer.
      prompts: as for ``generate`` (strings need ``tokenizer``).
      key: PRNG key of sampled CD (required with ``do_sample``); unused otherwise.
      max_new_tokens: the most tokens generated per row.
      tokenizer: to encode string prompts, decode the text, and check the vocabularies against.
      alpha: plausibility threshold α in ``[0, 1]`` (0.1, the authors').
      beta: amateur weight β ``>= 0`` (1, the authors'; 0 is the expert alone within ``V_head``).
      amateur_temperature: τ ``> 0`` of the amateur (0.5, the authors' for GPT-2 XL / GPT-2 small).
      amateur_context: None: the amateur sees the whole prompt; ``k >= 1``: only its last ``k`` tokens
        (and every generated token).
      num_beams: beams of CD search; None: 5 (the authors') or 1 with ``do_sample``. 1 is greedy CD.
      do_sample: sample from ``softmax(CD / temperature)`` over ``V_head`` (needs ``num_beams`` 1).
      temperature: T ``> 0`` of sampled CD.
      stop_tokens: ids that end a row; default: the tokenizer's end-of-generation ids; None or () for none.
      num_samples: continuations per prompt (sampled CD only; rows ``prompt * num_samples + sample``).
      pad_id: token written after a row ends.

    Returns:
      ``GenerateOutput``. Greedy and sampled: ``logp_model`` = log p_EXP of each token, ``logp_policy`` =
      its log-probability under the CD law that chose it (``softmax(CD / T)`` over ``V_head``; 0 for
      greedy), diagnostics ``entropy`` and ``kl_to_model`` (of that law against the expert) and
      ``contrast`` (the chosen token's CD score). Beam search: as ``beam_search`` (``logp_policy ==
      logp_model``, ``diagnostics["beam_score"]``: the hypothesis' summed CD score over its length).
    """
    num_beams = _check_arguments(
        key, max_new_tokens, alpha, beta, amateur_temperature, amateur_context, num_beams, do_sample, temperature
    )
    vocab = _shared_vocab(expert, amateur, tokenizer)
    if num_samples != 1 and not do_sample:
        raise ValueError(f"num_samples={num_samples} needs do_sample=True: greedy and beam CD are deterministic")
    stops = [int(t) for t in np.asarray(stop_array(stop_tokens, tokenizer)) if t >= 0]
    if num_beams + len(stops) > vocab:
        raise ValueError(
            f"num_beams={num_beams} plus {len(stops)} stop tokens exceeds the shared vocabulary of {vocab} tokens"
        )
    token_lists = encode_prompts(prompts, tokenizer)
    amateur_lists = token_lists if amateur_context is None else [ids[-amateur_context:] for ids in token_lists]
    contrast = Contrast(*(jnp.float32(v) for v in (alpha, beta, amateur_temperature, temperature)))
    key = jax.random.key(0) if key is None else key  # greedy and beam search never sample
    rows = num_beams if num_beams > 1 else num_samples
    layout = _LAYOUT if num_beams == 1 else None  # the diagnostics greedy and sampled CD record
    common: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens, num_samples=rows, stop_tokens=stops, chunk=DEFAULT_CHUNK, pad_id=pad_id
    )
    states = (
        prefill(expert, expert_params, token_lists, key, policy=layout, **common),
        prefill(amateur, amateur_params, amateur_lists, key, **common),
    )
    if num_beams == 1:
        expert_state, _ = _decode_loop(expert, amateur, expert_params, amateur_params, states, contrast, do_sample)
        return finish(expert_state, tokenizer)
    beam = beam_initial_state(states[0], len(token_lists), num_beams, pad_id)
    mode = jnp.int32(EARLY_STOPPING.index(False))  # HF's default, which the authors' beam search used
    beam, _ = _beam_loop(expert, amateur, expert_params, amateur_params, (beam, states[1]), contrast, mode)
    return beam_output(beam, num_beams, max_new_tokens, tokenizer)


# --- the loops --------------------------------------------------------------------------------------


def _cd_step(expert, amateur, expert_params, amateur_params, states, contrast: Contrast, do_sample: bool):
    """One token for every row of the (expert, amateur) states: CD law, draw, advance both."""
    ex, am = states
    scores, logp_e = contrastive_scores(ex.logits[:, 0], am.logits[:, 0], contrast)
    if do_sample:
        log_pi = jax.nn.log_softmax(jnp.where(scores > MASK_VALUE, scores / contrast.temperature, MASK_VALUE))
    else:  # a point mass on the first maximum (ties go to the lowest id, as Greedy)
        log_pi = jax.nn.log_softmax(greedy_logits(scores))
    keys = jax.random.split(jax.random.fold_in(ex.key, ex.step), ex.num_rows)[ex.lineage]  # as engine.step
    token = sample_tokens(keys, log_pi)  # a point mass is drawn deterministically
    pick = lambda x: jnp.take_along_axis(x, token[:, None], axis=-1)[:, 0]
    full_pi = jnp.pad(log_pi, ((0, 0), (0, logp_e.shape[-1] - log_pi.shape[-1])), constant_values=MASK_VALUE)
    # log p_e is -inf only where π is 0; flooring it keeps 0 * inf out of KL(π ‖ p_e).
    diagnostics = {**information_diagnostics(full_pi, jnp.maximum(logp_e, MASK_VALUE)), "contrast": pick(scores)}
    ex = advance(
        expert, expert_params, ex, token, logp_model=pick(logp_e), logp_policy=pick(log_pi), diagnostics=diagnostics
    )
    return ex, _feed(amateur, amateur_params, am, token)


def _feed(amateur, amateur_params, state, token):
    """The amateur takes the chosen token; its own records are never read (zeros spare a log-softmax)."""
    return advance(amateur, amateur_params, state, token, logp_model=jnp.zeros(token.shape, jnp.float32))


def _decode_loop_impl(expert, amateur, expert_params, amateur_params, states, contrast, do_sample):
    count_trace("contrastive_decoding")
    step = functools.partial(_cd_step, expert, amateur, expert_params, amateur_params, contrast=contrast)

    def keep_going(s):
        return (s[0].step < s[0].max_new_tokens) & ~jnp.all(s[0].done)

    return jax.lax.while_loop(keep_going, lambda s: step(s, do_sample=do_sample), states)


_decode_loop = jax.jit(_decode_loop_impl, static_argnums=(0, 1, 6), donate_argnums=4)


def _beam_loop_impl(expert, amateur, expert_params, amateur_params, carry, contrast, mode):
    count_trace("contrastive_decoding_beam")
    length_penalty = jnp.float32(1.0)  # HF's default (module docstring)

    def body(carry):
        beam, am = carry
        scores, logp_e = contrastive_scores(beam.running.logits[:, 0], am.logits[:, 0], contrast)
        scores = jnp.pad(scores, ((0, 0), (0, logp_e.shape[-1] - scores.shape[-1])), constant_values=MASK_VALUE)
        beam, source, token = beam_choose(beam, scores, logp_e, length_penalty, mode)
        running = advance(expert, expert_params, gather_rows(beam.running, source), token)
        return dataclasses.replace(beam, running=running), _feed(
            amateur, amateur_params, gather_rows(am, source), token
        )

    def keep_going(carry):
        running = carry[0].running
        return (running.step < running.max_new_tokens) & jnp.any(carry[0].open)

    return jax.lax.while_loop(keep_going, body, carry)


_beam_loop = jax.jit(_beam_loop_impl, static_argnums=(0, 1), donate_argnums=4)


# --- checks -----------------------------------------------------------------------------------------


def _check_arguments(
    key, max_new_tokens, alpha, beta, amateur_temperature, amateur_context, num_beams, do_sample, temperature
) -> int:
    """One clear ValueError for a bad argument; returns the number of beams (None resolved)."""
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_number("alpha", alpha, 0.0 <= _float(alpha) <= 1.0, "in [0, 1]")
    _check_number("beta", beta, _float(beta) >= 0.0, ">= 0")
    _check_number("amateur_temperature", amateur_temperature, _float(amateur_temperature) > 0.0, "> 0")
    _check_number("temperature", temperature, _float(temperature) > 0.0, "> 0")
    if amateur_context is not None:
        _check_int("amateur_context", amateur_context, 1, "or None (the whole prompt)")
    if not isinstance(do_sample, (bool, np.bool_)):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    if num_beams is None:
        num_beams = 1 if do_sample else DEFAULT_NUM_BEAMS
    _check_int("num_beams", num_beams, 1)
    if do_sample and num_beams != 1:
        raise ValueError(f"sampled CD draws one token per step: pass num_beams=1 (or None), got {num_beams}")
    if do_sample and key is None:
        raise ValueError("sampled CD (do_sample=True) needs a PRNG key: pass key=jax.random.key(...)")
    return int(num_beams)


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _check_number(name: str, value, ok: bool, allowed: str) -> None:
    if isinstance(value, bool) or not math.isfinite(_float(value)) or not ok:
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")


def _check_int(name: str, value, minimum: int, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}{' ' + alternative if alternative else ''}, got {value!r}"
        )


def _shared_vocab(expert: CausalLM, amateur: CausalLM, tokenizer) -> int:
    """The ids both models score: ``min(V_e, V_a)``, after checking the vocabularies are one tokenizer's."""
    sizes = expert.vocab_size, amateur.vocab_size
    shared = min(sizes)
    known = getattr(tokenizer, "vocab_size", None) if tokenizer is not None else None
    if known is not None and shared < int(known):
        raise ValueError(
            f"the expert scores {sizes[0]} tokens and the amateur {sizes[1]}, fewer than the tokenizer's "
            f"{int(known)}: contrastive decoding needs two models with the same tokenizer"
        )
    if abs(sizes[0] - sizes[1]) > MAX_VOCAB_PADDING:
        raise ValueError(
            f"the expert scores {sizes[0]} tokens and the amateur {sizes[1]}: contrastive decoding needs two "
            f"models with the same tokenizer (vocabularies may differ by at most {MAX_VOCAB_PADDING} padding slots)"
        )
    return shared


__all__ = ["contrastive_decoding", "contrastive_scores", "Contrast"]
