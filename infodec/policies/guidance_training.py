"""Training the FUDGE-style topic discriminator of ``ClassifierGuidance`` on a frozen LM.

Examples: for a labelled text ``x_1..x_T`` (truncated to ``max_tokens + 1`` tokens) and each prefix
length ``t = 1..T-1``, the LM's final hidden state after reading ``x_1..x_t`` paired with the actual
next token ``x_{t+1}``; the label is the text's topic. The head learns ``P_D(c | s = x_≤t, a = x_{t+1})``,
which is what ``ClassifierGuidance`` queries for every candidate ``a``.

    features = extract_features(model, params, token_lists, labels, max_tokens=64)
    head = train_discriminator(features, input_embeddings(model, params), num_topics, steps=1500)
    table = evaluate(head, valid_features, embeddings, num_topics, majority=...)
    save_discriminator("results/discriminator", head, {"topics": [...], "model": "smollm2-135m", ...})

The wiki-leads pipeline that uses these (which leads, which topics, the tables) is the guidance study,
``infodec.studies.guidance``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from infodec.batching import map_in_chunks
from infodec.policies.guidance import discriminator_logits, init_discriminator

PARAMS_FILE = "params.msgpack"
METADATA_FILE = "metadata.json"


@dataclasses.dataclass
class Features:
    """One example per (text, prefix length) pair; arrays of length N.

    Attributes:
      hidden: ``[N, D]`` float16 final hidden state after the prefix ``x_1..x_t``.
      next_token: ``[N]`` int32, ``x_{t+1}``.
      label: ``[N]`` int32 topic index of the text.
      position: ``[N]`` int32 prefix length ``t`` (1-based).
      last: ``[N]`` bool, True for the longest prefix of each text.
      doc: ``[N]`` int32 index of the text.
    """

    hidden: np.ndarray
    next_token: np.ndarray
    label: np.ndarray
    position: np.ndarray
    last: np.ndarray
    doc: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, mask: np.ndarray) -> Features:
        return Features(*(getattr(self, f.name)[mask] for f in dataclasses.fields(self)))


def extract_features(
    model,
    params,
    token_lists: Sequence[Sequence[int]],
    labels: Sequence[int],
    *,
    max_tokens: int = 64,
    batch_size: int = 16,
    progress: Callable[[str], None] | None = None,
) -> Features:
    """Runs the frozen LM over each text and collects the hidden state of every prefix with its next token.

    Args:
      model, params: the LM (``model.apply(..., return_hidden=True)`` gives ``[B, T, D]`` final states).
      token_lists: N texts as token ids; the first ``max_tokens + 1`` of each are read.
      labels: ``[N]`` topic index of each text.
      max_tokens: longest prefix used.
      batch_size: texts per LM call (right-padded to ``max_tokens + 1``: one jitted shape).
      progress: called with a progress line every 20 calls.
    Returns:
      ``Features`` of ``sum_i (min(len_i, max_tokens + 1) − 1)`` examples; texts of fewer than two tokens
      give none.
    """
    if len(token_lists) != len(labels):
        raise ValueError(f"got {len(token_lists)} texts but {len(labels)} labels")
    width = max_tokens + 1
    apply = jax.jit(lambda p, t, pos: model.apply(p, t, pos, None, return_hidden=True)[2])
    start = time.time()

    def call(index: np.ndarray, number: int) -> list[np.ndarray]:
        """``[len(ids) − 1, D]`` float16 prefix states per text of the chunk."""
        block = [list(token_lists[i])[:width] for i in index]
        tokens = np.zeros((len(index), width), np.int32)
        positions = np.full((len(index), width), -1, np.int32)
        for row, ids in enumerate(block):
            tokens[row, : len(ids)] = ids
            positions[row, : len(ids)] = np.arange(len(ids))
        hidden = np.asarray(apply(params, jnp.asarray(tokens), jnp.asarray(positions)), np.float16)
        if progress is not None and number % 20 == 0:
            done = min((number + 1) * len(index), len(token_lists))
            progress(f"features: {done}/{len(token_lists)} texts, {time.time() - start:.0f}s")
        return [hidden[row, : max(len(ids) - 1, 0)] for row, ids in enumerate(block)]

    states = map_in_chunks(call, len(token_lists), batch_size) if len(token_lists) else []
    lengths = [len(h) for h in states]  # prefixes of length 1..n per text, each with its next token
    if not sum(lengths):
        raise ValueError("no examples: every text has fewer than two tokens")
    kept = [doc for doc, n in enumerate(lengths) if n]
    return Features(
        hidden=np.concatenate([states[doc] for doc in kept]),
        next_token=np.concatenate([np.asarray(list(token_lists[doc])[1:width], np.int32) for doc in kept]),
        label=np.concatenate([np.full(lengths[doc], labels[doc], np.int32) for doc in kept]),
        position=np.concatenate([np.arange(1, lengths[doc] + 1, dtype=np.int32) for doc in kept]),
        last=np.concatenate([np.arange(lengths[doc]) == lengths[doc] - 1 for doc in kept]),
        doc=np.concatenate([np.full(lengths[doc], doc, np.int32) for doc in kept]),
    )


def train_discriminator(
    features: Features,
    embeddings,
    num_topics: int,
    *,
    steps: int = 1500,
    batch_size: int = 512,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-2,
    hidden_dim: int = 256,
    seed: int = 0,
    log_every: int = 250,
    progress: Callable[[str], None] | None = None,
) -> Any:
    """AdamW (cosine-decayed learning rate) on the cross-entropy of the topic, minibatches drawn by
    shuffled epochs. Returns the head's parameters."""
    if len(features) == 0:
        raise ValueError("no training examples")
    if np.any(features.label < 0) or np.any(features.label >= num_topics):
        raise ValueError(f"labels must be in [0, {num_topics})")
    embeddings = jnp.asarray(embeddings, jnp.float32)
    key = jax.random.key(seed)
    params = init_discriminator(key, features.hidden.shape[1], num_topics, hidden_dim)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, steps // 10 + 1), steps)
    optimizer = optax.adamw(schedule, weight_decay=weight_decay)
    opt_state = optimizer.init(params)

    @jax.jit
    def update(params, opt_state, hidden, tokens, labels):
        def loss_fn(p):
            logits = discriminator_logits(
                p, hidden, jnp.take(embeddings, tokens, axis=0)[:, None], num_topics, hidden_dim
            )[:, 0]
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, acc

    rng = np.random.default_rng(seed)
    n = len(features)
    batch_size = min(batch_size, n)
    order, cursor = rng.permutation(n), 0
    start, losses, accs = time.time(), [], []
    for step in range(1, steps + 1):
        if cursor + batch_size > n:
            order, cursor = rng.permutation(n), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        params, opt_state, loss, acc = update(
            params,
            opt_state,
            jnp.asarray(features.hidden[idx], jnp.float32),
            jnp.asarray(features.next_token[idx]),
            jnp.asarray(features.label[idx]),
        )
        losses.append(float(loss))
        accs.append(float(acc))
        if progress is not None and (step % log_every == 0 or step == steps):
            progress(
                f"step {step}/{steps}: loss {np.mean(losses[-log_every:]):.4f}, "
                f"train acc {np.mean(accs[-log_every:]):.3f}, {time.time() - start:.0f}s"
            )
    return params


def predict(
    params, features: Features, embeddings, num_topics: int, *, hidden_dim: int = 256, batch_size: int = 4096
) -> np.ndarray:
    """``[N, C]`` float32 ``P_D(· | s, a)`` of every example (its actual next token as ``a``)."""
    embeddings = jnp.asarray(embeddings, jnp.float32)

    @jax.jit
    def probs(p, hidden, tokens):
        logits = discriminator_logits(p, hidden, jnp.take(embeddings, tokens, axis=0)[:, None], num_topics, hidden_dim)[
            :, 0
        ]
        return jax.nn.softmax(logits, axis=-1)

    def chunk(index: np.ndarray, _: int) -> jax.Array:
        return probs(params, jnp.asarray(features.hidden[index], jnp.float32), jnp.asarray(features.next_token[index]))

    # Every call has batch_size rows, even when there are fewer examples: one compiled shape for every
    # evaluation, so the probabilities do not depend on how many examples there are.
    return map_in_chunks(chunk, len(features), batch_size)


def evaluate(
    params,
    features: Features,
    embeddings,
    num_topics: int,
    *,
    majority: int,
    hidden_dim: int = 256,
    positions: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
) -> dict:
    """Held-out accuracy: overall (every prefix), at the final prefix of each text, and at selected
    prefix lengths; each against the majority-class baseline (``majority``, the most frequent
    training label) on the same examples."""
    probs = predict(params, features, embeddings, num_topics, hidden_dim=hidden_dim)
    correct = np.argmax(probs, -1) == features.label
    base = features.label == majority
    nll = -np.log(np.maximum(probs[np.arange(len(features)), features.label], 1e-12))

    def row(mask):
        return {
            "n": int(mask.sum()),
            "accuracy": float(correct[mask].mean()) if mask.any() else float("nan"),
            "majority": float(base[mask].mean()) if mask.any() else float("nan"),
        }

    return {
        "all": {**row(np.ones(len(features), bool)), "nll": float(nll.mean())},
        "final": row(features.last),
        "by_position": {int(t): row(features.position == t) for t in positions if np.any(features.position == t)},
    }


# --- persistence ----------------------------------------------------------------------------------


def save_discriminator(directory: str | Path, params: Any, metadata: dict) -> Path:
    """Writes ``params.msgpack`` (``flax.serialization``) and ``metadata.json`` (must hold ``topics``;
    conventionally also ``model``, ``hidden_size``, ``hidden_dim``)."""
    if "topics" not in metadata:
        raise ValueError("metadata must hold the list of 'topics' (index -> name)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    host = jax.device_get(params)
    (directory / PARAMS_FILE).write_bytes(flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(host)))
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return directory


def load_discriminator(directory: str | Path) -> tuple[Any, dict]:
    """``(params, metadata)`` written by ``save_discriminator``."""
    directory = Path(directory)
    for name in (PARAMS_FILE, METADATA_FILE):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory / name} not found; train one with experiments/train_discriminator.py")
    metadata = json.loads((directory / METADATA_FILE).read_text())
    params = flax.serialization.msgpack_restore((directory / PARAMS_FILE).read_bytes())
    params = jax.tree.map(jnp.asarray, params)
    return params, metadata


__all__ = [
    "Features",
    "extract_features",
    "train_discriminator",
    "predict",
    "evaluate",
    "save_discriminator",
    "load_discriminator",
    "PARAMS_FILE",
    "METADATA_FILE",
]
