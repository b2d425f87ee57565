"""DoLa: decoding by contrasting layers (Chuang et al., ICLR 2024), with HF transformers' semantics.

At each step the final layer's next-token log-probabilities are contrasted with those of an early
("premature") layer of the same model, read through the same LM head::

    logits of layer i  = lm_head(h_i[:, -1])            (h_0 the embeddings, h_i after i blocks)
    premature layer    = argmax_i  JS(final, layer i)   over the candidate layers, per row
    keep               = {x : log p_final(x) >= max log p_final + log(relative_top)}
    score(x)           = log p_final(x) - log p_layer(x) on ``keep``, masked elsewhere

then the usual logits processors (a repetition penalty; HF recommends 1.2) and greedy or sampled
choice. This follows HF transformers 4.45's ``_dola_decoding`` / ``_dola_select_contrast`` /
``_relative_top_filter`` (and the authors' ``voidism/DoLa``), including its candidate-layer rules
(:func:`candidate_layers`) and its divergence, which is ``0.5 * (KL(M ‖ P_final) + KL(M ‖ P_layer)) / V``
with ``M`` the average distribution (``F.kl_div``'s argument order: not the textbook Jensen-Shannon
``KL(P ‖ M) + KL(Q ‖ M)``, and averaged over the vocabulary). Differences, on purpose:

* HF picks one premature layer for the whole batch (the layer with the largest batch-mean divergence),
  so a row's tokens depend on its batch mates; here each row picks its own (the same for batch 1, and
  what the authors' code, which runs one prompt at a time, computes).
* Masked tokens get the finite ``MASK_VALUE`` rather than ``-inf`` (HF's filtered scores are ``-inf``);
  the chosen tokens are the same.
* HF drops candidate layers ``>= num_layers`` from an explicit list silently; here they raise.

Neither HF nor the authors apply the final norm to the early layers' states (the paper's early exit
``φ(h_i)``; voidism/DoLa issue #9 asks whether they should); ``norm_layers=True`` does.

Supported families: those whose ``CausalLM.apply`` takes ``return_layers`` (Llama / Mistral / Qwen2 and
GPT-2); the others raise ValueError. One model call per step returns the final logits and every candidate
layer's (:class:`LayerContrastLM`); the loop is one jitted ``while_loop`` over the engine's ``prefill``,
``advance`` and ``finish``, and numeric settings (``relative_top``, ``repetition_penalty``, the
transform's fields) are traced: new values do not recompile.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, cast

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from infodec.decoding.engine import (
    StopTokens,
    advance,
    canonical_policy,
    count_trace,
    finish,
    policy_structure,
    prefill,
    sample_tokens,
)
from infodec.decoding.state import GenerateOutput
from infodec.models.base import CausalLM
from infodec.models.layers import MASK_VALUE, KVCache
from infodec.policies.base import (
    Policy,
    StepInfo,
    Transform,
    check_range,
    first_argmax_mask,
    greedy_logits,
    information_diagnostics,
)
from infodec.policies.standard import RepetitionPenalty, chain

Array = jax.Array

DEFAULT_RELATIVE_TOP = 0.1  # HF's and the authors' default
DEFAULT_REPETITION_PENALTY = 1.2  # HF warns below 1.2 for DoLa (its generic default is 1.0)


def candidate_layers(num_layers: int, tie_word_embeddings: bool, layers: str | Sequence[int]) -> tuple[int, ...]:
    """The premature layers DoLa chooses among, by HF's rules.

    ``"low"`` / ``"high"``: for ``N <= 40`` layers ``range(start, N // 2, 2)`` / ``range(N // 2, N, 2)``, for
    more ``range(start, 20, 2)`` / ``range(N - 20, N, 2)``; ``start`` is 0, or with tied embeddings (whose
    layer-0 exit is the identity map of the input token) 2 when ``N > 2``, 1 when ``N == 2``; ``"low"``
    is ``[start]`` when ``start == N // 2``. A list: those layers, each ``0 <= i < N``.

    Raises:
      ValueError: an unknown name, an index out of range, or an empty set.
    """
    n = num_layers
    if isinstance(layers, str):
        start = 0 if not tie_word_embeddings else 2 if n > 2 else 1 if n == 2 else 0
        if layers == "low":
            chosen = [start] if start == n // 2 else list(range(start, n // 2 if n <= 40 else 20, 2))
        elif layers == "high":
            chosen = list(range(n // 2, n, 2) if n <= 40 else range(n - 20, n, 2))
        else:
            raise ValueError(f"layers must be 'low', 'high' or a list of layer indices, got {layers!r}")
        if not chosen:
            raise ValueError(f"layers={layers!r} selects no layer of a {n}-layer model; pass a list of layer indices")
        return tuple(chosen)
    chosen = list(layers)
    if not chosen or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < n for i in chosen):
        raise ValueError(
            f"layers must be 'low', 'high' or a non-empty list of layer indices 0 <= i < {n} "
            f"(0 = the embeddings, i = after i blocks), got {chosen}"
        )
    return tuple(int(i) for i in chosen)


def layer_divergence(log_final: Array, log_layers: Array) -> Array:
    """HF's DoLa divergence ``[B, K]`` of each layer from the final one: with ``M = (P + Q_k) / 2``,
    ``0.5 * (mean_v M (log M − log P) + mean_v M (log M − log Q_k))`` (module docstring).

    ``log_final [B, V]`` and ``log_layers [B, K, V]`` are finite log-probabilities (masked entries at
    ``MASK_VALUE``'s scale), so every term is finite: ``M = 0`` entries contribute 0, never ``0 * inf``.
    """
    log_final = log_final[:, None, :]
    log_m = jnp.logaddexp(log_final, log_layers) - jnp.log(2.0)
    m = jnp.exp(log_m)
    kl_final = jnp.mean(m * (log_m - log_final), axis=-1)
    kl_layer = jnp.mean(m * (log_m - log_layers), axis=-1)
    return 0.5 * (kl_final + kl_layer)


def contrast_layers(final_logits: ArrayLike, layer_logits: ArrayLike, relative_top: ArrayLike) -> tuple[Array, Array]:
    """DoLa's contrast of one step, per row: ``(scores [B, V], premature [B])``.

    Args:
      final_logits: ``[B, V]`` the final layer's next-token logits (``-inf`` entries allowed).
      layer_logits: ``[B, K, V]`` the candidate layers' logits (``-inf`` entries allowed).
      relative_top: ``α`` in ``[0, 1]``: tokens with ``p_final < α · max p_final`` are masked (0 keeps all).

    Returns:
      ``scores``: ``log p_final − log p_layer`` of each row's premature layer on the kept tokens,
      ``MASK_VALUE`` elsewhere (at least the top token is kept). ``premature``: int32 index into ``K``
      of the layer with the largest :func:`layer_divergence` (ties: the first).
    """
    log_final = jax.nn.log_softmax(jnp.maximum(jnp.asarray(final_logits, jnp.float32), MASK_VALUE))
    log_layers = jax.nn.log_softmax(jnp.maximum(jnp.asarray(layer_logits, jnp.float32), MASK_VALUE))
    divergence = layer_divergence(log_final, log_layers)
    premature = jnp.argmax(first_argmax_mask(divergence), axis=-1).astype(jnp.int32)
    log_base = jnp.take_along_axis(log_layers, premature[:, None, None], axis=1)[:, 0]
    alpha = jnp.asarray(relative_top, jnp.float32)
    threshold = jnp.max(log_final, axis=-1, keepdims=True) + jnp.log(alpha)  # log 0 = -inf keeps every token
    keep = log_final >= threshold
    return jnp.where(keep, log_final - log_base, MASK_VALUE), premature


@dataclasses.dataclass(frozen=True)
class LayerContrastLM(CausalLM):
    """A ``CausalLM`` whose next-token "logits" are the final layer's followed by each of ``layers``'
    early-exit logits: ``[B, 1, (K + 1) V]`` at the last position only (what ``prefill`` and ``advance``
    read), so the engine's primitives carry them through the loop unchanged. One model call per step."""

    layers: tuple[int, ...] = ()
    norm_layers: bool = False

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size * (len(self.layers) + 1)

    def apply(self, params, tokens, positions, cache=None, *, return_hidden=False, **_):
        if return_hidden:
            raise ValueError("LayerContrastLM does not return hidden states")
        logits, cache, layer_logits = cast(
            tuple[Array, KVCache | None, Array],
            CausalLM.apply(
                self, params, tokens, positions, cache, return_layers=self.layers, norm_layers=self.norm_layers
            ),
        )
        stacked = jnp.concatenate([logits[:, -1:], layer_logits], axis=1)  # [B, K + 1, V]
        return stacked.reshape(stacked.shape[0], 1, -1), cache


@flax.struct.dataclass
class _DoLaPolicy(Policy):
    """DoLa over :class:`LayerContrastLM`'s stacked logits: contrast, then ``transform`` (repetition
    penalty and any user transforms), then greedy (``do_sample=False``) or the softmax of the scores."""

    relative_top: Any
    transform: Transform
    layers: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
    do_sample: bool = flax.struct.field(pytree_node=False, default=False)

    def scores(self, logits: Array, step: StepInfo | None) -> tuple[Array, Array, Array]:
        """``logits [N, 1, (K + 1) V]`` -> ``(final logits [N, V], processed scores [N, V], layer [N])``."""
        stacked = logits[:, 0].reshape(logits.shape[0], len(self.layers) + 1, -1)
        scores, premature = contrast_layers(stacked[:, 0], stacked[:, 1:], self.relative_top)
        processed = jnp.maximum(self.transform.transform(scores, step), MASK_VALUE)
        return stacked[:, 0], processed, jnp.asarray(self.layers, jnp.int32)[premature]

    def __call__(self, logits, step=None):
        """``(log π [N, V], diagnostics)``: ``entropy`` and ``kl_to_model`` (π against the final layer),
        ``premature_layer`` and ``dola_score`` (the processed score of the chosen token, HF's
        ``output_scores``; :func:`dola` fills it in after choosing, it is 0 here)."""
        final, processed, layer = self.scores(logits, step)
        log_pi = jax.nn.log_softmax(processed if self.do_sample else greedy_logits(processed))
        diagnostics = information_diagnostics(log_pi, jax.nn.log_softmax(jnp.maximum(final, MASK_VALUE)))
        return log_pi, {**diagnostics, "premature_layer": layer.astype(jnp.float32), "dola_score": 0.0 * layer}


def _dola_step(model: LayerContrastLM, params: Any, policy: _DoLaPolicy, state):
    """One token per live row (the engine's ``step`` with DoLa's scores; keys drawn the same way)."""
    step_info = StepInfo(state.context, state.step, None)
    log_pi, diagnostics = policy(state.logits, step_info)
    _, processed, _ = policy.scores(state.logits, step_info)  # the same expression: XLA computes it once
    keys = jax.random.split(jax.random.fold_in(state.key, state.step), state.num_rows)[state.lineage]
    token = sample_tokens(keys, log_pi)
    pick = lambda x: jnp.take_along_axis(x, token[:, None], axis=-1)[:, 0]
    vocab = model.config.vocab_size
    logp_model = pick(jax.nn.log_softmax(jnp.maximum(state.logits[:, 0, :vocab], MASK_VALUE)))
    diagnostics = {**diagnostics, "dola_score": pick(processed)}
    return advance(
        model, params, state, token, logp_model=logp_model, logp_policy=pick(log_pi), diagnostics=diagnostics
    )


@functools.partial(jax.jit, static_argnums=0, static_argnames="structure", donate_argnums=3)
def _dola_loop(model, params, policy, state, structure):
    count_trace("dola_loop")
    keep_going = lambda s: (s.step < s.max_new_tokens) & ~jnp.all(s.done)
    return jax.lax.while_loop(keep_going, lambda s: _dola_step(model, params, policy, s), state)


def dola(
    model: CausalLM,
    params: Any,
    prompts,
    key: Array | None = None,
    *,
    max_new_tokens: int,
    layers: str | Sequence[int] = "high",
    relative_top: float = DEFAULT_RELATIVE_TOP,
    repetition_penalty: float = DEFAULT_REPETITION_PENALTY,
    do_sample: bool = False,
    transform: Transform | None = None,
    norm_layers: bool = False,
    tokenizer=None,
    stop_tokens: StopTokens = ...,
    num_samples: int = 1,
    pad_id: int = 0,
) -> GenerateOutput:
    """Decodes ``prompts`` with DoLa (module docstring): HF's ``generate(..., dola_layers=layers)``.

    Args:
      model, params, prompts, tokenizer, stop_tokens, num_samples, pad_id: as for ``infodec.generate``.
      key: PRNG key for ``do_sample`` (step ``t`` of row ``n`` uses the engine's per-row key); greedy
        decoding ignores it (None: ``jax.random.key(0)``).
      max_new_tokens: tokens per row (fewer after a stop token).
      layers: ``"high"``, ``"low"`` or a list of candidate premature layers (:func:`candidate_layers`).
      relative_top: ``α`` of the plausibility filter, in ``[0, 1]`` (HF's ``dola`` default 0.1).
      repetition_penalty: CTRL's penalty on the contrast scores of tokens already in the context
        (``> 0``; 1 = none). Default 1.2, HF's recommendation for DoLa (HF's generic default is 1.0).
      do_sample: sample from ``softmax(scores)`` instead of taking the argmax (ties: the lowest id).
      transform: more logits transforms applied after the penalty (e.g. ``Temperature``, ``TopP``),
        as HF's warpers.
      norm_layers: apply the model's final norm to the early layers' states (HF and the authors do not).

    Returns:
      A ``GenerateOutput``: ``logp_model`` is log p_θ under the final layer, ``logp_policy`` log π of the
      sampling distribution; ``diagnostics`` hold ``entropy``, ``kl_to_model``, ``premature_layer`` (the
      layer each step contrasted with) and ``dola_score`` (the processed score of the chosen token).

    Raises:
      ValueError: a family without early-exit logits, bad ``layers``, ``relative_top`` outside
        ``[0, 1]``, ``repetition_penalty <= 0``, or ``transform`` not a one-stream ``Transform``.
    """
    chosen = candidate_layers(
        model.config.num_layers, bool(getattr(model.config, "tie_word_embeddings", False)), layers
    )
    model.check_layers(chosen)
    check_range("relative_top", relative_top, 0.0, 1.0, allowed="in [0, 1]")
    if transform is not None and not isinstance(transform, Transform):
        raise ValueError(f"transform must be a one-stream Transform (Temperature, TopP, ...), got {transform!r}")
    processors = chain(RepetitionPenalty(repetition_penalty), *([] if transform is None else [transform]))
    policy = canonical_policy(_DoLaPolicy(relative_top, processors, layers=chosen, do_sample=bool(do_sample)))
    contrast = LayerContrastLM(model.config, model.module, layers=chosen, norm_layers=bool(norm_layers))
    key = jax.random.key(0) if key is None else key
    state = prefill(
        contrast,
        params,
        prompts,
        key,
        max_new_tokens=max_new_tokens,
        tokenizer=tokenizer,
        num_samples=num_samples,
        policy=policy,
        stop_tokens=stop_tokens,
        pad_id=pad_id,
    )
    state = _dola_loop(contrast, params, policy, state, structure=policy_structure(policy))
    return finish(state, tokenizer)


__all__ = ["dola", "candidate_layers", "contrast_layers", "layer_divergence", "LayerContrastLM"]
