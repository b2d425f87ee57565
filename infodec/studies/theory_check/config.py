"""The settings of the theory check, validated in one place, and its fixed sizes and thresholds.

The check enumerates every sequence of random tiny models, so the sizes are bounded (``MAX_VOCAB``,
``MAX_HORIZON``, ``MAX_MODELS``); ``TOLERANCES`` and ``ALPHA`` are the pass thresholds every record is
judged by (stored with the settings, so a results folder records what it was judged against).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Limits of the flags: enumeration is exponential, and the report is meant to be read.
MAX_VOCAB, MAX_HORIZON, MAX_MODELS = 8, 4, 20
MIN_SAMPLES = 100
# The sizes --smoke uses (a run well under a minute on a 2-core CPU).
SMOKE = {"num_models": 1, "vocab": 4, "horizon": 2, "samples": 2000}

# Pass thresholds. Probabilities of float32 policies vs the float64 DP; float64 vs float64; objectives.
TOLERANCES = {"policy_float32": 1e-5, "float64": 1e-9, "strict_gap": 1e-6}
ALPHA = 1e-3  # chi-square: the true law must not be rejected at this level, the wrong one must be
MIN_POWER = 0.99  # the wrong law must be rejected when the test's expected power is at least this

PROMPT_TOKENS, EVIDENCE_TOKENS = 3, 2
TERMINAL_SCALE = 1.5  # R(y) = TERMINAL_SCALE · N(0, 1), one draw per sequence


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """What the report computes. Raises ``ValueError`` with the offending field for bad values.

    Attributes:
      num_models: random tiny models (seeds ``seed, seed + 1, ...``), 1 to ``MAX_MODELS``.
      vocab: their vocabulary, 2 to ``MAX_VOCAB``.
      horizon: generated tokens enumerated, 1 to ``MAX_HORIZON`` (``vocab ** horizon`` sequences).
      seed: the first model's seed (weights, prompt, evidence, terminal reward, sampling keys).
      samples: ``infodec.generate`` samples per chi-square check, at least ``MIN_SAMPLES``.
      smoke: fewer settings and policies (the sizes are the caller's; see ``SMOKE``).
    """

    num_models: int = 3
    vocab: int = 6
    horizon: int = 3
    seed: int = 0
    samples: int = 4000
    smoke: bool = False

    def __post_init__(self):
        def integer(name, low, high=None):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
                why = {
                    "vocab": " (every sequence is enumerated: infodec.theory is for tiny vocabularies)",
                    "horizon": " (every sequence is enumerated: vocab ** horizon grows fast)",
                }.get(name, "")
                raise ValueError(f"{name} must be {bound}, got {value}{why}")

        integer("num_models", 1, MAX_MODELS)
        integer("vocab", 2, MAX_VOCAB)
        integer("horizon", 1, MAX_HORIZON)
        integer("seed", 0)
        integer("samples", MIN_SAMPLES)

    def settings(self) -> dict:
        """The JSON settings of the results folder (everything that changes the numbers)."""
        return {**dataclasses.asdict(self), "tolerances": TOLERANCES, "alpha": ALPHA}

    @classmethod
    def from_settings(cls, settings: dict) -> ReportConfig:
        """The config stored in a results folder's ``flags.json``: ``settings()`` itself, or a launcher's
        flags with it under ``"resolved"``."""
        resolved = settings.get("resolved", settings)
        return cls(**{f.name: resolved[f.name] for f in dataclasses.fields(cls)})
