"""Scale-out: a device mesh with a data axis and a model axis, and where every array lives on it.

Two mesh axes:

* ``"data"`` splits the rows of the decode state (prompts x samples x streams): every device group
  on the data axis decodes its own rows, with no communication between groups.
* ``"model"`` splits the parameters tensor-parallel (Megatron style): attention heads (q/k/v columns,
  o-proj rows), the MLP width (gate/up columns, down rows) and the vocabulary (embedding rows,
  LM-head columns). A dimension is split only when its count (heads, KV heads, MLP width, vocabulary)
  is a multiple of the model-axis size; otherwise that tensor is replicated (SmolLM2-135M has 9 heads
  and 3 KV heads, so on a model axis of 2 or 4 only its MLP and vocabulary are split). Norms,
  position embeddings and output biases are replicated.

Typical use::

    mesh = sharding.make_mesh(data=4, model=2)          # 8 devices
    params = sharding.shard_params(model, params, mesh)  # once; generate() would do it per call
    out = infodec.generate(model, params, prompts, policy, key, max_new_tokens=64, mesh=mesh)

``generate`` pads the rows to a multiple of the data-axis size (copies of the last prompt, dropped
from the output) and keeps the decode state on the mesh with ``with_sharding_constraint`` inside the
jitted loop; the mesh is a static jit argument. Results equal single-device results: the logits are
gathered over the vocabulary before the policy and the sampler see them, so sampling is exact.

Multi-host (TPU pod slices, several GPU hosts): every process calls :func:`initialize_distributed`
first, decodes :func:`host_slice` of the global prompt list on a mesh of its *local* devices
(:func:`make_mesh` uses ``jax.local_devices()``), and writes its own results. Parameters are
replicated per host; one model split over devices of several hosts is not supported by ``generate``
(its outputs are fetched to the host, which needs addressable arrays).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from infodec.models.layers import KVCache

# The parameter rules live beside the models (the loader places tensors by them); re-exported here.
from infodec.models.partitioning import AXES as AXES
from infodec.models.partitioning import DATA as DATA
from infodec.models.partitioning import MODEL as MODEL
from infodec.models.partitioning import axis_size as axis_size
from infodec.models.partitioning import check_mesh as check_mesh
from infodec.models.partitioning import param_shardings as param_shardings
from infodec.models.partitioning import param_spec as param_spec

# --- meshes -----------------------------------------------------------------------------------------


def make_mesh(data: int | None = None, model: int = 1, devices: Sequence[Any] | np.ndarray | None = None) -> Mesh:
    """A ``Mesh`` of shape ``(data, model)`` with axes ``("data", "model")``.

    Args:
      data: size of the data axis; None uses every device not taken by ``model``.
      model: size of the model (tensor-parallel) axis.
      devices: the devices to lay out; default ``jax.local_devices()`` (this process's devices: in a
        multi-host job every process builds its own mesh and decodes its :func:`host_slice`).

    Raises ValueError when ``data * model`` is not the number of devices.
    """
    devices = list(np.ravel(np.asarray(jax.local_devices() if devices is None else devices, dtype=object)))
    count = len(devices)
    for name, size in (("model", model), ("data", data)):
        if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1):
            raise ValueError(f"mesh {name} axis size must be an integer >= 1, got {size!r}")
    if data is None:
        if count % model:
            raise ValueError(
                f"a model axis of {model} does not divide the {count} available devices; "
                f"choose a model size among {[d for d in range(1, count + 1) if count % d == 0]}"
            )
        data = count // model
    if data * model != count:
        raise ValueError(
            f"mesh data:{data} x model:{model} needs {data * model} devices, but {count} are "
            f"available; the product must equal the device count (pass devices=... to use a subset)"
        )
    types = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((int(data), int(model)), AXES, axis_types=types, devices=devices)


def parse_mesh(spec: str) -> dict[str, int | None] | None:
    """Parses a launcher flag ``"data:N,model:M"`` into ``make_mesh`` keywords.

    ``""`` means a single device (returns None); an axis left out takes its default (``data``: the
    remaining devices, ``model``: 1), so ``"model:2"`` is tensor-parallel over 2 and data-parallel over
    the rest. Use as ``mesh = make_mesh(**spec) if (spec := parse_mesh(flag)) else None``.
    """
    if not isinstance(spec, str):
        raise ValueError(f"mesh spec must be a string like 'data:4,model:2', got {spec!r}")
    spec = spec.strip()
    if not spec:
        return None
    sizes: dict[str, int | None] = {}
    for part in spec.split(","):
        name, sep, value = (s.strip() for s in part.partition(":"))
        if not sep or not name or not value:
            raise ValueError(f"bad mesh spec {spec!r}: each entry must be AXIS:SIZE, e.g. 'data:4,model:2'")
        if name not in AXES:
            raise ValueError(f"bad mesh spec {spec!r}: unknown axis {name!r}; axes are {', '.join(AXES)}")
        if name in sizes:
            raise ValueError(f"bad mesh spec {spec!r}: axis {name!r} given twice")
        if not re.fullmatch(r"\d+", value) or int(value) < 1:
            raise ValueError(f"bad mesh spec {spec!r}: size of {name!r} must be an integer >= 1, got {value!r}")
        sizes[name] = int(value)
    return {"data": sizes.get(DATA), "model": sizes.get(MODEL, 1)}


# --- parameters -------------------------------------------------------------------------------------


def shard_params(model: Any, params: Any, mesh: Mesh) -> Any:
    """``params`` placed on ``mesh`` by :func:`param_shardings` (a no-op for leaves already there)."""
    return jax.device_put(params, param_shardings(model, params, check_mesh(mesh)))


# --- rows, caches and the decode state -------------------------------------------------------------


def _data_spec(size: int, mesh: Mesh) -> str | None:
    return DATA if size % axis_size(mesh, DATA) == 0 else None


def batch_spec(shape: tuple[int, ...], mesh: Mesh, axis: int = 0) -> P:
    """``shape`` with axis ``axis`` (the rows) on ``"data"`` when divisible by its size, else replicated."""
    if len(shape) <= axis:
        return P()
    spec: list[str | None] = [None] * len(shape)
    spec[axis] = _data_spec(shape[axis], mesh)
    return P(*spec)


def batch_sharding(shape: tuple[int, ...], mesh: Mesh, axis: int = 0) -> NamedSharding:
    """``NamedSharding`` of :func:`batch_spec` (e.g. prompt tokens ``[R, T]`` before prefill)."""
    return NamedSharding(mesh, batch_spec(shape, mesh, axis))


def cache_shardings(cache: KVCache, mesh: Mesh) -> KVCache:
    """``KVCache`` of shardings: ``k, v [L, B, KVH, S, D]`` with ``B`` on ``"data"`` and ``KVH`` on
    ``"model"`` (each when divisible), ``positions [B, S]`` with ``B`` on ``"data"``, ``index`` replicated."""
    layers, batch, kv_heads, slots, dim = cache.k.shape
    kv_spec = P(None, _data_spec(batch, mesh), MODEL if kv_heads % axis_size(mesh, MODEL) == 0 else None)
    # The result is the cache's pytree with a sharding at each leaf, not arrays: typed Any.
    kv: Any = NamedSharding(mesh, kv_spec)
    positions: Any = NamedSharding(mesh, batch_spec(cache.positions.shape, mesh))
    index: Any = NamedSharding(mesh, P())
    return KVCache(k=kv, v=kv, positions=positions, index=index)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """Shardings for a decode state (or any pytree of row-major arrays): ``KVCache`` nodes by
    :func:`cache_shardings`, every other leaf with its leading (row) axis on ``"data"`` when divisible,
    scalars replicated. Leaves may be arrays, tracers or ``ShapeDtypeStruct``s."""

    def leaf(x):
        if isinstance(x, KVCache):
            return cache_shardings(x, mesh)
        return NamedSharding(mesh, batch_spec(np.shape(x), mesh))

    return jax.tree.map(leaf, state, is_leaf=lambda x: isinstance(x, KVCache))


def with_shardings(shapes: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct``s of ``shapes`` carrying ``shardings`` (for ``jit(...).lower``)."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def padded_prompt_count(num_prompts: int, num_samples: int, mesh: Mesh | None) -> int:
    """The smallest ``P' >= num_prompts`` with ``P' * num_samples`` a multiple of the data-axis size:
    the engine decodes ``P' - num_prompts`` extra copies of the last prompt so the rows split evenly."""
    data = axis_size(mesh, DATA)
    step = data // math.gcd(num_samples, data)
    return -(-num_prompts // step) * step


def _zeros_cache_impl(model, batch, max_len, mesh):
    cache = model.init_cache(batch, max_len)
    return jax.lax.with_sharding_constraint(cache, cache_shardings(cache, mesh))


_zeros_cache = jax.jit(_zeros_cache_impl, static_argnums=(0, 1, 2, 3))


def init_cache(model: Any, batch: int, max_len: int, mesh: Mesh) -> KVCache:
    """``model.init_cache(batch, max_len)`` created directly in its :func:`cache_shardings` (no full copy
    on one device first)."""
    return _zeros_cache(model, batch, max_len, mesh)


# --- multi-host -------------------------------------------------------------------------------------


def initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None, **kwargs
) -> tuple[int, int]:
    """Joins a multi-process JAX job (``jax.distributed.initialize``); returns ``(process_index,
    process_count)``.

    Call it first, before anything touches a device. On TPU pods, SLURM and similar clusters every
    argument is detected (call with none); elsewhere pass the coordinator ``"host:port"``, the number
    of processes and this process's id, the same on every host except ``process_id``::

        # on host i of 2
        sharding.initialize_distributed("10.0.0.1:1234", num_processes=2, process_id=i)
        mine = sharding.host_slice(all_prompts)
        out = infodec.generate(model, params, mine, policy, key, max_new_tokens=64,
                               mesh=sharding.make_mesh(model=2))   # this host's devices

    ``num_processes=1`` (or an already initialised job) is a no-op. Extra keywords go to
    ``jax.distributed.initialize``.
    """
    if num_processes == 1 or jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    return jax.process_index(), jax.process_count()


def host_slice(items: Sequence[Any], process_index: int | None = None, process_count: int | None = None) -> list:
    """This process's contiguous share of a global list (e.g. prompts): ``len(items)`` split into
    ``process_count`` nearly equal blocks (the first ``len % count`` one item longer), in order, so
    concatenating every process's results in process order restores the global order. Defaults:
    ``jax.process_index()`` and ``jax.process_count()``."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"process_count must be an integer >= 1, got {count!r}")
    if not isinstance(index, (int, np.integer)) or not 0 <= index < count:
        raise ValueError(f"process_index must be in [0, {count}), got {index!r}")
    items = list(items)
    base, extra = divmod(len(items), count)
    start = index * base + min(index, extra)
    return items[start : start + base + (index < extra)]
