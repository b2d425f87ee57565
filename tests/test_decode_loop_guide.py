"""The examples of ``docs/guides/decode-loop.md``, run as written on a tiny model and checked against
``generate`` and brute force (so the guide cannot rot)."""

import re
from pathlib import Path

import jax
import numpy as np
import pytest

import infodec
from infodec.decoding import score
from tests.tiny_models import VOCAB, tiny_llama

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guides" / "decode-loop.md"
PROMPT = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def guide():
    """The guide's python blocks executed in one namespace (all but the line that loads SmolLM2)."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)  # noqa: S102 (our own documentation)
    return namespace


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=1, scale=1.5)


def test_scan_and_while_loops_equal_generate(guide, tiny):
    model, params = tiny
    policy, key = infodec.Temperature(0.9), jax.random.key(4)
    prompts = [PROMPT, [5, 1]]
    expected = infodec.generate(model, params, prompts, policy, key, max_new_tokens=8, stop_tokens=(0,))
    state = guide["prefill"](model, params, prompts, key, max_new_tokens=8, policy=policy, stop_tokens=(0,))
    got = guide["finish"](guide["decode_until_done"](model, params, policy, state))
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    np.testing.assert_array_equal(got.lengths, expected.lengths)
    state = guide["prefill"](model, params, prompts, key, max_new_tokens=8, policy=policy, stop_tokens=(0,))
    scanned = guide["finish"](guide["decode_scan"](model, params, policy, state, 8))
    np.testing.assert_array_equal(scanned.tokens, expected.tokens)
    sampled = guide["sample"](model, params, prompts, key, policy, 8)  # tokenizer None: no stop tokens
    unstopped = infodec.generate(model, params, prompts, policy, key, max_new_tokens=8)
    np.testing.assert_array_equal(sampled.tokens, unstopped.tokens)


def test_best_of_n_returns_the_best_scored_sample(guide, tiny):
    model, params = tiny
    policy, key = infodec.Temperature(1.0), jax.random.key(2)
    best, scores = guide["best_of_n"](model, params, PROMPT, key, policy, guide["mean_log_prob"], n=6, max_new_tokens=5)
    out = infodec.generate(model, params, [PROMPT], policy, key, max_new_tokens=5, num_samples=6)
    mean = np.where(out.mask(), out.logp_model, 0.0).sum(1) / out.lengths
    np.testing.assert_allclose(scores, mean, atol=1e-6)
    row = int(np.argmax(mean))
    np.testing.assert_array_equal(best, out.tokens[row, : out.lengths[row]])


def test_lookahead_keeps_the_candidate_with_the_likeliest_rollout(guide, tiny):
    """Brute force for the first token: each candidate's greedy rollout by ``generate``, scored by ``score``."""
    model, params = tiny
    k, depth = 3, 2
    tokens = guide["lookahead"](model, params, PROMPT, jax.random.key(0), k=k, depth=depth, max_new_tokens=3)
    assert tokens.shape == (3,) and ((0 <= tokens) & (tokens < VOCAB)).all()
    logits = np.asarray(model.apply(params, np.array([PROMPT]), np.arange(len(PROMPT))[None])[0])[0, -1]
    values = {}
    for candidate in np.argsort(-logits)[:k]:
        rollout = infodec.generate(
            model, params, [PROMPT + [int(candidate)]], infodec.Greedy(), jax.random.key(0), max_new_tokens=depth
        )
        continuation = [int(candidate), *rollout.tokens[0].tolist()]
        values[int(candidate)] = guide["score"](model, params, [PROMPT], [continuation])[0].sum()
    assert tokens[0] == max(values, key=values.__getitem__)


def test_rerank_orders_by_log_likelihood(guide, tiny):
    model, params = tiny
    candidates = [[1, 1, 1], [2, 5], [0], [4, 4, 3, 2]]
    order = guide["rerank"](model, params, PROMPT, candidates)
    totals = [guide["score"](model, params, [PROMPT], [c])[0].sum() for c in candidates]
    assert list(order) == list(np.argsort(-np.array(totals)))


def test_epsilon_perplexity_under_a_decoder(guide, tiny):
    """Under ancestral sampling it is the model's own ε-perplexity; truncating to the top token raises it."""
    model, params = tiny
    prompts, continuations = [PROMPT, [5, 1]], [[3, 3, 1], [2, 5, 4, 0]]
    logp, mask = score(model, params, prompts, continuations)
    model_eps = infodec.daemon.epsilon_perplexity(logp, mask, epsilon=1e-3, vocab_size=VOCAB)
    under = lambda policy: guide["epsilon_perplexity_under"](
        model, params, policy, prompts, continuations, epsilon=1e-3
    )
    assert under(infodec.Temperature(1.0)) == pytest.approx(model_eps, rel=1e-5)
    assert under(infodec.TopK(1)) > model_eps
