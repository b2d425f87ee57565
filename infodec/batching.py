"""Fixed-size chunks over rows: one array shape per call, so a jitted function compiles once.

Every loop in infodec that runs more rows than fit in one call (prompts through ``generate``, texts through
a scorer, windows through the metrics) does the same four things: cut the rows into chunks of one size,
pad the last chunk by repeating its final row, run the chunk, and keep only the real rows' results. The
two functions here are that pattern, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np


def fixed_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Row indices ``[batch_size]`` covering ``range(n)`` in order, the last batch padded by repeating its
    last row; yields ``(indices, kept)`` where the first ``kept`` indices are the real rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        real = np.arange(start, min(start + batch_size, n))
        yield np.concatenate([real, np.full(batch_size - len(real), real[-1])]), len(real)


def map_in_chunks(fn: Callable[[np.ndarray, int], Any], n: int, size: int, *, rows_per_item: int = 1) -> Any:
    """Runs ``fn(indices [size], chunk_number)`` over ``range(n)`` in fixed-size chunks and joins the results.

    The last chunk is padded by repeating its final index (``fixed_batches``), so ``fn`` always sees one
    shape, ``[size]`` even when ``n < size`` (pass ``min(size, n)`` to run fewer rows instead). ``fn``
    returns an array, a list, or a tuple / dict of them, whose leading axis holds ``rows_per_item`` rows per
    index (e.g. ``num_samples`` rows per prompt); the padding rows are dropped and the chunks concatenated
    along that axis, so the result has ``n * rows_per_item`` rows in order.
    """
    if n < 1:
        raise ValueError(f"map_in_chunks needs at least one row, got n={n}")
    if size < 1:
        raise ValueError(f"map_in_chunks needs a chunk size >= 1, got size={size}")
    parts = [
        _head(fn(indices, chunk), kept * rows_per_item) for chunk, (indices, kept) in enumerate(fixed_batches(n, size))
    ]
    return _join(parts)


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
