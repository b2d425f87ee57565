"""Gemma 2 (HF ``Gemma2ForCausalLM``, model_type ``gemma2``), e.g. Gemma 2 2B/9B/27B.

Gemma 3's architecture (:mod:`infodec.models.gemma3`, whose modules run it) with three differences:

* no q/k norms (``qk_norm=False``);
* attention scores soft-capped, ``s -> cap * tanh(s / cap)`` with ``attn_logit_softcapping`` (50), as HF's
  eager attention applies it (its SDPA path cannot; transformers selects eager for Gemma 2), and the final
  logits soft-capped with ``final_logit_softcapping`` (30);
* one RoPE base for every layer (``rope_theta``, 1e4); layers alternate ``sliding_attention`` (window
  ``sliding_window``, 4096) and ``full_attention``, starting with a sliding one, unless ``layer_types``
  says otherwise.

Shared with Gemma 3: sandwich norms, every norm ``(1 + w)``, scores scaled by ``query_pre_attn_scalar ** -0.5``,
embeddings scaled by ``sqrt(hidden_size)``, GeGLU MLP, LM head tied to the embedding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from infodec.models import gemma3
from infodec.models.base import CausalLM

HF_MODEL_TYPES = ("gemma2",)

# ``Gemma2Config``'s defaults for the fields that change the computation.
DEFAULT_THETA = 10_000.0
DEFAULT_ATTN_SOFTCAP = 50.0
DEFAULT_FINAL_SOFTCAP = 30.0
ROPE_TYPES = gemma3.ROPE_TYPES


@dataclasses.dataclass(frozen=True)
class Gemma2Config(gemma3.Gemma3Config):
    qk_norm: bool = False
    model_type: str = "gemma2"

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, scan_layers: bool | None = None) -> Gemma2Config:
        """Reads an HF ``config.json`` dict (``rope_parameters`` of transformers 5, or ``rope_theta``)."""
        if hf.get("use_bidirectional_attention"):
            raise ValueError("Gemma 2 with use_bidirectional_attention (an encoder) is not a causal LM; not supported")
        layers = hf["num_hidden_layers"]
        layer_types = hf.get("layer_types") or [
            "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)
        ]
        rope = dict(hf.get("rope_parameters") or {})
        if hf.get("rope_scaling"):
            rope.update(hf["rope_scaling"])
        theta = rope.get("rope_theta", hf.get("rope_theta", DEFAULT_THETA))
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise ValueError(f"gemma2: unsupported rope scaling type {kind!r}; supported: {', '.join(ROPE_TYPES)}")
        scaling = gemma3.rope_items(rope)
        return cls(
            **gemma3.common_fields_from_hf(hf, scan_layers),
            layer_types=tuple(layer_types),
            rope_theta=float(theta),
            rope_local_theta=float(theta),
            max_position_embeddings=hf.get("max_position_embeddings", 8192),
            rope_scaling=scaling,
            rope_local_scaling=scaling,
            final_logit_softcapping=hf.get("final_logit_softcapping", DEFAULT_FINAL_SOFTCAP),
            attn_logit_softcapping=hf.get("attn_logit_softcapping", DEFAULT_ATTN_SOFTCAP),
        )

    def to_hf(self) -> dict[str, Any]:
        """The HF ``config.json`` (``Gemma2ForCausalLM.from_pretrained`` loads the same directory)."""
        rope = {"rope_type": "default", **dict(self.rope_scaling or ()), "rope_theta": self.rope_theta}
        return {
            "architectures": ["Gemma2ForCausalLM"],
            "model_type": "gemma2",
            **self.common_hf_fields(),
            "rope_parameters": rope,
        }


def convert_hf_weights(config: Gemma2Config, tensors: Mapping[str, Any]) -> dict:
    """HF ``Gemma2ForCausalLM`` state dict -> Flax params (Gemma 3's names, without q/k norms)."""
    return gemma3.convert_hf_weights(config, tensors)


def build(config: Gemma2Config) -> CausalLM:
    return CausalLM(config, gemma3.Gemma3)


Config = Gemma2Config
