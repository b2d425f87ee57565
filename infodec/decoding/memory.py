"""A memory plan before allocation: the bytes a decode will hold per device, checked against the device.

    plan = infodec.memory_plan(model, rows=64, max_len=544, prompt_len=32, params=params)
    print(plan)   # parameters, KV cache, decode buffers, logits, working memory, total
    plan.check()  # MemoryPlanError naming what does not fit and the largest rows that would

``generate``, ``stream``, ``beam_search``, ``contrastive_search`` and DAEMON's ``fit`` and ``sample`` run
this check before they allocate anything, so a request that cannot fit ends with one
:class:`MemoryPlanError` (a ``ValueError``) instead of an XLA out-of-memory trace; the launchers choose
``--rows_per_call`` with :func:`largest_rows` when the flag is left at its default.

What the plan counts, in bytes per device (one device's shards on a mesh):

* ``params``: the parameter leaves (``params`` given), or the config's abstract parameter tree
  (``jax.eval_shape`` of the module's init) in ``dtype``.
* ``kv_cache``: ``k, v [layers, rows x streams, kv_heads, slots, head_dim]`` in the cache dtype plus the
  int32 position of every slot; rows split over the mesh's data axis, KV heads over its model axis where
  they divide (``infodec.sharding``).
* ``buffers``: the rest of the decode state: the generated tokens, the per-step log-probabilities and
  diagnostics ``[rows, max_new_tokens]``, the context ``[rows, slots]``, and the policy's own arrays.
* ``logits``: float32 full-vocabulary arrays: the state's ``[rows, streams, V]`` and the temporaries one
  step holds live (the policy's transforms, the sampler's CDF, the log-softmax). How many there are depends
  on the policy; :data:`VOCAB_TEMPORARIES` holds the counts measured with XLA's ``memory_analysis``.
* ``working``: the step's other temporaries, beyond what XLA fits into the logits' buffers: attention
  reads one layer's keys and values back from the cache (a copy of that layer), beam search reorders the
  whole cache every step and contrastive search runs ``top_k`` rows per prompt.

A call's peak is the largest of three phases and the plan reports that one (``phase``): ``"prefill"``
(the prompt rows' cache and their logits ``[rows, prompt slots, V]``, which the model computes at every
prompt position before the last one is taken), ``"samples"`` (the prefilled cache broadcast to
``num_samples`` rows while the prompt rows' cache is still held) and ``"decode"`` (the loop).

The limit (:func:`memory_limit`) is the first of: ``$INFODEC_MEMORY_LIMIT`` (bytes, or with a unit such
as ``12G`` or ``512MiB``, per device; ``off`` turns the check off); the device's
``memory_stats()["bytes_limit"]`` less what other arrays hold there (GPU, TPU); on CPU, the host RAM
available now (cgroup limits included), shared by the mesh's CPU devices. Parameters already resident
count as available to the plan that includes them. Backends that report nothing are not checked.

The counts were calibrated on XLA:CPU, where ``tests/test_memory.py`` compares the plan with the measured
peak; GPU and TPU compilers fuse differently, so there the temporaries are an estimate.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from infodec import sharding
from infodec.decoding.state import DEFAULT_CHUNK, MIN_BUCKET, output_slots, prompt_bucket
from infodec.policies import llamacpp, standard
from infodec.policies.base import Policy, StepInfo
from infodec.policies.value import ClassifierFreeGuidance, DynamicValuePolicy, KLGuidedTemperature
from infodec.policies.value_policy import ValuePolicy

LIMIT_ENV = "INFODEC_MEMORY_LIMIT"
DECODERS = ("sample", "beam", "contrastive")
PHASES = ("prefill", "samples", "decode")

# Full-vocabulary float32 temporaries ``[rows, V]`` that one step of ``generate``'s decode loop holds live
# besides the state's logits, per sample row (the streams of a two-stream policy together): XLA:CPU's
# ``temp_size_in_bytes`` of the compiled loop divided by ``rows x V x 4``, measured at a vocabulary large
# enough for these to be all of the temporaries (V = 16384; tests/test_memory.py checks top-p and CFG). Every
# policy holds one more than its arithmetic needs: ``Policy.__call__`` masks tokens that are -inf in any stream.
VOCAB_TEMPORARIES: tuple[tuple[tuple[type, ...], float], ...] = (
    (
        (
            standard.Greedy,
            standard.Temperature,
            standard.MinP,
            standard.Epsilon,
            standard.Eta,
            standard.RepetitionPenalty,
            standard.TopK,
            llamacpp.DynamicTemperature,
            llamacpp.MirostatV2,
            llamacpp.DRY,
        ),
        5.0,
    ),
    ((llamacpp.TopNSigma,), 6.05),
    ((llamacpp.XTC,), 5.25),
    ((ClassifierFreeGuidance, DynamicValuePolicy, ValuePolicy), 6.25),
    ((standard.Typical,), 6.05),
    ((standard.TopP,), 6.35),
    ((KLGuidedTemperature,), 7.6),
)
# Policies the table does not know (custom ones, classifier guidance): a bound above every measured one.
DEFAULT_VOCAB_TEMPORARIES = 8.0
# Diagnostics buffers ``[rows, max_new_tokens]`` assumed when the policy is not given or cannot be traced (a
# bound for the built-in policies; the decoders pass it rather than trace the policy on every call).
DEFAULT_DIAGNOSTICS = 6
# Searches, per model row (prompt x beam or candidate), from the compiled loops' ``memory_analysis``: beam
# search holds log-softmax, the scores and the masked scores ``[B, K x V]``; contrastive search the ``k``
# candidates' logits and their log-softmax.
BEAM_VOCAB_TEMPORARIES = 3.1
CONTRASTIVE_VOCAB_TEMPORARIES = 1.3
_F32 = 4


class MemoryPlanError(ValueError):
    """A decode that does not fit in device memory. ``plan``: the :class:`MemoryPlan`; ``limit``: the
    :class:`MemoryLimit` it was checked against; ``largest_rows``: the most rows that fit (0 if none)."""

    def __init__(self, message: str, plan: MemoryPlan, limit: MemoryLimit, largest_rows: int):
        super().__init__(message)
        self.plan, self.limit, self.largest_rows = plan, limit, largest_rows


@dataclasses.dataclass(frozen=True)
class MemoryLimit:
    """What one device's plan may total: ``bytes``, and ``source``, where the figure comes from."""

    bytes: int
    source: str


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything a plan depends on except the rows (so :meth:`MemoryPlan.largest_rows` can re-plan)."""

    decoder: str
    width: int
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    hidden: int
    heads: int
    intermediate: int
    cache_item: int
    cache_dtype: str
    params: int
    data: int
    model_axis: int
    streams: int
    num_samples: int
    prompt_slots: int
    output_slots: int
    diagnostics: int
    needs_hidden: bool
    policy_bytes: int
    vocab_temporaries: float

    def plan(self, rows: int, limit_args: tuple[Any, Any] = (None, None)) -> MemoryPlan:
        t, out = self.prompt_slots, self.output_slots
        slots = t + out
        split = lambda count: count // self.model_axis if count % self.model_axis == 0 else count  # model axis
        kv_heads = split(self.kv_heads)
        kv_per_row = 2 * self.layers * kv_heads * slots * self.head_dim * self.cache_item  # k and v

        def cache(r: int) -> int:  # k, v, the int32 slot positions and the index
            return r * (kv_per_row + slots * 4) + 4

        def layer(r: int) -> int:  # one layer's keys and values, read back for attention
            return r * kv_per_row // self.layers

        def prefill(r: int, hidden: bool) -> dict[str, int]:
            """The prompt rows' cache, tokens and positions, the logits at every prompt position and the
            last position's (the output), and the final hidden states when asked for (float32). XLA:CPU
            reuses one buffer for the prompt logits and attention's temporaries, whichever is larger: a
            layer's keys and values, the float32 scores ``[r, heads, prompt, slots]`` about ``c`` times
            (``c`` = 2 up to 32 prompt slots, growing by 0.5 per doubling, as measured) and the MLP's
            activations."""
            full = r * t * split(self.vocab) * _F32  # the LM head's output, vocabulary-split on a model axis
            copies = 2.0 + 0.5 * max(0.0, math.log2(t / 32))
            scores = int(copies * r * split(self.heads) * t * slots * _F32)
            attention = layer(r) + scores + r * t * split(self.intermediate) * _F32
            working = max(0, attention - full) + (2 * r * t * self.hidden * _F32 if hidden else 0)
            return dict(kv_cache=cache(r), buffers=r * t * 8, logits=full + r * self.vocab * _F32, working=working)

        v = self.vocab * _F32  # one float32 row of logits
        if self.decoder == "sample":
            m, s = self.num_samples, self.streams
            step = self.data // math.gcd(m, self.data)  # sharding.padded_prompt_count: prompts fill the data axis
            prompts = -(-rows // m)
            prompts = -(-prompts // step) * step
            n = prompts * m // self.data  # sample rows per device
            r = n * s
            prompt_rows = prompts * s // self.data if (prompts * s) % self.data == 0 else prompts * s
            buffers = (
                n * out * _F32 * (3 + self.diagnostics)  # tokens, logp_model, logp_policy, diagnostics
                + n * slots * 4  # context
                + r * 4  # next_position
                + n * 5  # done, lengths
                + (n * self.hidden * _F32 if self.needs_hidden else 0)
                + 16  # step, key
                + self.policy_bytes
            )
            vocab_tmp = int(self.vocab_temporaries * n * v)
            phases = {
                "prefill": prefill(prompt_rows, self.needs_hidden),
                "decode": dict(
                    kv_cache=cache(r), buffers=buffers, logits=r * v + vocab_tmp, working=max(0, layer(r) - vocab_tmp)
                ),
            }
            if m > 1:  # the broadcast to num_samples rows holds the prompt rows' cache and logits besides the state
                phases["samples"] = dict(
                    kv_cache=cache(prompt_rows) + cache(r), buffers=buffers, logits=prompt_rows * v + r * v, working=0
                )
        else:
            b, k = rows, self.width  # prompts, beams (or candidates) per prompt
            r = b * k
            if self.decoder == "beam":
                buffers = 4 * r * out * _F32 + r * 4 + 4 * r * 4 + b + 4  # run/fin tokens and logp; scores
                vocab_tmp = int(BEAM_VOCAB_TEMPORARIES * r * v)
                # the reorder by beam origin gathers the whole cache; attention reads half a layer more
                copy = r * (kv_per_row + slots * 4) + layer(r) // 2
                decode_logits = r * v
            else:
                buffers = b * slots * (self.hidden * _F32 + 1) + 3 * b * out * _F32 + b * 9 + 4  # context_hidden
                vocab_tmp = int(CONTRASTIVE_VOCAB_TEMPORARIES * r * v)
                copy = r * kv_per_row + layer(r) + int(0.75 * r * v)
                decode_logits = b * v
            phases = {
                "prefill": prefill(b, self.decoder == "contrastive"),
                # jnp.repeat outside jit: the second of k, v is materialised twice while it is built
                "samples": dict(
                    kv_cache=cache(b) + cache(r) + r * kv_per_row // 2,
                    buffers=buffers,
                    logits=b * v + decode_logits,
                    working=0,
                ),
                "decode": dict(
                    kv_cache=cache(r),
                    buffers=buffers,
                    logits=decode_logits + vocab_tmp,
                    working=max(0, copy - vocab_tmp),
                ),
            }
        totals = {name: sum(parts.values()) for name, parts in phases.items()}
        phase = max(totals, key=lambda name: (totals[name], PHASES.index(name)))
        return MemoryPlan(
            params=self.params,
            **phases[phase],
            phase=phase,
            rows=rows,
            slots=slots,
            devices=self.data * self.model_axis,
            phase_totals=tuple((name, self.params + totals[name]) for name in PHASES if name in totals),
            _spec=self,
            _limit_args=limit_args,
        )

    def step(self) -> int:
        """Rows come in multiples of this: whole prompts of ``num_samples`` rows."""
        return self.num_samples if self.decoder == "sample" else 1

    def largest_rows(self, capacity: int) -> int:
        """The most rows (a multiple of :meth:`step`) whose plan totals at most ``capacity`` bytes; 0 if none."""
        step = self.step()
        fits = lambda units: self.plan(units * step).total <= capacity
        if not fits(1):
            return 0
        low, high = 1, 2
        while fits(high):
            low, high = high, high * 2
            if high > 1 << 40:
                return low * step
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low * step


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """The bytes one device holds at the peak of a decode (module docstring: what each field counts).

    Attributes:
      params, kv_cache, buffers, logits, working: bytes per device at the peak phase.
      phase: the peak phase, ``"prefill"``, ``"samples"`` or ``"decode"``.
      rows: the planned rows (sample rows = prompts x num_samples; prompts for the searches).
      slots: cache slots per row (the prompt's bucket plus whole chunks of output slots, as the decoders
        allocate them for ``max_len`` tokens).
      devices: devices each holding such a share (the mesh's size; 1 without a mesh).
      phase_totals: ``(phase, total bytes)`` of every phase, the peak's being :attr:`total`.
    """

    params: int
    kv_cache: int
    buffers: int
    logits: int
    working: int
    phase: str
    rows: int
    slots: int
    devices: int = 1
    phase_totals: tuple[tuple[str, int], ...] = ()
    _spec: _Spec | None = dataclasses.field(default=None, repr=False, compare=False)
    _limit_args: tuple[Any, Any] = dataclasses.field(default=(None, None), repr=False, compare=False)

    @property
    def total(self) -> int:
        """Bytes per device at the peak: the sum of the five parts."""
        return self.params + self.kv_cache + self.buffers + self.logits + self.working

    def __str__(self) -> str:
        spec = self._spec
        what = f"{self.rows} rows"
        if spec is not None and spec.decoder != "sample":
            what = f"{self.rows} prompts x {spec.width} {'beams' if spec.decoder == 'beam' else 'candidates'}"
        elif spec is not None and spec.streams > 1:
            what += f" x {spec.streams} streams"
        where = f"per device of {self.devices}" if self.devices > 1 else "on one device"
        cache = f" ({spec.cache_dtype})" if spec is not None else ""
        lines = [
            f"memory plan: {what} of {self.slots} slots, {where}, peak while {_PHASE_NAMES[self.phase]}",
            f"  parameters      {format_bytes(self.params):>11}",
            f"  KV cache        {format_bytes(self.kv_cache):>11}{cache}",
            f"  decode buffers  {format_bytes(self.buffers):>11}",
            f"  logits          {format_bytes(self.logits):>11}  (float32 [rows, V] arrays, step temporaries included)",
            f"  working         {format_bytes(self.working):>11}",
            f"  total           {format_bytes(self.total):>11}",
        ]
        others = [f"{name} {format_bytes(total)}" for name, total in self.phase_totals if name != self.phase]
        if others:
            lines.append(f"  (other phases: {', '.join(others)})")
        return "\n".join(lines)

    def fits(self, device_limit: MemoryLimit | int | None = None) -> bool:
        """Whether :attr:`total` is within ``device_limit`` (bytes, a :class:`MemoryLimit`, or None for
        :func:`memory_limit`'s; True when no limit is known)."""
        limit = self._resolve(device_limit)
        return limit is None or self.total <= limit.bytes

    def largest_rows(self, device_limit: MemoryLimit | int | None = None) -> int | None:
        """The most rows (prompts for the searches; a multiple of ``num_samples``) that fit ``device_limit``
        with everything else unchanged: 0 if not even one does, None when no limit is known."""
        limit = self._resolve(device_limit)
        if limit is None or self._spec is None:
            return None
        return self._spec.largest_rows(limit.bytes)

    def check(self, device_limit: MemoryLimit | int | None = None, *, what: str = "this decode") -> MemoryLimit | None:
        """Raises :class:`MemoryPlanError` when the plan exceeds ``device_limit`` (bytes per device, a
        :class:`MemoryLimit`, or None: the device's, :func:`memory_limit`); returns the limit used (None
        when no limit is known, e.g. ``INFODEC_MEMORY_LIMIT=off``). ``what`` names the request in the message."""
        limit = self._resolve(device_limit)
        if limit is None or self.total <= limit.bytes:
            return limit
        largest = self.largest_rows(limit) or 0
        raise MemoryPlanError(self._message(limit, largest, what), self, limit, largest)

    def _resolve(self, device_limit: MemoryLimit | int | None) -> MemoryLimit | None:
        if isinstance(device_limit, MemoryLimit):
            return device_limit
        if device_limit is None:
            mesh, params = self._limit_args
            return memory_limit(mesh, params)
        return memory_limit(limit=device_limit)

    def _message(self, limit: MemoryLimit, largest: int, what: str) -> str:
        spec = self._spec
        parts = ", ".join(
            f"{name} {format_bytes(value)}"
            for name, value in (
                ("parameters", self.params),
                ("KV cache", self.kv_cache),
                ("decode buffers", self.buffers),
                ("logits", self.logits),
                ("working", self.working),
            )
        )
        unit = "rows" if spec is None or spec.decoder == "sample" else "prompts"
        head = (
            f"{what} does not fit in device memory: {self.rows} {unit} of {self.slots} slots need "
            f"{format_bytes(self.total)} per device ({parts}; peak while {_PHASE_NAMES[self.phase]}), but "
            f"{limit.source} allows {format_bytes(limit.bytes)}."
        )
        if largest == 0:
            return (
                f"{head} Not even one {unit[:-1]} fits: the parameters alone take {format_bytes(self.params)}. "
                "Load the model in a smaller dtype (infodec.load(..., dtype='bfloat16')), split it over a "
                "mesh's model axis, or free device memory."
            )
        if spec is not None and spec.decoder == "sample" and spec.num_samples > 1:
            advice = (
                f"At most {largest} rows fit ({largest // spec.num_samples} prompts x num_samples={spec.num_samples})"
            )
        else:
            advice = f"At most {largest} {unit} fit"
        return (
            f"{head} {advice}: pass fewer per call (launchers: --rows_per_call), shorten max_new_tokens, or "
            f"set {LIMIT_ENV} if the limit is wrong."
        )


_PHASE_NAMES = {"prefill": "prefilling", "samples": "broadcasting to num_samples rows", "decode": "decoding"}


# --- the plan ---------------------------------------------------------------------------------------


def memory_plan(
    model: Any,
    *,
    rows: int,
    max_len: int,
    prompt_len: int | None = None,
    dtype: Any = None,
    cache_dtype: Any = None,
    params: Any = None,
    mesh: Any = None,
    num_streams: int | None = None,
    num_samples: int = 1,
    policy: Policy | None = None,
    decoder: str = "sample",
    width: int = 1,
    chunk: int = DEFAULT_CHUNK,
    num_diagnostics: int | None = None,
) -> MemoryPlan:
    """The bytes per device a decode of ``rows`` rows of ``max_len`` tokens will hold (module docstring).

    Args:
      model: an ``infodec.models.base.CausalLM``.
      rows: sample rows, i.e. prompts x ``num_samples`` (``generate``), or prompts (``decoder`` ``"beam"`` /
        ``"contrastive"``, each with ``width`` beams or candidates); on a mesh, all of them (they split
        over its data axis).
      max_len: the longest prompt plus ``max_new_tokens``, in tokens.
      prompt_len: the longest prompt (with a two-stream policy, evidence plus prompt); default: one
        minimal bucket (16 tokens). Slots are counted as the decoders allocate them: the prompt padded
        to its power-of-two bucket, the new tokens rounded up to whole ``chunk`` steps.
      dtype: parameter dtype when ``params`` is None (default: the model's, ``model.dtype``).
      cache_dtype: KV-cache dtype (default: ``model.cache_dtype``).
      params: the parameters; their leaves' bytes (one device's shards) are counted instead of the
        config's abstract tree. Parameters already resident also count as available in :meth:`~MemoryPlan.check`.
      mesh: a ``("data", "model")`` mesh (``infodec.sharding``): rows split over ``data``, parameters and
        KV heads over ``model``, as ``generate`` places them.
      num_streams: model rows per sample row (2 for two-stream policies); default: the policy's, else 1.
      num_samples: samples per prompt (``generate(num_samples=)``): the prompt rows are prefilled once.
      policy: the decoding policy: its temporaries (:data:`VOCAB_TEMPORARIES`), diagnostics, hidden-state
        needs and arrays are counted. Default: a bound for any policy.
      decoder: ``"sample"`` (``generate``, ``stream``), ``"beam"`` or ``"contrastive"``.
      width: ``num_beams`` or contrastive search's ``top_k``.
      chunk: decode steps per chunk (``generate``'s ``chunk``; ``stream`` uses 1).
      num_diagnostics: diagnostics buffers; default: traced from the policy, else :data:`DEFAULT_DIAGNOSTICS`.
    """
    for name, value, low in (("rows", rows, 0), ("max_len", max_len, 2), ("num_samples", num_samples, 1)):
        _check_int(name, value, low)
    _check_int("width", width, 1)
    _check_int("chunk", chunk, 1)
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if prompt_len is None:
        prompt_len = min(MIN_BUCKET, max_len - 1)
    _check_int("prompt_len", prompt_len, 1)
    if prompt_len >= max_len:
        raise ValueError(f"prompt_len ({prompt_len}) must be below max_len ({max_len}): max_len counts new tokens too")
    if decoder != "sample" and mesh is not None:
        raise ValueError(f"{decoder} search runs on one device: pass mesh=None")
    if mesh is not None:
        sharding.check_mesh(mesh)
    streams = num_streams if num_streams is not None else (policy.num_streams if policy is not None else 1)
    _check_int("num_streams", streams, 1)
    config = model.config
    cache_dtype = jnp.dtype(cache_dtype if cache_dtype is not None else _model_cache_dtype(model))
    new_slots = output_slots(max_len - prompt_len, chunk if decoder == "sample" else DEFAULT_CHUNK)
    spec = _Spec(
        decoder=decoder,
        width=width,
        layers=config.num_layers,
        kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        vocab=config.vocab_size,
        hidden=config.hidden_size,
        heads=getattr(config, "num_heads", config.num_kv_heads),
        intermediate=getattr(config, "intermediate_size", 4 * config.hidden_size),
        cache_item=cache_dtype.itemsize,
        cache_dtype=cache_dtype.name,
        params=param_bytes(model, params, dtype=dtype, mesh=mesh),
        data=sharding.axis_size(mesh, sharding.DATA),
        model_axis=sharding.axis_size(mesh, sharding.MODEL),
        streams=streams,
        num_samples=num_samples if decoder == "sample" else 1,
        prompt_slots=prompt_bucket(prompt_len),
        output_slots=new_slots,
        diagnostics=_diagnostics(policy, rows, streams, config, prompt_len, new_slots)
        if num_diagnostics is None
        else num_diagnostics,
        needs_hidden=bool(policy is not None and policy.needs_hidden),
        policy_bytes=_array_bytes(policy),
        vocab_temporaries=vocab_temporaries(policy),
    )
    return spec.plan(rows, (mesh, params))


def vocab_temporaries(policy: Policy | None) -> float:
    """Full-vocabulary float32 temporaries of one decode step per sample row for ``policy``
    (:data:`VOCAB_TEMPORARIES`; a chain counts its largest member; :data:`DEFAULT_VOCAB_TEMPORARIES`
    for policies not in the table and for None)."""
    if policy is None:
        return DEFAULT_VOCAB_TEMPORARIES
    if isinstance(policy, standard.Chain):
        return max((vocab_temporaries(t) for t in policy.transforms), default=5.0)
    for classes, count in VOCAB_TEMPORARIES:
        if type(policy) in classes:
            return count
    return DEFAULT_VOCAB_TEMPORARIES


def largest_rows(
    model: Any, *, max_len: int, limit: MemoryLimit | int | None = None, params: Any = None, mesh: Any = None, **kwargs
) -> int | None:
    """The most rows whose :func:`memory_plan` (same keywords) fits ``limit`` (bytes per device, a
    :class:`MemoryLimit`, or None: the device's, :func:`memory_limit`); a multiple of ``num_samples``;
    prompts for the searches. 0 when not even one fits; None when no limit is known (launchers then keep
    their default)."""
    plan = memory_plan(model, rows=1, max_len=max_len, params=params, mesh=mesh, **kwargs)
    return plan.largest_rows(limit)


def check_memory(model: Any, params: Any, *, rows: int, max_len: int, what: str, **kwargs) -> MemoryPlan | None:
    """What the decoders run before they allocate: plans the request (:func:`memory_plan`'s keywords) and
    raises :class:`MemoryPlanError` if it exceeds the device's limit. Returns the plan, or None without a
    limit (nothing is planned then)."""
    limit = memory_limit(kwargs.get("mesh"), params)
    if limit is None:
        return None
    plan = memory_plan(model, rows=rows, max_len=max_len, params=params, **kwargs)
    plan.check(limit, what=what)
    return plan


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _model_cache_dtype(model: Any) -> Any:
    cache = getattr(model, "cache_dtype", None)  # CausalLM.cache_dtype; configs without one: float32
    if cache is not None:
        return cache
    config = model.config
    return getattr(config, "cache_dtype", None) or getattr(config, "dtype", "float32")


def _array_bytes(tree: Any) -> int:
    """Bytes of the arrays (not the scalars) among ``tree``'s leaves, read from their metadata."""
    return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(tree) if np.ndim(x) > 0)


def _diagnostics(policy, rows, streams, config, prompt_len, new_slots) -> int:
    """The policy's diagnostics buffers (its names, plus ``pmi`` for two streams), traced abstractly."""
    if policy is None:
        return DEFAULT_DIAGNOSTICS
    count = max(rows, 1)
    slots = prompt_bucket(prompt_len) + new_slots
    hidden = jax.ShapeDtypeStruct((count, config.hidden_size), jnp.float32) if policy.needs_hidden else None
    try:
        names = jax.eval_shape(
            lambda x, c, h: policy(x, StepInfo(c, jnp.int32(0), h))[1],
            jax.ShapeDtypeStruct((count, streams, config.vocab_size), jnp.float32),
            jax.ShapeDtypeStruct((count, slots), jnp.int32),
            hidden,
        )
    except Exception:  # per-row fields of another size, custom policies: a bound will do
        return DEFAULT_DIAGNOSTICS
    return len(names) + (1 if streams == 2 else 0)


# --- parameters -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def abstract_params(model: Any) -> Any:
    """The parameter tree of ``model``'s config as ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape`` of
    the module's init: nothing is allocated)."""
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    variables = jax.eval_shape(lambda t: model.module(model.config).init(jax.random.key(0), t, t, None), tokens)
    return variables["params"]


def param_bytes(model: Any, params: Any = None, *, dtype: Any = None, mesh: Any = None) -> int:
    """Bytes of the parameters on one device: the leaves of ``params`` (their shards, on a mesh or on
    their own shardings), or without ``params`` the abstract tree of the config in ``dtype`` (default:
    each leaf's own, i.e. the model's)."""
    tree = params if params is not None else abstract_params(model)
    leaves = jax.tree.leaves(tree)
    target = jax.tree.leaves(sharding.param_shardings(model, tree, mesh)) if mesh is not None else [None] * len(leaves)
    total = 0
    for leaf, placement in zip(leaves, target):
        shape = tuple(np.shape(leaf))
        if placement is not None:
            shape = placement.shard_shape(shape)
        elif isinstance(leaf, jax.Array):
            shape = leaf.sharding.shard_shape(shape)
        item = jnp.dtype(dtype).itemsize if (dtype is not None and params is None) else np.dtype(leaf.dtype).itemsize
        total += math.prod(shape) * item
    return int(total)


def _resident_on(params: Any, device: Any) -> int:
    """Bytes of ``params``' jax arrays held on ``device``."""
    total = 0
    for leaf in jax.tree.leaves(params):
        if isinstance(leaf, jax.Array) and device in leaf.sharding.device_set:
            total += math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
    return total


def _host_resident(params: Any) -> int:
    """Bytes of ``params`` held in host memory (numpy leaves, and jax arrays on CPU devices, every copy)."""
    total = 0
    for leaf in jax.tree.leaves(params):
        if isinstance(leaf, jax.Array):
            devices = [d for d in leaf.sharding.device_set if d.platform == "cpu"]
            total += len(devices) * math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        elif isinstance(leaf, np.ndarray):
            total += leaf.nbytes
    return total


# --- the limit --------------------------------------------------------------------------------------


def memory_limit(mesh: Any = None, params: Any = None, *, limit: int | str | None = None) -> MemoryLimit | None:
    """The bytes one device's plan may total (module docstring): ``limit`` (an int, or a string as for
    ``$INFODEC_MEMORY_LIMIT``) if given, else that variable, else the device's memory less what other
    arrays hold (``params``' arrays on it count as available), else on CPU the available host RAM split
    over ``mesh``'s devices. None when the variable is ``off`` or the backend reports nothing."""
    if limit is not None:
        return MemoryLimit(parse_bytes(limit), "the given limit")
    text = os.environ.get(LIMIT_ENV, "").strip()
    if text:
        if text.lower() in ("off", "none"):
            return None
        try:
            return MemoryLimit(parse_bytes(text), f"${LIMIT_ENV}={text}")
        except ValueError as e:
            raise ValueError(f"${LIMIT_ENV}: {e}") from None
    devices = list(np.ravel(mesh.devices)) if mesh is not None else jax.local_devices()[:1]
    stats = [_stats(d) for d in devices]
    if all(s is not None and "bytes_limit" in s for s in stats):
        found = []
        for device, s in zip(devices, stats):
            assert s is not None
            others = max(0, int(s.get("bytes_in_use", 0)) - _resident_on(params, device))
            found.append((int(s["bytes_limit"]) - others, device, int(s["bytes_limit"]), others))
        capacity, device, total, others = min(found, key=lambda f: f[0])
        return MemoryLimit(
            capacity, f"{device} (bytes_limit {format_bytes(total)}, {format_bytes(others)} held by other arrays)"
        )
    if all(d.platform == "cpu" for d in devices):
        free = host_available_bytes()
        if free is None:
            return None
        held = _host_resident(params)
        share = f", shared by {len(devices)} CPU devices" if len(devices) > 1 else ""
        return MemoryLimit(
            (free + held) // len(devices),
            f"host RAM ({format_bytes(free)} available"
            + (f" plus {format_bytes(held)} of parameters it holds" if held else "")
            + f"{share})",
        )
    return None


def _stats(device: Any) -> dict | None:
    try:
        return device.memory_stats()
    except Exception:  # backends without memory statistics
        return None


def host_available_bytes() -> int | None:
    """Host RAM available now: ``MemAvailable`` (psutil where installed, else ``/proc/meminfo``), capped by
    the cgroup's limit less its usage (containers); None where neither can be read."""
    available = None
    try:
        import psutil  # optional: not a dependency of the library

        available = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        available = int(line.split()[1]) * 1024
        except OSError:
            pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_file, encoding="ascii") as f:
                cap = f.read().strip()
            with open(usage_file, encoding="ascii") as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 1 << 60:
            room = max(0, int(cap) - used)
            available = room if available is None else min(available, room)
        break
    return available


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(value: int | str) -> int:
    """``12884901888``, ``"12G"``, ``"12GB"``, ``"12GiB"``, ``"1.5t"`` -> bytes (units are powers of 1024)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(value))
        if match is None:
            raise ValueError(f"a memory limit must be bytes, optionally with a unit (K, M, G, T), got {value!r}")
        number = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if number < 1:
        raise ValueError(f"a memory limit must be at least 1 byte, got {value!r}")
    return number


def format_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(count) >= size:
            return f"{count / size:.2f} {unit}"
    return f"{int(count)} B"


__all__ = [
    "MemoryPlan",
    "MemoryPlanError",
    "MemoryLimit",
    "memory_plan",
    "memory_limit",
    "largest_rows",
    "check_memory",
    "param_bytes",
    "abstract_params",
    "vocab_temporaries",
    "host_available_bytes",
    "parse_bytes",
    "format_bytes",
    "LIMIT_ENV",
    "VOCAB_TEMPORARIES",
]
