"""Decoding policies: ``policy(logits[B, S, V], step=None) -> (log_pi[B, V], diagnostics)``."""

from infodec.policies.base import Policy, StepInfo, Transform, information_diagnostics
from infodec.policies.guidance import ClassifierGuidance, TopicDiscriminator
from infodec.policies.llamacpp import DRY, XTC, DynamicTemperature, MirostatV2, TopNSigma, dry_sequence_breakers
from infodec.policies.standard import (
    Chain,
    Epsilon,
    EpsilonSmoothing,
    Eta,
    Greedy,
    MinP,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    Typical,
    chain,
)
from infodec.policies.value import (
    ClassifierFreeGuidance,
    DynamicValuePolicy,
    HalfLifeSchedule,
    KLGuidedTemperature,
    SigmoidSchedule,
)
from infodec.policies.value_policy import PMI, FunctionScore, ValuePolicy

__all__ = [
    "Policy",
    "StepInfo",
    "Transform",
    "information_diagnostics",
    "Chain",
    "Epsilon",
    "EpsilonSmoothing",
    "Eta",
    "Greedy",
    "MinP",
    "RepetitionPenalty",
    "Temperature",
    "TopK",
    "TopP",
    "Typical",
    "chain",
    "TopNSigma",
    "XTC",
    "DRY",
    "DynamicTemperature",
    "MirostatV2",
    "dry_sequence_breakers",
    "PMI",
    "FunctionScore",
    "ValuePolicy",
    "ClassifierFreeGuidance",
    "KLGuidedTemperature",
    "DynamicValuePolicy",
    "HalfLifeSchedule",
    "SigmoidSchedule",
    "ClassifierGuidance",
    "TopicDiscriminator",
]
