"""llama.cpp's samplers (top-nσ, XTC, DRY, dynamic temperature, mirostat v2) and per-row policy state.

References: llama.cpp's own vectors from ``tests/test-sampling.cpp`` (each block names the function they
come from), numpy re-implementations written from ``src/llama-sampling.cpp`` (loops, no vectorisation),
and chi-square tests of the engine's sampler against those exact laws.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import infodec
from infodec.decoding import prefill, select, step
from infodec.decoding.engine import sample_tokens
from infodec.policies import DRY, XTC, DynamicTemperature, MirostatV2, StepInfo, TopNSigma, chain
from tests.tiny_models import tiny_llama

LOG2 = math.log(2.0)


def _probs(policy, probs, context=None, key=0):
    """π of one row whose logits are ``log(probs)`` (as llama.cpp's sampler_tester), float64."""
    logits = jnp.log(jnp.asarray([probs], jnp.float32))
    ctx = jnp.asarray([context if context is not None else [-1]], jnp.int32)
    keys = jax.random.split(jax.random.key(key), 1)
    log_pi, _ = policy(logits, StepInfo(ctx, jnp.int32(ctx.shape[1]), key=keys))
    return np.exp(np.asarray(log_pi, np.float64))[0]


# --- llama.cpp's vectors (tests/test-sampling.cpp) ----------------------------------------------------

# test_top_n_sigma(probs, expected, n): expected in token order (masked tokens at 0).
TOP_N_SIGMA = [
    ([0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.428571, 0.571429], 1.0),
    ([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], 0.0),  # n == 0 is a no-op (llama.cpp PR #13345)
    ([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], 3.0),
]

# test_xtc(probs, expected, p, t): expected are the input probabilities of the kept tokens (llama.cpp
# checks cur_p without renormalising); llama.cpp's p = 0.99 with its seeded draw always removes, so the
# removing branch is forced here with probability 1.
XTC_VECTORS = [
    ([0.4, 0.3, 0.2, 0.1], [0.0, 0.0, 0.0, 0.1], 0.09),
    ([0.4, 0.3, 0.2, 0.1], [0.0, 0.0, 0.2, 0.1], 0.19),
    ([0.4, 0.3, 0.2, 0.1], [0.0, 0.3, 0.2, 0.1], 0.29),
    ([0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], 0.39),  # "XTC should not"
]

# test_dry(probs, last_tokens, expected, multiplier, base, allowed_length, penalty_last_n, breakers).
DRY_VECTORS = [
    ([0.25] * 4, [0, 1], [0.25] * 4, 1.0, 1.1, 2, 4, ()),
    ([0.25] * 4, [0, 1, 2, 0, 1], [0.296923, 0.296923, 0.109232, 0.296923], 1.0, 1.1, 2, 5, ()),
    ([0.2] * 5, [0, 1, 3, 4, 0, 1], [0.2] * 5, 1.0, 1.1, 2, 6, ((3,),)),
    ([0.2] * 5, [0, 1, 2, 0, 1], [0.241818, 0.241818, 0.032727, 0.241818, 0.241818], 2.0, 1.1, 2, 5, ()),
    ([0.2] * 5, [0, 1, 2, 3, 4, 0, 1], [0.2] * 5, 1.0, 1.1, 4, 7, ()),
]

# test_temp_ext(probs, expected, temp, delta, exponent).
TEMP_EXT = [
    ([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], 1.0, 0.0, 1.0),
    ([0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 1.0], 0.0, 0.0, 1.0),
]


@pytest.mark.parametrize("probs, expected, n", TOP_N_SIGMA)
def test_top_n_sigma_llamacpp_vectors(probs, expected, n):
    np.testing.assert_allclose(_probs(TopNSigma(n), probs), expected, atol=1e-5)


@pytest.mark.parametrize("probs, expected, threshold", XTC_VECTORS)
def test_xtc_llamacpp_vectors(probs, expected, threshold):
    expected = np.asarray(expected) / np.sum(expected)
    np.testing.assert_allclose(_probs(XTC(threshold, 1.0), probs), expected, atol=1e-5)


@pytest.mark.parametrize("probs, context, expected, multiplier, base, allowed, last_n, breakers", DRY_VECTORS)
def test_dry_llamacpp_vectors(probs, context, expected, multiplier, base, allowed, last_n, breakers):
    policy = DRY(multiplier, base, allowed, last_n, breakers)
    padded = [-1, -1] + context + [-1, -1, -1]  # the engine's layout: left padding, free slots after
    np.testing.assert_allclose(_probs(policy, probs, padded), expected, atol=1e-5)


@pytest.mark.parametrize("probs, expected, temp, delta, exponent", TEMP_EXT)
def test_dynamic_temperature_llamacpp_vectors(probs, expected, temp, delta, exponent):
    np.testing.assert_allclose(_probs(DynamicTemperature(temp, delta, exponent), probs), expected, atol=1e-5)


# --- numpy references written from llama-sampling.cpp -------------------------------------------------


def ref_top_n_sigma(logits, n):
    finite = logits[np.isfinite(logits)]
    keep = logits >= finite.max() - n * finite.std() if n > 0 else np.isfinite(logits)
    return _renormalise(np.where(keep, logits, -np.inf))


def ref_dynatemp(logits, t, delta, exponent):
    finite = np.isfinite(logits)
    if delta > 0 and finite.sum() > 1:
        p = _renormalise(logits)
        entropy = -sum(x * math.log(x) for x in p if x > 0)
        t = max(0.0, t - delta) + 2 * delta * (entropy / math.log(finite.sum())) ** exponent
    if t <= 0:
        return np.eye(len(logits))[np.argmax(logits)]
    return _renormalise(logits / t)


def ref_xtc_filtered(logits, threshold):
    p = _renormalise(logits)
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    above = [i for i in order if p[i] >= threshold]
    if len(above) < 2 or threshold > 0.5:
        return p
    out = p.copy()
    out[above[:-1]] = 0.0
    return out / out.sum()


def ref_mirostat(logits, mu):
    p = _renormalise(logits)
    keep = np.array([x > 0 and -math.log2(x) <= mu for x in p])
    if not keep.any():
        keep[np.argmax(p)] = True
    return _renormalise(np.where(keep, logits, -np.inf))


def ref_dry_penalties(tokens, vocab, multiplier, base, allowed, last_n, breakers):
    """llama_sampler_dry_apply on ``tokens`` (oldest first): the penalty subtracted from each logit."""
    last = tokens[-last_n:] if last_n > 0 else list(tokens)
    n = len(last)
    rat = lambda i: last[n - 1 - i]
    penalty = np.zeros(vocab)
    if n <= allowed:
        return penalty
    rep_limit = n
    for i in range(n):
        longest = -1
        for b in breakers:
            if b[0] == rat(i) and len(b) - 1 <= i and all(b[1 + o] == rat(i - o - 1) for o in range(len(b) - 1)):
                longest = max(longest, len(b) - 1)
        if longest >= 0:
            rep_limit = i - longest
            break
    if rep_limit < allowed:
        return penalty
    best = {}
    for k in range(1, n):
        z = 0
        while z + k < n and rat(z) == rat(z + k):
            z += 1
        length = min(z, rep_limit)
        if length >= allowed:
            best[rat(k - 1)] = max(best.get(rat(k - 1), 0), length)
    max_exponent = int(88.7228391 / math.log(base)) if base > 1.000001 else 0
    singles = {b[0] for b in breakers if len(b) == 1}
    for token, length in best.items():
        if token not in singles:
            exponent = length - allowed
            if max_exponent > 0:
                exponent = min(exponent, max_exponent)
            penalty[token] = multiplier * base**exponent
    return penalty


def _renormalise(logits):
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - np.max(logits[np.isfinite(logits)]))
    return e / e.sum()


@pytest.mark.slow
def test_dry_matches_reference_on_random_contexts():
    """Random repetitive contexts over 5 tokens, breakers of one and two tokens, windows shorter and
    longer than the context: the penalty per token equals the loop reference."""
    rng = np.random.default_rng(0)
    vocab, rows, slots = 5, 64, 24
    breakers = ((4,), (2, 3))
    for last_n in (-1, 9):
        context = np.full((rows, slots), -1, np.int32)
        expected = np.zeros((rows, vocab))
        for r in range(rows):
            n = int(rng.integers(1, slots - 2))
            start = int(rng.integers(0, slots - n + 1))
            motif = rng.integers(0, vocab, size=int(rng.integers(1, 4)))
            seq = [int(motif[j % len(motif)]) if rng.random() < 0.8 else int(rng.integers(vocab)) for j in range(n)]
            context[r, start : start + n] = seq
            expected[r] = ref_dry_penalties(seq, vocab, 0.8, 1.75, 2, last_n, breakers)
        logits = jnp.zeros((rows, vocab), jnp.float32)
        out = DRY(0.8, 1.75, 2, last_n, breakers).transform(logits, StepInfo(jnp.asarray(context), jnp.int32(0)))
        np.testing.assert_allclose(-np.asarray(out), expected, rtol=1e-5, atol=1e-5)
        assert expected.any()  # the contexts do repeat


@pytest.mark.slow
def test_dry_exponent_is_clamped():
    tokens = [0, 1] * 40  # a repeat of ~78 tokens: 3 ** 76 overflows float32 without the clamp
    penalty = ref_dry_penalties(tokens, 3, 1.0, 3.0, 2, -1, ())
    context = jnp.asarray([tokens], jnp.int32)
    out = DRY(1.0, 3.0, 2).transform(jnp.zeros((1, 3)), StepInfo(context, jnp.int32(0)))
    assert np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_allclose(-np.asarray(out)[0], penalty, rtol=1e-5)


# --- sampled laws against exact enumeration ---------------------------------------------------------

LOGITS = np.array([2.0, 1.5, 1.2, 0.3, -0.5, -2.0], np.float32)


def _sample(policy, logits, *, draws=20000, seed=0, context=None):
    rows = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (draws, len(logits)))
    keys = jax.random.split(jax.random.key(seed), draws)
    ctx = jnp.broadcast_to(
        jnp.asarray(context if context is not None else [-1], jnp.int32),
        (draws, 1 if context is None else len(context)),
    )
    log_pi, _ = jax.jit(lambda x, k: policy(x, StepInfo(ctx, jnp.int32(0), key=k)))(rows, keys)
    return np.bincount(np.asarray(sample_tokens(keys, log_pi)), minlength=len(logits))


def _chi_square(counts, law):
    assert counts[law == 0].sum() == 0, "a token with probability 0 was sampled"
    support = law > 0
    expected = law[support] * counts.sum()
    assert stats.chisquare(counts[support], expected).pvalue > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(
    "policy, law",
    [
        (TopNSigma(0.8), lambda: ref_top_n_sigma(LOGITS, 0.8)),
        (DynamicTemperature(0.8, 0.5, 1.5), lambda: ref_dynatemp(LOGITS, 0.8, 0.5, 1.5)),
        (XTC(0.15, 0.4), lambda: 0.6 * _renormalise(LOGITS) + 0.4 * ref_xtc_filtered(LOGITS, 0.15)),
        (MirostatV2(2.0, 0.1, mu=jnp.asarray(2.5)), lambda: ref_mirostat(LOGITS, 2.5)),
    ],
    ids=["top_n_sigma", "dynatemp", "xtc_mixture", "mirostat_v2"],
)
def test_sampled_law_matches_exact(policy, law):
    _chi_square(_sample(policy, LOGITS), law())


@pytest.mark.slow
def test_dry_sampled_law_matches_exact():
    context = [0, 1, 2, 0, 1, 2, 0, 1]
    law = _renormalise(LOGITS - ref_dry_penalties(context, 6, 0.8, 1.75, 2, -1, ()))
    _chi_square(_sample(DRY(0.8, 1.75, 2), LOGITS, context=context), law)


# --- -inf logits ------------------------------------------------------------------------------------


def _every_sampler():
    return [
        TopNSigma(1.0),
        XTC(0.05, 1.0),
        DRY(0.8, 1.75, 1),
        DynamicTemperature(1.0, 0.5, 1.0),
        MirostatV2(1.0, 0.1),
        chain(DRY(0.8, 1.75, 1), TopNSigma(1.5), XTC(0.1, 1.0), DynamicTemperature(1.0, 0.5), MirostatV2(3.0)),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("policy", _every_sampler(), ids=lambda p: type(p).__name__)
def test_minus_inf_logits(policy):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(32, 40)).astype(np.float32) * 3
    banned = rng.random(logits.shape) < 0.3
    banned[0] = np.arange(40) > 0  # all but one token impossible
    banned[1, :] = False
    logits = np.where(banned, -np.inf, logits)
    context = jnp.asarray(rng.integers(0, 40, size=(32, 12)), jnp.int32)
    keys = jax.random.split(jax.random.key(0), 32)
    log_pi, diagnostics = policy(jnp.asarray(logits), StepInfo(context, jnp.int32(12), key=keys))
    log_pi = np.asarray(log_pi)
    assert not np.isnan(log_pi).any()
    pi = np.exp(log_pi.astype(np.float64))
    assert np.all(pi[banned] == 0.0)
    np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=1e-5)
    assert pi[0, 0] == pytest.approx(1.0)
    if "mirostat_mu" in diagnostics:
        assert np.all(np.isfinite(np.asarray(diagnostics["mirostat_mu"])))


# --- MirostatV2's state through the engine ----------------------------------------------------------


@pytest.mark.slow
def test_mirostat_mu_trajectory_and_select():
    model, params = tiny_llama()
    tau, eta = 1.5, 0.4
    policy = MirostatV2(tau, eta)
    state = prefill(model, params, [[1, 2, 3], [4, 5]], jax.random.key(3), max_new_tokens=6, policy=policy)
    mu = np.full(2, 2 * tau)
    np.testing.assert_allclose(np.asarray(state.policy_state[0]), mu)
    for t in range(6):
        logits = np.asarray(state.logits[:, 0], np.float64)
        used = mu.copy()
        state = step(model, params, policy, state)
        np.testing.assert_allclose(np.asarray(state.diagnostics["mirostat_mu"][:, t]), used, rtol=1e-6)
        for row in range(2):
            law = ref_mirostat(logits[row], mu[row])
            token = int(state.tokens[row, t])
            assert law[token] > 0  # sampled inside the truncation at this row's µ
            mu[row] -= eta * (-math.log2(law[token]) - tau)
        np.testing.assert_allclose(np.asarray(state.policy_state[0]), mu, rtol=1e-5, atol=1e-5)
    picked = select(state, np.array([1, 1, 0]))
    np.testing.assert_allclose(np.asarray(picked.policy_state[0]), mu[[1, 1, 0]], rtol=1e-6)


@pytest.mark.slow
def test_generate_with_mirostat_in_a_chain():
    model, params = tiny_llama()
    policy = chain(infodec.Temperature(0.9), MirostatV2(1.0, 0.5))
    out = infodec.generate(model, params, [[1, 2, 3]], policy, jax.random.key(0), max_new_tokens=5, num_samples=3)
    assert out.tokens.shape == (3, 5)
    alone = infodec.generate(model, params, [[1, 2, 3]], MirostatV2(1.0, 0.5), jax.random.key(0), max_new_tokens=5)
    mu = alone.diagnostics["mirostat_mu"][0]
    assert mu[0] == pytest.approx(2.0)  # µ starts at 2τ and moves with every token
    assert not np.allclose(mu, 2.0)


@pytest.mark.slow
def test_step_rejects_state_without_policy_state():
    model, params = tiny_llama()
    state = prefill(model, params, [[1, 2, 3]], jax.random.key(0), max_new_tokens=3)
    with pytest.raises(ValueError, match="per-row state"):
        step(model, params, MirostatV2(), state)


# --- compilation, errors ------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_recompile_for_new_parameter_values():
    model, params = tiny_llama()

    def run(a, b, c):
        policy = chain(
            DRY(a, 1 + b, 2), TopNSigma(1 + a), XTC(b / 4, a), DynamicTemperature(1.0, b, a), MirostatV2(c, b)
        )
        return infodec.generate(model, params, [[1, 2, 3]], policy, jax.random.key(0), max_new_tokens=4)

    run(0.5, 0.5, 3.0)
    before = infodec.compile_count()
    run(0.9, 0.2, 1.0)
    assert infodec.compile_count() == before


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: XTC(threshold=1.5), "xtc threshold"),
        (lambda: XTC(probability=-0.1), "xtc probability"),
        (lambda: DRY(base=0.5), "dry base"),
        (lambda: DRY(penalty_last_n=-2), "penalty_last_n"),
        (lambda: DRY(sequence_breakers=[()]), "sequence_breakers"),  # pyright: ignore[reportArgumentType] (the wrong type on purpose)
        (lambda: DynamicTemperature(exponent=-1.0), "exponent"),
        (lambda: MirostatV2(tau=-1.0), "mirostat tau"),
    ],
)
def test_construction_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_xtc_and_dry_need_the_step():
    logits = jnp.zeros((1, 4))
    with pytest.raises(ValueError, match="XTC draws"):
        XTC()(logits)
    with pytest.raises(ValueError, match="DRY needs"):
        DRY()(logits)
