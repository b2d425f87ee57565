"""The settings of a tradeoff sweep, validated in one place, and the study's fixed vocabulary.

``TASKS`` are the evidence-grounded tasks, ``FAMILIES`` the decoder families a sweep may hold (the
two-stream ones in ``TWO_STREAM``), ``MEASURES`` the per-point measures every record carries.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

TASKS = ("wiki-leads", "aclsum")
# When the query is framed with the model's chat template (``study.use_chat_template``).
CHAT_TEMPLATE_MODES = ("auto", "on", "off")
FAMILIES = ("temperature", "top_k", "top_p", "cfg", "classifier", "kl_guided", "dynamic")
TWO_STREAM = ("cfg", "kl_guided", "dynamic")

ATTRIBUTION = ("pmi", "content_precision", "similarity")
MEASURES = (
    "distinct1",
    "distinct2",
    "self_bleu",
    "entropy",
    "pmi",
    "content_precision",
    "content_precision2",
    "similarity",
    "nll",
    "perplexity",
    "kl_to_model",
    "length",
)

_SWEEP_VALUES = (
    "families",
    "temperatures",
    "top_ks",
    "top_ps",
    "cfg_scales",
    "classifier_scales",
    "kl_t0s",
    "half_lives",
    "dynamic_scales",
)
_SIZES = ("num_inputs", "num_samples", "max_new_tokens", "max_evidence_tokens", "inputs_per_call", "classifier_top_k")
# (field, test of one value, what is allowed): each sweep list is checked value by value.
_VALUE_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("temperatures", lambda v: v >= 0, ">= 0 (0 = greedy)"),
    ("top_ks", lambda v: v >= 1 and float(v).is_integer(), "integers >= 1"),
    ("top_ps", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("cfg_scales", lambda v: v >= 0, ">= 0 (1 = plain conditional sampling)"),
    ("classifier_scales", lambda v: v >= 0, ">= 0"),
    ("kl_t0s", lambda v: v > 0, "> 0"),
    ("half_lives", lambda v: v > 0, "> 0 nats (the static h = 0 point is added)"),
    ("dynamic_scales", lambda v: v >= 0, ">= 0"),
)


@dataclasses.dataclass(frozen=True)
class TradeoffConfig:
    """Everything that determines a sweep's numbers (stored as the results folder's settings).

    Raises ``ValueError`` naming the first bad field on construction (and on ``replace``).

    Attributes:
      task: one of ``TASKS``.
      families: decoder families, from ``FAMILIES``.
      temperatures: static temperatures (greedy, ``T = 0``, is always added).
      top_ks, top_ps: truncation settings at ``T = 1``.
      cfg_scales: classifier-free guidance scales ``w`` (1 = plain conditional sampling).
      classifier_scales: classifier-guidance scales λ, on the top ``classifier_top_k`` tokens.
      kl_t0s, half_lives: KL-guided temperature's ``t0`` × half-life ``h`` (nats).
      dynamic_scales: ``λ_max`` of a sigmoid in the streams' KL with ``dynamic_midpoint`` / ``dynamic_width``.
      num_inputs, num_samples: inputs × continuations per input.
      max_new_tokens: tokens per continuation (at most).
      max_evidence_tokens: the evidence is cut to this many tokens.
      inputs_per_call: inputs per ``generate`` call.
      seed: the input sample's and every decode's seed.
      model: the decoding LM.
      chat_template: ``"auto"`` (frame the query with the model's chat template when its tokenizer has
        one and the model is an instruct model), ``"on"`` (always; an error without a template) or
        ``"off"`` (plain text). See ``study.use_chat_template``.
      evaluator: the LM that scores PMI and perplexity ("" = the decoding model).
      discriminator: folder of the classifier-guidance head.
    """

    task: str = "wiki-leads"
    families: tuple[str, ...] = ("temperature", "top_p", "cfg", "kl_guided")
    temperatures: tuple[float, ...] = (0.5, 0.7, 1.0, 1.3)
    top_ks: tuple[int, ...] = (10, 50)
    top_ps: tuple[float, ...] = (0.5, 0.8, 0.95)
    cfg_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    classifier_scales: tuple[float, ...] = (0.0, 1.0, 2.0)
    classifier_top_k: int = 50
    kl_t0s: tuple[float, ...] = (1.0,)
    half_lives: tuple[float, ...] = (0.5, 1.0, 2.0)
    dynamic_scales: tuple[float, ...] = (1.0, 2.0)
    dynamic_midpoint: float = 0.5
    dynamic_width: float = 0.25
    num_inputs: int = 32
    num_samples: int = 4
    max_new_tokens: int = 48
    max_evidence_tokens: int = 224
    inputs_per_call: int = 16
    seed: int = 0
    model: str = "smollm2-135m"
    chat_template: str = "auto"
    evaluator: str = ""
    discriminator: str = "results/discriminator"

    def __post_init__(self):
        for name in _SWEEP_VALUES:  # lists (from JSON or flags) become tuples: the config stays hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise ValueError(
                f"chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}, got {self.chat_template!r}"
            )
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
        if not self.families:
            raise ValueError("families is empty; choose from " + ", ".join(FAMILIES))
        for name, ok, allowed in _VALUE_RULES:
            bad = [v for v in getattr(self, name) if not (isinstance(v, (int, float)) and math.isfinite(v) and ok(v))]
            if bad:
                raise ValueError(f"{name} must be {allowed}, got {bad}")
        for name in _SIZES:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dynamic_width <= 0:
            raise ValueError(f"dynamic_width must be > 0, got {self.dynamic_width}")
        if "classifier" in self.families and self.task != "wiki-leads":
            raise ValueError(
                "the classifier family steers toward a wiki-leads topic; use --task=wiki-leads or "
                "drop it from the families"
            )

    def to_dict(self) -> dict:
        """The JSON settings of the results folder."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TradeoffConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_settings(cls, settings: dict) -> TradeoffConfig:
        """The config stored in a results folder's ``flags.json``: ``to_dict()`` itself, or a launcher's
        flags with the resolved config under ``"config"``."""
        return cls(**settings.get("config", settings))


def smoke_config(**overrides) -> TradeoffConfig:
    """Tiny settings that check the pipeline end to end in well under a minute on the default model:
    2 inputs x 2 samples x 8 tokens, two points per family (greedy and T=1, top-p, CFG, KL-guided)."""
    settings: dict[str, Any] = dict(
        families=("temperature", "top_p", "cfg", "kl_guided"),
        temperatures=(1.0,),
        top_ps=(0.9,),
        cfg_scales=(2.0,),
        kl_t0s=(1.0,),
        half_lives=(1.0,),
        top_ks=(50,),
        classifier_scales=(1.0,),
        dynamic_scales=(1.0,),
        num_inputs=2,
        num_samples=2,
        max_new_tokens=8,
        max_evidence_tokens=64,
        inputs_per_call=2,
    )
    settings.update(overrides)
    return TradeoffConfig(**settings)
