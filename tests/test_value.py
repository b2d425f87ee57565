"""Value-function policies [P1/P2]: closed forms, named cases, invariants and two-stream decoding."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infodec
from infodec.policies.value import (
    ClassifierFreeGuidance,
    DynamicValuePolicy,
    HalfLifeSchedule,
    KLGuidedTemperature,
    SigmoidSchedule,
)
from infodec.policies.value_policy import PMI, FunctionScore, ValuePolicy
from tests.test_engine import chi_square
from tests.tiny_models import VOCAB, Reference, sequence_index, tiny_llama

P_TEMPERATURE = np.log([[0.7, 0.2, 0.1]])
CFG_STREAMS = np.log(np.array([[[0.6, 0.3, 0.1], [0.3, 0.3, 0.4]]]))
KL_STREAMS = np.log(np.array([[[0.7, 0.2, 0.1], [0.3, 0.4, 0.3]]]))


def probs(policy, logits):
    return np.exp(np.asarray(policy(jnp.asarray(logits))[0], np.float64))


# --- docs/math.md test vectors -------------------------------------------------------------------------------


def test_spec_vectors():
    np.testing.assert_allclose(
        probs(infodec.Temperature(0.5), P_TEMPERATURE)[0], [0.907407, 0.074074, 0.018519], atol=1e-6
    )
    np.testing.assert_allclose(
        probs(ClassifierFreeGuidance(1.5), CFG_STREAMS)[0], [0.707975, 0.250307, 0.041718], atol=1e-6
    )
    expected = {
        0.5: (0.620182, [0.850310, 0.112799, 0.036891]),
        1.0: (0.787517, [0.776233, 0.158171, 0.065596]),
        2.0: (0.887421, [0.737823, 0.179831, 0.082346]),
    }
    for half_life, (temperature, pi) in expected.items():
        log_pi, diagnostics = KLGuidedTemperature(1.0, half_life)(jnp.asarray(KL_STREAMS))
        np.testing.assert_allclose(diagnostics["kl_streams"], [0.344618], atol=1e-6)
        np.testing.assert_allclose(diagnostics["temperature"], [temperature], atol=1e-6)
        np.testing.assert_allclose(np.exp(log_pi)[0], pi, atol=1e-6)


# --- named decoders are cases of ValuePolicy -------------------------------------------------------------


def _random_streams(seed=0, rows=4, vocab=50):
    return jax.random.normal(jax.random.key(seed), (rows, 2, vocab)) * 3


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_temperature_is_value_policy(temperature):
    logits = _random_streams()[:, :1]
    policy = infodec.Temperature(temperature)
    np.testing.assert_allclose(probs(policy, logits), probs(policy.as_value_policy(), logits), atol=1e-6)
    np.testing.assert_allclose(
        probs(policy, logits), probs(ValuePolicy(beta=1.0, gamma=temperature - 1.0), logits), atol=1e-6
    )


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 3.0])
def test_cfg_is_value_policy_with_pmi(scale):
    logits = _random_streams(1)
    cfg = ClassifierFreeGuidance(scale)
    general = ValuePolicy(beta=1.0, gamma=0.0, lam=scale - 1.0, score=PMI())
    np.testing.assert_allclose(probs(cfg, logits), probs(general, logits), atol=1e-6)
    log_c, log_u = jax.nn.log_softmax(logits[:, 0]), jax.nn.log_softmax(logits[:, 1])
    direct = jax.nn.softmax(log_u + scale * (log_c - log_u))  # the convention of docs/math.md §1, written out
    np.testing.assert_allclose(probs(cfg, logits), direct, atol=1e-6)
    if scale == 1.0:
        np.testing.assert_allclose(probs(cfg, logits), jax.nn.softmax(logits[:, 0]), atol=1e-6)
    if scale == 0.0:
        np.testing.assert_allclose(probs(cfg, logits), jax.nn.softmax(logits[:, 1]), atol=1e-6)


def test_kl_guided_and_dynamic_policies_are_value_policies():
    logits = _random_streams(2)
    for half_life in (0.5, 2.0):
        kl_guided = KLGuidedTemperature(0.9, half_life)
        np.testing.assert_allclose(
            probs(kl_guided, logits), probs(kl_guided.as_value_policy(logits), logits), atol=1e-5
        )
        dynamic = DynamicValuePolicy(HalfLifeSchedule(0.9, half_life))
        np.testing.assert_allclose(
            probs(dynamic, logits), probs(KLGuidedTemperature(0.9, half_life, exact=False), logits), atol=1e-5
        )
    guided = DynamicValuePolicy(SigmoidSchedule(0.0, 2.0, 0.5, 0.2), target="guidance")
    lam = SigmoidSchedule(0.0, 2.0, 0.5, 0.2)(guided(logits)[1]["kl_streams"])
    np.testing.assert_allclose(
        probs(guided, logits), probs(ValuePolicy(beta=1.0, gamma=0.0, lam=lam, score=PMI()), logits), atol=1e-5
    )


def test_value_policy_maximises_the_one_step_objective():
    """The closed form beats random perturbations on J = λ E[g] − β KL(π‖P) + γ H(π)."""
    logits = _random_streams(3, rows=1, vocab=8)
    beta, gamma, lam = 1.3, 0.4, 0.7
    policy = ValuePolicy(beta, gamma, lam, PMI())
    log_p = jax.nn.log_softmax(logits, axis=-1)
    g = np.asarray(log_p[0, 0] - log_p[0, 1], np.float64)
    log_anchor = np.asarray(log_p[0, 0], np.float64)

    def objective(pi):
        return lam * pi @ g - beta * pi @ (np.log(pi) - log_anchor) - gamma * pi @ np.log(pi)

    best = probs(policy, logits)[0]
    rng = np.random.RandomState(0)
    for _ in range(200):
        other = best * np.exp(0.3 * rng.randn(8))
        assert objective(best) >= objective(other / other.sum()) - 1e-9
    optimum = (beta + gamma) * np.logaddexp.reduce((beta * log_anchor + lam * g) / (beta + gamma))
    assert abs(objective(best) - optimum) < 1e-5


def test_function_score_and_per_row_parameters():
    logits = _random_streams(4)
    bonus = FunctionScore(lambda log_probs, step: jnp.zeros_like(log_probs[:, 0]).at[:, 3].set(1.0))
    out = probs(ValuePolicy(beta=1.0, gamma=0.0, lam=jnp.array([0.0, 1.0, 2.0, 5.0]), score=bonus), logits[:, :1])
    base = np.asarray(jax.nn.softmax(logits[:, 0]), np.float64)
    for row, lam in enumerate([0.0, 1.0, 2.0, 5.0]):
        expected = base[row] * np.exp(lam * (np.arange(50) == 3))
        np.testing.assert_allclose(out[row], expected / expected.sum(), atol=1e-6)


# --- KL-guided invariants ---------------------------------------------------------------------------------


def test_identical_streams_give_zero_kl_and_t0():
    logits = _random_streams(5)
    same = jnp.stack([logits[:, 0], logits[:, 0]], axis=1)
    for exact in (True, False):
        _, diagnostics = KLGuidedTemperature(0.8, 1.0, exact=exact)(same)
        np.testing.assert_allclose(diagnostics["kl_streams"], 0.0, atol=1e-6)
        np.testing.assert_allclose(diagnostics["temperature"], 0.8, atol=1e-6)


def test_temperature_is_non_increasing_in_kl():
    kl = jnp.linspace(0.0, 5.0, 101)
    for half_life in (0.25, 1.0, 4.0):
        t = KLGuidedTemperature(1.2, half_life).temperature(kl)
        assert np.all(np.diff(np.asarray(t)) <= 0)
    assert np.allclose(KLGuidedTemperature(1.2, 0.0).temperature(kl), 1.2)  # h = 0 disables


def test_exact_and_textbook_kl_differ_only_through_clipping():
    logits = _random_streams(6) * 0.3  # no probability below 1e-7
    a = KLGuidedTemperature(1.0, 1.0, exact=True)(logits)[1]["kl_streams"]
    b = KLGuidedTemperature(1.0, 1.0, exact=False)(logits)[1]["kl_streams"]
    np.testing.assert_allclose(a, b, atol=1e-5)
    peaked = _random_streams(7) * 20  # probabilities far below 1e-7: clipping changes the KL
    a = KLGuidedTemperature(1.0, 1.0, exact=True)(peaked)[1]["kl_streams"]
    b = KLGuidedTemperature(1.0, 1.0, exact=False)(peaked)[1]["kl_streams"]
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-3


def test_kl_guided_truncation_and_greedy():
    logits = _random_streams(8)

    def kept(policy):  # tokens not masked (their probability may still underflow at low T)
        return (np.asarray(policy(logits)[0]) > -1e29).sum(-1)

    assert np.all(kept(KLGuidedTemperature(0.7, 1.0, top_k=5)) == 5)
    assert np.all(kept(KLGuidedTemperature(0.7, 1.0, top_p=0.5)) < kept(KLGuidedTemperature(0.7, 1.0)))
    greedy = probs(KLGuidedTemperature(0.0, 1.0), logits)
    np.testing.assert_array_equal(greedy.argmax(-1), np.asarray(logits[:, 0]).argmax(-1))
    assert np.all(greedy.max(-1) == 1.0)


def test_clear_errors():
    with pytest.raises(ValueError, match="beta must be > 0"):
        ValuePolicy(beta=0.0)
    with pytest.raises(ValueError, match="beta \\+ gamma must be > 0"):
        ValuePolicy(beta=1.0, gamma=-1.0)
    with pytest.raises(ValueError, match="half_life must be >= 0"):
        KLGuidedTemperature(1.0, -1.0)
    with pytest.raises(ValueError, match="top_p must be in \\[0, 1\\]"):
        KLGuidedTemperature(1.0, 1.0, top_p=1.5)
    with pytest.raises(ValueError, match="target must be"):
        DynamicValuePolicy(target="lambda")
    with pytest.raises(ValueError, match="needs 2 streams"):
        ClassifierFreeGuidance(2.0)(jnp.zeros((1, 10)))


# --- two streams in the engine ----------------------------------------------------------------------------

PROMPT = [1, 2]
EVIDENCE = [4, 5, 3]
HORIZON = 3


@pytest.fixture(scope="module")
def tiny():
    model, params = tiny_llama(seed=3, scale=2.0)
    return model, params, Reference(model, params)


def test_engine_needs_evidence_for_two_stream_policies(tiny):
    model, params, _ = tiny
    with pytest.raises(ValueError, match="pass evidence=... to generate"):
        infodec.generate(model, params, [PROMPT], ClassifierFreeGuidance(2.0), jax.random.key(0), max_new_tokens=2)
    with pytest.raises(ValueError, match="one-stream policy"):
        infodec.generate(
            model, params, [PROMPT], infodec.Greedy(), jax.random.key(0), max_new_tokens=2, evidence=[EVIDENCE]
        )
    with pytest.raises(ValueError, match="evidence entries for 2 prompts"):
        infodec.generate(
            model,
            params,
            [PROMPT, PROMPT],
            ClassifierFreeGuidance(2.0),
            jax.random.key(0),
            max_new_tokens=2,
            evidence=[EVIDENCE],
        )


@pytest.mark.slow
def test_cfg_scale_one_and_half_life_zero_equal_one_stream_sampling(tiny):
    model, params, _ = tiny
    key = jax.random.key(7)
    one_stream = infodec.generate(
        model, params, [EVIDENCE + PROMPT] * 8, infodec.Temperature(0.9), key, max_new_tokens=6
    )
    for policy in (ClassifierFreeGuidance(1.0, temperature=0.9), KLGuidedTemperature(0.9, 0.0)):
        two = infodec.generate(model, params, [PROMPT] * 8, policy, key, max_new_tokens=6, evidence=[EVIDENCE] * 8)
        np.testing.assert_array_equal(two.tokens, one_stream.tokens)
        np.testing.assert_allclose(two.logp_model, one_stream.logp_model, atol=1e-5)
        assert {"pmi", "kl_streams"} <= set(two.diagnostics)


def test_generate_runs_value_policies_directly(tiny):
    """ValuePolicy(β, γ) with no score is Temperature((β+γ)/β) inside the engine too (the loop compiles from
    abstract shapes, which rebuilds the policy with placeholder leaves)."""
    model, params, _ = tiny
    key = jax.random.key(11)
    reference = infodec.generate(model, params, [PROMPT] * 4, infodec.Temperature(1.5), key, max_new_tokens=5)
    direct = infodec.generate(model, params, [PROMPT] * 4, ValuePolicy(beta=2.0, gamma=1.0), key, max_new_tokens=5)
    np.testing.assert_array_equal(direct.tokens, reference.tokens)
    cfg = infodec.generate(
        model,
        params,
        [PROMPT] * 4,
        ClassifierFreeGuidance(2.0).as_value_policy(),
        key,
        max_new_tokens=5,
        evidence=[EVIDENCE] * 4,
    )
    named = infodec.generate(
        model, params, [PROMPT] * 4, ClassifierFreeGuidance(2.0), key, max_new_tokens=5, evidence=[EVIDENCE] * 4
    )
    np.testing.assert_array_equal(cfg.tokens, named.tokens)


def _exact_two_stream(ref, policy, horizon):
    seqs = np.array(list(itertools.product(range(VOCAB), repeat=horizon)), np.int64)
    log_pi = np.zeros(seqs.shape)
    pmi = np.zeros(seqs.shape)
    for t in range(horizon):
        prefixes = [list(p) for p in itertools.product(range(VOCAB), repeat=t)]
        with_evidence = ref.batch_logits([EVIDENCE + PROMPT + p for p in prefixes])
        without = ref.batch_logits([PROMPT + p for p in prefixes])
        step = np.asarray(policy(jnp.asarray(np.stack([with_evidence, without], axis=1)))[0], np.float64)
        step -= np.logaddexp.reduce(step, axis=-1, keepdims=True)
        log_c = jax.nn.log_softmax(with_evidence.astype(np.float64))
        log_u = jax.nn.log_softmax(without.astype(np.float64))
        index = sequence_index(seqs[:, :t]) if t else np.zeros(len(seqs), np.int64)
        log_pi[:, t] = step[index, seqs[:, t]]
        pmi[:, t] = np.asarray(log_c - log_u)[index, seqs[:, t]]
    return seqs, np.exp(log_pi.sum(1)), log_pi, pmi


@pytest.mark.parametrize(
    "policy",
    [
        ClassifierFreeGuidance(2.5),
        KLGuidedTemperature(1.0, 0.5),
        KLGuidedTemperature(1.0, 1.0, top_k=3),
        DynamicValuePolicy(SigmoidSchedule(0.0, 2.0, 0.3, 0.2), target="guidance"),
    ],
    ids=["cfg", "kl-guided", "kl-guided-top3", "dynamic-guidance"],
)
@pytest.mark.slow
def test_two_stream_samples_follow_the_exact_distribution(tiny, policy):
    model, params, ref = tiny
    draws = 2000
    out = infodec.generate(
        model,
        params,
        [PROMPT],
        policy,
        jax.random.key(11),
        max_new_tokens=HORIZON,
        evidence=[EVIDENCE],
        num_samples=draws,
    )
    seqs, exact, log_pi, pmi = _exact_two_stream(ref, policy, HORIZON)
    observed = np.bincount(sequence_index(out.tokens), minlength=VOCAB**HORIZON)
    assert observed[exact == 0].sum() == 0
    p_value = chi_square(out.tokens, exact)
    print(f"\nchi-square {type(policy).__name__}: p = {p_value:.4g}")
    assert p_value > 1e-3
    index = sequence_index(out.tokens)
    np.testing.assert_allclose(out.logp_policy, log_pi[index], atol=5e-4)
    np.testing.assert_allclose(out.diagnostics["pmi"], pmi[index], atol=5e-4)


# --- provenance: h = 0 and top-p ties (docs/math.md §2) ----------------------------------------------------


def softmax_np(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_half_life_zero_means_t0_for_the_schedule_and_the_policy():
    """h = 0 disables the rule in both forms (T = t0: plain temperature), for any KL."""
    kl = jnp.asarray([0.0, 0.3, 5.0, jnp.inf])
    np.testing.assert_array_equal(HalfLifeSchedule(0.9, 0.0)(kl), np.full(4, 0.9, np.float32))
    np.testing.assert_array_equal(KLGuidedTemperature(0.9, 0.0).temperature(kl), np.full(4, 0.9, np.float32))
    logits = _random_streams(9)
    want = softmax_np(np.asarray(logits[:, 0], np.float64) / 0.9)
    np.testing.assert_allclose(probs(DynamicValuePolicy(HalfLifeSchedule(0.9, 0.0)), logits), want, atol=1e-5)
    np.testing.assert_allclose(probs(KLGuidedTemperature(0.9, 0.0), logits), want, atol=1e-5)
    with pytest.raises(ValueError, match="half_life must be >= 0"):
        HalfLifeSchedule(1.0, -1.0)


def test_official_ties_keep_every_token_tied_with_the_crossing_one():
    """p = 0.5 over [0.2, 0.1, 0.4, 0.2, 0.1]: 0.4 (id 2) then the 0.2s at ids 0 and 3 tie; id 0 crosses 0.5.
    The official rule keeps every token whose logit reaches the crossing one's (ids 0, 2, 3); infodec's
    TopP keeps the tied tokens in id order only while the mass before them is below p (ids 0, 2)."""
    row = np.log([0.2, 0.1, 0.4, 0.2, 0.1])
    same = jnp.asarray(np.stack([row, row])[None])  # identical streams: KL = 0, T = t0 = 1
    official = probs(KLGuidedTemperature(1.0, 1.0, top_p=0.5, official_ties=True), same)[0]
    np.testing.assert_allclose(official, [0.25, 0.0, 0.5, 0.25, 0.0], atol=1e-6)
    lower_ids = probs(KLGuidedTemperature(1.0, 1.0, top_p=0.5), same)[0]
    np.testing.assert_allclose(lower_ids, [1 / 3, 0.0, 2 / 3, 0.0, 0.0], atol=1e-6)
    # away from ties the two rules agree (and p = 1 keeps everything)
    logits = _random_streams(10)
    for top_p in (0.3, 0.9, 1.0):
        np.testing.assert_array_equal(
            probs(KLGuidedTemperature(0.8, 1.0, top_p=top_p, official_ties=True), logits),
            probs(KLGuidedTemperature(0.8, 1.0, top_p=top_p), logits),
        )
