"""A topic judge independent of the classifier-guidance discriminator: multinomial logistic regression
on sentence embeddings (MiniLM, ``attribution.text_embedder``), fitted with optax.

    embed = text_embedder(*infodec.load("minilm-l6"))
    judge = TopicJudge.fit(embed, train_texts, train_labels, topics)
    judge.accuracy(test_texts, test_labels)
    judge.predict(continuations)          # [N] topic indices
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import optax


def fit_logistic(
    x, y, classes: int, *, steps: int = 500, l2: float = 1e-3, learning_rate: float = 0.05
) -> dict[str, jax.Array]:
    """Weights ``{"w": [D, C], "b": [C]}`` of a softmax regression of labels ``y[N]`` on ``x[N, D]``:
    full-batch Adam on the mean cross-entropy plus ``l2 · ‖w‖²``."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x must be [N, D] and y [N], got {x.shape} and {y.shape}")
    weights = {"w": jnp.zeros((x.shape[1], classes)), "b": jnp.zeros((classes,))}
    opt = optax.adam(learning_rate)
    state = opt.init(weights)

    @jax.jit
    def update(weights, state):
        def loss(w):
            logits = x @ w["w"] + w["b"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + l2 * jnp.sum(w["w"] ** 2)

        updates, state = opt.update(jax.grad(loss)(weights), state)
        return optax.apply_updates(weights, updates), state

    for _ in range(steps):
        weights, state = update(weights, state)
    return weights


@dataclasses.dataclass(frozen=True)
class TopicJudge:
    """Predicts a topic index from text: ``argmax(embed(text) @ w + b)``.

    Attributes:
      topics: the topic names (index -> name).
      embed: ``texts -> [N, D]`` embeddings.
      weights: ``{"w": [D, C], "b": [C]}`` from :func:`fit_logistic`.
    """

    topics: tuple[str, ...]
    embed: Callable[[Sequence[str]], np.ndarray]
    weights: dict

    @classmethod
    def fit(
        cls,
        embed: Callable[[Sequence[str]], np.ndarray],
        texts: Sequence[str],
        labels: npt.ArrayLike,
        topics: Sequence[str],
        *,
        steps: int = 500,
        l2: float = 1e-3,
    ) -> TopicJudge:
        """Fits the regression on ``embed(texts)`` and integer ``labels`` (indices into ``topics``)."""
        label_ids = np.asarray(labels)
        if len(texts) != len(label_ids) or not len(texts):
            raise ValueError(
                f"need one label per text and at least one text, got {len(texts)} texts and {len(label_ids)} labels"
            )
        if label_ids.min() < 0 or label_ids.max() >= len(topics):
            raise ValueError(
                f"labels must index the {len(topics)} topics, got range [{label_ids.min()}, {label_ids.max()}]"
            )
        weights = fit_logistic(embed(texts), label_ids, len(topics), steps=steps, l2=l2)
        return cls(tuple(topics), embed, weights)

    def predict_embeddings(self, embeddings) -> np.ndarray:
        """``[N]`` topic indices for precomputed ``embeddings[N, D]``."""
        return np.asarray(jnp.asarray(embeddings) @ self.weights["w"] + self.weights["b"]).argmax(-1)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """``[N]`` topic indices of ``texts``."""
        return self.predict_embeddings(self.embed(texts))

    def accuracy(self, texts: Sequence[str], labels: npt.ArrayLike) -> float:
        """Share of ``texts`` whose predicted topic equals ``labels``."""
        return float(np.mean(self.predict(texts) == np.asarray(labels)))


__all__ = ["fit_logistic", "TopicJudge"]
