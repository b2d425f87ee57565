"""Classifier guidance [P1 §3.1] with a FUDGE-style step-level topic discriminator.

The classifier-guidance row of the decoder table in ``docs/math.md`` §1:
``β = 1, γ = 0, g(s, a) = log P_D(c | s, a)``, so ``π ∝ P_G · P_D^λ``. The discriminator ``P_D(c | s, a)``
predicts the attribute ``c`` (a topic) of the *final* text from the state ``s`` and a candidate next token
``a``; trained on prefixes of labelled text, it stands in for the future value ``V(s ⊕ a)`` of the
sequence-level problem (``docs/math.md`` §1, "Myopic decoders ...").

As in FUDGE, only the ``top_k`` most likely next tokens under ``P_G`` are scored (one batched call of the
discriminator per step) and the rest are masked: the policy's support is the top-k set, and on it

    π(a | s) = softmax_a(log P_G(a | s) + λ · log P_D(c | s, a))

which is ``ValuePolicy(β=1, γ=0, λ, g)`` restricted to the top-k support (``as_value_policy``).

The discriminator reads the LM's final (post-norm) hidden state ``h`` of the state ``s`` (``[B, D]``,
``StepInfo.hidden``; the engine provides it because ``needs_hidden = True``) and the LM's input
embedding ``e_a`` of each candidate token (``[B, K, D]``).
"""

from __future__ import annotations

from typing import Any, cast

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jax.typing import ArrayLike

from infodec.policies.base import MASK_VALUE, Diagnostics, Policy, StepInfo, check_range
from infodec.policies.value_policy import FunctionScore, ValuePolicy

Array = jax.Array


class TopicDiscriminator(nn.Module):
    """``P_D(c | s, a)`` as logits: ``(h[B, D], e[B, K, D]) -> [B, K, C]``.

    Both inputs are layer-normalised and projected to ``hidden_dim``; the MLP reads their sum and
    their elementwise product (so the token can modulate the state), then two GELU layers and a
    linear map to ``num_topics`` logits. The state term alone also reaches the output, so the head
    can be a pure prefix classifier when the next token carries no information.
    """

    num_topics: int
    hidden_dim: int = 256

    @nn.compact
    def __call__(self, hidden: Array, embeddings: Array) -> Array:
        hidden = nn.LayerNorm(name="norm_h")(hidden.astype(jnp.float32))
        embeddings = nn.LayerNorm(name="norm_e")(embeddings.astype(jnp.float32))
        h = nn.Dense(self.hidden_dim, name="proj_h")(hidden)[:, None, :]  # [B, 1, H]
        e = nn.Dense(self.hidden_dim, name="proj_e")(embeddings)  # [B, K, H]
        h = jnp.broadcast_to(h, e.shape)
        x = jnp.concatenate([h + e, h * e], axis=-1)
        x = nn.gelu(nn.Dense(self.hidden_dim, name="mlp_in")(nn.gelu(x)))
        x = nn.gelu(nn.Dense(self.hidden_dim, name="mlp_mid")(x))
        return nn.Dense(self.num_topics, name="out")(x)


def init_discriminator(key: Array, hidden_size: int, num_topics: int, hidden_dim: int = 256) -> Any:
    """Random parameters of a ``TopicDiscriminator`` for an LM of width ``hidden_size``."""
    module = TopicDiscriminator(num_topics, hidden_dim)
    return module.init(key, jnp.zeros((1, hidden_size)), jnp.zeros((1, 1, hidden_size)))["params"]


def discriminator_logits(
    params: Any, hidden: Array, embeddings: Array, num_topics: int, hidden_dim: int = 256
) -> Array:
    """``[B, K, C]`` topic logits of ``TopicDiscriminator`` (a plain function of the parameters)."""
    return cast(Array, TopicDiscriminator(num_topics, hidden_dim).apply({"params": params}, hidden, embeddings))


def input_embeddings(model, params) -> Array:
    """The LM's input embedding table ``[V, D]`` (the ``embed_tokens``/``wte`` matrix in ``params``)."""
    vocab, width = model.vocab_size, model.config.hidden_size
    found = []

    def visit(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path).lower()
        if np.shape(leaf) == (vocab, width) and ("embed" in name or "wte" in name):
            found.append((name, leaf))

    jax.tree_util.tree_map_with_path(visit, params)
    if not found:
        raise ValueError(f"no [{vocab}, {width}] input-embedding matrix found in the model's parameters")
    return jnp.asarray(sorted(found, key=lambda x: x[0])[0][1], jnp.float32)


@flax.struct.dataclass
class ClassifierGuidance(Policy):
    """``π ∝ P_G · P_D(target | s, a)^scale`` on the ``top_k`` tokens of ``P_G`` (FUDGE), masked elsewhere.

    Attributes:
      discriminator_params: ``TopicDiscriminator`` parameters (traced: new weights never recompile).
      embeddings: ``[V, D]`` the LM's input embeddings (``input_embeddings(model, params)``).
      target: the topic index ``c`` to steer toward: an int or a per-row ``[B]`` array.
      scale: ``λ >= 0``; 0 is top-k truncation of ``P_G``.
      top_k: candidates scored per step (static; capped at the vocabulary).
      num_topics, hidden_dim: the discriminator's shape (static).

    Diagnostics (per row): ``p_target`` = ``E_π[P_D(target | s, a)]``, ``p_target_model`` = the same under
    ``P_G`` renormalised on the top-k (how much guidance moved the discriminator's belief), and
    ``topic_entropy`` of ``P_D(· | s, a)`` averaged under π.
    """

    discriminator_params: Any
    embeddings: Array
    target: ArrayLike = 0
    scale: ArrayLike = 1.0
    top_k: int = flax.struct.field(pytree_node=False, default=50)
    num_topics: int = flax.struct.field(pytree_node=False, default=0)
    hidden_dim: int = flax.struct.field(pytree_node=False, default=256)

    needs_hidden = True

    def __post_init__(self):
        check_range("scale", self.scale, 0.0, float("inf"), allowed=">= 0 (λ, the weight of log P_D)")
        if not isinstance(self.top_k, (int, np.integer)) or isinstance(self.top_k, bool) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if not isinstance(self.num_topics, (int, np.integer)) or self.num_topics < 1:
            raise ValueError(
                f"num_topics must be an integer >= 1 (the discriminator's classes), got {self.num_topics!r}"
            )
        target = self.target
        if isinstance(target, Tracer):
            return
        try:
            target = np.asarray(target)
        except (TypeError, ValueError):  # pytree internals rebuild policies with placeholder leaves
            return
        if target.dtype == object or not np.issubdtype(target.dtype, np.number):
            return
        if (
            target.ndim > 1
            or np.any(target < 0)
            or np.any(target >= self.num_topics)
            or np.any(target != np.round(target))
        ):
            raise ValueError(
                f"target must be a topic index in [0, {self.num_topics}) (an int or one per row), got {self.target!r}"
            )

    @classmethod
    def from_model(
        cls, model, params, discriminator_params, *, num_topics: int, hidden_dim: int = 256, **kwargs
    ) -> ClassifierGuidance:
        """Builds the policy with the LM's input embeddings taken from ``params``."""
        return cls(
            discriminator_params,
            input_embeddings(model, params),
            num_topics=num_topics,
            hidden_dim=hidden_dim,
            **kwargs,
        )

    # --- the pieces ---------------------------------------------------------------------------------

    def _hidden(self, step: StepInfo | None) -> Array:
        if step is None or step.hidden is None:
            raise ValueError(
                "ClassifierGuidance needs the LM's hidden state (StepInfo.hidden): use it through "
                "infodec.generate, or pass StepInfo(context, index, hidden=[B, D])"
            )
        return step.hidden

    def candidates(self, log_p: Array) -> tuple[Array, Array]:
        """``(log P_G[B, K], token ids [B, K])`` of the top-k tokens (ties: lowest id first)."""
        k = min(self.top_k, log_p.shape[-1])
        return jax.lax.top_k(log_p, k)

    def target_log_probs(self, hidden: Array, tokens: Array) -> tuple[Array, Array]:
        """``(log P_D(target | s, a)[B, K], log P_D(· | s, a)[B, K, C])`` for candidate ``tokens[B, K]``."""
        embeddings = jnp.take(jnp.asarray(self.embeddings, jnp.float32), tokens, axis=0)
        logits = discriminator_logits(self.discriminator_params, hidden, embeddings, self.num_topics, self.hidden_dim)
        log_pd = jax.nn.log_softmax(logits, axis=-1)
        target = jnp.broadcast_to(jnp.asarray(self.target).astype(jnp.int32), (tokens.shape[0],))
        return jnp.take_along_axis(log_pd, target[:, None, None], axis=-1)[..., 0], log_pd

    def score(self, log_probs: Array, step: StepInfo | None) -> Array:
        """``g[B, V]``: ``log P_D(target | s, a)`` on the top-k of ``log_probs[:, 0]``, 0 elsewhere (those
        tokens are outside the support anyway); the ``FunctionScore`` of ``as_value_policy``."""
        log_p = log_probs[:, 0] if log_probs.ndim == 3 else log_probs
        _, tokens = self.candidates(log_p)
        g, _ = self.target_log_probs(self._hidden(step), tokens)
        rows = jnp.arange(log_p.shape[0])[:, None]
        return jnp.zeros_like(log_p).at[rows, tokens].set(g)

    def support(self, logits: Array) -> Array:
        """``[B, V]`` bool: the top-k tokens of ``P_G`` (stream 0)."""
        logits = logits[:, 0] if logits.ndim == 3 else logits
        _, tokens = self.candidates(jax.nn.log_softmax(logits.astype(jnp.float32)))
        return jnp.zeros(logits.shape, bool).at[jnp.arange(logits.shape[0])[:, None], tokens].set(True)

    def as_value_policy(self) -> ValuePolicy:
        """``ValuePolicy(β=1, γ=0, λ=scale, g=log P_D(target | s, a))``; it equals this policy on the
        top-k support (renormalise it there: ``support``), the only difference being FUDGE's mask."""
        return ValuePolicy(beta=1.0, gamma=0.0, lam=self.scale, score=FunctionScore(self.score))

    # --- the policy ---------------------------------------------------------------------------------

    def log_probs(self, logits: Array, step: StepInfo | None) -> tuple[Array, Diagnostics]:
        log_p = jax.nn.log_softmax(logits[:, 0])
        top_log_p, tokens = self.candidates(log_p)
        g, log_pd = self.target_log_probs(self._hidden(step), tokens)
        lam = jnp.asarray(self.scale, jnp.float32)
        lam = lam[:, None] if lam.ndim == 1 else lam
        utility = top_log_p + lam * g  # [B, K]
        rows = jnp.arange(log_p.shape[0])[:, None]
        full = jnp.full(log_p.shape, MASK_VALUE, jnp.float32).at[rows, tokens].set(utility)
        log_pi = jax.nn.log_softmax(full)
        pi_k = jax.nn.softmax(utility, axis=-1)
        p_k = jax.nn.softmax(top_log_p, axis=-1)
        pd_target = jnp.exp(g)
        topic_entropy = -jnp.sum(jnp.exp(log_pd) * log_pd, axis=-1)  # [B, K]
        return log_pi, {
            "p_target": jnp.sum(pi_k * pd_target, axis=-1),
            "p_target_model": jnp.sum(p_k * pd_target, axis=-1),
            "topic_entropy": jnp.sum(pi_k * topic_entropy, axis=-1),
            "guidance": jnp.broadcast_to(lam, utility.shape)[:, 0],
        }


__all__ = ["TopicDiscriminator", "init_discriminator", "discriminator_logits", "input_embeddings", "ClassifierGuidance"]
