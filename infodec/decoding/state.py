"""The decode loop's state, the slots it is allocated with, and the result returned to users."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import numpy as np

from infodec.models.layers import KVCache

Array = jax.Array

DEFAULT_CHUNK = 16
MIN_BUCKET = 16


def prompt_bucket(length: int) -> int:
    """Prompt lengths are padded up to a power of two (at least 16): few shapes, few compilations."""
    return max(MIN_BUCKET, 1 << (length - 1).bit_length())


def sequence_bucket(length: int) -> int:
    """Widths of full-sequence calls (teacher-forced scoring, sentence encoders): :func:`prompt_bucket` up
    to 64, then multiples of 64. A 165-token row pads to 192 rather than 256 (these calls cost in
    proportion to their width), while rows of similar lengths still share one shape."""
    return prompt_bucket(length) if length <= 64 else -(-length // 64) * 64


def output_slots(max_new_tokens: int, chunk: int = DEFAULT_CHUNK) -> int:
    """Output slots of a decode of ``max_new_tokens``: whole chunks of ``chunk`` steps."""
    return -(-max_new_tokens // chunk) * chunk


@flax.struct.dataclass
class DecodeState:
    """Everything the decode loop carries from one step to the next: what ``prefill`` returns, ``step``
    advances, ``select`` gathers and ``finish`` reads. A pytree; jit-able and donatable.

    ``N`` sample rows (prompts x samples), ``S`` streams per row, ``L`` output slots, ``C = P + L``
    context slots (``P`` the bucketed prompt length), ``V`` the vocabulary.

    Attributes:
      step: int32 scalar, tokens generated so far (the output column written next).
      key: the base PRNG key. Step ``t`` of row ``n`` samples with ``split(fold_in(key, t), N)[lineage[n]]``.
      lineage: ``[N]`` int32, the key stream each row samples with (``arange(N)`` after ``prefill``;
        ``select`` carries it with the row, so a forked row draws what its parent would have drawn).
      cache: the model's KV cache over ``N * S`` model rows (row ``n * S + s``).
      logits: ``[N, S, V]`` float32 next-token logits of each stream.
      next_position: ``[N * S]`` int32 position at which each model row's next token goes.
      done: ``[N]`` bool, rows that produced a stop token or reached ``max_new_tokens``.
      lengths: ``[N]`` int32 tokens generated per row, the stop token included.
      context: ``[N, C]`` int32 prompt (stream 0, left-padded with ``-1``) then generated tokens, ``-1``
        where empty.
      tokens: ``[N, L]`` int32 generated tokens, ``pad_id`` after a row is done.
      logp_model: ``[N, L]`` log P_G of each chosen token under the raw model (stream 0).
      logp_policy: ``[N, L]`` log π of each chosen token under the sampling policy.
      diagnostics: name -> ``[N, L]`` per-step scalars reported by the policy (the names fixed by the
        policy given to ``prefill``).
      max_new_tokens: int32 scalar, the step at which every row is done.
      stop_tokens: ``[8]`` int32 ids that end a row, ``-1`` where unused.
      real: ``[N]`` bool, False on rows that only pad a mesh's data axis (``finish`` drops them).
      hidden: ``[N, D]`` float32 final hidden state of stream 0 at the decode position (the one that
        produced ``logits[:, 0]``), only for policies with ``needs_hidden``; None otherwise.
      policy_state: the per-row state of a stateful policy (``infodec.policies.base``: a tuple with one
        entry per stateful node of the policy, each a pytree of ``[N, ...]`` arrays, e.g. MirostatV2's
        running µ ``[N]``), made by ``prefill`` from the policy it is given, advanced by ``step`` after
        sampling (live rows only) and gathered with its rows by ``select``; None for stateless policies.
      pad_id: (static) the token written after a row is done.
      mesh: (static) the ``jax.sharding.Mesh`` the state lives on, or None for one device.
    """

    step: Array
    key: Array
    lineage: Array
    cache: KVCache
    logits: Array
    next_position: Array
    done: Array
    lengths: Array
    context: Array
    tokens: Array
    logp_model: Array
    logp_policy: Array
    diagnostics: dict[str, Array]
    max_new_tokens: Array
    stop_tokens: Array
    real: Array
    hidden: Array | None = None
    policy_state: Any = None
    pad_id: int = flax.struct.field(pytree_node=False, default=0)
    mesh: Any = flax.struct.field(pytree_node=False, default=None)

    @property
    def num_rows(self) -> int:
        return self.logits.shape[0]

    @property
    def num_streams(self) -> int:
        return self.logits.shape[1]


@dataclasses.dataclass(frozen=True)
class GenerateOutput:
    """What ``generate`` returns; arrays are numpy, rows are prompt-major (``prompt * num_samples + sample``).

    Attributes:
      tokens: ``[N, L]`` generated token ids (``L = max_new_tokens``), padded after ``lengths``.
      lengths: ``[N]`` tokens generated per row, including the stop token when one was produced.
      logp_model: ``[N, L]`` log-probability of each token under the raw model (log p_θ).
      logp_policy: ``[N, L]`` log-probability under the sampling distribution (log r); together they give
        importance weights ``Σ (logp_model - logp_policy)``.
      diagnostics: name -> ``[N, L]`` per-step diagnostics (``entropy`` of π, ``kl_to_model`` = KL(π‖P_G), ...).
      prompt_tokens: ``[N, P_max]`` the prompt of each row, right-padded with ``-1``.
      text: decoded continuations when a tokenizer was given, else None.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    logp_model: np.ndarray
    logp_policy: np.ndarray
    diagnostics: dict[str, np.ndarray]
    prompt_tokens: np.ndarray
    text: list[str] | None = None

    def mask(self) -> np.ndarray:
        """``[N, L]`` bool, True on generated positions (before ``lengths``)."""
        return np.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]

    def sequence_logp(self) -> tuple[np.ndarray, np.ndarray]:
        """``(log p_θ(x), log r(x))`` per row: sums over the generated tokens."""
        mask = self.mask()
        return (np.where(mask, self.logp_model, 0.0).sum(1), np.where(mask, self.logp_policy, 0.0).sum(1))
