"""Contrastive decoding (Li et al. 2023) against a reference written from the paper.

The reference never touches the engine: each next-token distribution is the full-sequence logits of
``context`` (one ``model.apply`` without a cache, ``tests.tiny_models.Reference``), the expert reading
``prompt + generated`` and the amateur ``prompt[-k:] + generated``; the score is the paper's
``log p_EXP(x) - β log p_AMA,τ(x)`` over ``V_head = {x : p_EXP(x) >= α max p_EXP}``, in float64 numpy.
"""

import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infodec
from infodec import theory
from infodec.decoding import compile_count, contrastive_decoding
from infodec.decoding.contrastive_decoding import Contrast, contrastive_scores
from tests.tiny_models import Reference, tiny_llama

VOCAB = 16
STEPS = 8
PROMPTS = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]  # different lengths: left padding exercised
ALPHA = 1e-3  # chi-square significance


@pytest.fixture(scope="module")
def models():
    """A 16-token expert and a smaller amateur (another seed, half the width, 4 padding slots more)."""
    expert, expert_params = tiny_llama(0, vocab_size=VOCAB)
    amateur, amateur_params = tiny_llama(1, vocab_size=VOCAB + 4, hidden_size=8, num_heads=1, head_dim=8)
    return (
        expert,
        expert_params,
        amateur,
        amateur_params,
        Reference(expert, expert_params),
        Reference(amateur, amateur_params),
    )


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def reference_scores(expert_logits, amateur_logits, alpha, beta, tau):
    """The paper's CD score over the shared ids (``-inf`` outside ``V_head``) and log p_EXP."""
    vocab = min(len(expert_logits), len(amateur_logits))
    logp_e = _log_softmax(expert_logits)
    logp_a = _log_softmax(np.asarray(amateur_logits, np.float64) / tau)
    p_e = np.exp(logp_e[:vocab])
    head = (p_e >= alpha * p_e.max()) & (p_e > 0)  # a token the expert rules out is never plausible (α = 0)
    return np.where(head, logp_e[:vocab] - beta * logp_a[:vocab], -np.inf), logp_e


def reference_step(refs, prompt, generated, settings, context=None):
    ex_ref, am_ref = refs
    amateur_prompt = prompt if context is None else prompt[-context:]
    return reference_scores(
        ex_ref.logits(prompt + generated),
        am_ref.logits(amateur_prompt + generated),
        settings["alpha"],
        settings["beta"],
        settings["amateur_temperature"],
    )


def reference_greedy(refs, prompt, steps, settings, context=None):
    generated = []
    for _ in range(steps):
        scores, _ = reference_step(refs, prompt, generated, settings, context)
        generated.append(int(np.argmax(scores)))
    return generated


def reference_beam(refs, prompt, steps, num_beams, settings):
    """Plain beam search on the summed CD score (no stop tokens): the best hypothesis and its score."""
    beams = [(0.0, [])]
    for _ in range(steps):
        candidates = []
        for total, seq in beams:
            scores, _ = reference_step(refs, prompt, seq, settings)
            candidates += [(total + scores[x], seq + [int(x)]) for x in np.flatnonzero(np.isfinite(scores))]
        beams = sorted(candidates, key=lambda c: -c[0])[:num_beams]
    return beams[0]


SETTINGS = [
    dict(alpha=0.1, beta=1.0, amateur_temperature=0.5),  # the authors'
    dict(alpha=0.02, beta=0.5, amateur_temperature=1.0),
]


def _run(models, **kwargs):
    expert, expert_params, amateur, amateur_params, _, _ = models
    return contrastive_decoding(
        expert, expert_params, amateur, amateur_params, PROMPTS, max_new_tokens=STEPS, stop_tokens=(), **kwargs
    )


@pytest.mark.slow
def test_greedy_and_amateur_context_match_the_reference(models):
    refs = models[4:]
    for settings in SETTINGS:
        out = _run(models, num_beams=1, **settings)
        for row, prompt in enumerate(PROMPTS):
            expected = reference_greedy(refs, prompt, STEPS, settings)
            assert out.tokens[row].tolist() == expected
            np.testing.assert_allclose(out.logp_policy[row], 0.0, atol=1e-6)  # a point mass
            logp, contrast = [], []
            for t, token in enumerate(expected):
                scores, logp_e = reference_step(refs, prompt, expected[:t], settings)
                logp.append(logp_e[token])
                contrast.append(scores[token])
            np.testing.assert_allclose(out.logp_model[row], logp, atol=1e-4)
            np.testing.assert_allclose(out.diagnostics["contrast"][row], contrast, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(out.diagnostics["kl_to_model"][row], -np.asarray(logp), atol=1e-4)
            np.testing.assert_allclose(out.diagnostics["entropy"][row], 0.0, atol=1e-6)
    assert (out.lengths == STEPS).all()

    # The amateur sees only the last 2 prompt tokens (and what was generated).
    settings = SETTINGS[0]
    count = compile_count()
    windowed = _run(models, num_beams=1, amateur_context=2, **settings)
    assert compile_count() == count  # the truncated prompts fit the same bucket
    for row, prompt in enumerate(PROMPTS):
        assert windowed.tokens[row].tolist() == reference_greedy(refs, prompt, STEPS, settings, context=2)
    assert windowed.tokens[0].tolist() != out.tokens[0].tolist()  # the window changes the choice


@pytest.mark.slow
def test_beam_search_matches_the_reference(models):
    refs = models[4:]
    for settings, beams in zip(SETTINGS, (5, 3)):
        out = _run(models, num_beams=beams, **settings)
        greedy = np.array([reference_greedy(refs, p, STEPS, settings) for p in PROMPTS])
        assert (out.tokens != greedy).any()  # the search is not greedy here
        for row, prompt in enumerate(PROMPTS):
            score, expected = reference_beam(refs, prompt, STEPS, beams, settings)
            assert out.tokens[row].tolist() == expected
            np.testing.assert_allclose(out.diagnostics["beam_score"][row], score / STEPS, rtol=1e-4)
            logp = [reference_step(refs, prompt, expected[:t], settings)[1][x] for t, x in enumerate(expected)]
            np.testing.assert_allclose(out.logp_model[row], logp, atol=1e-4)
            np.testing.assert_array_equal(out.logp_policy[row], out.logp_model[row])


@pytest.mark.slow
def test_sampled_law_and_chi_square(models):
    refs = models[4:]
    settings: dict[str, Any] = dict(alpha=0.05, beta=1.0, amateur_temperature=0.5)
    temperature = 1.5
    out = _run(models, key=jax.random.key(3), do_sample=True, temperature=temperature, num_samples=4, **settings)
    assert out.tokens.shape == (len(PROMPTS) * 4, STEPS)
    for row in range(out.tokens.shape[0]):  # the recorded log π is the reference law of the drawn token
        prompt, tokens = PROMPTS[row // 4], out.tokens[row].tolist()
        for t, token in enumerate(tokens):
            scores, logp_e = reference_step(refs, prompt, tokens[:t], settings)
            assert np.isfinite(scores[token])  # drawn from V_head
            log_pi = _log_softmax(scores / temperature)
            np.testing.assert_allclose(out.logp_policy[row, t], log_pi[token], atol=1e-4)
            np.testing.assert_allclose(out.logp_model[row, t], logp_e[token], atol=1e-4)
            pi, m = np.exp(log_pi), np.isfinite(log_pi)  # the sums run over V_head
            kl = np.sum(pi[m] * (log_pi[m] - logp_e[:VOCAB][m]))
            np.testing.assert_allclose(out.diagnostics["kl_to_model"][row, t], kl, rtol=1e-3, atol=1e-4)
            entropy = -np.sum(pi[m] * log_pi[m])
            np.testing.assert_allclose(out.diagnostics["entropy"][row, t], entropy, rtol=1e-3, atol=1e-4)

    # Two-token sequences of 2000 draws against the exact law softmax(CD / T) over V_head.
    expert, expert_params, amateur, amateur_params = models[:4]
    prompt, draws = PROMPTS[1], 2000
    count = compile_count()
    samples = contrastive_decoding(
        expert,
        expert_params,
        amateur,
        amateur_params,
        [prompt],
        jax.random.key(7),
        max_new_tokens=2,
        stop_tokens=(),
        do_sample=True,
        temperature=temperature,
        num_samples=draws,
        **settings,
    ).tokens
    first, _ = reference_step(refs, prompt, [], settings)
    log_law = np.full((VOCAB, VOCAB), -np.inf)
    for a in range(VOCAB):
        second, _ = reference_step(refs, prompt, [a], settings)
        log_law[a] = _log_softmax(first / temperature)[a] + _log_softmax(second / temperature)
    with np.errstate(divide="ignore", invalid="ignore"):
        assert theory.chi_square(samples, log_law.reshape(-1)).p_value > ALPHA
        wrong = np.log(np.exp(log_law).sum(1, keepdims=True) * np.full((1, VOCAB), 1 / VOCAB))  # a negative control
        assert theory.chi_square(samples, wrong.reshape(-1)).p_value < ALPHA

    # New α, β, τ, T and key: the compiled loop is reused.
    count = compile_count()
    contrastive_decoding(
        expert,
        expert_params,
        amateur,
        amateur_params,
        [prompt],
        jax.random.key(8),
        max_new_tokens=2,
        stop_tokens=(),
        do_sample=True,
        temperature=0.7,
        num_samples=draws,
        alpha=0.2,
        beta=0.3,
        amateur_temperature=2.0,
    )
    assert compile_count() == count


@pytest.mark.slow
def test_no_recompilation_for_new_parameters(models):
    _run(models, num_beams=1, **SETTINGS[0])
    _run(models, num_beams=3, **SETTINGS[0])
    count = compile_count()
    _run(models, num_beams=1, alpha=0.3, beta=2.0, amateur_temperature=0.9)
    _run(models, num_beams=3, alpha=0.05, beta=0.1, amateur_temperature=1.3)
    assert compile_count() == count


def test_scores_survive_minus_infinity():
    """``-inf`` logits (a banned token, a masked slot) in either model: no NaN, no mass on an impossible token."""
    inf = np.inf
    expert = np.array(
        [
            [1.0, -inf, 0.5, 2.0, -inf, 0.0],
            [-inf, -inf, 3.0, -inf, -inf, -inf],  # all but one token impossible
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
        ],
        np.float32,
    )
    amateur = np.array(
        [
            [0.0, 0.0, -inf, 1.0, 0.0, 0.0],  # the amateur bans a token the expert finds plausible
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            [-inf, -inf, -inf, -inf, -inf, 1.0],
        ],
        np.float32,
    )
    for alpha in (0.0, 0.1, 1.0):
        contrast = Contrast(*(jnp.float32(v) for v in (alpha, 1.0, 0.5, 1.0)))
        scores, logp_e = contrastive_scores(jnp.asarray(expert), jnp.asarray(amateur), contrast)
        scores = np.asarray(scores)
        assert not np.isnan(scores).any() and np.isfinite(scores).all()
        possible = np.isfinite(expert)
        head = scores > -1e29
        assert not (head & ~possible).any(), alpha  # an impossible token is never plausible
        assert head.any(axis=1).all()
        log_pi = np.asarray(jax.nn.log_softmax(jnp.asarray(scores)))
        assert not np.isnan(log_pi).any() and (np.exp(log_pi)[~possible] == 0).all()
        for row in range(len(expert)):
            ref, _ = reference_scores(expert[row], amateur[row], alpha, 1.0, 0.5)
            np.testing.assert_array_equal(head[row], ref > -inf)
            finite = np.isfinite(ref)  # the paper's score where it is finite; above every finite one where +inf
            np.testing.assert_allclose(scores[row][finite], ref[finite], rtol=1e-5)
            assert (scores[row][ref == inf] > scores[row][finite].max(initial=-inf)).all()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(alpha=1.5), "alpha must be a finite number in \\[0, 1\\]"),
        (dict(beta=-1.0), "beta must be a finite number >= 0"),
        (dict(amateur_temperature=0.0), "amateur_temperature must be a finite number > 0"),
        (dict(temperature=float("nan")), "temperature must be a finite number > 0"),
        (dict(amateur_context=0), "amateur_context must be an integer >= 1 or None"),
        (dict(num_beams=0), "num_beams must be an integer >= 1"),
        (dict(do_sample=True, num_beams=3, key=jax.random.key(0)), "pass num_beams=1"),
        (dict(do_sample=True), "needs a PRNG key"),
        (dict(num_samples=2), "num_samples=2 needs do_sample=True"),
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
        (dict(num_beams=15, stop_tokens=(1, 2)), "exceeds the shared vocabulary of 16"),
    ],
)
def test_bad_input_is_named(changes, message):
    expert = amateur = _vocabulary_only(VOCAB)  # every check runs before a model is called
    kwargs = {"max_new_tokens": STEPS, "stop_tokens": (), **changes}
    with pytest.raises(ValueError, match=message):
        contrastive_decoding(expert, None, amateur, None, PROMPTS, **kwargs)  # pyright: ignore[reportArgumentType] (stand-in models)


def _vocabulary_only(size):
    return types.SimpleNamespace(vocab_size=size)


def test_vocabularies_must_match():
    expert, amateur = _vocabulary_only(VOCAB), _vocabulary_only(VOCAB + 2000)
    with pytest.raises(ValueError, match="same tokenizer"):
        contrastive_decoding(expert, None, amateur, None, PROMPTS, max_new_tokens=STEPS)  # pyright: ignore[reportArgumentType] (stand-in models)
    tokenizer = types.SimpleNamespace(vocab_size=VOCAB + 10, eos_ids=())
    with pytest.raises(ValueError, match="fewer than the tokenizer's 26"):
        contrastive_decoding(expert, None, expert, None, PROMPTS, max_new_tokens=STEPS, tokenizer=tokenizer)  # pyright: ignore[reportArgumentType] (stand-in models)


def test_exported():
    assert infodec.contrastive_decoding is contrastive_decoding


@pytest.mark.slow
def test_daemon_baseline_decodes_with_the_amateur(models):
    """DAEMON's ``contrastive_decoding`` baseline is ``contrastive_decoding`` with the authors' settings."""
    from infodec.studies.daemon import BASELINES, Pipeline

    expert, expert_params, amateur, amateur_params = models[:4]
    pipeline = Pipeline(expert, expert_params, (), (), STEPS, 8, amateur=(amateur, amateur_params))
    tokens, lengths = pipeline.decode(PROMPTS, "contrastive_decoding", jax.random.key(0))
    settings = BASELINES["contrastive_decoding"].settings
    assert settings["num_beams"] == 5 and settings["amateur_context"] == 1
    direct = _run(models, **settings)
    np.testing.assert_array_equal(tokens, direct.tokens)
    np.testing.assert_array_equal(lengths, direct.lengths)
    with pytest.raises(ValueError, match="needs an amateur model"):
        Pipeline(expert, expert_params, (), (), STEPS, 8).decode(PROMPTS, "contrastive_decoding", jax.random.key(0))
