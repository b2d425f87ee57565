"""The settings of the guidance study's two stages, each validated in one place.

``TrainingConfig``: the FUDGE-style topic discriminator trained on wiki-leads (``experiments.train_discriminator``).
``TopicEvalConfig``: classifier guidance with that head, judged by an independent topic classifier
(``experiments.guidance_topic_eval``).
"""

from __future__ import annotations

import dataclasses
import math

from infodec.data.wiki_leads import UNCATEGORIZED

PROMPT = "Tell me about {title}."


def _at_least(config, names: tuple[str, ...], low: float) -> None:
    for name in names:
        value = getattr(config, name)
        if not value >= low:
            raise ValueError(f"{name} must be >= {low:g}, got {value}")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """What trains the discriminator head. Raises ``ValueError`` naming the first bad field.

    Attributes:
      model: the frozen LM whose final hidden states the head reads.
      num_train, num_valid: train-split / valid-split leads (``<= 0``: all).
      max_tokens: prefix positions per lead (each lead contributes up to ``max_tokens`` examples).
      steps, batch_size, learning_rate: AdamW steps, examples per step and peak learning rate.
      hidden_dim: width of the head's MLP.
      exclude: topics left out of training and evaluation.
      seed: the lead sample's, the init's and the minibatches' seed.
    """

    model: str = "smollm2-135m"
    num_train: int = 1000
    num_valid: int = 400
    max_tokens: int = 64
    steps: int = 1500
    batch_size: int = 512
    hidden_dim: int = 256
    learning_rate: float = 1e-3
    exclude: tuple[str, ...] = (UNCATEGORIZED,)
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "exclude", tuple(self.exclude))
        _at_least(self, ("max_tokens", "steps", "batch_size", "hidden_dim"), 1)
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def smoke_training_config(**overrides) -> TrainingConfig:
    """48 train and 32 valid leads × 16 tokens, 40 steps: checks the pipeline in under a minute."""
    return TrainingConfig(**{**dict(num_train=48, num_valid=32, max_tokens=16, steps=40), **overrides})


@dataclasses.dataclass(frozen=True)
class TopicEvalConfig:
    """What the topic evaluation of classifier guidance computes. Raises ``ValueError`` naming the first bad field.

    Attributes:
      model: the LM (must be the discriminator's).
      discriminator: folder of the trained head (``save_discriminator``).
      num_prompts: held-out (test-split) titles prompted with ``PROMPT``.
      num_judge_train: train-split leads fitting the judge.
      num_judge_test: test-split leads measuring the judge's accuracy (disjoint from the prompts when the
        split is big enough).
      scales: guidance scales λ compared with λ = 0 (unguided top-k).
      top_k: candidates per step (the support of every condition).
      max_new_tokens: tokens per continuation.
      seed: the prompts', the judge's and the decodes' seed.
    """

    model: str = "smollm2-135m"
    discriminator: str = "results/discriminator"
    num_prompts: int = 48
    num_judge_train: int = 2000
    num_judge_test: int = 400
    scales: tuple[float, ...] = (2.0, 5.0)
    top_k: int = 50
    max_new_tokens: int = 40
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        _at_least(self, ("num_prompts", "num_judge_train", "num_judge_test", "top_k", "max_new_tokens"), 1)
        if not self.scales:
            raise ValueError("scales must list at least one guidance scale")
        bad = [s for s in self.scales if not (math.isfinite(s) and s >= 0)]
        if bad:
            raise ValueError(f"scales must be >= 0, got {bad}")
