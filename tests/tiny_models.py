"""A tiny random Llama built in-process, and exact (enumerated) sequence distributions under a policy.

The reference computations here never use the engine or a KV cache: each next-token distribution is
the full-sequence logits of ``prompt + prefix`` (one ``model.apply`` without a cache), so comparing
with ``infodec.generate`` checks the cache, the padding, the sampler and the bookkeeping together.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from infodec.models import gemma3, gpt2, llama

VOCAB = 6
MAX_LENGTH = 64
# Config overrides whose heads (8), KV heads (4), MLP width (64) and vocabulary (32) split 2, 4 and 8 ways.
SHARDABLE: dict[str, Any] = dict(
    vocab_size=32, hidden_size=32, intermediate_size=64, num_heads=8, num_kv_heads=4, head_dim=8
)


def tiny_llama(seed: int = 0, scale: float = 2.0, **overrides):
    """``(model, params)``: a 2-layer Llama over 6 tokens with its embeddings and head scaled by ``scale``
    so next-token distributions are far from uniform and depend on the context. ``overrides`` replace
    config fields (e.g. ``SHARDABLE`` for a model whose heads, MLP and vocabulary split 2, 4 and 8 ways)."""
    cfg = llama.LlamaConfig(
        **{
            **dict(
                vocab_size=VOCAB,
                hidden_size=16,
                intermediate_size=32,
                num_layers=2,
                num_heads=2,
                num_kv_heads=1,
                head_dim=8,
                rms_norm_eps=1e-5,
                rope_theta=10000.0,
                max_position_embeddings=MAX_LENGTH,
                scan_layers=False,
            ),
            **overrides,
        }
    )
    return _random_params(llama.build(cfg), seed, scale)


def tiny_gpt2(seed: int = 0, scale: float = 2.0):
    """``(model, params)``: a 2-layer GPT-2 with ``SHARDABLE``'s sizes (4 heads, its own KV heads)."""
    cfg = gpt2.GPT2Config(
        vocab_size=SHARDABLE["vocab_size"],
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        max_position_embeddings=MAX_LENGTH,
    )
    return _random_params(gpt2.build(cfg), seed, scale)


def tiny_gemma3(seed: int = 0, scale: float = 2.0):
    """``(model, params)``: a 2-layer Gemma 3 (one sliding-window layer of 4, one global) with
    ``SHARDABLE``'s sizes."""
    cfg = gemma3.Gemma3Config(
        **{
            k: SHARDABLE[k]
            for k in ("vocab_size", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim")
        },
        num_layers=2,
        rms_norm_eps=1e-6,
        query_pre_attn_scalar=8,
        sliding_window=4,
        layer_types=("sliding_attention", "full_attention"),
        rope_theta=1e6,
        rope_local_theta=1e4,
        max_position_embeddings=MAX_LENGTH,
    )
    return _random_params(gemma3.build(cfg), seed, scale)


def _random_params(model, seed: int, scale: float):
    """Random parameters of ``model``, vocabulary matrices (embeddings, LM head) times ``scale``."""
    tokens = jnp.zeros((1, 4), jnp.int32)
    init = jax.jit(model.module(model.config).init)  # one compilation instead of op-by-op dispatch
    params = dict(init(jax.random.key(seed), tokens, jnp.arange(4)[None], None)["params"])
    for name in ("embed_tokens", "wte", "lm_head"):
        if name in params:
            params[name] = {key: value * scale for key, value in params[name].items()}
    return model, params


class Reference:
    """Cache-free next-token logits of a model (full-sequence ``model.apply``), memoised per context.

    Contexts are right-padded to ``WIDTH`` tokens and batched in blocks of ``ROWS`` so every call has
    one shape (one compilation): under the causal mask, the logits at position ``len - 1`` do not
    depend on the padding after it.
    """

    WIDTH = 32
    ROWS = 64

    def __init__(self, model, params):
        self.model, self.params = model, params
        positions = jnp.broadcast_to(jnp.arange(self.WIDTH), (self.ROWS, self.WIDTH))
        self._apply = jax.jit(lambda p, t: model.apply(p, t, positions)[0])
        self._memo: dict[tuple[int, ...], np.ndarray] = {}

    def batch_logits(self, contexts) -> np.ndarray:
        """``[len(contexts), V]`` float32 next-token logits after each context (sequences of ids)."""
        contexts = [tuple(int(t) for t in c) for c in contexts]
        todo = sorted({c for c in contexts if c not in self._memo})
        for start in range(0, len(todo), self.ROWS):
            block = todo[start : start + self.ROWS]
            tokens = np.zeros((self.ROWS, self.WIDTH), np.int32)
            for row, c in enumerate(block):
                assert 0 < len(c) <= self.WIDTH, len(c)
                tokens[row, : len(c)] = c
            out = np.asarray(self._apply(self.params, jnp.asarray(tokens)))
            for row, c in enumerate(block):
                self._memo[c] = out[row, len(c) - 1]
        return np.stack([self._memo[c] for c in contexts])

    def logits(self, context) -> np.ndarray:
        """``[V]`` float32 next-token logits after ``context``."""
        return self.batch_logits([context])[0]

    def log_model(self, context) -> np.ndarray:
        """``[V]`` log P_G(. | context) in float64."""
        x = self.logits(context).astype(np.float64)
        return x - np.logaddexp.reduce(x)

    def greedy(self, prompts, steps: int) -> np.ndarray:
        """``[B, steps]`` greedy continuations, recomputing the full sequence at every step (first
        argmax on ties, as ``Greedy``)."""
        contexts = [list(p) for p in prompts]
        for _ in range(steps):
            best = np.argmax(self.batch_logits(contexts), axis=-1)
            for context, token in zip(contexts, best):
                context.append(int(token))
        return np.array([c[len(p) :] for c, p in zip(contexts, prompts)])


def policy_log_probs(policy, logits: np.ndarray) -> np.ndarray:
    """``[..., V]`` log π of rows of logits, in float64 (masked entries are ~-1e30)."""
    logits = np.asarray(logits, np.float32)
    log_pi, _ = policy(jnp.asarray(logits.reshape(-1, logits.shape[-1])))
    log_pi = np.asarray(log_pi, np.float64).reshape(logits.shape)
    return log_pi - np.logaddexp.reduce(log_pi, axis=-1, keepdims=True)


def exact_sequences(ref: Reference, policy, prompt, horizon: int):
    """Enumerates every continuation of ``horizon`` tokens (lexicographic order).

    Returns ``(seqs [V**H, H] int, prob [V**H], log_pi [V**H, H], log_p [V**H, H])`` where
    ``prob = Π_t π(y_t | prompt, y_<t)`` and the per-step log π and log P_G of each token. Each step
    applies the policy once to the logits of all ``V**t`` prefixes.
    """
    prompt = [int(t) for t in prompt]
    seqs = np.array(list(itertools.product(range(VOCAB), repeat=horizon)), np.int64)
    log_pi = np.zeros(seqs.shape, np.float64)
    log_p = np.zeros(seqs.shape, np.float64)
    for t in range(horizon):
        prefixes = [tuple(p) for p in itertools.product(range(VOCAB), repeat=t)]  # lexicographic too
        logits = ref.batch_logits([prompt + list(p) for p in prefixes])  # [V**t, V]
        step_pi = policy_log_probs(policy, logits)
        step_p = logits.astype(np.float64) - np.logaddexp.reduce(logits.astype(np.float64), axis=-1, keepdims=True)
        prefix_index = sequence_index(seqs[:, :t]) if t else np.zeros(len(seqs), np.int64)
        log_pi[:, t] = step_pi[prefix_index, seqs[:, t]]
        log_p[:, t] = step_p[prefix_index, seqs[:, t]]
    prob = np.exp(log_pi.sum(1))
    return seqs, prob, log_pi, log_p


def sequence_index(tokens: np.ndarray) -> np.ndarray:
    """Row-wise index of each ``[N, H]`` token sequence in ``exact_sequences``' lexicographic order."""
    tokens = np.asarray(tokens, np.int64)
    return (tokens * VOCAB ** np.arange(tokens.shape[1] - 1, -1, -1)).sum(1)
