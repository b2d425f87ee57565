"""Opt-in persistent XLA compilation cache, saved programs, and what compilation costs a call.

A decode loop over the 30 unrolled layers of SmolLM2 takes seconds to compile on a 2-core CPU. With
the persistent cache a later process loads the compiled executable from disk instead. It changes JAX's
global configuration, so the library never turns it on by itself; launchers and notebooks call
``enable_compilation_cache()``. :func:`compile_time` measures how much of a first call is compilation.

Even with every executable on disk, a new process still traces the Python (a second or more for 30
unrolled layers) and lowers it to find the cache entry. :func:`saved_program` skips both: the first
call of a program for one signature exports it (``jax.export``) into the cache folder, and a later
process deserialises it and calls it, so only loading the executable remains. A saved program is keyed
by its name, a static key (what a jit would take as static arguments), the arguments' tree, shapes,
dtypes and placement, and the versions of infodec's source, jax and ``XLA_FLAGS``; any change makes a
new entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
from jax import export, monitoring

from infodec.cache import cache_dir

_saved_programs_dir: Path | None = None


def enable_compilation_cache(directory: str | os.PathLike | None = None, *, saved_programs: bool = True) -> Path:
    """Caches compiled executables in ``directory`` (default ``$INFODEC_CACHE/xla``); returns it.

    ``saved_programs``: also keep the engine's prefill and decode-loop programs in ``directory/programs``
    (:func:`saved_program`), so a later process skips tracing them."""
    path = Path(directory) if directory is not None else cache_dir() / "xla"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every executable: the default thresholds skip quick compiles, and prefill is one of them.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    save_programs(path / "programs" if saved_programs else None)
    return path


def save_programs(directory: str | os.PathLike | None) -> None:
    """Keeps saved programs (:func:`saved_program`) in ``directory``; None turns them off. Programs this
    process already loaded stay loaded (:func:`forget_saved_programs`)."""
    global _saved_programs_dir
    _saved_programs_dir = None if directory is None else Path(directory)


@dataclasses.dataclass(frozen=True)
class SavedProgram:
    """A program exported for one signature: call it with arguments of that signature (same tree,
    shapes, dtypes, placement) and it returns what the original function returns."""

    call: Callable  # jax.jit of the exported program over the flat argument leaves
    in_tree: Any
    out_tree: Any

    def __call__(self, *args):
        leaves, tree = jax.tree.flatten(args)
        if tree != self.in_tree:
            raise ValueError(f"saved program called with arguments {tree}, saved for {self.in_tree}")
        return jax.tree.unflatten(self.out_tree, self.call(*leaves))

    def lower(self, *args):
        """``jax.jit(...).lower`` of the program for ``args`` (arrays or ``ShapeDtypeStruct``s)."""
        return self.call.lower(*jax.tree.leaves(args))


_loaded: dict[str, SavedProgram] = {}
_lock = threading.Lock()


def saved_program(
    name: str, function: Callable, static_key: Any, args: tuple, donate_argnums: tuple[int, ...] = ()
) -> SavedProgram | None:
    """``function(*args)`` as a :class:`SavedProgram`, loaded from the cache folder or exported into it;
    None when saved programs are off (:func:`enable_compilation_cache`) or the arguments are not all
    single-device arrays (then the caller runs its own jit).

    Args:
      name: the program's name (part of the key and of the file name).
      function: the function of the dynamic arguments, its static ones already bound.
      static_key: everything ``function`` closes over that changes the program, as a value whose
        ``repr`` is stable across processes (e.g. a model's config and a policy's structure).
      args: the dynamic arguments, arrays or ``ShapeDtypeStruct``s with shardings (for compiling ahead).
      donate_argnums: arguments whose buffers the program may reuse, as for ``jax.jit``.
    """
    if any(not 0 <= i < len(args) for i in donate_argnums):
        raise ValueError(f"donate_argnums {donate_argnums} must index the {len(args)} arguments")
    if _saved_programs_dir is None or jax.config.jax_disable_jit:  # pyright: ignore[reportAttributeAccessIssue]
        return None
    leaves, in_tree = jax.tree.flatten(args)
    signature = [_leaf_signature(leaf) for leaf in leaves]
    if any(s is None for s in signature):
        return None
    key = hashlib.sha256(repr((name, static_key, in_tree, signature, _versions())).encode()).hexdigest()[:32]
    with _lock:
        if key in _loaded:
            return _loaded[key]
        program = _load(_saved_programs_dir / f"{name}-{key}.pkl", in_tree) or _export(
            _saved_programs_dir / f"{name}-{key}.pkl", function, in_tree, leaves
        )
        if program is None:
            return None
        starts = [0, *itertools.accumulate(len(jax.tree.leaves(arg)) for arg in args)]
        donated = tuple(j for i in sorted(donate_argnums) for j in range(starts[i], starts[i + 1]))
        saved = SavedProgram(jax.jit(program[0].call, donate_argnums=donated), in_tree, program[1])
        _loaded[key] = saved
        return saved


def forget_saved_programs() -> None:
    """Drops the saved programs this process has loaded (and their executables); the files stay."""
    with _lock:
        _loaded.clear()


def _leaf_signature(leaf) -> tuple | None:
    sharding = getattr(leaf, "sharding", None)
    if not isinstance(sharding, jax.sharding.SingleDeviceSharding) or not hasattr(leaf, "shape"):
        return None
    return (tuple(leaf.shape), str(leaf.dtype), bool(getattr(leaf, "weak_type", False)), str(sharding))


def _load(path: Path, in_tree) -> tuple[export.Exported, Any] | None:
    try:
        saved = pickle.loads(path.read_bytes())
        exported = export.deserialize(bytearray(saved["exported"]))
    except FileNotFoundError:
        return None
    except Exception as error:  # a damaged or foreign file: export again over it
        logging.warning("ignoring saved program %s: %s", path, error)
        return None
    return (exported, saved["out_tree"]) if saved["in_tree"] == in_tree else None


def _export(path: Path, function: Callable, in_tree, leaves) -> tuple[export.Exported, Any] | None:
    out_tree = []

    def flat(*flat_args):
        out_leaves, tree = jax.tree.flatten(function(*jax.tree.unflatten(in_tree, flat_args)))
        out_tree.append(tree)
        return out_leaves

    try:
        exported = export.export(jax.jit(flat))(*leaves)
        blob = pickle.dumps({"exported": exported.serialize(), "in_tree": in_tree, "out_tree": out_tree[0]})
    except Exception as error:  # e.g. an effect jax.export cannot serialise: the caller jits instead
        logging.warning("cannot save program %s: %s", path.name, error)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_bytes(blob)
    temporary.replace(path)
    return exported, out_tree[0]


@functools.cache
def _versions() -> tuple[str, str, str, str]:
    """infodec's source (a hash of every module), jax's and jaxlib's versions, and ``XLA_FLAGS``."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for source in sorted(package.rglob("*.py")):
        digest.update(str(source.relative_to(package)).encode())
        digest.update(source.read_bytes())
    from importlib.metadata import version

    return digest.hexdigest(), jax.__version__, version("jaxlib"), os.environ.get("XLA_FLAGS", "")


# The events JAX records for each jitted program it prepares (jax._src.dispatch, jax._src.compiler).
_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_XLA = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompileTime:
    """Compilation work JAX reported while a :func:`compile_time` block ran, in seconds, summed over
    threads (the engine compiles its decode loop while prefill compiles and runs, so the sum can exceed
    the block's wall time).

    Attributes:
      tracing_s: Python tracing to jaxprs. lowering_s: jaxprs to MLIR modules.
      xla_s: XLA compilation, or loading the executable from the persistent cache.
      programs: programs handed to XLA; cache_hits: how many of them the persistent cache held.
    """

    tracing_s: float = 0.0
    lowering_s: float = 0.0
    xla_s: float = 0.0
    programs: int = 0
    cache_hits: int = 0

    @property
    def total_s(self) -> float:
        return self.tracing_s + self.lowering_s + self.xla_s

    def __str__(self) -> str:
        return (
            f"compilation {self.total_s:.1f} s summed over threads: tracing {self.tracing_s:.1f} s, lowering "
            f"{self.lowering_s:.1f} s, XLA {self.xla_s:.1f} s for {self.programs} programs "
            f"({self.cache_hits} loaded from the persistent cache)"
        )


@contextlib.contextmanager
def compile_time() -> Iterator[CompileTime]:
    """Collects the compilation JAX does inside the block (any thread) into a :class:`CompileTime`.

    ``with compile_time() as c: generate(...)`` then ``print(c)``: how much of a first call is compiling,
    and whether the persistent cache (``enable_compilation_cache``) served it."""
    record = CompileTime()
    fields = {_TRACE: "tracing_s", _LOWER: "lowering_s", _XLA: "xla_s"}

    def on_duration(event: str, duration_secs: float, **_: str | int) -> None:
        if event in fields:
            setattr(record, fields[event], getattr(record, fields[event]) + duration_secs)
            record.programs += event == _XLA

    def on_event(event: str, **_: str | int) -> None:
        record.cache_hits += event == _CACHE_HIT

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    try:
        yield record
    finally:
        monitoring.unregister_event_duration_listener(on_duration)
        monitoring.unregister_event_listener(on_event)
