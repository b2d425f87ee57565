"""Every policy on awkward logits: HF transformers' own logits-processor test cases, ``-inf`` anywhere
(a property test over random rows and masks, every policy), and NaN as one clear error.

The HF cases are restated from ``tests/generation/test_logits_process.py`` of transformers (the
``test_*_dist_warper`` / ``test_repetition_penalty_dist_process`` tests); their expected values are HF's,
written there by hand from the definitions, and ``filter_value`` masking is read here as "log π below
``KEPT``". HF's ``TopKLogitsWarper(top_k=1, min_tokens_to_keep=3)`` keeps ``max(k, min_tokens)`` tokens,
which is ``TopK(3)`` (infodec's TopK has no separate floor).
"""

from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infodec
from infodec.models.layers import MASK_VALUE
from infodec.policies import (
    DRY,
    PMI,
    XTC,
    ClassifierFreeGuidance,
    DynamicTemperature,
    DynamicValuePolicy,
    Epsilon,
    Eta,
    FunctionScore,
    Greedy,
    KLGuidedTemperature,
    MinP,
    MirostatV2,
    RepetitionPenalty,
    SigmoidSchedule,
    StepInfo,
    Temperature,
    TopK,
    TopNSigma,
    TopP,
    Typical,
    ValuePolicy,
    chain,
)
from infodec.policies.guidance import ClassifierGuidance
from tests.test_guidance import HEAD, TOPICS, WIDTH, random_head
from tests.tiny_models import tiny_llama

KEPT = MASK_VALUE / 2  # log π above this: the token is in the support


def log_pi_of(policy, logits, step=None):
    """The policy under jit (op-by-op dispatch of the truncations' bisections is slow on CPU)."""
    return np.asarray(jax.jit(lambda x, s: policy(x, s)[0])(jnp.asarray(logits, jnp.float32), step), np.float64)


def probs(policy, logits):
    return np.exp(log_pi_of(policy, logits))


def kept_counts(policy, logits):
    return (log_pi_of(policy, logits) > KEPT).sum(-1).tolist()


def filtered(policy, dist):
    """HF's pattern: scores are log-probabilities, the expected output is the kept probabilities
    (unnormalised: ``exp`` of the input where kept, 0 elsewhere)."""
    dist = np.asarray(dist, np.float32)
    with np.errstate(divide="ignore"):
        log_pi = log_pi_of(policy, np.log(dist))
    return np.where(log_pi > KEPT, dist, 0.0)


def ramp(batch=2, vocab=10):
    """HF's "edge cases with negative and extreme logits": ``arange(V) - V // 2``, the second row x100."""
    logits = np.tile(np.arange(vocab, dtype=np.float32) - vocab // 2, (batch, 1))
    logits[1] *= 100.0
    return logits


# --- HF transformers' logits-processor test cases --------------------------------------------------


def test_hf_temperature_case():
    scores = np.full((2, 20), 1 / 20, np.float32)
    scores[1, 5] = 1 / 20 + 0.1
    scores[1, 10] = 1 / 20 - 0.4
    base = probs(Temperature(1.0), scores)
    sharp, smooth = probs(Temperature(0.5), scores), probs(Temperature(1.3), scores)
    np.testing.assert_allclose(sharp[0], base[0], atol=1e-3)  # uniform stays uniform
    np.testing.assert_allclose(smooth[0], base[0], atol=1e-3)
    assert base[1].max() < sharp[1].max() and base[1].min() > sharp[1].min()  # peaks up, valleys down
    assert base[1].max() > smooth[1].max() and base[1].min() < smooth[1].min()


def test_hf_repetition_penalty_case():
    scores = np.full((2, 10), 0.1, np.float32)
    scores[0, 0] = -0.1
    scores[1, 5] = 0.4
    transformed = RepetitionPenalty(2.0).transform(
        jnp.asarray(scores), StepInfo(jnp.asarray([[0, 1], [5, 0]]), jnp.int32(0))
    )
    out = np.asarray(transformed)
    np.testing.assert_allclose([out[0, 0], out[0, 1], out[1, 0], out[1, 5]], [-0.2, 0.05, 0.05, 0.2], rtol=1e-6)
    np.testing.assert_array_equal(out[0, 2:], scores[0, 2:])  # tokens not in the context are untouched


def test_hf_top_k_cases():
    ramp_logits = np.tile(np.arange(10, dtype=np.float32), (2, 1))
    ramp_logits[1:, :5] += 10
    masked = (log_pi_of(TopK(3), ramp_logits) <= KEPT).tolist()
    assert masked[0] == 7 * [True] + 3 * [False]
    assert masked[1] == 2 * [True] + 3 * [False] + 5 * [True]
    # top_k=1 with min_tokens_to_keep=3: a uniform row stays whole, a ramp keeps 3 of 5.
    assert kept_counts(TopK(3), np.full((2, 5), 0.2, np.float32)) == [5, 5]
    assert kept_counts(TopK(3), np.tile(np.arange(5, dtype=np.float32), (2, 1))) == [3, 3]


def test_hf_top_p_cases():
    expected = [[0.3, 0.0, 0.0, 0.5], [0.0, 0.3, 0.3, 0.25]]
    np.testing.assert_allclose(filtered(TopP(0.8), [[0.3, 0.1, 0.1, 0.5], [0.15, 0.3, 0.3, 0.25]]), expected, atol=1e-3)
    assert kept_counts(TopP(0.9, min_tokens_to_keep=2), ramp()) == [3, 2]


def test_hf_min_p_cases():
    dist = [[0.9, 0.0274, 0.047, 0.0274], [0.15, 0.3, 0.3, 0.25], [0.97, 0.01, 0.01, 0.01]]
    expected = [[0.9, 0.0, 0.047, 0.0], [0.15, 0.3, 0.3, 0.25], [0.97, 0.0, 0.0, 0.0]]
    np.testing.assert_allclose(filtered(MinP(0.05), dist), expected, atol=1e-3)
    assert kept_counts(MinP(0.9, min_tokens_to_keep=2), ramp()) == [2, 2]


def test_hf_typical_cases():
    expected = [[0.97, 0.0, 0.0, 0.0], [0.0, 0.2, 0.2, 0.2]]
    got = filtered(Typical(0.5), [[0.97, 0.01, 0.01, 0.01], [0.4, 0.2, 0.2, 0.2]])
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert kept_counts(Typical(0.5, min_tokens_to_keep=3), np.full((2, 5), 0.2, np.float32)) == [5, 5]
    assert kept_counts(Typical(0.7, min_tokens_to_keep=2), ramp()) == [2, 2]


def test_hf_epsilon_cases():
    dist = [[0.87, 0.099, 0.001, 0.03], [0.4, 0.299, 0.101, 0.2]]
    expected = [[0.87, 0, 0, 0], [0.4, 0.299, 0.101, 0.2]]
    np.testing.assert_allclose(filtered(Epsilon(0.1), dist), expected, atol=1e-3)
    assert kept_counts(Epsilon(5e-2, min_tokens_to_keep=2), ramp()) == [3, 2]


def test_hf_eta_cases_with_a_zero_probability_token():
    # Row 0 holds a probability-0 token (log 0 = -inf): the entropy must ignore it, not turn NaN.
    dist = [[0.0, 0.1, 0.8, 0.1], [0.01, 0.04, 0.9, 0.05]]
    expected = [[0.0, 0.1, 0.8, 0.1], [0.0, 0.0, 0.9, 0.0]]
    np.testing.assert_allclose(filtered(Eta(0.0625), dist), expected, atol=1e-3)
    assert kept_counts(Eta(0.1, min_tokens_to_keep=2), ramp()) == [2, 2]


# --- -inf anywhere: every policy ---------------------------------------------------------------------

ROWS, V = 6, 24


def _guidance():
    embeddings = jax.random.normal(jax.random.key(7), (V, WIDTH))
    return ClassifierGuidance(
        random_head(), embeddings, target=1, scale=2.0, top_k=5, num_topics=TOPICS, hidden_dim=HEAD
    )


POLICIES = {
    "greedy": Greedy(),
    "temperature": Temperature(0.7),
    "temperature_0": Temperature(0.0),
    "top_k": TopK(3),
    "top_p": TopP(0.9),
    "top_p_0": TopP(0.0),
    "min_p": MinP(0.1),
    "typical": Typical(0.9),
    "epsilon": Epsilon(0.05),
    "eta": Eta(0.01),
    "repetition_penalty": RepetitionPenalty(1.3),
    "chain": chain(RepetitionPenalty(1.2), Temperature(0.8), TopK(5), TopP(0.9)),
    "value": ValuePolicy(beta=1.0, gamma=0.5),
    "value_function_score": ValuePolicy(lam=1.0, score=FunctionScore(lambda lp, step: -jnp.abs(lp[:, 0]))),
    "cfg": ClassifierFreeGuidance(1.5),
    "cfg_sharp": ClassifierFreeGuidance(3.0, temperature=0.7),
    "value_pmi": ValuePolicy(lam=1.0, score=PMI()),
    "kl_guided": KLGuidedTemperature(),
    "kl_guided_exact": KLGuidedTemperature(exact=True, top_p=0.9, top_k=0),
    "dynamic_temperature": DynamicValuePolicy(),
    "dynamic_guidance": DynamicValuePolicy(SigmoidSchedule(), target="guidance"),
    "classifier_guidance": _guidance(),
    "top_n_sigma": TopNSigma(1.0),
    "xtc": XTC(0.05, 1.0),
    "dry": DRY(0.8, 1.75, 2, -1, ((3,),)),
    "dynamic_temperature_entropy": DynamicTemperature(1.0, 0.5, 1.0),
    "mirostat_v2": MirostatV2(3.0, 0.1),
    "llama_cpp_chain": chain(DRY(0.8), TopNSigma(1.5), XTC(0.1, 0.5), DynamicTemperature(0.8, 0.3), MirostatV2()),
}


def random_masked_logits(seed, streams):
    """``[ROWS, streams, V]`` logits with random ``-inf`` masks: row 0 all but one token ``-inf`` (in every
    stream), row 1 ``-inf`` only in the last stream, row 2 none, the rest ~40% ``-inf``."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(ROWS, streams, V)) * 3).astype(np.float32)
    mask = rng.random((ROWS, streams, V)) < 0.4
    mask[0] = np.arange(V) != rng.integers(V)
    mask[1, :-1] = False
    mask[2] = False
    mask[:, :, rng.integers(V)] &= np.arange(ROWS)[:, None] <= 1  # rows >= 2 keep one token possible
    logits[mask] = -np.inf
    return logits


@pytest.mark.parametrize("name", list(POLICIES))
def test_minus_inf_never_gives_mass_or_nan(name):
    policy = POLICIES[name]
    logits = np.concatenate([random_masked_logits(seed, policy.num_streams) for seed in range(4)])
    rows = logits.shape[0]
    impossible = cast(np.ndarray, np.isneginf(logits).any(1))
    step = StepInfo(
        jnp.asarray(np.random.default_rng(1).integers(-1, V, size=(rows, 5)), jnp.int32),
        jnp.int32(2),
        jax.random.normal(jax.random.key(3), (rows, WIDTH)),
        jax.random.split(jax.random.key(4), rows),
    )
    log_pi, diagnostics = jax.jit(lambda x, s: policy(x, s))(jnp.asarray(logits), step)
    log_pi = np.asarray(log_pi, np.float64)
    assert not np.isnan(log_pi).any(), f"{name}: NaN in log_pi"
    pi = np.exp(log_pi)
    assert np.all(pi[impossible] == 0.0), f"{name}: mass on an impossible token"
    np.testing.assert_allclose(pi.sum(-1), 1.0, atol=1e-5, err_msg=name)
    for key, value in diagnostics.items():
        assert np.all(np.isfinite(np.asarray(value))), f"{name}: diagnostic {key} = {np.asarray(value)}"
    # Rows with one possible token: π is that token.
    for row in range(0, rows, ROWS):
        assert pi[row, np.flatnonzero(~impossible[row])[0]] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["top_p", "eta", "typical", "cfg"])
def test_minus_inf_equals_dropping_the_token(name):
    """Banning a token with -inf is the policy on the vocabulary without it (renormalised)."""
    policy = POLICIES[name]
    logits = (np.random.default_rng(5).normal(size=(3, policy.num_streams, V)) * 2).astype(np.float32)
    banned = np.zeros(V, bool)
    banned[[2, 9, 17]] = True
    masked = np.where(banned, -np.inf, logits).astype(np.float32)
    log_pi, _ = policy(jnp.asarray(masked))  # concrete arrays: the path with the boundary checks
    np.testing.assert_allclose(np.exp(np.asarray(log_pi))[:, ~banned], probs(policy, logits[:, :, ~banned]), atol=1e-6)


# --- NaN: one clear error ----------------------------------------------------------------------------


def test_nan_logits_raise_at_the_policy_boundary():
    logits = np.zeros((2, V), np.float32)
    logits[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"TopP: logits contain NaN \(rows \[1\]\)"):
        TopP(0.9)(jnp.asarray(logits))
    with pytest.raises(ValueError, match=r"every logit of rows \[0\] is -inf"):
        Temperature(1.0)(jnp.full((1, V), -jnp.inf))


@pytest.mark.slow
def test_nan_from_the_model_raises_in_finish():
    model, params = tiny_llama()
    broken = jax.tree.map(lambda x: x, params)
    leaves, treedef = jax.tree.flatten(broken)
    leaves[-1] = leaves[-1].at[...].set(jnp.nan)  # one weight matrix of NaNs poisons every logit
    broken = jax.tree.unflatten(treedef, leaves)
    prompts = [[1, 2, 3], [4, 5]]
    infodec.generate(model, params, prompts, TopP(0.9), jax.random.key(0), max_new_tokens=3)  # healthy
    with pytest.raises(ValueError, match=r"NaN log-probability at row 0, step 0"):
        infodec.generate(model, broken, prompts, TopP(0.9), jax.random.key(0), max_new_tokens=3)
