"""Fixed-size chunks over rows: one array shape per call, so a jitted function compiles once.

Every loop in infodec that runs more rows than fit in one call (prompts through ``generate``, texts through
a scorer, windows through the metrics) does the same four things: cut the rows into chunks of one size,
pad the last chunk by repeating its final row, run the chunk, and keep only the real rows' results. The
two functions here are that pattern, once.

Long studies run for hours in chunks, so :func:`checkpointed_chunks` makes the chunks survive an
interruption: inside its block every outermost :func:`map_in_chunks` call labelled ``checkpoint=`` saves
each finished chunk's result to a folder, and rerunning the same block after a crash loads the finished
chunks instead of recomputing them. That is exact only for chunk functions that depend on nothing but
their rows and chunk number (a PRNG key folded per chunk, not one carried from the previous chunk), which
is how every chunked loop in infodec is written.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from infodec.cache import atomic_file, path_part


def fixed_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Row indices ``[batch_size]`` covering ``range(n)`` in order, the last batch padded by repeating its
    last row; yields ``(indices, kept)`` where the first ``kept`` indices are the real rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        real = np.arange(start, min(start + batch_size, n))
        yield np.concatenate([real, np.full(batch_size - len(real), real[-1])]), len(real)


def map_in_chunks(
    fn: Callable[[np.ndarray, int], Any], n: int, size: int, *, rows_per_item: int = 1, checkpoint: str | None = None
) -> Any:
    """Runs ``fn(indices [size], chunk_number)`` over ``range(n)`` in fixed-size chunks and joins the results.

    The last chunk is padded by repeating its final index (``fixed_batches``), so ``fn`` always sees one
    shape, ``[size]`` even when ``n < size`` (pass ``min(size, n)`` to run fewer rows instead). ``fn``
    returns an array, a list, or a tuple / dict of them, whose leading axis holds ``rows_per_item`` rows per
    index (e.g. ``num_samples`` rows per prompt); the padding rows are dropped and the chunks concatenated
    along that axis, so the result has ``n * rows_per_item`` rows in order.

    ``checkpoint``: a label naming what the call computes (``"decode-greedy"``); inside a
    :func:`checkpointed_chunks` block such a call saves every finished chunk and reuses the saved ones.
    Unlabelled calls (cheap ones, whose position in a study may vary) are never saved.
    """
    if n < 1:
        raise ValueError(f"map_in_chunks needs at least one row, got n={n}")
    if size < 1:
        raise ValueError(f"map_in_chunks needs a chunk size >= 1, got size={size}")
    store = _CHECKPOINTS.get()
    if store is None or checkpoint is None:
        parts = [
            _head(fn(indices, chunk), kept * rows_per_item)
            for chunk, (indices, kept) in enumerate(fixed_batches(n, size))
        ]
        return _join(parts)
    call = store.next_call(f"{checkpoint}-n{n}-size{size}-rows{rows_per_item}")
    parts = []
    for chunk, (indices, kept) in enumerate(fixed_batches(n, size)):
        saved = store.folder / f"{call}-chunk{chunk:05d}.npz"
        if saved.exists():
            parts.append(_load_chunk(saved))
            continue
        token = _CHECKPOINTS.set(None)  # calls nested inside a chunk are part of that chunk's result
        try:
            part = _head(fn(indices, chunk), kept * rows_per_item)
        finally:
            _CHECKPOINTS.reset(token)
        _save_chunk(saved, part)
        parts.append(part)
    return _join(parts)


def _save_chunk(path: Path, part: Any) -> None:
    """Writes a chunk's result (arrays in tuples, dicts with string keys and lists) atomically as a
    compressed ``.npz``: the arrays, plus the nesting as JSON. No pickle, so a chunk file from elsewhere (a
    results folder committed mid-run and resumed from a fresh clone) loads as data and cannot run code."""
    arrays: dict[str, np.ndarray] = {}

    def layout(x: Any) -> Any:
        if isinstance(x, tuple | list):
            return {type(x).__name__: [layout(v) for v in x]}
        if isinstance(x, Mapping):
            if not all(isinstance(k, str) for k in x):
                raise TypeError(f"a checkpointed chunk's dicts need string keys, got {list(x)}")
            return {"dict": {k: layout(v) for k, v in x.items()}}
        array = np.asarray(x)
        if array.dtype == object:
            raise TypeError("a checkpointed chunk holds arrays of numbers, bools or strings, not Python objects")
        arrays[f"a{len(arrays)}"] = array
        return f"a{len(arrays) - 1}"

    structure = json.dumps(layout(part))
    with atomic_file(path, "wb") as f:
        arrays["__layout__"] = np.array(structure)
        # allow_pickle is numpy's keyword, never one of these names (a0, a1, ...): pyright cannot tell.
        np.savez_compressed(f, **arrays)  # pyright: ignore[reportArgumentType]


def _load_chunk(path: Path) -> Any:
    with np.load(path, allow_pickle=False) as saved:
        arrays = {name: saved[name] for name in saved.files}

    def build(spec: Any) -> Any:
        if isinstance(spec, str):
            return arrays[spec]
        (kind, inner), *_ = spec.items()
        if kind == "dict":
            return {k: build(v) for k, v in inner.items()}
        return (tuple if kind == "tuple" else list)(build(v) for v in inner)

    return build(json.loads(str(arrays.pop("__layout__"))))


class _ChunkStore:
    """The folder of one :func:`checkpointed_chunks` block and how many calls of each signature (label,
    rows, chunk size) it has made: the n-th such call's chunks are saved as ``<signature>-<n>-chunk<i>``."""

    def __init__(self, folder: Path):
        self.folder, self.calls = folder, collections.Counter()

    def next_call(self, signature: str) -> str:
        self.calls[signature] += 1
        return f"{path_part(signature)}-{self.calls[signature] - 1}"


_CHECKPOINTS: contextvars.ContextVar[_ChunkStore | None] = contextvars.ContextVar("chunk_checkpoints", default=None)


@contextlib.contextmanager
def checkpointed_chunks(folder: str | Path) -> Iterator[Path]:
    """Within the block, every outermost :func:`map_in_chunks` call with a ``checkpoint`` label keeps each
    finished chunk in ``folder``.

    A chunk is saved (a compressed ``.npz``, written atomically, never pickled) as soon as it finishes, named by
    the call's signature (label, ``n``, ``size``, ``rows_per_item``), how many calls of that signature the block
    made before it, and the chunk's number; a rerun of the same block finds it and loads it instead of calling
    ``fn``. So an interrupted block, rerun, repeats only the chunk that was running. Calls made inside a chunk
    are not saved separately (they belong to that chunk's result and would not run once it is loaded). The block
    must make its labelled calls in the same order each time, with chunk functions that depend only on their
    rows and chunk number. Deleting ``folder`` once the block's result is stored is the caller's job."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    token = _CHECKPOINTS.set(_ChunkStore(path))
    try:
        yield path
    finally:
        _CHECKPOINTS.reset(token)


def _head(result: Any, rows: int) -> Any:
    if isinstance(result, tuple):
        return tuple(_head(r, rows) for r in result)
    if isinstance(result, Mapping):
        return {k: _head(v, rows) for k, v in result.items()}
    if isinstance(result, list):
        return result[:rows]
    return np.asarray(result)[:rows]


def _join(parts: list) -> Any:
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(_join([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, Mapping):
        return {k: _join([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [item for p in parts for item in p]
    return np.concatenate(parts)
