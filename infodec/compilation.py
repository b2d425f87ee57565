"""Opt-in persistent XLA compilation cache, and what compilation costs a call.

A decode loop over the 30 unrolled layers of SmolLM2 takes seconds to compile on a 2-core CPU. With
the persistent cache a later process loads the compiled executable from disk instead. It changes JAX's
global configuration, so the library never turns it on by itself; launchers and notebooks call
``enable_compilation_cache()``. :func:`compile_time` measures how much of a first call is compilation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import jax
from jax import monitoring

from infodec.cache import cache_dir


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path:
    """Caches compiled executables in ``directory`` (default ``$INFODEC_CACHE/xla``); returns it."""
    path = Path(directory) if directory is not None else cache_dir() / "xla"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every executable: the default thresholds skip quick compiles, and prefill is one of them.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


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
