"""Mixture-of-experts feed-forward layers (Mixtral, Qwen3-MoE): top-k routing over gated-MLP experts.

Routing, as HF transformers computes it: router logits ``x @ W_router`` in the model dtype, a float32
softmax over *all* experts, the ``top_k`` largest probabilities, renormalised to sum to one when
``normalize`` (Mixtral always; Qwen3-MoE when ``norm_topk_prob``). A token's output is
``sum_j weight_j * expert_{i_j}(x)`` with ``expert(x) = down(act(gate(x)) * up(x))``.

Two dispatches give the same result (the routing weights of unchosen experts are exact zeros):

* **dense** (prefill, large batches): every expert runs on every token and the outputs are combined by
  the routing weights. It costs the FLOPs of a dense MLP of ``num_experts`` experts, i.e.
  ``num_experts / top_k`` times those of the sparse model (4x for Mixtral 8x7B, 16x for Qwen3-30B-A3B),
  and an ``[E, N, moe_intermediate]`` activation.
* **gather** (decoding, few tokens): each token gathers its ``top_k`` experts' weights, so the step
  reads ``N * top_k`` expert matrices instead of all ``E``: the sparse FLOPs, at the cost of copying
  ``N * top_k * 3 * hidden * moe_intermediate`` weights per step. Used when ``N * top_k < E``.

Expert weights are stacked ``[E, in, out]`` (``gate_proj``, ``up_proj``: ``[E, hidden, I]``;
``down_proj``: ``[E, I, hidden]``) under ``mlp/experts``, the router is ``mlp/gate/kernel`` ``[hidden, E]``;
the sharding rules split the expert axis on ``"model"`` where ``num_experts`` divides it. Checkpoints hold
one linear per expert (:func:`expert_params`) or fused 3-D tensors (:func:`fused_expert_params`); both are
read lazily, expert by expert.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from infodec.models.base import CheckpointMismatchError, checked
from infodec.models.layers import ACTIVATIONS
from infodec.models.tensors import select, split_columns, split_rows, stack_layers

Array = jax.Array


def route(logits: Array, top_k: int, normalize: bool) -> tuple[Array, Array]:
    """``(weights[N, k] float32, experts[N, k] int32)`` of router ``logits[N, E]``: a float32 softmax over
    all experts, its ``top_k`` largest entries (descending), renormalised to sum to one if ``normalize``."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, experts


class Experts(nn.Module):
    """``num_experts`` gated MLPs as stacked kernels, applied to tokens with routing weights."""

    num_experts: int
    hidden: int
    activation: str = "silu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, weights: Array, experts: Array) -> Array:
        """``x[N, D]``, ``weights[N, k]`` float32, ``experts[N, k]`` -> ``[N, D]`` in ``x.dtype``."""
        tokens, features = x.shape
        init = nn.initializers.lecun_normal(batch_axis=(0,))
        param = lambda name, shape: self.param(name, init, shape, self.dtype)
        gate = param("gate_proj", (self.num_experts, features, self.hidden))
        up = param("up_proj", (self.num_experts, features, self.hidden))
        down = param("down_proj", (self.num_experts, self.hidden, features))
        act: Callable[[Array], Array] = ACTIVATIONS[self.activation]
        x = x.astype(self.dtype)
        if tokens * experts.shape[1] < self.num_experts:  # gather: only the chosen experts' weights
            h = act(jnp.einsum("nd,nkdi->nki", x, gate[experts])) * jnp.einsum("nd,nkdi->nki", x, up[experts])
            y = jnp.einsum("nki,nkid->nkd", h, down[experts])
            out = jnp.einsum("nk,nkd->nd", weights, y.astype(jnp.float32))
        else:  # dense: every expert on every token, unchosen ones weighted by exact zeros
            h = act(jnp.einsum("nd,edi->eni", x, gate)) * jnp.einsum("nd,edi->eni", x, up)
            y = jnp.einsum("eni,eid->end", h, down)
            dense = jnp.zeros((tokens, self.num_experts), jnp.float32)
            dense = dense.at[jnp.arange(tokens)[:, None], experts].add(weights)
            out = jnp.einsum("ne,end->nd", dense, y.astype(jnp.float32))
        return out.astype(x.dtype)


class MoEMLP(nn.Module):
    """A sparse MoE feed-forward layer: router ``gate`` + ``experts`` (module docstring)."""

    num_experts: int
    top_k: int
    hidden: int  # each expert's intermediate size
    normalize: bool  # renormalise the top-k probabilities
    activation: str = "silu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = nn.Dense(self.num_experts, use_bias=False, dtype=self.dtype, param_dtype=self.dtype, name="gate")(flat)
        weights, experts = route(logits, self.top_k, self.normalize)
        out = Experts(self.num_experts, self.hidden, self.activation, self.dtype, name="experts")(
            flat, weights, experts
        )
        return out.reshape(shape)


def expert_params(get_dense: Callable[[str, int, int], dict], names: Callable[[int], dict[str, str]], config) -> dict:
    """The ``mlp`` tree of one MoE layer from per-expert HF linears, stacked lazily along a new expert axis.

    ``get_dense(name, out, in)`` is ``HFWeights.dense``; ``names(e)`` maps ``gate_proj``/``up_proj``/
    ``down_proj`` to expert ``e``'s HF linear name; ``config`` has ``num_experts``, ``hidden_size`` and
    ``moe_intermediate_size``; ``router`` is added by the caller.
    """
    c = config
    shapes = {
        "gate_proj": (c.moe_intermediate_size, c.hidden_size),
        "up_proj": (c.moe_intermediate_size, c.hidden_size),
        "down_proj": (c.hidden_size, c.moe_intermediate_size),
    }
    per_expert = [
        {key: get_dense(names(e)[key], *shape)["kernel"] for key, shape in shapes.items()} for e in range(c.num_experts)
    ]
    return {key: stack_layers(expert[key] for expert in per_expert) for key in shapes}


def fused_expert_params(tensors: Mapping[str, Any], prefix: str, config) -> dict:
    """The ``experts`` tree of one MoE layer from fused 3-D tensors ``{prefix}.gate_up_proj`` and
    ``{prefix}.down_proj``, read lazily expert by expert (:func:`~infodec.models.tensors.select`).

    Two layouts, told apart by the pair of shapes (they cannot both fit): transformers 5's own (its
    in-memory ``Qwen3MoeExperts``/``MixtralExperts``, ``[out, in]`` per expert): ``gate_up_proj``
    ``[E, 2I, H]`` (gate rows first, then up) and ``down_proj`` ``[E, H, I]``; and the transposed
    ``[in, out]`` one (Llama 4 style): ``[E, H, 2I]`` (gate columns first) and ``[E, I, H]``.
    """
    c = config
    experts, hidden, inner = c.num_experts, c.hidden_size, c.moe_intermediate_size
    names = {key: f"{prefix}.{key}" for key in ("gate_up_proj", "down_proj")}
    for name in names.values():
        if name not in tensors:
            raise CheckpointMismatchError(f"checkpoint has no tensor {name!r} that the config requires")
    shapes = (tuple(tensors[names["gate_up_proj"]].shape), tuple(tensors[names["down_proj"]].shape))
    out_in = shapes == ((experts, 2 * inner, hidden), (experts, hidden, inner))
    if not out_in and shapes != ((experts, hidden, 2 * inner), (experts, inner, hidden)):
        raise CheckpointMismatchError(
            f"fused experts {names['gate_up_proj']} {shapes[0]} and {names['down_proj']} {shapes[1]} fit neither "
            f"[E, 2I, H] + [E, H, I] nor [E, H, 2I] + [E, I, H] with E={experts}, H={hidden}, I={inner}: "
            "config.json and the weights disagree"
        )
    gate_up = checked(tensors, names["gate_up_proj"], shapes[0])
    down = checked(tensors, names["down_proj"], shapes[1])
    kernels = []  # per expert, [in, out] like the stacked parameters
    for e in range(experts):
        if out_in:
            gate, up = split_rows(select(gate_up, e), [inner, inner])
            kernels.append({"gate_proj": gate.T, "up_proj": up.T, "down_proj": select(down, e).T})
        else:
            gate, up = split_columns(select(gate_up, e), 2)
            kernels.append({"gate_proj": gate, "up_proj": up, "down_proj": select(down, e)})
    return {key: stack_layers(kernel[key] for kernel in kernels) for key in ("gate_proj", "up_proj", "down_proj")}
