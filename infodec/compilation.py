"""Opt-in persistent XLA compilation cache.

A decode loop over the 30 unrolled layers of SmolLM2 takes seconds to compile on a 2-core CPU. With
the persistent cache a later process loads the compiled executable from disk instead. It changes JAX's
global configuration, so the library never turns it on by itself; launchers and notebooks call
``enable_compilation_cache()``.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

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
