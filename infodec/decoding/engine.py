"""The functional decoding engine: ``prefill``, ``step``, ``select`` and ``finish``, and ``generate`` and
``stream`` built from them.

The primitives are the public contract (``docs/decode_loop.md`` shows user loops built on them):

* ``prefill`` encodes and left-pads the prompts to a power-of-two bucket (padding has position ``-1``, so
  it is never attended to, and a new prompt length rarely recompiles), runs each prompt once, and
  broadcasts its cache to ``num_samples`` rows (DAEMON's M candidates share one prefix): a ``DecodeState``.
* ``step`` adds one token to every live row: policy, sample, record, one model call. Pure and jit-able.
* ``select`` gathers rows of a state (cache, context, buffers, key lineage): forks, resampling, beams.
* ``finish`` fetches the outputs to the host as a ``GenerateOutput``.

``generate`` runs ``chunk`` steps per ``lax.scan`` inside a ``lax.while_loop`` that stops once every row
is done: the loop never returns to the host, and finished batches stop early. The loop is jitted once per
(model, policy structure, shapes); numeric policy fields are traced, so a new temperature, top-p or seed
reuses the compiled code. The state is donated.

With a ``mesh`` (``infodec.sharding``), the mesh is a static field of the state; its rows stay on the data
axis and the parameters on the model axis through ``with_sharding_constraint`` inside the loop, and the
tokens equal one device's (``_placed``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
from collections.abc import Iterator, Sequence
from types import EllipsisType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jax.sharding import NamedSharding, PartitionSpec

from infodec import compilation, sharding
from infodec.decoding import memory
from infodec.decoding.state import DEFAULT_CHUNK, DecodeState, GenerateOutput, output_slots, prompt_bucket
from infodec.models.base import CausalLM
from infodec.policies.base import (
    Policy,
    StepInfo,
    bind_policy_state,
    initial_policy_state,
    next_policy_state,
    stateful_nodes,
)

Array = jax.Array

MAX_STOP_TOKENS = 8

# Tokens per block of sample_tokens' two-level CDF inversion.
SAMPLE_BLOCK = 256

# Stop tokens: explicit ids, None / () for none, or ... for the tokenizer's end-of-generation ids.
StopTokens = Sequence[int] | None | EllipsisType

# How many times each jitted function has been traced (= compiled): tests assert it stays put.
_TRACES: collections.Counter = collections.Counter()


def compile_count() -> int:
    """Total traces of the engine's jitted functions so far (each trace is one compilation)."""
    return sum(_TRACES.values())


def count_trace(name: str) -> None:
    """Records one trace of the jitted function ``name``; called inside the function, so it runs only
    when JAX traces (compiles) it, and :func:`compile_count` sees every decoder's compilations."""
    _TRACES[name] += 1


def generate(
    model: CausalLM,
    params: Any,
    prompts,
    policy: Policy,
    key: Array,
    *,
    max_new_tokens: int,
    tokenizer=None,
    evidence=None,
    stop_tokens: StopTokens = ...,
    num_samples: int = 1,
    chunk: int = DEFAULT_CHUNK,
    pad_id: int = 0,
    mesh=None,
) -> GenerateOutput:
    """Decodes continuations of ``prompts`` with ``policy``: ``finish(loop(prefill(...)))`` where the loop
    runs ``step`` in chunks of ``chunk`` under one jitted ``while_loop``.

    Args:
      model, params: from ``infodec.load``.
      prompts: a string, a list of strings (needs ``tokenizer``), a list of token-id lists, or an int
        array ``[B, T]`` of unpadded prompts.
      policy: a ``Policy``; two-stream policies (``num_streams == 2``) need ``evidence``.
      key: a PRNG key; step ``t`` of row ``n`` uses its own key derived from it.
      max_new_tokens: tokens to generate per row (a row stops earlier at a stop token).
      tokenizer: to encode string prompts and decode the output text.
      evidence: for two-stream policies, one evidence text (or token list) per prompt. Stream 0 reads
        evidence followed by the prompt, stream 1 the prompt alone; both are left-padded to one bucket
        so they are aligned at the decode position, run as 2B rows of one forward call, and both
        receive the sampled token. Stopping follows the tokens, which the streams share.
      stop_tokens: ids that end a row; default: the tokenizer's end-of-generation ids (none without a
        tokenizer); None or () for none.
      num_samples: continuations per prompt (rows ``prompt * num_samples + sample``).
      chunk: decode steps per ``lax.scan`` between checks that every row is done.
      pad_id: token id written after a row is done.
      mesh: a ``jax.sharding.Mesh`` with axes ``("data", "model")`` (``infodec.sharding.make_mesh``), or
        None for one device. Rows (prompts x samples x streams) go on the data axis, parameters on
        the model axis (``sharding.shard_params``; done here when ``params`` are not yet placed, which
        copies them on every call, so place them once beforehand). When the rows are not a multiple
        of the data-axis size, copies of the last prompt fill it up; they are decoded as finished rows
        and dropped from the output. Results equal the single-device results (module docstring).
    """
    state, program = _start(
        model,
        params,
        prompts,
        policy,
        key,
        _decode_loop,
        what="generate",
        chunk=chunk,
        mesh=mesh,
        max_new_tokens=max_new_tokens,
        tokenizer=tokenizer,
        evidence=evidence,
        stop_tokens=stop_tokens,
        num_samples=num_samples,
        pad_id=pad_id,
    )
    return finish(program(state), tokenizer)


def stream(
    model: CausalLM,
    params: Any,
    prompts,
    policy: Policy,
    key: Array,
    *,
    max_new_tokens: int,
    tokenizer=None,
    evidence=None,
    stop_tokens: StopTokens = ...,
    num_samples: int = 1,
    chunk: int = 1,
    pad_id: int = 0,
    mesh=None,
) -> Iterator[np.ndarray]:
    """Like ``generate`` but yields the new tokens ``[N, k]`` after every ``chunk`` steps (1 by default).

    Rows that are done yield ``pad_id``. Same compiled step as ``generate``; the host sees each chunk.
    ``mesh`` as for ``generate``.
    """
    state, program = _start(
        model,
        params,
        prompts,
        policy,
        key,
        _decode_chunk,
        what="stream",
        chunk=chunk,
        mesh=mesh,
        max_new_tokens=max_new_tokens,
        tokenizer=tokenizer,
        evidence=evidence,
        stop_tokens=stop_tokens,
        num_samples=num_samples,
        pad_id=pad_id,
    )
    rows = int(np.sum(np.asarray(state.real)))  # without the rows that only pad the data axis
    while True:
        start = int(state.step)
        if start >= max_new_tokens or bool(np.all(np.asarray(state.done))):
            return
        state = program(state)
        stop = min(int(state.step), max_new_tokens)
        yield np.asarray(state.tokens[:rows, start:stop])


def _start(model, params, prompts, policy, key, loop, *, what, chunk, mesh, **options):
    """``generate``'s and ``stream``'s set-up: ``(state, run)``, ``run(state)`` being the ``loop`` program
    (:func:`_loop_program`) for the parameters placed on ``mesh`` and the canonical policy padded to the
    rows, compiled while prefill runs."""
    policy = canonical_policy(policy)
    if mesh is not None:
        params = sharding.shard_params(model, params, mesh)
    programs = []

    def next_call(policy, state):  # the program compiled ahead is the one the caller runs
        programs.append(_loop_program(loop, model, chunk, params, policy, state))
        return programs[0].lower(params, policy, state)

    state, policy = _prefill(
        model, params, prompts, key, policy=policy, chunk=chunk, mesh=mesh, what=what, next_call=next_call, **options
    )
    return state, functools.partial(programs[0], params, policy)


# --- the primitives ---------------------------------------------------------------------------------


def prefill(
    model: CausalLM,
    params: Any,
    prompts,
    key: Array,
    *,
    max_new_tokens: int,
    tokenizer=None,
    evidence=None,
    num_samples: int = 1,
    policy: Policy | None = None,
    stop_tokens: StopTokens = ...,
    mesh=None,
    chunk: int = 1,
    pad_id: int = 0,
) -> DecodeState:
    """Encodes, buckets and left-pads ``prompts``, runs them through the model once, and broadcasts each
    prompt's cache to ``num_samples`` rows: the ``DecodeState`` that ``step`` advances.

    Args:
      model: as for ``generate``; so are ``params``, ``prompts``, ``key``, ``max_new_tokens``,
        ``tokenizer``, ``evidence``, ``num_samples``, ``stop_tokens``, ``mesh`` and ``pad_id``. With a
        ``mesh``, ``params`` must already be placed (``sharding.shard_params``).
      policy: the policy ``step`` will be called with, or one with the same ``num_streams``,
        ``needs_hidden`` and diagnostics: it fixes the streams (two need ``evidence``), whether the
        state carries hidden states, and which diagnostics are recorded. None: one stream, no hidden
        state, no diagnostics beyond none (``step`` then records tokens and log-probabilities only).
      chunk: the output buffer holds ``max_new_tokens`` rounded up to a multiple of ``chunk``
        (``generate`` steps in whole chunks; a hand-written loop needs 1).

    Returns:
      A ``DecodeState`` with ``N = len(prompts) * num_samples`` rows (more on a mesh whose data axis
      does not divide ``N``: the extra rows are done from the start and dropped by ``finish``).
    """
    policy = canonical_policy(_NO_POLICY if policy is None else policy)
    state, _ = _prefill(
        model,
        params,
        prompts,
        key,
        policy=policy,
        max_new_tokens=max_new_tokens,
        tokenizer=tokenizer,
        evidence=evidence,
        stop_tokens=stop_tokens,
        num_samples=num_samples,
        chunk=chunk,
        pad_id=pad_id,
        mesh=mesh,
        what="prefill",
    )
    return state


def step(model: CausalLM, params: Any, policy: Policy, state: DecodeState, *, donate: bool = False) -> DecodeState:
    """One token for every live row: the policy maps the logits to ``log π``, a token is sampled from it
    with the row's key for this step, recorded (with ``log p_θ``, ``log π`` and the diagnostics), and
    fed to the model in one call that extends the cache. Done rows receive ``pad_id`` and stay done.

    Pure and jit-able (``jax.jit(step, static_argnums=0)``, inside ``lax.scan``/``while_loop``). Called
    eagerly it runs a jitted step; ``donate=True`` hands it ``state``'s buffers, so the cache is updated
    in place and ``state`` must not be used again (the default keeps ``state`` and copies the cache:
    pure, but a copy per token). Inside a trace ``donate`` is ignored. Raises ValueError if ``policy``
    has another number of streams than ``state``, needs hidden states the state does not carry, or
    (outside a trace) every row of ``state`` is done.
    """
    policy = canonical_policy(policy)
    _check_step(policy, state)
    run = _step_donated if donate and not isinstance(state.done, Tracer) else _step_jit
    return run(model, params, policy, state, structure=policy_structure(policy))


def select(state: DecodeState, rows, *, key: Array | None = None) -> DecodeState:
    """The state of rows ``rows`` of ``state``: row ``i`` of the result is row ``rows[i]`` of ``state``,
    with its KV cache (all its streams), context, logits, hidden state, output buffers, done flag and
    key lineage. Forks a candidate (``rows=[0, 0, 1]``), resamples particles, reorders beams.

    Args:
      state: a ``DecodeState``.
      rows: ``[N']`` int indices in ``[0, N)``; ``N'`` may differ from ``N`` (on a mesh it must keep
        dividing the data axis).
      key: None: every row keeps its parent's key lineage, so a forked row continues exactly as its
        parent would (same draws). A key: the rows get fresh, independent key streams from it
        (resampled particles that must diverge).
    """
    rows = _check_rows(state, rows)
    picked = _select_jit(state, rows)
    if key is None:
        return picked
    return dataclasses.replace(picked, key=jnp.copy(key), lineage=jnp.arange(len(rows), dtype=jnp.int32))


def finish(state: DecodeState, tokenizer=None) -> GenerateOutput:
    """Fetches the outputs (not the cache) to the host: a ``GenerateOutput`` over the real rows, in row
    order, with ``max_new_tokens`` columns and each row's prompt (stream 0's context: the evidence and
    the prompt for two-stream policies) right-padded with -1; ``text`` decoded when ``tokenizer`` is given."""
    _check_state(state)
    fields = (state.tokens, state.lengths, state.logp_model, state.logp_policy, state.diagnostics)
    host = jax.device_get((*fields, state.real, state.context, state.max_new_tokens))
    tokens, lengths, logp_model, logp_policy, diagnostics, real, context, max_new = host
    real = np.asarray(real, bool)
    width = int(max_new)
    trim = lambda x: np.asarray(x)[real, :width]
    lengths = np.asarray(lengths)[real]
    tokens = trim(tokens)
    _check_no_nan(trim(logp_model), trim(logp_policy), lengths)
    prompts = np.asarray(context)[real, : context.shape[1] - state.tokens.shape[1]]
    kept = [row[row >= 0] for row in prompts]
    prompt_tokens = np.full((len(kept), max((len(ids) for ids in kept), default=0)), -1, np.int32)
    for row, ids in enumerate(kept):
        prompt_tokens[row, : len(ids)] = ids
    text = None
    if tokenizer is not None:
        text = tokenizer.decode_batch([row[:n] for row, n in zip(tokens, lengths)])
    return GenerateOutput(
        tokens=tokens,
        lengths=lengths,
        logp_model=trim(logp_model),
        logp_policy=trim(logp_policy),
        diagnostics={k: trim(v) for k, v in diagnostics.items()},
        prompt_tokens=prompt_tokens,
        text=text,
    )


def _check_no_nan(logp_model: np.ndarray, logp_policy: np.ndarray, lengths: np.ndarray) -> None:
    """NaN logits cannot be caught inside the jitted loop; a NaN log-probability of a chosen token is
    their trace, so the boundary where the results reach the host raises instead of returning them."""
    generated = np.arange(logp_model.shape[1])[None, :] < lengths[:, None]
    bad = generated & (np.isnan(logp_model) | np.isnan(logp_policy))
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(
            f"NaN log-probability at row {row}, step {column} ({int(bad.sum())} positions in all): the model's "
            "logits (or a policy's scores) were NaN; check the weights, the dtype and any custom score"
        )


# --- set-up -----------------------------------------------------------------------------------------


def canonical_policy(policy: Policy) -> Policy:
    """Numeric leaves as float32 arrays, so ``Temperature(1)`` after ``Temperature(0.7)`` (an int after a
    float) reuses the compiled loop; integer fields such as top-k are cast back where they are used."""
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be an infodec Policy, got {type(policy).__name__}")

    def canonical(leaf):
        if isinstance(leaf, (bool, np.bool_)) or jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
            return leaf
        return jnp.asarray(leaf, jnp.float32)

    return jax.tree.map(canonical, policy)


class _NoDiagnostics(Policy):
    """What ``prefill(policy=None)`` lays the state out for: one stream, no hidden state, no diagnostics."""

    def __call__(self, logits, step=None):
        return jax.nn.log_softmax(logits[:, 0]), {}


_NO_POLICY = _NoDiagnostics()
jax.tree_util.register_static(_NoDiagnostics)


def _prefill(
    model,
    params,
    prompts,
    key,
    *,
    policy,
    max_new_tokens,
    tokenizer,
    evidence,
    stop_tokens,
    num_samples,
    chunk,
    pad_id,
    mesh,
    what,
    next_call=None,
) -> tuple[DecodeState, Policy]:
    """Validates, encodes and prefills: ``(state, policy)``, the policy with per-row fields padded to the
    state's rows.

    ``next_call(policy, state)`` (the ``lower`` of the jitted decode function that will run next, given
    the padded policy and the abstract state) is compiled in a background thread while this thread
    compiles and runs prefill: XLA compiles release the GIL, so on a cold start the two compilations
    overlap instead of adding up.

    With a ``mesh``, prompts are padded with copies of the last one until the rows split evenly over
    the data axis (``sharding.padded_prompt_count``); the extra rows start as done and not ``real``, so
    they neither change the real rows (their sampling keys are ``split(..., N')[n]``, equal to
    ``split(..., N)[n]`` for ``n < N`` under jax's partitionable threefry) nor keep the loop running.
    Per-row ``[N]`` policy fields are padded to ``[N']`` (the returned policy).
    """
    streams = policy.num_streams
    if streams == 2 and evidence is None:
        raise ValueError(
            f"{type(policy).__name__} compares the prompt with and without evidence: pass evidence=... to {what}()"
        )
    if streams == 1 and evidence is not None:
        raise ValueError(
            f"{type(policy).__name__} is a one-stream policy; evidence is only used by "
            "two-stream policies (num_streams == 2)"
        )
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    num_samples = int(num_samples)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    stops = stop_array(stop_tokens, tokenizer)
    token_lists = encode_prompts(prompts, tokenizer)
    evidence_lists = encode_prompts(evidence, tokenizer) if streams == 2 else None
    if evidence_lists is not None and len(evidence_lists) != len(token_lists):
        raise ValueError(
            f"got {len(evidence_lists)} evidence entries for {len(token_lists)} prompts; pass one per prompt"
        )
    real_rows = len(token_lists) * num_samples
    extra = sharding.padded_prompt_count(len(token_lists), num_samples, mesh) - len(token_lists)
    if extra:
        if not jax.config.jax_threefry_partitionable:  # pyright: ignore[reportAttributeAccessIssue] (a JAX flag)
            raise ValueError(
                f"{real_rows} rows do not split over the mesh's data axis of "
                f"{sharding.axis_size(mesh, sharding.DATA)} and padding them would change the "
                "sampling keys with jax_threefry_partitionable=False; enable it or pass a "
                "multiple of the data-axis size"
            )
        token_lists = token_lists + token_lists[-1:] * extra
        if evidence_lists is not None:
            evidence_lists = evidence_lists + evidence_lists[-1:] * extra
        policy = _pad_per_row(policy, real_rows, len(token_lists) * num_samples)
    if evidence_lists is not None:  # two streams: model rows 2n (evidence + prompt) and 2n + 1 (prompt alone)
        token_lists = [row for ev, ids in zip(evidence_lists, token_lists) for row in (ev + ids, ids)]
    longest = max(len(t) for t in token_lists)
    if longest + max_new_tokens > model.max_length:
        raise ValueError(
            f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the "
            f"model's context of {model.max_length} tokens"
        )
    memory.check_memory(  # before anything is allocated: one clear error instead of an XLA out-of-memory trace
        model,
        params,
        rows=real_rows,
        max_len=longest + max_new_tokens,
        prompt_len=longest,
        num_samples=num_samples,
        policy=policy,
        mesh=mesh,
        chunk=chunk,
        num_diagnostics=memory.DEFAULT_DIAGNOSTICS,
        what=what,
    )
    bucket = prompt_bucket(longest)
    buffer = output_slots(int(max_new_tokens), chunk)  # whole chunks
    tokens, positions = left_pad(token_lists, bucket, pad_id)
    if mesh is None:
        tokens, positions = jnp.asarray(tokens), jnp.asarray(positions)
        cache = model.init_cache(len(token_lists), bucket + buffer)
    else:  # prefill rows on the data axis when they split evenly (else replicated: M > 1 rows come later)
        rows = sharding.batch_sharding(tokens.shape, mesh)
        tokens, positions = jax.device_put(tokens, rows), jax.device_put(positions, rows)
        cache = sharding.init_cache(model, len(token_lists), bucket + buffer, mesh)
    initial = functools.partial(
        _initial_state,
        positions=positions,
        tokens=tokens,
        key=key,
        buffer=buffer,
        num_samples=num_samples,
        policy=policy,
        real_rows=real_rows,
        max_new_tokens=int(max_new_tokens),
        stops=stops,
        pad_id=pad_id,
        mesh=mesh,
    )
    logits_shape = jax.ShapeDtypeStruct((len(token_lists), model.vocab_size), jnp.float32)
    hidden_shape = (
        jax.ShapeDtypeStruct((len(token_lists), model.config.hidden_size), jnp.float32) if policy.needs_hidden else None
    )
    state_shape = jax.eval_shape(initial, logits_shape, cache, hidden_shape)
    # Lower for the placement the state will have, so the call reuses this compile: on one device every
    # leaf is committed to it (jit's cache key tells committed from uncommitted arrays, and prefill's
    # outputs mix both), on a mesh each leaf gets its sharding.
    if mesh is not None:
        placement = _state_shardings(state_shape, mesh)
    else:
        device = jax.sharding.SingleDeviceSharding(_default_device())
        placement = jax.tree.map(lambda _: device, state_shape)
    state_shape = sharding.with_shardings(state_shape, placement)
    compiling = None
    if next_call is not None:
        compiling = threading.Thread(target=next_call(policy, state_shape).compile)
        compiling.start()
    prompt_program = _prompt_program(model, policy.needs_hidden, params, tokens, positions, cache)
    logits, cache, hidden = prompt_program(params, tokens, positions, cache)
    state = jax.device_put(initial(logits, cache, None if hidden is None else hidden[:, -1]), placement)
    if compiling is not None:
        compiling.join()
    return state, policy


def _default_device():
    """The device uncommitted arrays live on (``jax.default_device`` when set, else the first local one):
    where a computation on them places its result."""
    return jnp.zeros(()).devices().pop()


def _pad_per_row(policy: Policy, rows: int, padded: int) -> Policy:
    """Per-row ``[rows]`` policy fields (dataclass fields, not entries of parameter dicts such as a
    discriminator's) extended to ``[padded]`` with copies of the last row."""

    def pad(path, leaf):
        per_row = (
            np.ndim(leaf) == 1
            and np.shape(leaf)[0] == rows
            and not any(isinstance(k, jax.tree_util.DictKey) for k in path)
        )
        return jnp.concatenate([leaf, jnp.repeat(leaf[-1:], padded - rows)]) if per_row else leaf

    return jax.tree_util.tree_map_with_path(pad, policy)


def encode_prompts(prompts, tokenizer, *, add_bos: bool | None = None, allow_empty: bool = False) -> list[list[int]]:
    """Normalises the accepted prompt forms (a string, strings, id sequences, an int array ``[B, T]``)
    to token-id lists. Strings are encoded with ``add_bos`` (None: the tokenizer's default); empty
    rows are an error unless ``allow_empty`` (continuations may be empty, prompts may not)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, (np.ndarray, jax.Array)):
        if prompts.ndim != 2:
            raise ValueError(f"token prompts must be [batch, length], got shape {prompts.shape}")
        prompts = np.asarray(prompts).tolist()
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt")
    lists = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if tokenizer is None:
                raise ValueError("string prompts need tokenizer=...; or pass token ids")
            prompt = tokenizer.encode(prompt, add_bos=add_bos)
        ids = [int(t) for t in np.asarray(prompt).reshape(-1)]
        if not ids and not allow_empty:
            raise ValueError(f"prompt {i} is empty (no tokens); every prompt needs at least one token")
        lists.append(ids)
    return lists


def left_pad(token_lists: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``tokens, positions: [B, length]``: rows right-aligned, padding at position -1."""
    tokens = np.full((len(token_lists), length), pad_id, np.int32)
    positions = np.full((len(token_lists), length), -1, np.int32)
    for row, ids in enumerate(token_lists):
        tokens[row, length - len(ids) :] = ids
        positions[row, length - len(ids) :] = np.arange(len(ids))
    return tokens, positions


def stop_array(stop_tokens, tokenizer) -> Array:
    if stop_tokens is ...:
        stop_tokens = tokenizer.eos_ids if tokenizer is not None else ()
    stop_tokens = tuple(int(t) for t in (stop_tokens or ()))
    if len(stop_tokens) > MAX_STOP_TOKENS:
        raise ValueError(f"at most {MAX_STOP_TOKENS} stop tokens are supported, got {len(stop_tokens)}")
    # A fixed-size array (padded with -1) so a different set of stop tokens never recompiles.
    return jnp.asarray(stop_tokens + (-1,) * (MAX_STOP_TOKENS - len(stop_tokens)), jnp.int32)


def _prefill_impl(model, params, tokens, positions, cache, with_hidden=False):
    """Runs the prompts through the model once: ``(logits[R, V] at the last position, cache, hidden)``,
    ``hidden`` being the final hidden states ``[R, T, D]`` (float32) when ``with_hidden``, else None."""
    count_trace("prefill")
    if not with_hidden:
        logits, cache = model.apply(params, tokens, positions, cache)
        return logits[:, -1], cache, None
    logits, cache, hidden = model.apply(params, tokens, positions, cache, return_hidden=True)
    return logits[:, -1], cache, hidden.astype(jnp.float32)


run_prompt = jax.jit(_prefill_impl, static_argnums=0, static_argnames="with_hidden", donate_argnums=4)


@dataclasses.dataclass(frozen=True)
class _Bound:
    """A jitted function with its static arguments bound: called and lowered on the dynamic ones."""

    jitted: Any
    static: tuple
    keywords: dict

    def __call__(self, *args):
        return self.jitted(*self.static, *args, **self.keywords)

    def lower(self, *args):
        return self.jitted.lower(*self.static, *args, **self.keywords)


def _prompt_program(model, with_hidden: bool, params, tokens, positions, cache):
    """``run_prompt`` for these arguments, as a function of ``(params, tokens, positions, cache)``: the saved
    program (``compilation.saved_program``; skips tracing in a later process) when saved programs are on
    and every argument lives on one device, else the jitted function."""
    saved = compilation.saved_program(
        "prefill",
        functools.partial(_prefill_impl, model, with_hidden=with_hidden),
        (repr(model), with_hidden),
        (params, tokens, positions, cache),
        donate_argnums=(3,),
    )
    return saved or _Bound(run_prompt, (model,), {"with_hidden": with_hidden})


def _initial_state(
    logits,
    cache,
    hidden=None,
    *,
    positions,
    tokens,
    key,
    buffer,
    num_samples,
    policy,
    real_rows=None,
    max_new_tokens=1,
    stops=None,
    pad_id=0,
    mesh=None,
) -> DecodeState:
    """The state after prefill. Model rows come in groups of ``S`` streams per prompt; ``num_samples``
    copies of each group are made by broadcasting the prefilled cache (no second prefill). ``hidden``
    (``[P * S, D]``, policies with ``needs_hidden``) keeps stream 0 of each group. Rows from
    ``real_rows`` on (padding for the mesh's data axis) start as done and not real."""
    streams = policy.num_streams

    def repeat(x, axis=0):  # [P * S, ...] -> [P * M * S, ...], copying each prompt's group of streams
        return x if num_samples == 1 else _repeat_groups(x, num_samples, streams, axis)

    cache = dataclasses.replace(cache, k=repeat(cache.k, 1), v=repeat(cache.v, 1), positions=repeat(cache.positions))
    anchor = slice(0, None, streams)  # stream 0 rows: what the context (and repetition penalties) see
    context = jnp.concatenate(
        [
            jnp.where(positions[anchor] >= 0, tokens[anchor], -1),
            jnp.full((tokens.shape[0] // streams, buffer), -1, jnp.int32),
        ],
        axis=1,
    )
    context = jnp.repeat(context, num_samples, axis=0)
    logits = repeat(logits).reshape(-1, streams, logits.shape[-1])
    rows = logits.shape[0]
    if hidden is not None:
        hidden = repeat(hidden).reshape(rows, streams, -1)[:, 0]
    policy_state = initial_policy_state(policy, rows)
    # Abstract evaluation at the real batch size (free), so per-row [N] policy fields broadcast.
    names = jax.eval_shape(
        lambda x, c, h, k, p: bind_policy_state(policy, p)(x, StepInfo(c, jnp.int32(0), h, k))[1],
        jax.ShapeDtypeStruct((rows, streams, logits.shape[-1]), jnp.float32),
        jax.ShapeDtypeStruct((rows, context.shape[1]), jnp.int32),
        None if hidden is None else jax.ShapeDtypeStruct((rows, hidden.shape[-1]), jnp.float32),
        jax.eval_shape(lambda k: jax.random.split(k, rows), key),
        policy_state,
    )
    names = [*names, *(["pmi"] if streams == 2 else [])]
    zeros = lambda: jnp.zeros((rows, buffer), jnp.float32)  # distinct buffers: all donated
    real = jnp.arange(rows) < (rows if real_rows is None else real_rows)
    return DecodeState(
        step=jnp.int32(0),
        # A copy: the state is donated to the decode loop, which would otherwise delete the caller's key.
        key=jnp.copy(key),
        lineage=jnp.arange(rows, dtype=jnp.int32),
        cache=cache,
        logits=logits,
        next_position=repeat(jnp.max(positions, axis=1) + 1),
        done=~real,
        lengths=jnp.zeros((rows,), jnp.int32),
        context=context,
        tokens=jnp.zeros((rows, buffer), jnp.int32),
        logp_model=zeros(),
        logp_policy=zeros(),
        diagnostics={name: zeros() for name in names},
        max_new_tokens=jnp.int32(max_new_tokens),
        stop_tokens=stop_array((), None) if stops is None else jnp.copy(stops),
        real=real,
        hidden=hidden,
        policy_state=policy_state,
        pad_id=int(pad_id),
        mesh=mesh,
    )


def _repeat_groups_impl(x, num_samples, streams, axis):
    grouped = x.reshape(*x.shape[:axis], -1, streams, *x.shape[axis + 1 :])
    grouped = jnp.repeat(grouped, num_samples, axis=axis)
    return grouped.reshape(*x.shape[:axis], -1, *x.shape[axis + 1 :])


# Jitted so the broadcast allocates its result only: op by op, the reshapes and the repeat each made a copy,
# and the cache briefly took 1.5x its size (decoding.memory plans the "samples" phase without them).
_repeat_groups = jax.jit(_repeat_groups_impl, static_argnums=(1, 2, 3))


# --- the step ---------------------------------------------------------------------------------------


def _check_state(state) -> None:
    if not isinstance(state, DecodeState):
        raise TypeError(f"state must be a DecodeState (from prefill), got {type(state).__name__}")


def _check_step(policy: Policy, state: DecodeState) -> None:
    _check_state(state)
    if policy.num_streams != state.num_streams:
        raise ValueError(
            f"{type(policy).__name__} reads {policy.num_streams} stream(s) but the state was prefilled with "
            f"{state.num_streams}; prefill with this policy (two streams need evidence=...)"
        )
    if policy.needs_hidden and state.hidden is None:
        raise ValueError(
            f"{type(policy).__name__} needs hidden states, which the state does not carry; "
            "pass this policy to prefill(policy=...)"
        )
    if len(stateful_nodes(policy)) != (0 if state.policy_state is None else len(state.policy_state)):
        raise ValueError(
            f"{type(policy).__name__} carries per-row state (MirostatV2, ...) laid out differently from the "
            "state's policy_state; pass this policy to prefill(policy=...)"
        )
    done = state.done
    if not isinstance(done, Tracer) and bool(np.all(np.asarray(done))):
        raise ValueError(
            f"every row of the state is done (stop token or max_new_tokens={int(state.max_new_tokens)} reached "
            f"at step {int(state.step)}); call finish(state)"
        )


def _step(model, params, policy, state: DecodeState, token: Array | None = None) -> DecodeState:
    """One token for every row: policy, sample (or take the given ``token [N]``: teacher forcing), advance
    the policy's state, then :func:`advance` (record, one model call)."""
    keys = jax.random.split(jax.random.fold_in(state.key, state.step), state.num_rows)[state.lineage]
    bound = bind_policy_state(policy, state.policy_state)
    log_pi, diagnostics = bound(state.logits, StepInfo(state.context, state.step, state.hidden, keys))
    token = sample_tokens(keys, log_pi) if token is None else token.astype(jnp.int32)
    if state.policy_state is not None:  # static: stateless policies compile the step they always did
        live = lambda new, old: jnp.where(jnp.reshape(state.done, (-1,) + (1,) * (new.ndim - 1)), old, new)
        new = next_policy_state(policy, state.policy_state, log_pi, token)
        state = dataclasses.replace(state, policy_state=jax.tree.map(live, new, state.policy_state))
    pick = lambda x: jnp.take_along_axis(x, token[:, None], axis=-1)[:, 0]
    if state.num_streams == 1:
        logp_model = token_log_prob(state.logits[:, 0], token)
    else:  # two-stream policies compute these log-softmaxes too; XLA shares them (a logsumexp costs 2 [N, V] more)
        log_p = [pick(jax.nn.log_softmax(state.logits[:, stream])) for stream in (0, 1)]
        logp_model = log_p[0]
        # attribution of the chosen token: log P(a | s, c) - log P(a | s)
        diagnostics = {**diagnostics, "pmi": log_p[0] - log_p[1]}
    return advance(
        model, params, state, token, logp_model=logp_model, logp_policy=pick(log_pi), diagnostics=diagnostics
    )


def advance(
    model, params, state: DecodeState, token: Array, *, logp_model=None, logp_policy=None, diagnostics=None
) -> DecodeState:
    """The second half of ``step`` for decoders that choose tokens themselves (beam search): records
    ``token [N]`` for every live row (done rows get ``pad_id``) with its ``log p_θ`` (``logp_model``;
    computed from the state's logits when None), ``logp_policy`` (``log p_θ`` when None) and the
    ``diagnostics`` the state records, updates ``done``, and runs one model call on the tokens of every
    stream. Values of done rows are recorded as 0."""
    rows, streams = state.num_rows, state.num_streams
    token = jnp.where(state.done, state.pad_id, token).astype(jnp.int32)
    if logp_model is None:
        logp_model = token_log_prob(state.logits[:, 0], token)
    logp_policy = logp_model if logp_policy is None else logp_policy
    diagnostics = diagnostics or {}

    def record(buffer, value):
        return jax.lax.dynamic_update_slice(buffer, value[:, None].astype(buffer.dtype), (0, state.step))

    live = ~state.done
    step = state.step + 1
    stops = state.stop_tokens
    done = state.done | jnp.any(token[:, None] == stops[None, :], axis=-1) | (step >= state.max_new_tokens)
    prompt_slots = state.context.shape[1] - state.tokens.shape[1]
    feed_positions = jnp.where(jnp.repeat(live, streams), state.next_position, -1)
    feed = (params, jnp.repeat(token, streams)[:, None], feed_positions[:, None], state.cache)
    hidden = None
    if state.hidden is not None:  # static: other policies compile exactly the call they always did
        logits, cache, hidden = model.apply(*feed, return_hidden=True)
        hidden = hidden[:, 0].astype(jnp.float32).reshape(rows, streams, -1)[:, 0]
    else:
        logits, cache = model.apply(*feed)
    return dataclasses.replace(
        state,
        step=step,
        cache=cache,
        logits=logits.reshape(rows, streams, -1),
        hidden=hidden,
        next_position=state.next_position + 1,
        done=done,
        lengths=jnp.where(live, step, state.lengths),
        context=jax.lax.dynamic_update_slice(
            state.context, jnp.where(live, token, -1)[:, None], (0, prompt_slots + state.step)
        ),
        tokens=record(state.tokens, token),
        logp_model=record(state.logp_model, jnp.where(live, logp_model, 0.0)),
        logp_policy=record(state.logp_policy, jnp.where(live, logp_policy, 0.0)),
        diagnostics={
            name: record(buf, jnp.where(live, diagnostics.get(name, 0.0), 0.0))
            for name, buf in state.diagnostics.items()
        },
    )


def token_log_prob(logits: Array, token: Array) -> Array:
    """``log softmax(logits)[token]`` per row (``logits [N, V]``, ``token [N]``) without writing the
    ``[N, V]`` log-softmax: one fused max and exp-sum pass over the vocabulary."""
    return jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(logits, axis=-1)


def sample_tokens(keys: Array, log_pi: Array) -> Array:
    """One token per row from ``log_pi[N, V]`` by inverting the CDF with one uniform per row.

    Exact like Gumbel-max, but draws N random numbers instead of N x V (the threefry draws dominated
    sampling at batch 25 on CPU). The CDF is inverted in two levels, first over the masses of blocks of
    ``SAMPLE_BLOCK`` tokens and then inside the chosen block, so the only vocabulary-wide work is one
    fused exp-and-sum pass: a flat cumulative sum over the vocabulary cost ~7x more on XLA:CPU (270 ms
    of a 1.2 s step at 96 rows x 262k tokens). Zero-probability tokens are never chosen: at each level
    the pick is the first entry with positive mass whose cumulative mass reaches ``u`` (``u > 0``).
    """
    rows, vocab = log_pi.shape
    blocks = -(-vocab // SAMPLE_BLOCK)
    padded = log_pi
    if blocks * SAMPLE_BLOCK != vocab:  # static: common vocabularies (32k, 49k, 128k, 262k) need no copy
        padded = jnp.pad(log_pi, ((0, 0), (0, blocks * SAMPLE_BLOCK - vocab)), constant_values=-jnp.inf)
    padded = padded.reshape(rows, blocks, SAMPLE_BLOCK)
    block_mass = jnp.sum(jnp.exp(padded), axis=-1)
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    u = (1.0 - jax.vmap(jax.random.uniform)(keys)) * block_cdf[:, -1]  # in (0, total]
    block = _first_reaching(block_cdf, block_mass, u)
    inside = jnp.exp(jnp.take_along_axis(padded, block[:, None, None], axis=1)[:, 0])  # [N, SAMPLE_BLOCK]
    mass_before = jnp.pad(block_cdf[:, :-1], ((0, 0), (1, 0)))  # the mass of the blocks before each block
    before = jnp.take_along_axis(mass_before, block[:, None], axis=1)
    offset = _first_reaching(before + jnp.cumsum(inside, axis=-1), inside, u)
    return (block * SAMPLE_BLOCK + offset).astype(jnp.int32)


def _first_reaching(cdf: Array, mass: Array, u: Array) -> Array:
    """Per row of ``cdf, mass [N, K]``: the first index with positive mass whose ``cdf`` reaches ``u [N]``,
    or the last index with positive mass if rounding leaves every such ``cdf`` just below ``u``."""
    positions = jnp.arange(cdf.shape[-1])
    positive = mass > 0
    first = jnp.min(jnp.where(positive & (cdf >= u[:, None]), positions, cdf.shape[-1]), axis=-1)
    last_positive = jnp.max(jnp.where(positive, positions, 0), axis=-1)
    return jnp.where(first < cdf.shape[-1], first, last_positive)


def _step_impl(model, params, policy, state, structure):
    count_trace("step")
    return _placed(_step(model, params, policy, _placed(state, state.mesh)), state.mesh)


# ``structure`` only keys the compiled code (policy_structure); ``step(..., donate=True)`` takes the donating one.
_step_jit = jax.jit(_step_impl, static_argnums=0, static_argnames="structure")
_step_donated = jax.jit(_step_impl, static_argnums=0, static_argnames="structure", donate_argnums=3)


def teacher_force(model: CausalLM, params: Any, policy: Policy, state: DecodeState, tokens) -> DecodeState:
    """``state`` after feeding ``tokens [N, L]`` column by column, each step exactly as :func:`step` runs
    except that the token is the given one instead of a sample: what the state records as ``logp_policy``
    is then log π of each given token under the policy, on the context of the tokens before it (the
    policy's own state, for stateful policies, advanced by the given tokens). One jitted ``lax.scan``;
    ``state`` is donated. Rows already done record 0, as in ``step``; ``prefill(policy=...,
    stop_tokens=())`` keeps every row live for ``max_new_tokens >= L`` steps. On a mesh ``tokens`` has a
    row for every row of the state, padding rows included (any ids: they are done from the start)."""
    policy = canonical_policy(policy)
    _check_step(policy, state)
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] != state.num_rows or not jnp.issubdtype(tokens.dtype, jnp.integer):
        padding = (
            "" if state.mesh is None else " (every row of the state, the rows that pad the mesh's data axis included)"
        )
        raise ValueError(
            f"tokens must be integer ids [rows={state.num_rows}, L]{padding}, got {tokens.dtype} {tokens.shape}"
        )
    free = None if isinstance(state.step, Tracer) else state.tokens.shape[1] - int(state.step)
    if free is not None and tokens.shape[1] > free:
        raise ValueError(
            f"{tokens.shape[1]} tokens do not fit the state's {free} free output slots; prefill with "
            "max_new_tokens >= the continuation length"
        )
    return _teacher_force_jit(model, params, policy, state, tokens, structure=policy_structure(policy))


def _teacher_force_impl(model, params, policy, state, tokens, structure):
    count_trace("teacher_force")

    def body(carry, token):
        return _placed(_step(model, params, policy, carry, token), carry.mesh), None

    return jax.lax.scan(body, _placed(state, state.mesh), tokens.T)[0]


_teacher_force_jit = jax.jit(_teacher_force_impl, static_argnums=0, static_argnames="structure", donate_argnums=3)


# --- select -----------------------------------------------------------------------------------------


def _check_rows(state: DecodeState, rows) -> Array:
    _check_state(state)
    if isinstance(rows, Tracer):
        return rows.astype(jnp.int32)
    array = np.asarray(rows)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"rows must be a non-empty 1-D array of integer row indices, got {array.dtype} {array.shape}")
    bad = array[(array < 0) | (array >= state.num_rows)]
    if bad.size:
        raise ValueError(
            f"rows {bad[:8].tolist()} are out of range: the state has {state.num_rows} rows (0..{state.num_rows - 1})"
        )
    data = 1 if state.mesh is None else sharding.axis_size(state.mesh, sharding.DATA)
    if array.size % data:
        raise ValueError(f"{array.size} rows do not split over the mesh's data axis of {data}; select a multiple")
    return jnp.asarray(array, jnp.int32)


def _select_impl(state: DecodeState, rows: Array) -> DecodeState:
    count_trace("select")
    return gather_rows(state, rows)


def gather_rows(state: DecodeState, rows: Array) -> DecodeState:
    """``select``'s gather, for use inside jitted decoders (no checks; ``rows`` int32 ``[N']``)."""
    streams = state.num_streams
    model_rows = (rows[:, None] * streams + jnp.arange(streams)[None, :]).reshape(-1)  # each row's streams
    per_row = lambda x: None if x is None else jnp.take(x, rows, axis=0)
    cache = state.cache
    cache = dataclasses.replace(
        cache,
        k=jnp.take(cache.k, model_rows, axis=1),
        v=jnp.take(cache.v, model_rows, axis=1),
        positions=jnp.take(cache.positions, model_rows, axis=0),
    )
    picked = dataclasses.replace(
        state,
        lineage=per_row(state.lineage),
        cache=cache,
        logits=per_row(state.logits),
        next_position=jnp.take(state.next_position, model_rows, axis=0),
        done=per_row(state.done),
        lengths=per_row(state.lengths),
        context=per_row(state.context),
        tokens=per_row(state.tokens),
        logp_model=per_row(state.logp_model),
        logp_policy=per_row(state.logp_policy),
        diagnostics={name: per_row(buf) for name, buf in state.diagnostics.items()},
        real=per_row(state.real),
        hidden=per_row(state.hidden),
        policy_state=jax.tree.map(per_row, state.policy_state),
    )
    return _placed(picked, state.mesh)


_select_jit = jax.jit(_select_impl)


# --- the loop ---------------------------------------------------------------------------------------


def _chunk(model, params, policy, state, chunk):
    def body(carry, _):
        return _placed(_step(model, params, policy, carry), carry.mesh), None

    return jax.lax.scan(body, state, None, length=chunk)[0]


def _placed(state: DecodeState, mesh) -> DecodeState:
    """Keeps the state on the mesh (rows on "data", KV heads on "model"; ``sharding.state_shardings``).

    The logits ``[N, S, V]`` keep their whole vocabulary on every model-axis device: the LM head
    computes them vocabulary-split and this gathers them (a copy, no arithmetic), so the policy and
    ``sample`` run the single-device computation. A cumulative sum over a split vocabulary adds in a
    different order (CDFs differ by ~1e-7), which could move a sampled token at a boundary.
    """
    return state if mesh is None else jax.lax.with_sharding_constraint(state, _state_shardings(state, mesh))


def _state_shardings(state: DecodeState, mesh) -> DecodeState:
    """``sharding.state_shardings`` (rows on "data"), with the stop ids replicated: they are not rows."""
    return dataclasses.replace(sharding.state_shardings(state, mesh), stop_tokens=NamedSharding(mesh, PartitionSpec()))


def policy_structure(policy: Policy) -> tuple:
    """The policy's pytree structure *with the class of every node*: a jit-static cache key.

    jax's treedefs of ``register_dataclass`` nodes (what ``flax.struct.dataclass`` uses) compare equal
    across classes with the same field layout (``MinP`` == ``Epsilon``, ``Temperature`` == ``TopK``),
    so when two such entries meet in jit's cache one policy can be served the other's compiled code.
    Passing this key as a static argument keeps policies of different classes apart.
    """

    def hashable(data):  # dict nodes (e.g. a discriminator's params) carry their keys as a list
        if isinstance(data, (list, tuple)):
            return tuple(hashable(x) for x in data)
        return data

    def key(treedef):
        return hashable(treedef.node_data()), tuple(key(child) for child in treedef.children())

    return key(jax.tree.structure(policy))


def _decode_loop_impl(model, params, policy, state, chunk, structure):
    count_trace("decode_loop")

    def keep_going(s):
        return (s.step < s.max_new_tokens) & ~jnp.all(s.done)

    return jax.lax.while_loop(keep_going, lambda s: _chunk(model, params, policy, s, chunk), _placed(state, state.mesh))


def _decode_chunk_impl(model, params, policy, state, chunk, structure):
    count_trace("decode_chunk")
    return _chunk(model, params, policy, _placed(state, state.mesh), chunk)


def _loop_program(loop, model, chunk: int, params, policy, state):
    """``loop`` (``_decode_loop`` or ``_decode_chunk``) for these arguments, as a function of ``(params,
    policy, state)``: saved or jitted, as :func:`_prompt_program`. The policy's structure keys both."""
    structure = policy_structure(policy)
    impl = loop.__wrapped__
    saved = compilation.saved_program(
        impl.__name__,
        functools.partial(impl, model, chunk=chunk, structure=structure),
        (repr(model), chunk, structure),
        (params, policy, state),
        donate_argnums=(2,),
    )
    return saved or _Bound(loop, (model,), {"chunk": chunk, "structure": structure})


# ``structure`` is unused in the body: it only keys the compiled code (policy_structure). The mesh is a
# static field of the state, so each mesh compiles once.
_decode_loop = jax.jit(_decode_loop_impl, static_argnums=0, static_argnames=("chunk", "structure"), donate_argnums=3)
_decode_chunk = jax.jit(_decode_chunk_impl, static_argnums=0, static_argnames=("chunk", "structure"), donate_argnums=3)
