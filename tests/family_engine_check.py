"""Mesh placement of every model family, for tests/test_family_engine.py, in a child process with 4 CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests.family_engine_check

For each representative family: save its tiny HF checkpoint, ``infodec.load`` it on one device and on a
``(data 2, model 2)`` mesh, and report every parameter's ``PartitionSpec``, whether the values agree, and
greedy ``generate`` on the mesh (tokens and their log-probabilities). The test compares the specs with its
own table and the tokens with HF's greedy ``generate`` (which one device matches: ``tests/test_families.py``).
The one JSON object printed last is the report.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

# One family per architecture file, plus the variants whose decode paths differ (sliding windows, MoE,
# the multimodal checkpoint's text part, OPT's post-norm with projections, GPT-NeoX's parallel residual).
REPRESENTATIVES = [
    "llama",
    "qwen2",
    "mistral_window",
    "qwen3",
    "qwen3_moe",
    "mixtral",
    "gemma2",
    "gemma3_text",
    "gemma3_multimodal",
    "olmo2",
    "phi3",
    "gpt_neox_parallel",
    "opt_post_norm",
    "gpt2",
]
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]  # 3 rows: the data axis pads one
NEW_TOKENS = 8


def spec(x) -> list:
    """A leaf's ``PartitionSpec`` as JSON (trailing Nones dropped)."""
    entries = [None if s is None else (list(s) if isinstance(s, tuple) else s) for s in x.sharding.spec]
    while entries and entries[-1] is None:
        entries.pop()
    return entries


def path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def family_report(family: str, directory: Path) -> dict:
    import infodec
    from infodec import sharding
    from tests.test_families import FAMILIES

    FAMILIES[family]().eval().float().save_pretrained(directory)
    mesh = sharding.make_mesh(2, 2)
    model, params, _ = infodec.load(directory, dtype=jnp.float32)
    _, placed, _ = infodec.load(directory, dtype=jnp.float32, mesh=mesh)
    flat = jax.tree_util.tree_flatten_with_path(placed)[0]
    single = jax.tree.leaves(params)
    equal = jax.tree.structure(params) == jax.tree.structure(placed) and all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(single, jax.tree.leaves(placed))
    )
    greedy = infodec.Greedy()
    out = infodec.generate(
        model, placed, PROMPTS, greedy, jax.random.key(0), max_new_tokens=NEW_TOKENS, stop_tokens=(), mesh=mesh
    )
    return {
        "devices": len(jax.devices()),
        "mesh": dict(mesh.shape),
        "specs": {path_name(path): (spec(x), x.ndim) for path, x in flat},
        "values_equal": bool(equal),
        "tokens": out.tokens.tolist(),
        "logp_model": out.logp_model.tolist(),
    }


def main() -> dict:
    if len(jax.devices()) != 4:
        sys.exit(f"expected 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4), got {len(jax.devices())}")
    with tempfile.TemporaryDirectory() as root:
        return {family: family_report(family, Path(root) / family) for family in REPRESENTATIVES}


if __name__ == "__main__":
    print(json.dumps(main()))
