"""Checkpoint tensors read on demand: safetensors files as lazy references, and a streaming writer.

A :class:`TensorRef` names one tensor of a safetensors file (its byte offset, stored shape and dtype)
without reading it. Architectures convert HF names into Flax parameter trees of references exactly as
they would of arrays (``.T`` for a ``[out, in]`` linear, :func:`split_columns` for a fused projection,
:func:`stack_layers` for scanned layers, :func:`select` for one expert of a fused 3-D tensor), and the
loader then reads each leaf, or each device's slice of it, straight into the target dtype: bytes are read
with ``readinto`` into a fresh buffer (not memory-mapped, so the page cache never counts as the process's
memory) and only the rows a slice needs.

The safetensors layout: an 8-byte little-endian header size, a JSON header mapping each name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data section that follows), then
the raw little-endian data.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (corrupt, truncated or in an unsupported format)."""


STORED_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in STORED_DTYPES.items()}


def _full_index(index: Any, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``index`` (None, or a tuple of unit-step slices as jax passes them) with every bound made explicit."""
    index = tuple(index or ())
    index = index + (slice(None),) * (len(shape) - len(index))
    bounds = []
    for item, size in zip(index, shape):
        start, stop, step = item.indices(size)
        if step != 1:
            raise ValueError(f"only unit-step slices can be read from a checkpoint, got {item}")
        bounds.append(slice(start, stop))
    return tuple(bounds)


def _transposed(data: np.ndarray) -> np.ndarray:
    """A contiguous transpose. ml_dtypes' bfloat16 has no fast copy loop in numpy (10x slower than a
    uint16 one), so the bits are moved as unsigned integers of the same width."""
    bits = np.dtype(f"u{data.dtype.itemsize}")
    return np.ascontiguousarray(data.view(bits).T).view(data.dtype)


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """One tensor of a safetensors file, not yet read.

    Attributes:
      path: the file.
      offset: absolute byte offset of the tensor's data in the file.
      stored_shape, stored_dtype: as the file stores it.
      name: the tensor's name in the file (for error messages).
      transposed: a transposed view of a 2-D tensor (``.T``).
      columns: ``(start, stop)``, a range of the last stored axis (a slice of a fused projection).
      rows: ``(start, stop)``, a range of the first stored axis (a part of a fused ``[out, in]`` projection).
    """

    path: Path
    offset: int
    stored_shape: tuple[int, ...]
    stored_dtype: np.dtype
    name: str
    transposed: bool = False
    columns: tuple[int, int] | None = None
    rows: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.stored_shape)
        if self.columns is not None:
            shape[-1] = self.columns[1] - self.columns[0]
        if self.rows is not None:
            shape[0] = self.rows[1] - self.rows[0]
        return tuple(reversed(shape)) if self.transposed else tuple(shape)

    @property
    def ndim(self) -> int:
        return len(self.stored_shape)

    @property
    def dtype(self) -> np.dtype:
        return self.stored_dtype

    @property
    def T(self) -> TensorRef:  # noqa: N802 (mirrors ndarray.T, so converters treat arrays and refs alike)
        if self.ndim != 2:
            raise ValueError(f"{self.name}: only 2-D tensors transpose, this one has shape {self.stored_shape}")
        return dataclasses.replace(self, transposed=not self.transposed)

    def read(self, index: Any = None, dtype: Any = None) -> np.ndarray:
        """The slice ``index`` (of :attr:`shape`; None = all) as a fresh array of ``dtype`` (default: stored).

        Reads only the stored rows the slice touches; a column slice of a row-major tensor still reads
        those rows whole, then keeps its columns.
        """
        index = _full_index(index, self.shape)
        stored = tuple(reversed(index)) if self.transposed else index
        if self.columns is not None:
            last = stored[-1]
            stored = (*stored[:-1], slice(last.start + self.columns[0], last.stop + self.columns[0]))
        if self.rows is not None:
            first = stored[0]
            stored = (slice(first.start + self.rows[0], first.stop + self.rows[0]), *stored[1:])
        if not stored:  # a scalar
            data = self._read_rows(0, 1).reshape(())
        else:
            data = self._read_rows(stored[0].start, stored[0].stop)[(slice(None), *stored[1:])]
        data = data.astype(dtype or self.stored_dtype, copy=False)
        return _transposed(data) if self.transposed else np.ascontiguousarray(data)

    def _read_rows(self, start: int, stop: int) -> np.ndarray:
        row_shape = self.stored_shape[1:]
        row_bytes = math.prod(row_shape) * self.stored_dtype.itemsize
        buffer = np.empty((max(stop - start, 0), *row_shape), self.stored_dtype)
        with open(self.path, "rb") as handle:
            handle.seek(self.offset + start * row_bytes)
            read = handle.readinto(buffer.reshape(-1).view(np.uint8).data)
        if read != buffer.nbytes:
            raise CheckpointError(
                f"{self.path}: tensor {self.name!r} is cut short ({read} of {buffer.nbytes} bytes read); "
                "the file is corrupt or truncated: delete it and fetch it again"
            )
        return buffer


@dataclasses.dataclass(frozen=True)
class StackedRef:
    """References stacked along a new leading axis (the parameters of scanned layers, or the experts of a
    mixture-of-experts layer; a stack of stacks for the experts of scanned layers)."""

    parts: tuple[TensorRef | StackedRef, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.parts), *self.parts[0].shape)

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    def read(self, index: Any = None, dtype: Any = None) -> np.ndarray:
        index = _full_index(index, self.shape)
        layers = range(len(self.parts))[index[0]]
        return np.stack([self.parts[i].read(index[1:], dtype) for i in layers])


LazyTensor = TensorRef | StackedRef


def is_lazy(x: Any) -> bool:
    return isinstance(x, (TensorRef, StackedRef))


def split_columns(x: Any, parts: int) -> list[Any]:
    """``x`` split into ``parts`` equal ranges of its last axis: array views, or references."""
    if not isinstance(x, TensorRef):
        return list(np.split(np.asarray(x), parts, axis=-1))
    if x.transposed:
        raise ValueError(f"{x.name}: split a tensor's columns before transposing it")
    width = x.shape[-1] // parts
    start = x.columns[0] if x.columns else 0
    return [dataclasses.replace(x, columns=(start + i * width, start + (i + 1) * width)) for i in range(parts)]


def split_rows(x: Any, sizes: Iterable[int]) -> list[Any]:
    """``x`` cut into consecutive ranges of ``sizes`` rows (first axis), e.g. a fused ``[q + k + v, in]``
    projection into its parts (call before ``.T``): array views, or references."""
    sizes = list(sizes)
    if sum(sizes) != x.shape[0]:
        raise ValueError(f"row sizes {sizes} do not add up to the {x.shape[0]} rows of a tensor of shape {x.shape}")
    bounds = np.cumsum([0, *sizes]).tolist()
    if not isinstance(x, TensorRef):
        return list(np.split(np.asarray(x), bounds[1:-1], axis=0))
    if x.transposed or (x.columns is not None and x.ndim == 1):
        raise ValueError(f"{x.name}: split a tensor's rows before transposing or slicing it")
    start = x.rows[0] if x.rows else 0
    return [dataclasses.replace(x, rows=(start + a, start + b)) for a, b in zip(bounds[:-1], bounds[1:])]


def select(x: Any, index: int) -> Any:
    """``x[index]``, one entry of the first axis (e.g. one expert of a fused ``[E, ...]`` tensor): an array
    view, or a reference to that entry's bytes alone (the entries of a row-major tensor are contiguous), so
    reading it reads that entry only. Select before splitting or transposing."""
    if not isinstance(x, TensorRef):
        return np.asarray(x)[index]
    if x.transposed or x.columns is not None or x.rows is not None or x.ndim < 2:
        raise ValueError(f"{x.name}: select an entry of a stored tensor of 2 or more axes before slicing it")
    if not 0 <= index < x.stored_shape[0]:
        raise IndexError(f"{x.name}: entry {index} of a first axis of {x.stored_shape[0]}")
    inner = x.stored_shape[1:]
    offset = x.offset + index * math.prod(inner) * x.stored_dtype.itemsize
    return dataclasses.replace(x, offset=offset, stored_shape=inner, name=f"{x.name}[{index}]")


def stack_layers(leaves: Iterable[Any]) -> Any:
    """Stacks per-layer leaves along a new axis: a :class:`StackedRef` of references (or of stacks of
    references), else an array."""
    leaves = list(leaves)
    if all(isinstance(leaf, TensorRef) for leaf in leaves) or all(isinstance(leaf, StackedRef) for leaf in leaves):
        return StackedRef(tuple(leaves))
    return np.stack([np.asarray(leaf.read() if is_lazy(leaf) else leaf) for leaf in leaves])


# --- reading -------------------------------------------------------------------------------------


def read_header(file: Path) -> dict[str, TensorRef]:
    """The tensors of one safetensors file as references, after checking the header against the file size."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_size <= 0 or 8 + header_size > size:
                raise ValueError(f"a header of {header_size} bytes does not fit in a file of {size} bytes")
            header = json.loads(handle.read(header_size))
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"could not read {file}: {error}. The file is corrupt or truncated; delete it and fetch it again"
        ) from error
    data_start, data_size = 8 + header_size, size - 8 - header_size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in STORED_DTYPES:
            raise CheckpointError(
                f"{file}: tensor {name!r} has dtype {info.get('dtype')}; readable: {', '.join(STORED_DTYPES)}"
            )
        dtype, shape = STORED_DTYPES[info["dtype"]], tuple(int(n) for n in info["shape"])
        begin, end = info["data_offsets"]
        if end > data_size:
            raise CheckpointError(
                f"{file}: tensor {name!r} ends at byte {end} of a data section of {data_size} bytes; the file "
                "is corrupt or truncated: delete it and fetch it again"
            )
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(
                f"{file}: tensor {name!r} spans {end - begin} bytes but {info['dtype']}{list(shape)} needs "
                f"{math.prod(shape) * dtype.itemsize}: the header is corrupt"
            )
        tensors[name] = TensorRef(file, data_start + begin, shape, dtype, name)
    return tensors


INDEX_FILE = "model.safetensors.index.json"


def read_directory(directory: Path) -> dict[str, TensorRef]:
    """Every tensor of an HF directory as a reference: the files its ``model.safetensors.index.json``
    names (each tensor where the index says it is), or else every ``*.safetensors`` file."""
    index_path = directory / INDEX_FILE
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"could not read {index_path}: {error!r}") from error
        tensors = {}
        for filename in sorted(set(weight_map.values())):
            if not (directory / filename).exists():
                raise CheckpointError(f"{index_path} names {filename}, which is not in {directory}")
            in_file = read_header(directory / filename)
            for name in (n for n, f in weight_map.items() if f == filename):
                if name not in in_file:
                    raise CheckpointError(f"{index_path} puts tensor {name!r} in {filename}, which does not hold it")
                tensors[name] = in_file[name]
        return tensors
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"{directory}: no *.safetensors weights (PyTorch .bin checkpoints are not read; convert them with "
            "transformers' save_pretrained(safe_serialization=True))"
        )
    return {name: ref for file in files for name, ref in read_header(file).items()}


# --- writing -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorWriter:
    """One tensor to write: its name, shape, dtype, and a function yielding its data as row blocks (in order)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    blocks: Callable[[], Iterator[np.ndarray]]


def write_safetensors(path: Path, tensors: Iterable[TensorWriter], metadata: Mapping[str, str] | None = None) -> None:
    """Writes a safetensors file block by block, so no tensor (let alone the model) is ever whole in memory."""
    tensors = list(tensors)
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for tensor in tensors:
        size = math.prod(tensor.shape) * np.dtype(tensor.dtype).itemsize
        header[tensor.name] = {
            "dtype": _NAMES[np.dtype(tensor.dtype)],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as out:
        out.write(len(encoded).to_bytes(8, "little"))
        out.write(encoded)
        for tensor in tensors:
            written = 0
            for block in tensor.blocks():
                block = np.ascontiguousarray(block, dtype=tensor.dtype)
                out.write(block.reshape(-1).view(np.uint8).data)
                written += block.size
            if written != math.prod(tensor.shape):
                raise ValueError(f"{tensor.name}: wrote {written} values for shape {tensor.shape}")
