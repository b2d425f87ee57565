"""Training the FUDGE-style topic discriminator of ``ClassifierGuidance`` on a frozen LM.

Examples: for a labelled text ``x_1..x_T`` (truncated to ``max_tokens + 1`` tokens) and each prefix
length ``t = 1..T-1``, the LM's final hidden state after reading ``x_1..x_t`` paired with the actual
next token ``x_{t+1}``; the label is the text's topic. The head learns ``P_D(c | s = x_≤t, a = x_{t+1})``,
which is what ``ClassifierGuidance`` queries for every candidate ``a``.

    features = extract_features(model, params, token_lists, labels, max_tokens=64)
    head = train_discriminator(features, input_embeddings(model, params), num_topics, steps=1500)
    table = evaluate(head, valid_features, embeddings, num_topics, majority=...)
    save_discriminator("results/discriminator", head, {"topics": [...], "model": "smollm2-135m", ...})
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

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

    def subset(self, mask: np.ndarray) -> "Features":
        return Features(*(getattr(self, f.name)[mask] for f in dataclasses.fields(self)))


def extract_features(model, params, token_lists: Sequence[Sequence[int]], labels: Sequence[int], *,
                     max_tokens: int = 64, batch_size: int = 16,
                     progress: Callable[[str], None] | None = None) -> Features:
    """Runs the frozen LM over each text (first ``max_tokens + 1`` tokens, right-padded, one jitted
    shape) and collects the hidden state of every prefix with its next token. Texts of fewer than two
    tokens give no example."""
    if len(token_lists) != len(labels):
        raise ValueError(f"got {len(token_lists)} texts but {len(labels)} labels")
    width = max_tokens + 1
    apply = jax.jit(lambda p, t, pos: model.apply(p, t, pos, None, return_hidden=True)[2])
    out = {k: [] for k in ("hidden", "next_token", "label", "position", "last", "doc")}
    start = time.time()
    for begin in range(0, len(token_lists), batch_size):
        block = [list(t)[:width] for t in token_lists[begin:begin + batch_size]]
        tokens = np.zeros((batch_size, width), np.int32)
        positions = np.full((batch_size, width), -1, np.int32)
        for row, ids in enumerate(block):
            tokens[row, :len(ids)] = ids
            positions[row, :len(ids)] = np.arange(len(ids))
        hidden = np.asarray(apply(params, jnp.asarray(tokens), jnp.asarray(positions)), np.float16)
        for row, ids in enumerate(block):
            n = len(ids) - 1  # prefixes of length 1..n, each with its next token
            if n < 1:
                continue
            doc = begin + row
            out["hidden"].append(hidden[row, :n])
            out["next_token"].append(np.asarray(ids[1:], np.int32))
            out["label"].append(np.full(n, labels[doc], np.int32))
            out["position"].append(np.arange(1, n + 1, dtype=np.int32))
            out["last"].append(np.arange(n) == n - 1)
            out["doc"].append(np.full(n, doc, np.int32))
        if progress is not None and (begin // batch_size) % 20 == 0:
            done = min(begin + batch_size, len(token_lists))
            progress(f"features: {done}/{len(token_lists)} texts, {time.time() - start:.0f}s")
    if not out["hidden"]:
        raise ValueError("no examples: every text has fewer than two tokens")
    return Features(*(np.concatenate(out[k]) for k in ("hidden", "next_token", "label", "position", "last", "doc")))


def train_discriminator(features: Features, embeddings, num_topics: int, *, steps: int = 1500,
                        batch_size: int = 512, learning_rate: float = 1e-3, weight_decay: float = 1e-2,
                        hidden_dim: int = 256, seed: int = 0, log_every: int = 250,
                        progress: Callable[[str], None] | None = None) -> Any:
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
            logits = discriminator_logits(p, hidden, jnp.take(embeddings, tokens, axis=0)[:, None], num_topics,
                                          hidden_dim)[:, 0]
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
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        params, opt_state, loss, acc = update(params, opt_state, jnp.asarray(features.hidden[idx], jnp.float32),
                                              jnp.asarray(features.next_token[idx]),
                                              jnp.asarray(features.label[idx]))
        losses.append(float(loss))
        accs.append(float(acc))
        if progress is not None and (step % log_every == 0 or step == steps):
            progress(f"step {step}/{steps}: loss {np.mean(losses[-log_every:]):.4f}, "
                     f"train acc {np.mean(accs[-log_every:]):.3f}, {time.time() - start:.0f}s")
    return params


def predict(params, features: Features, embeddings, num_topics: int, *, hidden_dim: int = 256,
            batch_size: int = 4096) -> np.ndarray:
    """``[N, C]`` float32 ``P_D(· | s, a)`` of every example (its actual next token as ``a``)."""
    embeddings = jnp.asarray(embeddings, jnp.float32)

    @jax.jit
    def probs(p, hidden, tokens):
        logits = discriminator_logits(p, hidden, jnp.take(embeddings, tokens, axis=0)[:, None], num_topics,
                                      hidden_dim)[:, 0]
        return jax.nn.softmax(logits, axis=-1)

    out = []
    for begin in range(0, len(features), batch_size):
        end = min(begin + batch_size, len(features))
        hidden = np.zeros((batch_size, features.hidden.shape[1]), np.float32)
        tokens = np.zeros((batch_size,), np.int32)
        hidden[:end - begin] = features.hidden[begin:end]
        tokens[:end - begin] = features.next_token[begin:end]
        out.append(np.asarray(probs(params, jnp.asarray(hidden), jnp.asarray(tokens)))[:end - begin])
    return np.concatenate(out)


def evaluate(params, features: Features, embeddings, num_topics: int, *, majority: int, hidden_dim: int = 256,
             positions: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)) -> dict:
    """Held-out accuracy: overall (every prefix), at the final prefix of each text, and at selected
    prefix lengths; each against the majority-class baseline (``majority``, the most frequent
    training label) on the same examples."""
    probs = predict(params, features, embeddings, num_topics, hidden_dim=hidden_dim)
    correct = np.argmax(probs, -1) == features.label
    base = features.label == majority
    nll = -np.log(np.maximum(probs[np.arange(len(features)), features.label], 1e-12))

    def row(mask):
        return {"n": int(mask.sum()), "accuracy": float(correct[mask].mean()) if mask.any() else float("nan"),
                "majority": float(base[mask].mean()) if mask.any() else float("nan")}

    return {"all": {**row(np.ones(len(features), bool)), "nll": float(nll.mean())},
            "final": row(features.last),
            "by_position": {int(t): row(features.position == t) for t in positions
                            if np.any(features.position == t)}}


def format_table(table: dict) -> str:
    """The ``evaluate`` result as a small text table."""
    lines = [f"{'prefix':>10} {'n':>7} {'accuracy':>9} {'majority':>9}"]
    for name, row in [*((f"t={t}", r) for t, r in table["by_position"].items()), ("final", table["final"]),
                      ("all", table["all"])]:
        lines.append(f"{name:>10} {row['n']:>7} {row['accuracy']:>9.3f} {row['majority']:>9.3f}")
    return "\n".join(lines)


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


# --- the wiki-leads pipeline -----------------------------------------------------------------------

def sample_leads(records, num: int, seed: int, exclude: Sequence[str] = ()) -> list:
    """``num`` records (all if ``num <= 0``) drawn without replacement by a seeded shuffle, skipping
    topics in ``exclude``."""
    records = [r for r in records if r.topic not in set(exclude)]
    order = np.random.default_rng(seed).permutation(len(records))
    return [records[i] for i in (order if num <= 0 else order[:num])]


def train_on_wiki_leads(model_name: str = "smollm2-135m", *, num_train: int = 1000, num_valid: int = 400,
                        max_tokens: int = 64, steps: int = 1500, batch_size: int = 512, hidden_dim: int = 256,
                        learning_rate: float = 1e-3, exclude: Sequence[str] = ("Uncategorized",), seed: int = 0,
                        loaded=None, progress: Callable[[str], None] | None = print) -> tuple[Any, dict, dict]:
    """Loads the LM and wiki-leads, extracts features of ``num_train`` train-split and ``num_valid``
    valid-split leads, trains the head and evaluates it. Returns ``(params, metadata, table)``;
    ``loaded``: an already loaded ``(model, params, tokenizer)``."""
    from infodec.data import load_wiki_leads, split, topics as topic_names
    from infodec.policies.guidance import input_embeddings

    model, lm_params, tokenizer = loaded if loaded is not None else _load(model_name)
    leads = load_wiki_leads()
    names = [t for t in topic_names(leads) if t not in set(exclude)]
    index = {t: i for i, t in enumerate(names)}
    train = sample_leads(split(leads, "train"), num_train, seed, exclude)
    valid = sample_leads(split(leads, "valid"), num_valid, seed + 1, exclude)

    def features(records, name):
        if progress:
            progress(f"{name}: {len(records)} leads, first {max_tokens + 1} tokens each")
        return extract_features(model, lm_params, [tokenizer.encode(r.lead) for r in records],
                                [index[r.topic] for r in records], max_tokens=max_tokens, progress=progress)

    start = time.time()
    train_features, valid_features = features(train, "train"), features(valid, "valid")
    feature_seconds = time.time() - start
    embeddings = input_embeddings(model, lm_params)
    majority = int(np.bincount([index[r.topic] for r in train], minlength=len(names)).argmax())
    start = time.time()
    head = train_discriminator(train_features, embeddings, len(names), steps=steps, batch_size=batch_size,
                               learning_rate=learning_rate, hidden_dim=hidden_dim, seed=seed, progress=progress)
    train_seconds = time.time() - start
    table = evaluate(head, valid_features, embeddings, len(names), majority=majority, hidden_dim=hidden_dim,
                     positions=[t for t in (1, 2, 4, 8, 16, 32, 48, 64) if t <= max_tokens])
    metadata = {"topics": names, "model": model_name, "hidden_size": int(model.config.hidden_size),
                "hidden_dim": hidden_dim, "max_tokens": max_tokens, "num_train": len(train),
                "num_valid": len(valid), "train_examples": len(train_features), "steps": steps,
                "majority_topic": names[majority], "excluded_topics": list(exclude), "seed": seed,
                "feature_seconds": round(feature_seconds, 1), "train_seconds": round(train_seconds, 1),
                "valid": table}
    return head, metadata, table


def _load(model_name):
    import infodec
    return infodec.load(model_name)


__all__ = ["Features", "extract_features", "train_discriminator", "predict", "evaluate", "format_table",
           "save_discriminator", "load_discriminator", "sample_leads",
           "train_on_wiki_leads"]
