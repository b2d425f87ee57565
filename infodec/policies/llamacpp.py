"""Samplers from llama.cpp's chain: top-nσ, XTC, DRY, entropy-based dynamic temperature, mirostat v2.

Each is a one-stream ``Transform`` (usable alone or in ``chain(...)``) with the semantics of llama.cpp's
``src/llama-sampling.cpp`` (``llama_sampler_*_apply``); where HF or the paper differ, the class says so.
llama.cpp works on an array of candidates that truncating samplers shorten; here the vocabulary keeps its
shape and a truncated token gets ``MASK_VALUE``. "Candidates" below are the tokens that are not masked
(neither ``-inf`` nor at ``MASK_VALUE``, divided by a temperature or not). Ties that llama.cpp leaves to
its sort order go to the lowest token index.

Two of them need more than the logits:

* ``XTC`` draws one uniform per row and step. It takes it from ``StepInfo.key`` (the row's sampling key
  for the step, with a constant of XTC's own folded in), so a run is reproducible from its seed and a
  forked row (``select``) repeats its parent's draws. Its ``log_pi`` is the law *given* the draw: the
  marginal law of a sampled token is ``(1 - probability) · base + probability · filtered``.
* ``MirostatV2`` carries a running µ per row from step to step: the per-row policy state of
  ``infodec.policies.base`` (``initial_state``, ``with_state``, ``next_state``). The engine keeps it in
  ``DecodeState.policy_state``; called outside the engine it uses µ = 2τ, or the ``mu`` it was given.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from infodec.policies.base import (
    MASK_VALUE,
    MIN_TEMPERATURE,
    StepInfo,
    Transform,
    check_range,
    first_argmax_mask,
    greedy_logits,
    per_row,
)
from infodec.policies.standard import check_min_tokens

Array = jax.Array

# Logits below this are masked: MASK_VALUE (-1e30), also after any sane temperature, or -inf.
_MASKED_BELOW = MASK_VALUE * 1e-10
# Folded into the row's sampling key for XTC's coin, so it is independent of the token's uniform.
_XTC_STREAM = 0x58544321
# llama.cpp clamps DRY's exponent so base ** exponent stays below the float32 maximum (log of it).
_FLOAT_MAX_LOG = 88.7228391


def _candidates(logits: Array) -> Array:
    """``[B, V]`` bool: tokens not masked (finite and above ``MASK_VALUE``'s range)."""
    return logits > _MASKED_BELOW


def _masked(keep: Array, logits: Array) -> Array:
    return jnp.where(keep, logits, MASK_VALUE)


@flax.struct.dataclass
class TopNSigma(Transform):
    """Top-nσ (Tang et al. 2024): keeps tokens whose logit is ``>= max - n · σ``, σ the standard deviation
    of the logits.

    As llama.cpp's ``top-n-sigma``: the maximum, mean and (population) σ are over the candidates only
    (llama.cpp skips ``-inf``; masked tokens are skipped here too, so a truncation earlier in a chain
    narrows σ as it does in llama.cpp), and ``n <= 0`` keeps every token (llama.cpp since PR #13345; the
    paper has no such case). ``n``: scalar or ``[B]``. HF transformers has no top-nσ.
    """

    n: ArrayLike = 1.0

    def __post_init__(self):
        check_range("top_n_sigma", self.n, float("-inf"), float("inf"), allowed="a number (<= 0 keeps all)")

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        possible = _candidates(logits)
        count = jnp.maximum(jnp.sum(possible, axis=-1, keepdims=True), 1)
        values = jnp.where(possible, logits, 0.0)
        mean = jnp.sum(values, axis=-1, keepdims=True) / count
        std = jnp.sqrt(jnp.sum(jnp.where(possible, (logits - mean) ** 2, 0.0), axis=-1, keepdims=True) / count)
        top = jnp.max(jnp.where(possible, logits, -jnp.inf), axis=-1, keepdims=True)
        n = per_row(self.n)
        keep = (logits >= top - n * std) | (n <= 0)
        return _masked(keep & possible, logits)


@flax.struct.dataclass
class XTC(Transform):
    """Exclude Top Choices (llama.cpp's ``xtc``): with probability ``probability`` (one draw per row and
    step), removes every token with probability ``>= threshold`` except the least likely of them, when at
    least two are above it; otherwise the logits pass unchanged. ``threshold > 0.5`` turns it off.

    The draw comes from ``StepInfo.key`` (module docstring), so ``log_pi`` is the law given the draw and
    ``logp_policy`` records that conditional law. ``min_tokens_to_keep`` (static, llama.cpp's
    ``min_keep``): the removal happens only if at least this many candidates remain. Ties among the least
    likely above-threshold tokens: the lowest index is kept (llama.cpp: its sort order). Not in HF.
    """

    threshold: ArrayLike = 0.1
    probability: ArrayLike = 0.5
    min_tokens_to_keep: int = flax.struct.field(pytree_node=False, default=1)

    def __post_init__(self):
        check_range("xtc threshold", self.threshold, 0.0, 1.0, allowed="in [0, 1] (> 0.5 turns XTC off)")
        check_range("xtc probability", self.probability, 0.0, 1.0, allowed="in [0, 1]")
        check_min_tokens(self.min_tokens_to_keep)

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        if step is None or step.key is None:
            raise ValueError(
                "XTC draws one random number per row and step: use it through generate/step, or call it with "
                "step=StepInfo(context, index, key=keys[B])"
            )
        draw = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, _XTC_STREAM)))(step.key)
        threshold = per_row(self.threshold)
        above = (jax.nn.softmax(logits, axis=-1) >= threshold) & _candidates(logits)
        count = jnp.sum(above, axis=-1, keepdims=True)
        least = jnp.min(jnp.where(above, logits, jnp.inf), axis=-1, keepdims=True)
        kept = first_argmax_mask(jnp.where(above & (logits == least), 1.0, 0.0))
        remaining = jnp.sum(_candidates(logits), axis=-1, keepdims=True) - (count - 1)
        active = (
            (draw[:, None] < per_row(self.probability))
            & (threshold <= 0.5)
            & (count >= 2)
            & (remaining >= self.min_tokens_to_keep)
        )
        return jnp.where(active & above & ~kept, MASK_VALUE, logits)


@flax.struct.dataclass
class DynamicTemperature(Transform):
    """Entropy-based dynamic temperature (llama.cpp's ``temp-ext``, "dynatemp").

    With ``range > 0``: ``T = T_min + (T_max - T_min) · (H / log n) ** exponent`` with
    ``T_min = max(0, temperature - range)``, ``T_max = temperature + range``, ``H`` the entropy of the
    softmax over the ``n`` candidates; the logits are divided by ``T`` (``T`` below 1e-4 is greedy, as
    ``Temperature``; llama.cpp: ``T <= 0``). A row with one candidate is left alone. With ``range <= 0``
    it is plain ``Temperature(temperature)``. Difference: llama.cpp's ``n`` is its candidate array's size,
    which still counts tokens that top-nσ set to ``-inf``; here those are not candidates. Not in HF.
    Fields: scalars or ``[B]``.
    """

    temperature: ArrayLike = 1.0
    range: ArrayLike = 0.0
    exponent: ArrayLike = 1.0

    def __post_init__(self):
        check_range("temperature", self.temperature, 0.0, float("inf"), allowed="a number >= 0 (0 = greedy)")
        check_range("dynatemp range", self.range, float("-inf"), float("inf"), allowed="a number (<= 0: off)")
        check_range("dynatemp exponent", self.exponent, 0.0, float("inf"), allowed="a number >= 0")

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        possible = _candidates(logits)
        count = jnp.sum(possible, axis=-1, keepdims=True)
        log_p = jax.nn.log_softmax(logits, axis=-1)
        entropy = -jnp.sum(jnp.where(possible, jnp.exp(log_p) * log_p, 0.0), axis=-1, keepdims=True)
        normalised = entropy / jnp.log(jnp.maximum(count, 2))
        t, spread = per_row(self.temperature), per_row(self.range)
        low, high = jnp.maximum(t - spread, 0.0), t + spread
        dynamic = low + (high - low) * jnp.power(jnp.maximum(normalised, 0.0), per_row(self.exponent))
        temperature = jnp.where(spread > 0, dynamic, t)
        scaled = _masked(possible, logits / jnp.maximum(temperature, MIN_TEMPERATURE))
        scaled = jnp.where(temperature < MIN_TEMPERATURE, greedy_logits(logits), scaled)
        return jnp.where((spread > 0) & (count <= 1), logits, scaled)


@flax.struct.dataclass
class DRY(Transform):
    """ "Don't Repeat Yourself" (p-e-w; llama.cpp's ``dry``): penalises a token that would extend a
    repetition of the context.

    Over the last ``penalty_last_n`` tokens of ``StepInfo.context`` (prompt and generated tokens; ``-1``
    means the whole context, ``0`` turns DRY off): for every earlier occurrence of the context's suffix of
    length ``L`` (at most the distance back to the latest sequence breaker), the token that followed it
    gets, when ``L >= allowed_length``, its logit lowered by ``multiplier · base ** (L - allowed_length)``
    (the longest ``L`` per token; the exponent clamped as llama.cpp so the power stays finite). A token
    that is itself a one-token sequence breaker is never penalised.

    Differences from llama.cpp: ``sequence_breakers`` are token-id sequences (static), not strings;
    llama.cpp tokenizes each string and also treats every token that *contains* it as a breaker
    (:func:`dry_sequence_breakers` does that with an infodec tokenizer). llama.cpp's default multiplier is
    0 (off); 0.8 is the value DRY's author recommends. Not in HF transformers.

    Cost: ``O(V + W · m)`` per row, ``W`` the window and ``m`` the longest repeat found (at most ``W``).
    ``penalty_last_n`` fixes the window's shape (static: a new value compiles again); ``multiplier``,
    ``base`` and ``allowed_length`` are traced (scalars or ``[B]``).
    """

    multiplier: ArrayLike = 0.8
    base: ArrayLike = 1.75
    allowed_length: ArrayLike = 2
    penalty_last_n: int = flax.struct.field(pytree_node=False, default=-1)
    sequence_breakers: tuple[tuple[int, ...], ...] = flax.struct.field(pytree_node=False, default=())

    def __post_init__(self):
        check_range("dry multiplier", self.multiplier, 0.0, float("inf"), allowed=">= 0 (0 = off)")
        check_range("dry base", self.base, 1.0, float("inf"), allowed=">= 1 (use multiplier=0 to turn DRY off)")
        check_range("dry allowed_length", self.allowed_length, 0, float("inf"), allowed="an integer >= 0")
        if not isinstance(self.penalty_last_n, int) or self.penalty_last_n < -1:
            raise ValueError(
                f"dry penalty_last_n must be an integer >= -1 (-1 = whole context), got {self.penalty_last_n!r}"
            )
        object.__setattr__(self, "sequence_breakers", _breaker_tuples(self.sequence_breakers))

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        if step is None:
            raise ValueError("DRY needs the decode context: call it with step=StepInfo(context, index)")
        if self.penalty_last_n == 0:
            return logits
        context = step.context
        width = context.shape[1] if self.penalty_last_n < 0 else min(self.penalty_last_n, context.shape[1])
        recent, length = _recent_tokens(context, width)
        limit = _repeat_limit(recent, length, self.sequence_breakers)
        allowed = jnp.asarray(self.allowed_length).astype(jnp.int32)
        longest = _longest_repeats(recent, length, limit, allowed, logits.shape[-1])
        base = per_row(self.base)
        exponent = (longest - per_row(allowed)).astype(jnp.float32)
        cap = jnp.floor(_FLOAT_MAX_LOG / jnp.log(jnp.maximum(base, 1.000001)))
        exponent = jnp.where(base > 1.000001, jnp.minimum(exponent, cap), exponent)
        penalty = per_row(self.multiplier) * jnp.power(base, exponent)
        hit = longest >= 0
        singles = [b[0] for b in self.sequence_breakers if len(b) == 1]
        if singles:
            hit &= ~jnp.zeros(logits.shape[-1], bool).at[jnp.asarray(singles)].set(True)
        return jnp.where(hit, logits - penalty, logits)


def _breaker_tuples(breakers: Any) -> tuple[tuple[int, ...], ...]:
    """Sequence breakers as a tuple of non-empty token-id tuples (an int is a one-token breaker)."""
    result = []
    for breaker in breakers:
        ids = (breaker,) if isinstance(breaker, int) else tuple(breaker)
        if not ids or not all(isinstance(t, int) and t >= 0 for t in ids):
            raise ValueError(f"DRY sequence_breakers must be token ids or non-empty id sequences, got {breaker!r}")
        result.append(ids)
    return tuple(result)


def _recent_tokens(context: Array, width: int) -> tuple[Array, Array]:
    """The last ``width`` tokens of each row, most recent first: ``(recent [B, W] (-1 past the row's
    tokens), length [B] = min(tokens, W))``. ``context [B, C]`` holds tokens in order, ``-1`` where empty."""
    valid = context >= 0
    count = jnp.sum(valid, axis=-1, keepdims=True)
    back = count - jnp.cumsum(valid, axis=-1)  # 0 for the most recent token
    slot = jnp.where(valid & (back < width), back, width)
    rows = jnp.arange(context.shape[0])[:, None]
    recent = jnp.full((context.shape[0], width + 1), -1, jnp.int32).at[rows, slot].set(context)[:, :width]
    return recent, jnp.minimum(count[:, 0], width)


def _repeat_limit(recent: Array, length: Array, breakers: tuple[tuple[int, ...], ...]) -> Array:
    """``[B]`` the longest repeat DRY may see: the tokens after the most recent complete breaker sequence
    (llama.cpp's ``rep_limit``; at the most recent head, the longest matching breaker), else ``length``."""
    width = recent.shape[1]
    back = jnp.arange(width)[None, :]
    if not breakers:
        return length
    matches = []
    for breaker in breakers:
        match = (recent == breaker[0]) & (back >= len(breaker) - 1) & (back < length[:, None])
        for offset, token in enumerate(breaker[1:], 1):  # tail tokens are the more recent ones
            shifted = jnp.pad(recent, ((0, 0), (offset, 0)), constant_values=-1)[:, :width]
            match &= shifted == token
        matches.append((match, len(breaker)))
    first = jnp.min(jnp.stack([jnp.where(m, back, width) for m, _ in matches]), axis=0).min(axis=-1)
    at_first = [jnp.where(m & (back == first[:, None]), back - (n - 1), width) for m, n in matches]
    limit = jnp.min(jnp.stack(at_first), axis=0).min(axis=-1)
    return jnp.where(first < width, limit, length)


def _longest_repeats(recent: Array, length: Array, limit: Array, allowed: Array, vocab: int) -> Array:
    """``[B, V]`` int32: per token, the longest repeat (``>= allowed``) that emitting it would extend, or -1.

    For each shift ``k`` the common suffix ``z_k`` of the context and the context without its last ``k``
    tokens (llama.cpp computes the same with the Z-algorithm), grown one position per iteration while any
    row still matches; the token after the earlier occurrence (``recent[k - 1]``) would extend it.
    """
    rows, width = recent.shape
    shift = jnp.arange(width)[None, :]
    padded = jnp.pad(recent, ((0, 0), (0, width)), constant_values=-1)
    cap = jnp.minimum(limit, length)

    def grow(carry):
        m, alive, z = carry
        ahead = jax.lax.dynamic_slice_in_dim(padded, m, width, axis=1)  # recent[m + k]
        alive &= (recent[:, m][:, None] == ahead) & (m + shift < length[:, None]) & (m < cap[:, None])
        return m + 1, alive, z + alive

    def more(carry):
        m, alive, _ = carry
        return (m < width) & jnp.any(alive)

    alive = (shift >= 1) & (shift < length[:, None])
    _, _, z = jax.lax.while_loop(more, grow, (jnp.int32(0), alive, jnp.zeros((rows, width), jnp.int32)))
    repeat = jnp.minimum(z, limit[:, None])
    allowed = jnp.broadcast_to(allowed, (rows,))[:, None]
    follows = jnp.pad(recent, ((0, 0), (1, 0)), constant_values=-1)[:, :width]  # recent[k - 1]
    counts = (shift >= 1) & (shift < length[:, None]) & (repeat >= allowed)
    slot = jnp.where(counts, follows, vocab)
    best = jnp.full((rows, vocab + 1), -1, jnp.int32).at[jnp.arange(rows)[:, None], slot].max(repeat)
    return best[:, :vocab]


def dry_sequence_breakers(
    tokenizer: Any, breakers: Sequence[str] = ("\n", ":", '"', "*")
) -> tuple[tuple[int, ...], ...]:
    """Token-id sequence breakers for ``DRY`` from strings (default: llama.cpp's), as llama.cpp builds
    them: each string tokenized without BOS, plus every vocabulary token whose text contains the string
    (as a one-token breaker). ``tokenizer``: an infodec tokenizer (``encode``, ``decode_batch``,
    ``vocab_size``). Partial overlaps (a token ending with the string's start) are not added.
    """
    vocab = int(tokenizer.vocab_size)
    texts = tokenizer.decode_batch([[i] for i in range(vocab)])
    result: list[tuple[int, ...]] = []
    for text in breakers:
        if not text:
            raise ValueError("DRY sequence breakers must be non-empty strings")
        ids = tuple(int(t) for t in tokenizer.encode(text, add_bos=False))
        result.extend([ids] if ids else [])
        result.extend((i,) for i, word in enumerate(texts) if text in word and (i,) != ids)
    return tuple(dict.fromkeys(result))


@flax.struct.dataclass
class MirostatV2(Transform):
    """Mirostat 2.0 (Basu et al. 2021; llama.cpp's ``mirostat-v2``): keeps the tokens whose surprise
    ``-log2 p`` is at most the running target µ (the most likely token if none is), and after each sampled
    token moves ``µ <- µ - eta · (s - tau)``, ``s`` the surprise of the chosen token under the truncated,
    renormalised law (as llama.cpp). µ starts at ``2 · tau``.

    µ is per-row policy state (module docstring). ``next_state`` reads ``s`` from the step's final
    ``log_pi``, which is MirostatV2's own law when it is the last transform of a chain (llama.cpp requires
    it last: it selects the token itself). ``mu``: the state to read (``[B]``); None (outside the engine)
    means ``2 · tau``. Reports the µ it used as the ``mirostat_mu`` diagnostic when not inside a chain.
    ``tau``, ``eta``: scalars or ``[B]``. Not in HF.
    """

    tau: ArrayLike = 5.0
    eta: ArrayLike = 0.1
    mu: Array | None = None

    stateful = True

    def __post_init__(self):
        check_range("mirostat tau", self.tau, 0.0, float("inf"), allowed=">= 0")
        check_range("mirostat eta", self.eta, 0.0, float("inf"), allowed=">= 0")

    def initial_state(self, rows: int) -> Array:
        return jnp.broadcast_to(2.0 * jnp.asarray(self.tau, jnp.float32), (rows,))

    def with_state(self, state: Array) -> MirostatV2:
        return dataclasses.replace(self, mu=state)

    def next_state(self, state: Array, log_pi: Array, token: Array) -> Array:
        surprise = -jnp.take_along_axis(log_pi, token[:, None], axis=-1)[:, 0] / math.log(2.0)
        return state - jnp.asarray(self.eta, jnp.float32) * (surprise - jnp.asarray(self.tau, jnp.float32))

    def current_mu(self, rows: int) -> Array:
        """``[rows]`` the µ this step truncates at."""
        return jnp.broadcast_to(self.initial_state(rows) if self.mu is None else self.mu, (rows,))

    def log_probs(self, logits: Array, step: StepInfo | None):
        log_pi, extra = super().log_probs(logits, step)
        return log_pi, {**extra, "mirostat_mu": self.current_mu(logits.shape[0])}

    def transform(self, logits: Array, step: StepInfo | None) -> Array:
        log_p = jax.nn.log_softmax(logits, axis=-1)
        keep = -log_p / math.log(2.0) <= self.current_mu(logits.shape[0])[:, None]
        keep |= first_argmax_mask(logits) & ~jnp.any(keep, axis=-1, keepdims=True)
        return _masked(keep, logits)


__all__ = ["TopNSigma", "XTC", "DRY", "DynamicTemperature", "MirostatV2", "dry_sequence_breakers"]
