"""Mixtral (HF ``MixtralForCausalLM``, model_type ``mixtral``): a Mistral decoder whose MLPs are sparse
mixtures of experts.

Mixtral is the Qwen3-MoE decoder (:mod:`infodec.models.qwen3`) without q/k norms, with every layer
sparse and the top-k routing weights always renormalised (softmax over all experts, then the top
``num_experts_per_tok`` rescaled to sum to one). Its checkpoints name the MoE ``block_sparse_moe``,
the router ``gate`` and the experts' linears ``w1`` (gate), ``w3`` (up) and ``w2`` (down) (or, fused,
``mlp.experts.gate_up_proj``/``down_proj``: :func:`~infodec.models.moe.fused_expert_params`). The
optional ``sliding_window`` applies to every layer. ``router_jitter_noise`` only acts in training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infodec.models.base import CausalLM, HFWeights
from infodec.models.layers import default_scan_layers
from infodec.models.qwen3 import Qwen3, Qwen3Config, convert_layers, rope_from_hf

HF_MODEL_TYPES = ("mixtral",)

EXPERT_LINEARS = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


class MixtralConfig(Qwen3Config):
    """A :class:`~infodec.models.qwen3.Qwen3Config` read from a Mixtral ``config.json``."""

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, scan_layers: bool | None = None) -> Qwen3Config:
        heads = hf["num_attention_heads"]
        layers = hf["num_hidden_layers"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        theta, scaling = rope_from_hf(hf, head_dim)
        window = hf.get("sliding_window")
        experts = hf.get("num_local_experts", 8)
        return Qwen3Config(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            rope_theta=theta,
            max_position_embeddings=hf.get("max_position_embeddings", 4096 * 32),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            qk_norm=False,
            hidden_act=hf.get("hidden_act", "silu"),
            rope_scaling=scaling,
            layer_windows=None if window is None else (window,) * layers,
            moe_layers=(True,) * layers,
            num_experts=experts,
            num_experts_per_tok=hf.get("num_experts_per_tok", 2),
            moe_intermediate_size=hf["intermediate_size"],  # every expert has the full MLP width
            norm_topk_prob=True,
            scan_layers=default_scan_layers() if scan_layers is None else scan_layers,
            model_type="mixtral",
        )


def convert_hf_weights(config: Qwen3Config, tensors: Mapping[str, Any]) -> dict:
    """HF ``MixtralForCausalLM`` state dict -> Flax params: per-expert ``w1``/``w2``/``w3`` linears under
    ``block_sparse_moe`` (what ``save_pretrained`` writes), or transformers 5's in-memory names, ``mlp.gate``
    and fused ``mlp.experts.gate_up_proj``/``down_proj`` (either block name with fused experts)."""
    w = HFWeights(tensors)
    names = lambda e: {key: f"experts.{e}.{linear}" for key, linear in EXPERT_LINEARS.items()}
    prefix = "block_sparse_moe" if any(".block_sparse_moe." in name for name in w.tensors) else "mlp"
    return w.decoder(config, convert_layers(config, w, prefix, names))


def build(config: Qwen3Config) -> CausalLM:
    return CausalLM(config, Qwen3)


Config = MixtralConfig
