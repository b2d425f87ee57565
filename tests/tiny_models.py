"""A tiny random Llama built in-process, and exact (enumerated) sequence distributions under a policy.

The reference computations here never use the engine or a KV cache: each next-token distribution is
the full-sequence logits of ``prompt + prefix`` (one ``model.apply`` without a cache), so comparing
with ``infodec.generate`` checks the cache, the padding, the sampler and the bookkeeping together.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from infodec.models import llama

VOCAB = 6
MAX_LENGTH = 64


def tiny_llama(seed: int = 0, scale: float = 2.0):
    """``(model, params)``: a 2-layer Llama over 6 tokens with its embeddings and head scaled by ``scale``
    so next-token distributions are far from uniform and depend on the context."""
    cfg = llama.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                            num_kv_heads=1, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0,
                            max_position_embeddings=MAX_LENGTH, scan_layers=False)
    model = llama.build(cfg)
    tokens = jnp.zeros((1, 4), jnp.int32)
    params = model.module(cfg).init(jax.random.key(seed), tokens, jnp.arange(4)[None], None)["params"]
    params = dict(params)
    params["embed_tokens"] = {"embedding": params["embed_tokens"]["embedding"] * scale}
    params["lm_head"] = {"kernel": params["lm_head"]["kernel"] * scale}
    return model, params


class Reference:
    """Cache-free next-token logits of a model, memoised per context."""

    def __init__(self, model, params):
        self.model, self.params = model, params
        self._apply = jax.jit(lambda p, t: model.apply(p, t, jnp.broadcast_to(jnp.arange(t.shape[1]), t.shape))[0])
        self._memo: dict[tuple[int, ...], np.ndarray] = {}

    def logits(self, context) -> np.ndarray:
        """``[V]`` float32 next-token logits after ``context`` (a sequence of token ids)."""
        context = tuple(int(t) for t in context)
        if context not in self._memo:
            self._memo[context] = np.asarray(self._apply(self.params, jnp.asarray([context], jnp.int32))[0, -1])
        return self._memo[context]

    def batch_logits(self, contexts) -> None:
        """Fills the memo for many same-length contexts with one call."""
        contexts = [tuple(int(t) for t in c) for c in contexts if tuple(c) not in self._memo]
        if not contexts:
            return
        out = np.asarray(self._apply(self.params, jnp.asarray(contexts, jnp.int32))[:, -1])
        for c, row in zip(contexts, out):
            self._memo[c] = row

    def log_model(self, context) -> np.ndarray:
        """``[V]`` log P_G(. | context) in float64."""
        x = self.logits(context).astype(np.float64)
        return x - np.logaddexp.reduce(x)

    def greedy(self, prompt, steps: int) -> list[int]:
        """Greedy continuation by full-sequence recomputation at every step (first argmax on ties)."""
        context = list(prompt)
        for _ in range(steps):
            context.append(int(np.argmax(self.logits(context))))
        return context[len(prompt):]


def policy_log_probs(policy, logits: np.ndarray) -> np.ndarray:
    """``[V]`` log π for one row of logits, in float64 (masked entries are ~-1e30)."""
    log_pi, _ = policy(jnp.asarray(logits, jnp.float32)[None])
    log_pi = np.asarray(log_pi[0], np.float64)
    return log_pi - np.logaddexp.reduce(log_pi)


def exact_sequences(ref: Reference, policy, prompt, horizon: int):
    """Enumerates every continuation of ``horizon`` tokens.

    Returns ``(seqs [V**H, H] int, prob [V**H], log_pi [V**H, H], log_p [V**H, H])`` where
    ``prob = Π π(y_t | prompt, y_<t)`` and the per-step log π and log P_G of each token.
    """
    prompt = list(prompt)
    seqs = np.array(list(itertools.product(range(VOCAB), repeat=horizon)), np.int64)
    log_pi = np.zeros(seqs.shape, np.float64)
    log_p = np.zeros(seqs.shape, np.float64)
    for t in range(horizon):
        prefixes = sorted({tuple(s[:t]) for s in seqs})
        ref.batch_logits([prompt + list(p) for p in prefixes])
        step_pi, step_p = {}, {}
        for prefix in prefixes:
            logits = ref.logits(prompt + list(prefix))
            step_pi[prefix] = policy_log_probs(policy, logits)
            step_p[prefix] = ref.log_model(prompt + list(prefix))
        for i, s in enumerate(seqs):
            log_pi[i, t] = step_pi[tuple(s[:t])][s[t]]
            log_p[i, t] = step_p[tuple(s[:t])][s[t]]
    prob = np.exp(log_pi.sum(1))
    return seqs, prob, log_pi, log_p


def sequence_index(tokens: np.ndarray) -> np.ndarray:
    """Row-wise index of each ``[N, H]`` token sequence in ``exact_sequences``' lexicographic order."""
    tokens = np.asarray(tokens, np.int64)
    return (tokens * VOCAB ** np.arange(tokens.shape[1] - 1, -1, -1)).sum(1)
