"""Qwen3 (dense, model_type ``qwen3``) and Qwen3-MoE (``qwen3_moe``); Mixtral reuses the decoder.

Llama-style pre-norm blocks, ``x += attn(rms(x))``, ``x += mlp(rms(x))``, with per-head RMS norms of q
and k (plain ``w`` scale, not Gemma's ``1 + w``) before RoPE and no qkv bias unless ``attention_bias``.
The MLP of a layer is a SwiGLU MLP or a sparse mixture of experts (:mod:`infodec.models.moe`): Qwen3-MoE
makes layer ``i`` sparse when ``num_experts > 0``, ``(i + 1) % decoder_sparse_step == 0`` and ``i`` is
not in ``mlp_only_layers``. Sliding-window attention follows HF: Qwen3 per ``layer_types`` (derived
from ``use_sliding_window``/``max_window_layers`` for old configs), Qwen3-MoE on every layer when
``use_sliding_window``. Models whose layers mix dense and sparse MLPs run unrolled (``scan_layers``
needs layers of one shape).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from infodec.models.base import CausalLM, HFWeights
from infodec.models.layers import (
    ACTIVATIONS,
    Attention,
    GatedMLP,
    RMSNorm,
    default_scan_layers,
    lm_logits,
    rope_attention_factor,
    rope_frequencies,
    rope_inv_freq,
    run_decoder,
)
from infodec.models.moe import MoEMLP, expert_params, fused_expert_params

HF_MODEL_TYPES = ("qwen3", "qwen3_moe")

LAYER_TYPES = ("full_attention", "sliding_attention")
# Window of full-attention layers in a per-layer window array: larger than any context.
NO_WINDOW = int(np.iinfo(np.int32).max)


def rope_from_hf(hf: Mapping[str, Any], head_dim: int) -> tuple[float, tuple[tuple[str, Any], ...] | None]:
    """``(theta, scaling items or None)`` of an HF config (``rope_parameters``, or old ``rope_theta`` +
    ``rope_scaling``); a RoPE type :func:`rope_inv_freq` cannot compute is a ValueError now, not at run time."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind in ("longrope", "su"):  # its long/short switch lives in phi3.py only
        raise ValueError(f"{hf.get('model_type')}: rope type {kind!r} is not supported for this family")
    try:
        rope_inv_freq(head_dim, theta, rope)
    except (ValueError, KeyError) as error:
        raise ValueError(f"{hf.get('model_type')}: rope_parameters {rope} not supported: {error}") from error
    return theta, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in rope.items()))


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = True  # False for Mixtral
    hidden_act: str = "silu"
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # items, so the config hashes
    # Sliding window per layer (None = full attention); None altogether when no layer slides.
    layer_windows: tuple[int | None, ...] | None = None
    # Mixture of experts: which layers are sparse (None = none), and their shape and routing.
    moe_layers: tuple[bool, ...] | None = None
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    scan_layers: bool = False
    model_type: str = "qwen3"
    dtype: str = "float32"  # parameters and activations (a name, so the config hashes)
    cache_dtype: str | None = None  # the KV cache; None = ``dtype``

    def __post_init__(self):
        for name in ("layer_windows", "moe_layers"):
            value = getattr(self, name)
            if value is not None and len(value) != self.num_layers:
                raise ValueError(f"{name} has {len(value)} entries for {self.num_layers} layers")
        if self.moe_layers is not None and any(self.moe_layers):
            if not 0 < self.num_experts_per_tok <= self.num_experts:
                raise ValueError(
                    f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, num_experts={self.num_experts}]"
                )
        if self.scan_layers and self.moe_layers is not None and len(set(self.moe_layers)) > 1:
            raise ValueError("scan_layers needs layers of one shape; this model mixes dense and MoE layers")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; supported: {', '.join(ACTIVATIONS)}")

    def is_moe(self, layer: int) -> bool:
        return self.moe_layers is not None and self.moe_layers[layer]

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, scan_layers: bool | None = None) -> Qwen3Config:
        """Reads an HF ``config.json`` dict of a ``qwen3`` or ``qwen3_moe`` model."""
        model_type = hf.get("model_type", "qwen3")
        heads = hf["num_attention_heads"]
        layers = hf["num_hidden_layers"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        theta, scaling = rope_from_hf(hf, head_dim)
        window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
        layer_windows = None
        if model_type == "qwen3":
            layer_types = hf.get("layer_types") or [
                "sliding_attention" if window is not None and i >= hf.get("max_window_layers", 28) else "full_attention"
                for i in range(layers)
            ]
            unknown = sorted(set(layer_types) - set(LAYER_TYPES))
            if unknown:
                raise ValueError(f"qwen3: layer_types {unknown} not supported; supported: {', '.join(LAYER_TYPES)}")
            if "sliding_attention" in layer_types:
                if window is None:
                    raise ValueError("qwen3: layer_types has sliding_attention layers but no sliding_window is in use")
                layer_windows = tuple(window if kind == "sliding_attention" else None for kind in layer_types)
        elif window is not None:  # qwen3_moe: the window applies to every layer
            layer_windows = (window,) * layers
        moe: dict[str, Any] = {}
        # transformers 5 writes ``num_local_experts`` (``num_experts`` is an alias); HF's defaults otherwise.
        num_experts = hf.get("num_experts", hf.get("num_local_experts", 128))
        if model_type == "qwen3_moe" and num_experts > 0:
            step = hf.get("decoder_sparse_step", 1)
            mlp_only = set(hf.get("mlp_only_layers") or ())
            moe_layers = tuple(i not in mlp_only and (i + 1) % step == 0 for i in range(layers))
            moe = dict(
                moe_layers=moe_layers,
                num_experts=num_experts,
                num_experts_per_tok=hf.get("num_experts_per_tok", 8),
                moe_intermediate_size=hf.get("moe_intermediate_size", 768),
                norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            )
            if len(set(moe_layers)) > 1:  # mixed layers cannot be scanned
                if scan_layers:
                    raise ValueError(
                        f"qwen3_moe: scan_layers needs layers of one shape; decoder_sparse_step={step} and "
                        f"mlp_only_layers={sorted(mlp_only)} mix dense and MoE layers"
                    )
                scan_layers = False
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            attention_bias=bool(hf.get("attention_bias", False)),
            hidden_act=hf.get("hidden_act", "silu"),
            rope_scaling=scaling,
            layer_windows=layer_windows,
            scan_layers=default_scan_layers() if scan_layers is None else scan_layers,
            model_type=model_type,
            **moe,
        )


class Qwen3Block(nn.Module):
    config: Qwen3Config

    @nn.compact
    def __call__(self, x, kv, layer, *, positions, k_positions, index, inv_freq, window=None, moe=None):
        c = self.config
        attn = Attention(
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.hidden_size,
            # yarn multiplies cos and sin (so q and k) by its attention factor: the scores by its square.
            scale=c.head_dim**-0.5 * rope_attention_factor(dict(c.rope_scaling or ())) ** 2,
            qkv_bias=c.attention_bias,
            out_bias=c.attention_bias,
            qk_norm_eps=c.rms_norm_eps if c.qk_norm else None,
            dtype=c.dtype,
            name="self_attn",
        )
        norm = lambda name: RMSNorm(c.rms_norm_eps, dtype=c.dtype, name=name)
        h, kv = attn(norm("input_layernorm")(x), positions, k_positions, kv, layer, index, inv_freq, window)
        x = x + h
        if moe is None:  # scanned layers: all of one kind
            moe = c.moe_layers is not None and c.moe_layers[0]
        if moe:
            mlp = MoEMLP(
                c.num_experts,
                c.num_experts_per_tok,
                c.moe_intermediate_size,
                c.norm_topk_prob,
                c.hidden_act,
                dtype=c.dtype,
                name="mlp",
            )
        else:
            mlp = GatedMLP(c.intermediate_size, c.hidden_size, c.hidden_act, dtype=c.dtype, name="mlp")
        return x + mlp(norm("post_attention_layernorm")(x)), kv


class Qwen3(nn.Module):
    config: Qwen3Config

    @nn.compact
    def __call__(self, tokens, positions, cache):
        c = self.config
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=c.dtype, name="embed_tokens")
        x = embed(tokens)
        scaling = dict(c.rope_scaling or ()) or None
        inv_freq = rope_frequencies(c.head_dim, c.rope_theta, scaling, positions, c.max_position_embeddings)
        layer_args = {}
        if c.layer_windows is not None:
            layer_args["window"] = np.array([NO_WINDOW if w is None else w for w in c.layer_windows], np.int32)
        if not c.scan_layers and c.moe_layers is not None:
            layer_args["moe"] = np.array(c.moe_layers, bool)
        x, cache = run_decoder(
            Qwen3Block,
            c,
            x,
            positions,
            cache,
            layer_args=layer_args,
            inv_freq=inv_freq,
        )
        x = RMSNorm(c.rms_norm_eps, dtype=c.dtype, name="norm")(x)
        logits = lm_logits(x, embed if c.tie_word_embeddings else None, c.vocab_size, c.dtype)
        return logits, x, cache


def convert_layers(config: Qwen3Config, w: HFWeights, mlp_prefix: str = "mlp", expert_names=None) -> list[dict]:
    """Per-layer Flax trees of a Qwen3 / Qwen3-MoE / Mixtral state dict (``[out, in]`` linears).

    ``mlp_prefix``: the HF module of the MLP (``block_sparse_moe`` for Mixtral); ``expert_names(e)``
    maps ``gate_proj``/``up_proj``/``down_proj`` to expert ``e``'s linear under it (default: Qwen's
    ``experts.{e}.gate_proj`` ...), or fused 3-D ``experts.gate_up_proj`` / ``experts.down_proj`` tensors
    (:func:`~infodec.models.moe.fused_expert_params`, both layouts).
    """
    c = config
    expert_names = expert_names or (lambda e: {k: f"experts.{e}.{k}" for k in ("gate_proj", "up_proj", "down_proj")})
    q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    bias = c.attention_bias
    layers = []
    for i in range(c.num_layers):
        p = f"layers.{i}"
        attn = {
            "q_proj": w.dense(f"{p}.self_attn.q_proj", q_dim, c.hidden_size, bias),
            "k_proj": w.dense(f"{p}.self_attn.k_proj", kv_dim, c.hidden_size, bias),
            "v_proj": w.dense(f"{p}.self_attn.v_proj", kv_dim, c.hidden_size, bias),
            "o_proj": w.dense(f"{p}.self_attn.o_proj", c.hidden_size, q_dim, bias),
        }
        if c.qk_norm:
            attn["q_norm"] = w.norm(f"{p}.self_attn.q_norm", c.head_dim)
            attn["k_norm"] = w.norm(f"{p}.self_attn.k_norm", c.head_dim)
        m = f"{p}.{mlp_prefix}"
        if c.is_moe(i):
            if f"{m}.experts.gate_up_proj" in w.tensors:  # fused 3-D tensors, either layout
                experts = fused_expert_params(w.tensors, f"{m}.experts", c)
            else:
                experts = expert_params(lambda name, o, n, m=m: w.dense(f"{m}.{name}", o, n), expert_names, c)
            mlp = {"gate": w.dense(f"{m}.gate", c.num_experts, c.hidden_size), "experts": experts}
        else:
            mlp = {
                "gate_proj": w.dense(f"{m}.gate_proj", c.intermediate_size, c.hidden_size),
                "up_proj": w.dense(f"{m}.up_proj", c.intermediate_size, c.hidden_size),
                "down_proj": w.dense(f"{m}.down_proj", c.hidden_size, c.intermediate_size),
            }
        layers.append(
            {
                "input_layernorm": w.norm(f"{p}.input_layernorm", c.hidden_size),
                "post_attention_layernorm": w.norm(f"{p}.post_attention_layernorm", c.hidden_size),
                "self_attn": attn,
                "mlp": mlp,
            }
        )
    return layers


def convert_hf_weights(config: Qwen3Config, tensors: Mapping[str, Any]) -> dict:
    """HF ``Qwen3ForCausalLM`` / ``Qwen3MoeForCausalLM`` state dict -> Flax params."""
    w = HFWeights(tensors)
    return w.decoder(config, convert_layers(config, w))


def build(config: Qwen3Config) -> CausalLM:
    return CausalLM(config, Qwen3)


Config = Qwen3Config
