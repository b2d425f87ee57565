"""Where each parameter of a model lives on a ``("data", "model")`` device mesh.

The rules are a property of the architectures (parameter names and the counts that may be split), so
they live beside the models: the loader places each tensor on its sharding as it reads it, and
:mod:`infodec.sharding` (meshes, decode-state placement) re-exports them. ``"model"`` splits the
parameters tensor-parallel (Megatron style): attention heads (q/k/v columns, o-proj rows), the MLP width
(gate/up columns, down rows) and the vocabulary (embedding rows, LM-head columns), each only when its
count is a multiple of the model-axis size; everything else is replicated.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
MODEL = "model"
AXES = (DATA, MODEL)

# Tensor-parallel rules: (path pattern, spec of the trailing dimensions, config count that must be a
# multiple of the model-axis size). A path is the "/"-joined parameter path, e.g.
# "layers_3/self_attn/q_proj/kernel" (scanned layers carry a leading layer axis, left unsplit).
# Kernels are [in, out]; column-parallel layers split "out", row-parallel layers split "in".
_RULES = (
    (r"(self_attn|attn)/q_proj/kernel$", (None, MODEL), "num_heads"),
    (r"(self_attn|attn)/q_proj/bias$", (MODEL,), "num_heads"),
    (r"(self_attn|attn)/(k_proj|v_proj)/kernel$", (None, MODEL), "num_kv_heads"),
    (r"(self_attn|attn)/(k_proj|v_proj)/bias$", (MODEL,), "num_kv_heads"),
    (r"(self_attn|attn)/o_proj/kernel$", (MODEL, None), "num_heads"),
    (r"mlp/(gate_proj|up_proj|c_fc)/kernel$", (None, MODEL), "intermediate_size"),
    (r"mlp/(gate_proj|up_proj|c_fc)/bias$", (MODEL,), "intermediate_size"),
    (r"mlp/(down_proj|c_proj)/kernel$", (MODEL, None), "intermediate_size"),
    (r"(embed_tokens|wte|word_embeddings)/embedding$", (MODEL, None), "vocab_size"),
    (r"lm_head/kernel$", (None, MODEL), "vocab_size"),
    # BERT (the coherence encoder): the same split under its own names.
    (r"/(query|key|value)/kernel$", (None, MODEL), "num_heads"),
    (r"/(query|key|value)/bias$", (MODEL,), "num_heads"),
    (r"/attention_output/kernel$", (MODEL, None), "num_heads"),
    (r"/intermediate/kernel$", (None, MODEL), "intermediate_size"),
    (r"/intermediate/bias$", (MODEL,), "intermediate_size"),
    (r"layers_\d+/output/kernel$|layers/block/output/kernel$", (MODEL, None), "intermediate_size"),
    # Mixture of experts (Mixtral, Qwen3-MoE): stacked [E, in, out] expert kernels split by expert.
    (r"mlp/experts/(gate_proj|up_proj|down_proj)$", (MODEL, None, None), "num_experts"),
    # GPT-NeoX: the fused query_key_value's outputs are laid out per head ([heads, 3, head_dim]), so a
    # column split is a split by heads.
    (r"attention/query_key_value/kernel$", (None, MODEL), "num_heads"),
    (r"attention/query_key_value/bias$", (MODEL,), "num_heads"),
    (r"attention/dense/kernel$", (MODEL, None), "num_heads"),
    (r"mlp/dense_h_to_4h/kernel$", (None, MODEL), "intermediate_size"),
    (r"mlp/dense_h_to_4h/bias$", (MODEL,), "intermediate_size"),
    (r"mlp/dense_4h_to_h/kernel$", (MODEL, None), "intermediate_size"),
    (r"embed_in/embedding$", (MODEL, None), "vocab_size"),
    # OPT: the MLP's fc1/fc2 at the layer level.
    (r"/fc1/kernel$", (None, MODEL), "intermediate_size"),
    (r"/fc1/bias$", (MODEL,), "intermediate_size"),
    (r"/fc2/kernel$", (MODEL, None), "intermediate_size"),
)


def check_mesh(mesh: Any) -> Mesh:
    """``mesh`` if it is a ``Mesh`` with axes named ``"data"`` and ``"model"`` (others may exist); a clear
    ValueError otherwise."""
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh (infodec.sharding.make_mesh), got {type(mesh).__name__}")
    missing = [name for name in AXES if name not in mesh.axis_names]
    if missing:
        raise ValueError(
            f"mesh axes {tuple(mesh.axis_names)} lack {missing}: infodec places rows on 'data' and "
            "parameters on 'model' (build it with infodec.sharding.make_mesh)"
        )
    return mesh


def axis_size(mesh: Mesh | None, name: str) -> int:
    """Size of axis ``name`` of ``mesh`` (1 without a mesh or without that axis)."""
    if mesh is None:
        return 1
    return int(dict(mesh.shape).get(name, 1))


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def param_spec(name: str, shape: tuple[int, ...], config: Any, model_size: int) -> P:
    """The ``PartitionSpec`` of the parameter at path ``name`` with ``shape`` (module docstring rules).

    The split dimension must be a multiple of the governing count (heads, KV heads, MLP width,
    vocabulary; read from ``config``) and the count a multiple of ``model_size``; otherwise ``P()``.
    """
    if model_size == 1:
        return P()
    for pattern, trailing, count_name in _RULES:
        if not re.search(pattern, name):
            continue
        count = getattr(config, count_name, None)
        if count is None or len(shape) < len(trailing) or count % model_size:
            return P()
        dim = len(shape) - len(trailing) + trailing.index(MODEL)
        if shape[dim] % count:  # not [.., count * k, ..]: the name matched something else
            return P()
        return P(*(None,) * (len(shape) - len(trailing)), *trailing)
    return P()


def param_shardings(model: Any, params: Any, mesh: Mesh) -> Any:
    """A pytree of ``NamedSharding`` matching ``params``: heads, MLP width and vocabulary on ``"model"``
    where divisible (see :func:`param_spec`), everything else replicated. Works for every family in
    ``infodec.models`` (Llama, Gemma 3, GPT-2, BERT) from parameter names and shapes."""
    config = getattr(model, "config", model)
    size = axis_size(mesh, MODEL)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, param_spec(_path_name(path), np.shape(x), config, size)), params
    )
