"""Policies by name, for launchers and notebooks: ``build("top_p", temperature=0.8, top_p=0.9)``."""

from __future__ import annotations

from infodec.policies.base import Transform
from infodec.policies.standard import (
    Epsilon,
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

NAMES = ("greedy", "temperature", "top_k", "top_p", "min_p", "typical", "epsilon", "eta")


def build(
    name: str,
    *,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 0.9,
    min_p: float = 0.05,
    typical_p: float = 0.9,
    epsilon: float = 3e-4,
    eta: float = 3e-4,
    repetition_penalty: float = 1.0,
) -> Transform:
    """The standard policy ``name``: temperature first, then the truncation (HF's order), with an
    optional repetition penalty applied before both."""
    truncations = {
        "top_k": lambda: TopK(top_k),
        "top_p": lambda: TopP(top_p),
        "min_p": lambda: MinP(min_p),
        "typical": lambda: Typical(typical_p),
        "epsilon": lambda: Epsilon(epsilon),
        "eta": lambda: Eta(eta),
    }
    if name not in NAMES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(NAMES)}")
    steps: list[Transform] = [RepetitionPenalty(repetition_penalty)] if repetition_penalty != 1.0 else []
    if name == "greedy":
        steps.append(Greedy())
    else:
        steps.append(Temperature(temperature))
        if name in truncations:
            steps.append(truncations[name]())
    return steps[0] if len(steps) == 1 else chain(*steps)
