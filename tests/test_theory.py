"""``infodec.theory``: the exact soft-Bellman DP against closed forms, brute force and samples.

Trees are either model-free (random Gaussian logits at every prefix) or the exact prefix tree of a
tiny random Llama (vocabulary 6) with a prompt and an evidence span. Checks (``docs/math.md`` §1):

* Horizon 1 (myopic = sequence level): the DP policy is ``ValuePolicy(β, γ, λ, g)`` and every named
  decoder with its parameters (Temperature, CFG, KL-guided temperature, dynamic guidance, greedy).
* Longer horizons: the DP law is the Gibbs law ``∝ exp(U/τ)`` found by enumeration, ``V(root)`` is its
  objective and no decoder does better; myopic decoders are strictly worse in generic cases and exactly
  optimal in the cases ``infodec.theory.dp`` lists; the hard limit is the brute-force MAP sequence.
* Exact sequence laws of policies; the chi-square helper accepts the true law and rejects a wrong one,
  including on samples from ``infodec.generate`` with evidence.
"""

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infodec
import infodec.theory.tree
from infodec import theory
from infodec.models import llama
from infodec.policies.value import ClassifierFreeGuidance, DynamicValuePolicy, KLGuidedTemperature, SigmoidSchedule
from infodec.policies.value_policy import PMI, FunctionScore, ValuePolicy

PROMPT, EVIDENCE = [1, 2, 3], [4, 5]
TOL = 1e-6  # probabilities from float32 policies vs the float64 DP


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer Llama over 6 tokens; embeddings and head scaled so distributions are far from flat."""
    cfg = llama.LlamaConfig(
        vocab_size=6,
        hidden_size=16,
        intermediate_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        rms_norm_eps=1e-5,
        rope_theta=1e4,
        max_position_embeddings=64,
    )
    model = llama.build(cfg)
    tokens = jnp.zeros((1, 4), jnp.int32)
    params = dict(jax.jit(model.module(cfg).init)(jax.random.key(0), tokens, jnp.arange(4)[None], None)["params"])
    params["embed_tokens"] = {"embedding": params["embed_tokens"]["embedding"] * 2.5}
    params["lm_head"] = {"kernel": params["lm_head"]["kernel"] * 2.5}
    return model, params


@pytest.fixture(scope="module")
def model_tree(tiny):
    model, params = tiny
    return theory.prefix_log_probs(model, params, PROMPT, 3, evidence_tokens=EVIDENCE)


def terminal(tree, seed=1, scale=1.5):
    return scale * np.random.default_rng(seed).standard_normal((tree.vocab,) * tree.horizon)


def close(a, b, atol=TOL):
    np.testing.assert_allclose(np.exp(a), np.exp(b), rtol=0, atol=atol)


# --- trees and indexing -----------------------------------------------------------------------------


def test_sequences_index_and_accumulate():
    seqs = theory.sequences(3, 4)
    assert seqs.shape == (81, 4)
    assert [tuple(s) for s in seqs] == list(itertools.product(range(3), repeat=4))
    np.testing.assert_array_equal(theory.sequence_index(seqs, 3), np.arange(81))
    assert theory.sequences(5, 0).shape == (1, 0)
    tables = [np.random.default_rng(t).standard_normal((3,) * (t + 1)) for t in range(3)]
    total = theory.accumulate(tables)
    for y in itertools.product(range(3), repeat=3):
        assert total[y] == pytest.approx(sum(tables[t][y[: t + 1]] for t in range(3)), abs=1e-12)
    with pytest.raises(ValueError, match="outside|lie in"):
        theory.sequence_index([[0, 3]], 3)


def test_random_prefix_tree():
    tree = theory.random_prefix_tree(0, 5, 3, num_streams=2)
    assert [x.shape for x in tree.logits] == [(2, 5), (5, 2, 5), (5, 5, 2, 5)]
    assert (tree.vocab, tree.horizon, tree.num_streams, tree.num_sequences) == (5, 3, 2, 125)
    np.testing.assert_array_equal(theory.random_prefix_tree(0, 5, 3, 2).logits[2], tree.logits[2])
    keyed = theory.random_prefix_tree(jax.random.key(3), 5, 3)
    assert keyed.num_streams == 1 and np.all(np.isfinite(keyed.logits[2]))
    np.testing.assert_allclose(np.exp(tree.log_probs[2]).sum(-1), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="too many"):
        theory.random_prefix_tree(0, 8, 6)


@pytest.mark.slow
def test_prefix_log_probs_are_full_sequence_logits_with_evidence_prepended(tiny, model_tree):
    """Stream 0 = evidence + prompt, stream 1 = prompt alone, each prefix appended, positions 0, 1, ..."""
    model, params = tiny
    tree = model_tree
    assert tree.num_streams == 2 and tree.context == tuple(EVIDENCE + PROMPT)
    apply = jax.jit(lambda p, tokens: model.apply(p, tokens, jnp.arange(tokens.shape[1])[None])[0])
    for prefix in [(), (5,), (2, 4)]:
        for stream, base in enumerate([EVIDENCE + PROMPT, PROMPT]):
            context = base + list(prefix)  # one unpadded sequence at a time
            logits = apply(params, jnp.asarray([context]))
            np.testing.assert_allclose(
                tree.logits[len(prefix)][prefix + (stream,)], np.asarray(logits[0, -1]), atol=5e-5
            )
    alone = theory.prefix_log_probs(model, params, PROMPT, 3)  # one stream: the prompt alone
    assert alone.num_streams == 1 and alone.context == tuple(PROMPT)
    for t in range(3):
        np.testing.assert_allclose(alone.logits[t][..., 0, :], tree.logits[t][..., 1, :], atol=5e-5)
    p = np.exp(tree.log_model(1))
    assert p.max() > 0.5 and np.abs(tree.pmi(1)).mean() > 0.3  # far from flat, and evidence matters
    with pytest.raises(ValueError, match="at least one token"):
        theory.prefix_log_probs(model, params, [], 2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        theory.prefix_log_probs(model, params, [1, 9], 2)
    with pytest.raises(ValueError, match="too many"):
        theory.prefix_log_probs(model, params, PROMPT, 7)


# --- horizon 1: the DP is the one-step closed form --------------------------------------------------


@pytest.fixture(scope="module", params=["random", "model"])
def root_tree(request, tiny):
    if request.param == "random":
        return theory.random_prefix_tree(7, 6, 1, num_streams=2)
    model, params = tiny
    return theory.prefix_log_probs(model, params, PROMPT, 1, evidence_tokens=EVIDENCE)


def test_horizon_one_value_policy_is_the_dp(root_tree):
    tree = root_tree
    logits = tree.flat_logits(0)
    for beta, gamma, lam in [(1.0, 0.0, 1.0), (0.7, 0.6, -0.4), (2.0, -1.2, 2.5), (1.0, 1.5, 0.0)]:
        sol = theory.solve(tree, beta=beta, gamma=gamma, lam=lam, score="pmi")
        log_pi, _ = ValuePolicy(beta, gamma, lam, PMI())(logits)
        close(sol.log_policy[0], np.asarray(log_pi[0], np.float64))
        close(sol.log_seq_probs, np.asarray(log_pi[0], np.float64))
        # V(root) is the one-step maximum, and the objective of the closed form.
        assert sol.value == pytest.approx(
            theory.sequence_objective(
                tree, ValuePolicy(beta, gamma, lam, PMI()), beta=beta, gamma=gamma, lam=lam, score="pmi"
            ),
            abs=1e-5,
        )
    # A user score: the same array through ValuePolicy's FunctionScore and through solve's score tables.
    g = np.random.default_rng(0).standard_normal(tree.vocab)
    score = FunctionScore(lambda log_probs, step: jnp.asarray(g, jnp.float32)[None])
    log_pi, _ = ValuePolicy(1.0, 0.3, 0.8, score)(logits)
    close(theory.solve(tree, beta=1.0, gamma=0.3, lam=0.8, score=[g]).log_policy[0], np.asarray(log_pi[0]))
    close(theory.solve(tree, beta=1.0, gamma=0.3, lam=0.8, score=score).log_policy[0], np.asarray(log_pi[0]))


@pytest.mark.slow
def test_horizon_one_named_decoders_are_the_dp(root_tree):
    tree = root_tree
    logits = tree.flat_logits(0)

    def policy_law(policy):
        return theory.policy_distribution(tree, policy)

    for t in [0.4, 1.0, 1.7]:  # Temperature(T) ≡ β = 1, γ = T − 1
        close(policy_law(infodec.Temperature(t)), theory.solve(tree, beta=1.0, gamma=t - 1).log_seq_probs)
    for w in [0.0, 0.5, 1.0, 1.5, 3.0]:  # ClassifierFreeGuidance(w) ≡ β = 1, γ = 0, λ = w − 1, g = PMI
        close(
            policy_law(ClassifierFreeGuidance(w)),
            theory.solve(tree, beta=1.0, gamma=0.0, lam=w - 1, score="pmi").log_seq_probs,
        )
    close(
        policy_law(ClassifierFreeGuidance(2.0, temperature=0.8)),
        theory.solve(tree, beta=1.0, gamma=-0.2, lam=1.0, score="pmi").log_seq_probs,
    )
    # KL-guided temperature (untruncated) ≡ β = 1, γ = T(s) − 1 with T from the streams' KL at the root.
    for exact in [True, False]:
        policy = KLGuidedTemperature(t0=1.2, half_life=0.5, exact=exact)
        temperature = float(policy.temperature(policy.stream_kl(jnp.asarray(logits)))[0])
        close(policy_law(policy), theory.solve(tree, beta=1.0, gamma=temperature - 1).log_seq_probs)
    # Dynamic guidance ≡ β = 1, γ = 0, λ = schedule(KL).
    schedule = SigmoidSchedule(low=0.5, high=3.0, midpoint=0.3, width=0.2)
    p, q = np.exp(tree.log_probs[0][0]), tree.log_probs[0][1]
    lam = float(schedule(jnp.asarray(np.sum(p * (tree.log_probs[0][0] - q)))))
    close(
        policy_law(DynamicValuePolicy(schedule, target="guidance")),
        theory.solve(tree, beta=1.0, gamma=0.0, lam=lam, score="pmi").log_seq_probs,
        atol=2e-6,
    )
    # Greedy ≡ the hard limit.
    close(policy_law(infodec.Greedy()), theory.solve(tree, hard=True).log_seq_probs)


# --- longer horizons: the DP is the sequence-level optimum -----------------------------------------

SETTINGS = [  # (beta, gamma, lam, with a terminal reward)
    (1.0, 0.0, 1.0, True),
    (1.0, 0.5, 0.5, True),
    (0.6, -0.3, -0.7, False),
    (1.5, 2.0, 2.0, True),
    (1.0, -0.3, 0.0, False),
]


@pytest.mark.parametrize("beta,gamma,lam,with_terminal", SETTINGS)
def test_dp_is_the_gibbs_optimum(beta, gamma, lam, with_terminal):
    """π*(y) ∝ exp(U(y)/τ) and V(root) = τ·logsumexp(U/τ) = J(π*) ≥ J(any policy)."""
    tree = theory.random_prefix_tree(11, 4, 3, num_streams=2)
    R = terminal(tree) if with_terminal else None
    kw: dict[str, Any] = dict(beta=beta, gamma=gamma, lam=lam, score="pmi", terminal_reward=R)
    sol = theory.solve(tree, **kw)
    log_q, value = theory.sequence_optimum(tree, **kw)
    np.testing.assert_allclose(sol.log_seq_probs, log_q, atol=1e-9)
    assert sol.value == pytest.approx(value, abs=1e-9)
    assert theory.sequence_objective(tree, sol, **kw) == pytest.approx(sol.value, abs=1e-9)
    assert theory.sequence_objective(tree, list(sol.log_policy), **kw) == pytest.approx(sol.value, abs=1e-9)
    np.testing.assert_allclose(np.exp(sol.log_seq_probs).sum(), 1.0, atol=1e-12)
    # V at inner states is the optimum of the subproblem: Q = r + V(s ⊕ a) and softmax consistency.
    for t in range(3):
        np.testing.assert_allclose(sol.q[t], lam * tree.pmi(t) + sol.values[t + 1], atol=1e-12)
        np.testing.assert_allclose(
            sol.log_policy[t],
            (beta * tree.log_model(t) + sol.q[t] - sol.values[t][..., None]) / (beta + gamma),
            atol=1e-9,
        )
    rng = np.random.default_rng(5)
    for _ in range(20):  # random policies never do better
        tables = [infodec.theory.tree.log_softmax(2 * rng.standard_normal((4,) * (t + 1))) for t in range(3)]
        assert theory.sequence_objective(tree, tables, **kw) < sol.value


def test_sequence_terms_by_brute_force():
    """E_q[Σ λ g + R], KL(q‖P_G), H(q) against explicit loops over sequences."""
    tree = theory.random_prefix_tree(2, 3, 3, num_streams=2)
    R = terminal(tree)
    log_q = theory.policy_distribution(tree, ClassifierFreeGuidance(1.7, temperature=1.3))
    terms = theory.sequence_terms(tree, log_q, lam=0.4, score="pmi", terminal_reward=R)
    reward = kl = entropy = 0.0
    for y in itertools.product(range(3), repeat=3):
        q = np.exp(log_q[y])
        log_p = sum(tree.log_model(t)[y[:t]][y[t]] for t in range(3))
        reward += q * (0.4 * sum(tree.pmi(t)[y[:t]][y[t]] for t in range(3)) + R[y])
        kl += q * (log_q[y] - log_p)
        entropy -= q * log_q[y]
    assert terms == pytest.approx({"reward": reward, "kl": kl, "entropy": entropy}, abs=1e-10)
    J = theory.sequence_objective(tree, log_q, beta=0.8, gamma=0.3, lam=0.4, score="pmi", terminal_reward=R)
    assert J == pytest.approx(reward - 0.8 * kl + 0.3 * entropy, abs=1e-10)


def decoders():
    """Per-step decoders evaluated on the sequence objective (all myopic: none sees V(s ⊕ a) or R)."""
    return {
        "greedy": infodec.Greedy(),
        **{f"temperature-{t}": infodec.Temperature(t) for t in (0.5, 0.8, 1.0, 1.3)},
        "top_k-2": infodec.TopK(2),
        "top_p-0.8": infodec.TopP(0.8),
        **{f"cfg-{w}": ClassifierFreeGuidance(w) for w in (0.0, 1.0, 1.5, 2.5)},
        "kl-guided": KLGuidedTemperature(t0=1.0, half_life=1.0),
        "dynamic-guidance": DynamicValuePolicy(SigmoidSchedule(), target="guidance"),
    }


@pytest.mark.parametrize("source", ["random", "model"])
@pytest.mark.slow
def test_dp_beats_every_myopic_decoder(source, model_tree):
    """J(π*) = V(root) ≥ J(every decoder), strictly above the matching closed form given a terminal reward."""
    tree = model_tree if source == "model" else theory.random_prefix_tree(4, 6, 3, num_streams=2)
    beta, gamma, lam = 1.0, 0.3, 0.8
    kw: dict[str, Any] = dict(beta=beta, gamma=gamma, lam=lam, score="pmi", terminal_reward=terminal(tree, seed=3))
    best = theory.solve(tree, **kw).value
    for name, policy in decoders().items():
        assert theory.sequence_objective(tree, policy, **kw) <= best + 1e-9, name
    closed_form = ValuePolicy(beta, gamma, lam, PMI())
    mine = theory.myopic(tree, beta=beta, gamma=gamma, lam=lam, score="pmi")
    close(theory.policy_distribution(tree, closed_form), mine.log_seq_probs)  # myopic() is the decoder
    j_myopic = theory.sequence_objective(tree, mine, **kw)
    assert j_myopic == pytest.approx(theory.sequence_objective(tree, closed_form, **kw), abs=1e-5)
    assert best - j_myopic > 1e-2, (best, j_myopic)
    print(f"\n{source}: V(root) = {best:.4f}, myopic closed form J = {j_myopic:.4f}")


def test_last_step_is_the_closed_form():
    """V(terminal) = 0 ⇒ π* at depth H−1 is ValuePolicy at every prefix; with R, the closed form with λg + R."""
    tree = theory.random_prefix_tree(8, 4, 3, num_streams=2)
    beta, gamma, lam = 1.2, 0.4, 1.5
    sol = theory.solve(tree, beta=beta, gamma=gamma, lam=lam, score="pmi")
    log_pi, _ = ValuePolicy(beta, gamma, lam, PMI())(jnp.asarray(tree.flat_logits(2)))
    close(sol.log_policy[2], np.asarray(log_pi, np.float64).reshape(sol.log_policy[2].shape))
    assert not np.allclose(
        sol.log_policy[1], theory.myopic(tree, beta=beta, gamma=gamma, lam=lam, score="pmi").log_policy[1], atol=1e-3
    )
    # Rewards at the final step only (R = 0): the last step agrees, earlier ones do not (the final
    # reward's log-normaliser depends on the prefix), so myopic decoding is strictly worse.
    last_only = [np.zeros(1), np.zeros(1), tree.pmi(2)]
    kw: dict[str, Any] = dict(beta=beta, gamma=gamma, lam=lam, score=last_only)
    sol, mine = theory.solve(tree, **kw), theory.myopic(tree, **kw)
    np.testing.assert_allclose(sol.log_policy[2], mine.log_policy[2], atol=1e-12)
    assert theory.sequence_objective(tree, mine, **kw) < sol.value - 1e-3
    R = terminal(tree)
    with_r = theory.solve(tree, beta=beta, gamma=gamma, lam=lam, score="pmi", terminal_reward=R)
    expected = infodec.theory.tree.log_softmax((beta * tree.log_model(2) + lam * tree.pmi(2) + R) / (beta + gamma))
    np.testing.assert_allclose(with_r.log_policy[2], expected, atol=1e-12)


def context_free_tree(seed, vocab, horizon):
    """Two streams whose next-token logits depend on the depth only."""
    rng = np.random.default_rng(seed)
    logits = [np.broadcast_to(2 * rng.standard_normal((2, vocab)), (vocab,) * t + (2, vocab)) for t in range(horizon)]
    return theory.PrefixTree(tuple(logits))


def assert_myopic_is_exact(tree, **kw):
    sol = theory.solve(tree, **kw)
    mine = theory.myopic(tree, **{k: v for k, v in kw.items() if k != "terminal_reward"})
    for t in range(tree.horizon):
        np.testing.assert_allclose(sol.log_policy[t], mine.log_policy[t], atol=1e-10)
    assert theory.sequence_objective(tree, mine, **kw) == pytest.approx(sol.value, abs=1e-10)
    return sol


def test_exact_cases_where_myopic_is_optimal():
    """The cases of ``infodec.theory.dp`` (V(s ⊕ a) independent of a), each exactly; and a generic
    one without rewards (per-step temperature ≠ 1) where myopic is strictly worse."""
    tree = theory.random_prefix_tree(21, 4, 3, num_streams=2)
    # No rewards and γ = 0: π* = P_G, V ≡ 0; plain sampling (Temperature(1), CFG(1)) is optimal.
    sol = assert_myopic_is_exact(tree, beta=1.7, gamma=0.0)
    for t in range(3):
        np.testing.assert_allclose(sol.log_policy[t], tree.log_model(t), atol=1e-12)
        np.testing.assert_allclose(sol.values[t], 0.0, atol=1e-12)
    for policy in [infodec.Temperature(1.0), ClassifierFreeGuidance(1.0)]:
        assert theory.sequence_objective(tree, policy, beta=1.7, gamma=0.0) == pytest.approx(0.0, abs=1e-5)
    # CFG w = 0 (λ = −1, g = PMI, β = 1, γ = 0): π* = the evidence-free stream, V ≡ 0.
    sol = assert_myopic_is_exact(tree, beta=1.0, gamma=0.0, lam=-1.0, score="pmi")
    for t in range(3):
        np.testing.assert_allclose(sol.log_policy[t], tree.log_probs[t][..., 1, :], atol=1e-12)
        np.testing.assert_allclose(sol.values[t], 0.0, atol=1e-12)
    assert theory.sequence_objective(
        tree, ClassifierFreeGuidance(0.0), beta=1.0, lam=-1.0, score="pmi"
    ) == pytest.approx(0.0, abs=1e-5)
    # Reward = change of model: r = τ log Q − β log P_G ⇒ π* = Q at every state, V ≡ 0.
    beta, gamma = 1.3, 0.4
    other = theory.random_prefix_tree(22, 4, 3)
    score = [(beta + gamma) * other.log_model(t) - beta * tree.log_model(t) for t in range(3)]
    sol = assert_myopic_is_exact(tree, beta=beta, gamma=gamma, lam=1.0, score=score)
    for t in range(3):
        np.testing.assert_allclose(sol.log_policy[t], other.log_model(t), atol=1e-12)
        np.testing.assert_allclose(sol.values[t], 0.0, atol=1e-12)
    # A context-free model: any β, γ, λ (here temperature and CFG away from 1).
    flat = context_free_tree(23, 4, 3)
    for beta, gamma, lam in [(1.0, -0.4, 0.0), (1.0, 0.0, 1.5), (0.5, 0.9, -0.6)]:
        assert_myopic_is_exact(flat, beta=beta, gamma=gamma, lam=lam, score="pmi")
    # Horizon 1 without a terminal reward.
    assert_myopic_is_exact(theory.random_prefix_tree(24, 6, 1, 2), beta=1.0, gamma=0.7, lam=2.0, score="pmi")
    # Generic, no rewards: per-step temperature is not the sequence-level optimum P_G^{1/T}/Z.
    for t in [0.7, 1.4]:
        best = theory.solve(tree, beta=1.0, gamma=t - 1).value
        j = theory.sequence_objective(tree, infodec.Temperature(t), beta=1.0, gamma=t - 1)
        assert best - j > 1e-3, (t, best, j)


# --- the hard limit ---------------------------------------------------------------------------------


def test_hard_limit_is_the_brute_force_map():
    tree = theory.random_prefix_tree(31, 4, 3, num_streams=2)
    R = terminal(tree, seed=9)
    beta, lam = 1.0, 0.6
    # U(y) = β log P_G(y) + Σ λ PMI + R(y), by explicit loops.
    utility = {
        y: sum(beta * tree.log_model(t)[y[:t]][y[t]] + lam * tree.pmi(t)[y[:t]][y[t]] for t in range(3)) + R[y]
        for y in itertools.product(range(4), repeat=3)
    }
    map_seq = max(utility, key=utility.__getitem__)
    hard = theory.solve(tree, beta=beta, lam=lam, score="pmi", terminal_reward=R, hard=True)
    assert tuple(hard.mode) == map_seq
    assert hard.value == pytest.approx(utility[map_seq], abs=1e-10)
    assert np.exp(hard.log_seq_probs[map_seq]) == 1.0
    assert np.all(np.isin(np.exp(np.concatenate([p.reshape(-1) for p in hard.log_policy])), [0.0, 1.0]))
    # β + γ → 0+: the soft law concentrates on the MAP and V_hard ≤ V_soft ≤ V_hard + τ·H·log V.
    gap = sorted(utility.values())[-1] - sorted(utility.values())[-2]
    assert gap > 1e-2
    for tau in [1e-2, 1e-3]:
        soft = theory.solve(tree, beta=beta, gamma=-beta + tau, lam=lam, score="pmi", terminal_reward=R)
        assert tuple(soft.mode) == map_seq
        assert np.exp(soft.log_seq_probs[map_seq]) >= 1 - 64 * np.exp(-gap / tau)
        assert hard.value <= soft.value <= hard.value + tau * 3 * np.log(4) + 1e-12
    assert np.exp(soft.log_seq_probs[map_seq]) > 0.999
    # τ = 0 and τ < 0 are the hard problem; its objective E_q[U] is maximised by the MAP point mass.
    for gamma in [-1.0, -1.5]:
        sol = theory.solve(tree, beta=beta, gamma=gamma, lam=lam, score="pmi", terminal_reward=R)
        assert sol.hard and tuple(sol.mode) == map_seq
        assert theory.sequence_objective(
            tree, sol, beta=beta, gamma=gamma, lam=lam, score="pmi", terminal_reward=R
        ) == pytest.approx(hard.value, abs=1e-10)
    # Greedy (the myopic hard decoder) is a lower bound; on the model-free tree it is not the MAP.
    greedy = theory.myopic(tree, beta=beta, lam=lam, score="pmi", hard=True)
    assert utility[tuple(greedy.mode)] <= hard.value
    # Without rewards: MAP of log P_G (by brute force) vs the Greedy policy's (one-hot) law.
    log_p = tree.sequence_log_model()
    no_reward = theory.solve(tree, hard=True)
    assert no_reward.value == pytest.approx(log_p.max(), abs=1e-12)
    assert np.unravel_index(np.argmax(log_p), log_p.shape) == tuple(no_reward.mode)
    greedy_law = theory.policy_distribution(tree, infodec.Greedy())
    close(greedy_law, theory.myopic(tree, hard=True).log_seq_probs)
    assert log_p[np.unravel_index(np.argmax(greedy_law), log_p.shape)] <= no_reward.value


# --- exact sequence laws of policies ----------------------------------------------------------------


@pytest.mark.parametrize("source", ["random", "model"])
def test_temperature_law_is_the_product_of_per_step_distributions(source, model_tree):
    tree = model_tree if source == "model" else theory.random_prefix_tree(41, 5, 3)
    for t in [0.6, 1.5]:
        log_q = theory.policy_distribution(tree, infodec.Temperature(t))
        assert log_q.shape == (tree.vocab,) * 3
        assert np.exp(log_q).sum() == pytest.approx(1.0, abs=1e-12)
        for y in itertools.product(range(tree.vocab), repeat=3):
            prob = 1.0
            for step in range(3):
                z = tree.logits[step][y[:step]][0].astype(np.float64) / t
                prob *= np.exp(z[y[step]] - np.log(np.exp(z).sum()))
            assert np.exp(log_q[y]) == pytest.approx(prob, abs=TOL)


def test_policy_distribution_of_stateful_and_truncating_policies(model_tree):
    tree = model_tree
    log_q = theory.policy_distribution(tree, infodec.chain(infodec.Temperature(0.8), infodec.TopK(2)))
    q = np.exp(log_q)
    assert q.sum() == pytest.approx(1.0, abs=1e-9) and np.sum(q > 0) <= 2**3
    # RepetitionPenalty reads the context (evidence + prompt + prefix) from step_info: check two states.
    tables = theory.policy_tables(tree, infodec.RepetitionPenalty(3.0))
    for prefix in [(), (0,), (0, 5)]:
        logits = tree.logits[len(prefix)][prefix][0].astype(np.float64)
        seen = np.isin(np.arange(tree.vocab), EVIDENCE + PROMPT + list(prefix))
        expected = infodec.theory.tree.log_softmax(
            np.where(seen, np.where(logits < 0, logits * 3.0, logits / 3.0), logits)
        )
        close(tables[len(prefix)][prefix], expected)
    assert np.exp(theory.accumulate(tables)).sum() == pytest.approx(1.0, abs=1e-9)


# --- chi-square -------------------------------------------------------------------------------------


def test_chi_square_accepts_the_law_and_rejects_another():
    tree = theory.random_prefix_tree(51, 4, 3, num_streams=2)
    kw: dict[str, Any] = dict(beta=1.0, gamma=0.3, lam=0.8, score="pmi", terminal_reward=terminal(tree))
    optimal = theory.solve(tree, **kw).log_seq_probs
    mine = theory.myopic(tree, beta=1.0, gamma=0.3, lam=0.8, score="pmi").log_seq_probs
    n = 5000
    for seed in range(3):
        result = theory.chi_square(theory.sample_sequences(seed, optimal, n), optimal)
        assert result.p_value > 1e-3, result
        assert result.dof < tree.num_sequences - 1  # small cells were pooled
        assert theory.chi_square(theory.sample_sequences(seed, mine, n), optimal).p_value < 1e-3
    flat_index = theory.sample_sequences(0, optimal, n)
    assert theory.chi_square(flat_index, optimal.reshape(-1)) == theory.chi_square(flat_index, optimal)
    # A sample where the law has probability 0 is impossible.
    greedy = theory.solve(tree, hard=True).log_seq_probs
    statistic, _, p_value = theory.chi_square(theory.sample_sequences(0, optimal, 100), greedy)
    assert statistic == np.inf and p_value == 0.0
    assert theory.chi_square(np.tile(theory.solve(tree, hard=True).mode, (50, 1)), greedy).p_value == 1.0


@pytest.mark.slow
def test_generate_with_evidence_follows_the_exact_law(tiny, model_tree):
    """``generate``'s two-stream samples (CFG, evidence prepended) fit ``policy_distribution``; the
    sequence-level optimum of the same objective is a different law, and the test tells them apart."""
    model, params = tiny
    policy = ClassifierFreeGuidance(1.5)
    out = infodec.generate(
        model,
        params,
        [PROMPT],
        policy,
        jax.random.key(0),
        max_new_tokens=3,
        evidence=[EVIDENCE],
        num_samples=3000,
        chunk=4,
        stop_tokens=None,
    )
    samples = np.asarray(out.tokens)[:, :3]
    result = theory.chi_square(samples, theory.policy_distribution(model_tree, policy))
    print(f"\ngenerate CFG(1.5) vs exact law: {result}")
    assert result.p_value > 1e-3
    optimum = theory.solve(model_tree, beta=1.0, gamma=0.0, lam=0.5, score="pmi").log_seq_probs
    assert theory.chi_square(samples, optimum).p_value < 1e-3


# --- errors -----------------------------------------------------------------------------------------


def test_clear_errors():
    one = theory.random_prefix_tree(0, 3, 2)
    two = theory.random_prefix_tree(0, 3, 2, num_streams=2)
    with pytest.raises(ValueError, match="beta must be > 0"):
        theory.solve(one, beta=0.0)
    with pytest.raises(ValueError, match="two streams"):
        theory.solve(one, lam=1.0, score="pmi")
    with pytest.raises(ValueError, match="only named score"):
        theory.solve(two, lam=1.0, score="kl")
    with pytest.raises(ValueError, match="terminal_reward needs 9"):
        theory.solve(one, terminal_reward=np.zeros(8))
    with pytest.raises(ValueError, match="one table per depth"):
        theory.solve(one, lam=1.0, score=[np.zeros(3)])
    with pytest.raises(ValueError, match="sum to 1"):
        theory.sequence_objective(one, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="needs 2 streams"):
        theory.policy_distribution(one, ClassifierFreeGuidance(1.5))
    with pytest.raises(ValueError, match="shape"):
        theory.PrefixTree((np.zeros((1, 3)), np.zeros((3, 1, 4))))
