"""Issue 19's statistics for the DAEMON study: clustered and paired SEs, the paired perplexity CI, the 1/N
bias of log Ẑ, the ε-perplexity, and the report's new tables. References are written from the formulas
(sandwich estimators with explicit loops, the delta method on cluster totals, Martins et al.'s smoothing),
never from the code under test."""

import csv
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats as scipy_stats

from infodec import daemon
from infodec.daemon import fitting as fit_lib
from infodec.daemon import metrics as metrics_lib
from infodec.daemon import tilted_perplexity as tp
from infodec.eval import stats
from infodec.policies import EpsilonSmoothing
from infodec.studies.daemon import report, study
from tests import tiny_models

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "daemon" / "full_wiki_fit128"


def _toy(seed=0, n=40, groups=9):
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, groups, n)
    shared = rng.normal(size=groups)[clusters]  # a per-document effect: rows of one cluster correlate
    return rng, clusters, shared


def _sandwich_se(y, clusters, weights=None):
    """CR1 SE of the (weighted) mean of ``y`` as a regression on a constant, with explicit loops:
    ``V = G/(G−1) · (Σ w)⁻² · Σ_g (Σ_{i∈g} w_i (y_i − β))²``."""
    w = np.ones(len(y)) if weights is None else np.asarray(weights, float)
    beta = sum(wi * yi for wi, yi in zip(w, y)) / sum(w)
    labels = sorted(set(clusters.tolist()))
    meat = 0.0
    for g in labels:
        score = sum(w[i] * (y[i] - beta) for i in range(len(y)) if clusters[i] == g)
        meat += score * score
    big_g = len(labels)
    return beta, np.sqrt(big_g / (big_g - 1) * meat) / sum(w)


def test_clustered_mean_se_is_the_cr1_sandwich():
    rng, clusters, shared = _toy()
    y = shared + rng.normal(size=len(clusters))
    got = stats.clustered_mean_se(y, clusters)
    beta, se = _sandwich_se(y, clusters)
    assert got["mean"] == pytest.approx(beta, rel=1e-12)
    assert got["se"] == pytest.approx(se, rel=1e-10)
    assert got["clusters"] == len(set(clusters.tolist()))
    # one value per cluster: the i.i.d. SE
    assert stats.clustered_mean_se(y, np.arange(len(y)))["se"] == pytest.approx(np.std(y, ddof=1) / np.sqrt(len(y)))


def test_paired_difference_is_the_clustered_se_of_the_differences_and_beats_the_combined_se():
    rng, clusters, shared = _toy(1)
    human = shared + rng.normal(size=len(clusters))
    decoder = human + 0.3 + 0.2 * rng.normal(size=len(clusters))  # strongly paired with the human value
    got = stats.paired_difference(decoder, human, clusters)
    beta, se = _sandwich_se(decoder - human, clusters)
    assert got["mean"] == pytest.approx(beta, rel=1e-12) and got["se"] == pytest.approx(se, rel=1e-10)
    separate = stats.combined_se(
        stats.clustered_mean_se(decoder, clusters)["se"], stats.clustered_mean_se(human, clusters)["se"]
    )
    assert got["se"] < separate  # the pair's covariance is counted
    unclustered = stats.paired_difference(decoder, human)
    d = decoder - human
    assert unclustered["se"] == pytest.approx(np.std(d, ddof=1) / np.sqrt(len(d)))
    with pytest.raises(ValueError, match="as many values"):
        stats.paired_difference([1.0, 2.0], [1.0])


def test_clustered_ratio_is_the_delta_method_on_cluster_totals():
    rng, clusters, _ = _toy(2)
    tokens = rng.integers(5, 30, len(clusters)).astype(float)
    nll = tokens * (3.0 + 0.5 * rng.normal(size=len(clusters)))
    got = stats.clustered_ratio(nll, tokens, clusters)
    labels = sorted(set(clusters.tolist()))
    a_g = np.array([nll[clusters == g].sum() for g in labels])
    b_g = np.array([tokens[clusters == g].sum() for g in labels])
    ratio = a_g.sum() / b_g.sum()
    # ∂(A/B)/∂A = 1/B, ∂(A/B)/∂B = −A/B²; CR1 variance of the cluster totals' contributions
    grad = a_g / b_g.sum() - ratio * b_g / b_g.sum()
    se = np.sqrt(len(labels) / (len(labels) - 1) * np.sum(grad**2))
    assert got["ratio"] == pytest.approx(ratio, rel=1e-12) and got["se"] == pytest.approx(se, rel=1e-10)
    # equal lengths: the clustered SE of the per-text means
    equal = stats.clustered_ratio(nll, np.full(len(nll), 7.0), clusters)
    assert equal["se"] == pytest.approx(stats.clustered_mean_se(nll / 7.0, clusters)["se"], rel=1e-10)
    # and the weighted-mean sandwich (Σa/Σb is the b-weighted mean of a/b)
    assert got["se"] == pytest.approx(_sandwich_se(nll / tokens, clusters, tokens)[1], rel=1e-10)


def test_confidence_interval_uses_t_with_g_minus_one_dof():
    ci = stats.confidence_interval(1.0, 0.5, 10, level=0.95)
    assert ci["dof"] == 9 and ci["high"] - 1.0 == pytest.approx(0.5 * 2.2621571627982053, rel=1e-9)
    assert np.isnan(stats.confidence_interval(1.0, 0.5, 1)["low"])
    with pytest.raises(ValueError, match="level"):
        stats.confidence_interval(1.0, 0.5, 10, level=1.5)
    assert stats.in_se_units(1.0, 0.0) == np.inf and np.isnan(stats.in_se_units(0.0, 0.0))


def test_holm_adjust_matches_a_hand_computed_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> 0.06 (running maximum)
    got = stats.holm_adjust([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    # capped at 1; NaN (no test) stays NaN and does not count towards m = 2
    got = stats.holm_adjust([0.6, np.nan, 0.2])
    np.testing.assert_allclose(got, [0.6, np.nan, 0.4], rtol=1e-12)
    np.testing.assert_allclose(stats.holm_adjust([0.5, 0.9, 0.7]), [1.0, 1.0, 1.0])
    rng = np.random.default_rng(0)
    p = rng.uniform(size=30) ** 3
    adjusted = stats.holm_adjust(p)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0) and np.all(adjusted >= p) and np.all(adjusted <= 1)
    assert np.all(adjusted <= np.minimum(1, len(p) * p))  # never more conservative than Bonferroni
    assert stats.holm_adjust([]).shape == (0,)
    with pytest.raises(ValueError, match="p-values must lie in"):
        stats.holm_adjust([0.5, 1.5])


def test_kish_ess_counts_equal_weights_fully_and_a_dominant_weight_once():
    weights = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]])
    # [3, 1]: (3 + 1)² / (9 + 1) = 1.6, and scaling the weights does not change it.
    np.testing.assert_allclose(stats.kish_ess(weights), [4.0, 1.0, 1.6])
    np.testing.assert_allclose(stats.kish_ess(7.0 * weights), [4.0, 1.0, 1.6])
    np.testing.assert_allclose(stats.kish_ess(weights.T, axis=0), [4.0, 1.0, 1.6])


def test_kish_ess_is_zero_when_no_weight_is_carried_nan_for_a_nan_weight_and_refuses_negative_ones():
    np.testing.assert_array_equal(stats.kish_ess([[0.0, 0.0], [0.0, 2.0], [1.0, np.nan]]), [0.0, 1.0, np.nan])
    with pytest.raises(ValueError, match="non-negative weights; got -0.5"):
        stats.kish_ess([1.0, -0.5])


def test_t_test_p_value_is_scipys_one_sample_t_test():
    values = np.array([0.3, -0.1, 0.5, 0.2, 0.9, -0.4, 0.6])
    assert stats.t_test_p_value(values) == pytest.approx(scipy_stats.ttest_1samp(values, 0.0)[1], rel=1e-10)
    assert np.isnan(stats.t_test_p_value([1.0]))
    assert stats.t_test_p_value([2.0, 2.0]) == 0.0 and stats.t_test_p_value([0.0, 0.0]) == 1.0


def test_paired_log_perplexity_ci_against_brute_force():
    rng, clusters, shared = _toy(3, n=30, groups=7)
    tokens = rng.integers(10, 20, len(clusters)).astype(float)
    log_p = -3.0 * tokens + shared + rng.normal(size=len(clusters))
    log_q = log_p + 0.05 * tokens + 0.3 * rng.normal(size=len(clusters))
    got = tp.paired_log_perplexity_ci(log_p, log_q, tokens, clusters, level=0.9)
    delta = (np.sum(-log_q) - np.sum(-log_p)) / tokens.sum()  # nll_q − nll_p per token
    labels = sorted(set(clusters.tolist()))
    resid = [
        sum((log_p[i] - log_q[i]) - delta * tokens[i] for i in range(len(tokens)) if clusters[i] == g) for g in labels
    ]
    se = np.sqrt(len(labels) / (len(labels) - 1) * np.sum(np.square(resid))) / tokens.sum()
    half = scipy_stats.t.ppf(0.95, len(labels) - 1) * se
    assert got["log_ppl_difference"] == pytest.approx(delta, rel=1e-12)
    assert got["se"] == pytest.approx(se, rel=1e-10)
    assert (got["low"], got["high"]) == pytest.approx((delta - half, delta + half), rel=1e-10)
    assert got["ppl_ratio"] == pytest.approx(
        np.exp(np.sum(-log_q) / tokens.sum()) / np.exp(np.sum(-log_p) / tokens.sum())
    )
    assert got["ppl_ratio_low"] == pytest.approx(np.exp(delta - half)) and got["clusters"] == len(labels)


def test_fit_inverse_n_recovers_an_exact_line():
    sizes = np.array([25, 50, 100, 200])
    assert tp.fit_inverse_n(sizes, 2.0 - 3.0 / sizes) == pytest.approx((2.0, -3.0), rel=1e-10)
    assert tp.default_sweep_sizes(200) == (25, 50, 100, 200)
    with pytest.raises(ValueError, match="distinct"):
        tp.fit_inverse_n([10, 10], [1.0, 1.0])


@pytest.mark.slow
def test_n_sweep_recovers_the_known_1_over_n_bias_of_log_z():
    """Log-normal weights: lw = f ~ N(0, σ²) (µ = −1), so log Z = σ²/2 and, by the delta method,
    E[log Ẑ_N] = log Z − (e^{σ²} − 1) / (2N) + O(N⁻²). With human features 0 and log p = 0, the
    per-sequence nll_q is the mean log Ẑ over prefixes."""
    sigma, prefixes, total = 0.5, 20000, 200
    rng = np.random.default_rng(0)
    feats = rng.normal(0.0, sigma, (prefixes, total, 1))
    sweep = tp.n_sweep(np.zeros(prefixes), np.zeros((prefixes, 1)), feats, np.array([-1.0]))
    assert sweep.sizes.tolist() == [25, 50, 100, 200] and sweep.groups.tolist() == [8, 4, 2, 1]
    log_z, slope = sigma**2 / 2, -(np.exp(sigma**2) - 1) / 2
    # MC error of each point is about sqrt((e^{σ²}−1)/N / (prefixes·groups)) ≈ 3e-4; the O(N⁻²) term < 2e-4
    assert sweep.intercept == pytest.approx(log_z, abs=2e-3)
    assert sweep.slope == pytest.approx(slope, rel=0.1)
    assert sweep.bias_at_largest == pytest.approx(sweep.slope / 200)
    assert sweep.ppl_q_extrapolated == pytest.approx(np.exp(sweep.intercept))
    with pytest.raises(ValueError, match="sizes must lie"):
        tp.n_sweep(np.zeros(3), np.zeros((3, 1)), feats[:3, :10], np.array([-1.0]), sizes=(5, 20))


def test_perplexity_report_measures_how_concentrated_each_prefixs_weights_are():
    # µ = −1 on one feature: prefix 0's weights ∝ (1, 3) -> w = (1/4, 3/4), ESS = 1 / (1/16 + 9/16) = 1.6;
    # prefix 1's are equal -> ESS = N = 2, top weight 1/2
    feats = np.array([[[0.0], [np.log(3.0)]], [[1.0], [1.0]]])
    report = tp.perplexity_under_q(np.zeros(2), np.zeros((2, 1)), feats, np.array([-1.0]))
    np.testing.assert_allclose(report.ess, [1.6, 2.0], rtol=1e-12)
    np.testing.assert_allclose(report.top_weight, [0.75, 0.5], rtol=1e-12)
    np.testing.assert_allclose(report.weights, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-12)


def test_weight_summary_says_which_ladder_rung_holds_the_weight():
    # N = 4, two rungs (sample i from rung i mod 2): prefix 0's weights ∝ (1, 3, 1, 3) put 3/4 on rung 1,
    # prefix 1's are equal, so the shares averaged over prefixes are (3/8, 5/8)
    feats = np.log(np.array([[1.0, 3.0, 1.0, 3.0], [1.0, 1.0, 1.0, 1.0]]))[..., None]
    report = tp.perplexity_under_q(np.zeros(2), np.zeros((2, 1)), feats, np.array([-1.0]))
    np.testing.assert_allclose(study.weight_summary(report, rungs=2)["rung_shares"], [0.375, 0.625], rtol=1e-12)
    assert "rung_shares" not in study.weight_summary(report)  # plain samples have no rungs


def test_doubling_check_reads_the_form_of_the_bias_from_the_increments():
    sizes = np.array([8, 16, 32, 64])
    exact = tp.doubling_check(sizes, 2.0 - 3.0 / sizes)  # a b/N bias: each doubling halves the rise
    unconverged = tp.doubling_check(sizes, 2.0 + 0.01 * np.log(sizes))  # log N growth: no shrinking
    growing = tp.doubling_check(sizes, 0.01 * np.log(sizes) ** 2)  # rises that grow
    assert exact is not None and unconverged is not None and growing is not None
    assert exact.decay == pytest.approx(0.5, rel=1e-12)
    assert exact.tail == pytest.approx(3.0 / 64, rel=1e-12)  # = −b / N_max, the fit's own bias
    assert unconverged.decay == pytest.approx(1.0) and unconverged.tail > 1e3
    assert growing.decay > 1 and growing.tail == float("inf")
    assert tp.doubling_check(sizes, [1.0, 1.1, 1.05, 1.2]) is None  # a fall: noise dominates
    assert tp.doubling_check(sizes[:2], [1.0, 1.1]) is None  # one increment has no decay
    with pytest.raises(ValueError, match="sizes that double"):
        tp.doubling_check([8, 16, 48], [1.0, 1.1, 1.2])


@pytest.mark.slow
def test_doubling_check_flags_heavy_tailed_weights_the_1_over_n_fit_understates():
    """Log-normal weights again (log Z = σ²/2). At σ = 0.5 the sweep halves per doubling; at σ = 2.5
    (Var(w) = e^{σ²}(e^{σ²} − 1) ≈ 2.6e5) N ≤ 200 is far from the delta method's regime: the increments
    shrink by about 0.7 per doubling, the a + b/N intercept falls 0.18 short of log Z, and the geometric
    tail recovers most of the shortfall."""
    rng = np.random.default_rng(0)
    checks = {}
    for sigma in (0.5, 2.5):
        feats = rng.normal(0.0, sigma, (20000, 200, 1))
        sweep = tp.n_sweep(np.zeros(20000), np.zeros((20000, 1)), feats, np.array([-1.0]))
        checks[sigma] = (sweep, tp.doubling_check(sweep.sizes, sweep.nll_q))
    light, heavy = checks[0.5][1], checks[2.5][1]
    assert light.decay == pytest.approx(0.5, abs=0.05)
    assert heavy.decay > 0.65
    sweep = checks[2.5][0]
    log_z = 2.5**2 / 2
    assert log_z - sweep.intercept > 0.1
    assert abs(sweep.nll_q[-1] + heavy.tail - log_z) < 0.5 * (log_z - sweep.intercept)


def test_epsilon_perplexity_is_martins_smoothing():
    p = np.array([[0.5, 0.25, 0.0], [0.1, 0.6, 0.9]])
    mask = np.array([[True, True, True], [True, True, False]])
    with np.errstate(divide="ignore"):
        logp = np.log(p)
    eps, vocab = 0.01, 4
    smoothed = [(p[b, t] + eps) / (1 + eps * vocab) for b in range(2) for t in range(3) if mask[b, t]]
    expected = np.exp(-np.mean(np.log(smoothed)))
    assert daemon.epsilon_perplexity(logp, mask, epsilon=eps, vocab_size=vocab) == pytest.approx(expected, rel=1e-12)
    # ε = 0 is the plain token-level perplexity (finite rows only)
    assert daemon.epsilon_perplexity(logp[1:], mask[1:], epsilon=0.0, vocab_size=vocab) == pytest.approx(
        np.exp(-np.mean(np.log([0.1, 0.6])))
    )
    with pytest.raises(ValueError, match="epsilon"):
        daemon.epsilon_perplexity(logp, mask, epsilon=-1.0, vocab_size=vocab)


def test_epsilon_importance_ratios_are_refused_where_p_theta_samples_miss_the_smoothing_mass():
    """p_ε draws a uniform token with probability α = ε|V|/(1 + ε|V|); reweighting p_θ samples estimates Ẑ_ε
    only while α T (uniform tokens expected per row) is small."""
    logp, mask = np.log([[0.1, 0.6]]), np.ones((1, 2), bool)
    assert tp.smoothing_mass(0.01, 4) == pytest.approx(0.04 / 1.04)
    eps = 1e-3  # α T = 2 · 0.004 / 1.004 < 0.05
    ratios = daemon.epsilon_log_ratios(logp, mask, epsilon=eps, vocab_size=4)
    assert ratios[0] == pytest.approx(np.log((0.1 + eps) / 1.004) + np.log((0.6 + eps) / 1.004) - np.log(0.06))
    with pytest.raises(ValueError, match="EpsilonSmoothing"):  # α T = 2 · 0.04 / 1.04 = 0.077
        daemon.epsilon_log_ratios(logp, mask, epsilon=0.01, vocab_size=4)
    # the first wiki run's setting: Gemma 3's 262144 tokens, ε = 1e-6, 128-token texts
    assert tp.smoothing_mass(1e-6, 262144) * 128 == pytest.approx(26.6, abs=0.05)


class _MarkovChain:
    """A toy p_θ over ``V`` tokens and ``T`` steps whose ε-smoothings can be sampled and enumerated exactly:
    each token depends on the one before, and the chain prefers a few tokens, so uniform-drawn tokens are
    unlikely under p_θ, as a real model's are."""

    V = 6

    def __init__(self, steps: int = 4, seed: int = 0):
        self.T = steps
        rng = np.random.default_rng(seed)
        logits = 3.0 * rng.normal(size=(self.V + 1, self.V))  # row V: the first step's distribution
        self.p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)

    def smoothed(self, epsilon: float) -> np.ndarray:
        return (self.p + epsilon) / (1 + epsilon * self.V)

    def token_log_probs(self, x: np.ndarray) -> np.ndarray:
        """``[B, T]`` log p_θ of each token of ``x [B, T]``."""
        previous = np.concatenate([np.full((len(x), 1), self.V), x[:, :-1]], axis=1)
        return np.log(self.p[previous, x])

    def sample(self, epsilon: float, count: int, rng: np.random.Generator) -> np.ndarray:
        table, x = self.smoothed(epsilon), np.zeros((count, self.T), int)
        previous = np.full(count, self.V)
        for t in range(self.T):
            cdf = np.cumsum(table[previous], axis=1)
            x[:, t] = np.minimum((rng.random((count, 1)) > cdf).sum(1), self.V - 1)
            previous = x[:, t]
        return x

    def every_sequence(self) -> np.ndarray:
        return np.stack(np.meshgrid(*[np.arange(self.V)] * self.T, indexing="ij"), -1).reshape(-1, self.T)


def _ladder_estimates(chain, ladder, mu, per_rung, replicates, rng):
    """``[replicates]`` Ẑ_ε estimates from ``per_rung`` samples of each rung of ``ladder``, the feature
    being each sample's mean NLL under p_θ (as the DAEMON ``info`` metric is, under an evaluator)."""
    draws = np.stack([chain.sample(e, replicates * per_rung, rng) for e in ladder], 1)  # [R·n, rungs, T]
    x = draws.reshape(replicates, per_rung * len(ladder), chain.T)  # every replicate holds each rung equally
    logp = chain.token_log_probs(x.reshape(-1, chain.T))
    mask = np.ones_like(logp, bool)
    ratios = daemon.epsilon_ladder_log_ratios(logp, mask, ladder=ladder, vocab_size=chain.V)
    feats = (-logp.mean(-1)).reshape(replicates, -1, 1)
    report = daemon.perplexity_under_q(
        np.zeros(replicates), np.zeros((replicates, 1)), feats, [mu], sample_log_ratios=ratios.reshape(replicates, -1)
    )
    return np.exp(report.log_z)


@pytest.mark.parametrize("rungs", [1, 4])
def test_epsilon_ladder_estimates_z_epsilon_without_bias(rungs):
    """The deterministic mixture of p_{ε/2^r} is an unbiased estimator of Ẑ_ε = E_{p_ε}[exp(−µᵀf)] (exact
    enumeration over all 6⁴ sequences); with one rung it is plain sampling from p_ε (ratios exactly 0)."""
    chain, eps, mu = _MarkovChain(), 0.05, 2.0
    every = chain.every_sequence()
    logp = chain.token_log_probs(every)
    exact = np.sum(
        np.exp(
            tp.epsilon_log_probs(logp, np.ones_like(logp, bool), epsilon=eps, vocab_size=chain.V) - mu * -logp.mean(-1)
        )
    )
    estimates = _ladder_estimates(
        chain, daemon.epsilon_ladder(eps, rungs), mu, 16 // rungs, 4000, np.random.default_rng(rungs)
    )
    z = (estimates.mean() - exact) / (estimates.std(ddof=1) / np.sqrt(len(estimates)))
    assert abs(z) < 3.5, (estimates.mean(), exact, z)


def test_epsilon_ladder_spreads_the_weight_where_the_tilt_puts_q_epsilons_mass():
    """When p_ε draws several uniform tokens per text (here α = 0.2, 16 steps: 3.2 on average) and the tilt
    falls with every unlikely token, p_ε's own samples rarely land where q_ε's mass is and a few of them
    decide Ẑ_ε; the ladder's lower rungs sample there, so at the same N (16) its relative spread is less
    than half, and no sample's ratio exceeds the number of rungs."""
    chain, eps, mu = _MarkovChain(steps=16), 0.25 / 6, 4.0
    rng = np.random.default_rng(7)
    assert tp.smoothing_mass(eps, chain.V) == pytest.approx(0.2)
    plain = _ladder_estimates(chain, daemon.epsilon_ladder(eps, 1), mu, 16, 2000, rng)
    ladder = _ladder_estimates(chain, daemon.epsilon_ladder(eps, 4), mu, 4, 2000, rng)
    relative = lambda z: z.std() / z.mean()  # noqa: E731
    assert relative(ladder) < 0.5 * relative(plain), (relative(ladder), relative(plain))
    x = chain.sample(eps / 8, 500, rng)
    logp = chain.token_log_probs(x)
    ratios = daemon.epsilon_ladder_log_ratios(
        logp, np.ones_like(logp, bool), ladder=(eps, eps / 2, eps / 4, eps / 8), vocab_size=chain.V
    )
    assert ratios.max() <= np.log(4) + 1e-12
    assert daemon.epsilon_ladder(1e-6, 3) == (1e-6, 5e-7, 2.5e-7)
    with pytest.raises(ValueError, match="rungs"):
        daemon.epsilon_ladder(1e-6, 0)
    with pytest.raises(ValueError, match="ladder"):
        daemon.epsilon_ladder_log_ratios(logp, np.ones_like(logp, bool), ladder=(), vocab_size=chain.V)


def _tiny_study(documents):
    model, params = tiny_models.tiny_llama()
    names = ("sr2", "div")
    functions = tuple(metrics_lib.metric_functions(names))
    pipeline = study.Pipeline(model, params, names, functions, max_new_tokens=4, rows_per_call=64, log=lambda _: None)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, tiny_models.VOCAB, 3).tolist() for _ in documents]
    tokens = rng.integers(0, tiny_models.VOCAB, (len(documents), 4)).astype(np.int32)
    lengths = np.full(len(documents), 4, np.int32)
    prefix = np.asarray(prompts, np.int32)
    return study.DaemonStudy(
        pipeline=pipeline,
        tokenizer=None,
        corpus="toy",
        fit_prompts=prompts,
        fit_target_windows=[],
        human_split_windows=[],
        eval_prompts=prompts,
        human_tokens=tokens,
        human_lengths=lengths,
        prefix=prefix,
        human_features=pipeline.metrics(tokens, lengths, prefix).astype(np.float64),
        eval_documents=list(documents),
    )


@pytest.mark.slow
def test_study_clusters_decoder_rows_and_reports_the_paired_perplexity():
    documents = ["a", "a", "b", "c", "c", "c"]
    s = _tiny_study(documents)
    tokens, lengths = s.decode("sampling", jax.random.key(1))
    result = s.evaluate(tokens, lengths, mauve=False)
    feats = s.features(tokens, lengths)
    clusters = np.asarray(documents)
    for k, name in enumerate(s.metric_names):
        assert result["metrics"][name]["se"] == pytest.approx(_sandwich_se(feats[:, k], clusters)[1], rel=1e-9)
        diff = feats[:, k] - s.human_features[:, k]
        assert result["paired_gap"][name]["mean"] == pytest.approx(diff.mean())
        assert result["paired_gap"][name]["clusters"] == 3
    out = s.human_perplexity(np.array([0.5, -0.5]), 8, jax.random.key(2), sizes=(2, 4, 8))
    paired = out["paired"]
    assert paired["clusters"] == 3 and paired["ppl_ratio"] == pytest.approx(out["ppl_q"] / out["ppl_model"])
    assert out["n_sweep"]["sizes"] == [2, 4, 8] and out["n_sweep"]["groups"] == [4, 2, 1]
    logp, mask = s.pipeline.scored(s.human_tokens, s.human_lengths, s.prefix)
    assert out["ppl_model"] == pytest.approx(np.exp(-np.where(mask, logp, 0).sum() / mask.sum()), rel=1e-9)
    exact_eps_ppl = daemon.epsilon_perplexity(logp, mask, epsilon=0.05, vocab_size=tiny_models.VOCAB)
    eps = s.epsilon_perplexity(np.array([0.5, -0.5]), 8, jax.random.key(3), epsilon=0.05, sizes=(2, 4, 8))
    assert eps["eps_ppl_model"] == pytest.approx(exact_eps_ppl, rel=1e-9)
    assert eps["paired"]["ppl_ratio"] == pytest.approx(eps["eps_ppl_q"] / eps["eps_ppl_model"])
    # the N sweep's largest size is the point itself (one group of all 8 samples), measured against p_ε
    sweep = eps["n_sweep"]
    assert sweep["sizes"] == [2, 4, 8] and sweep["groups"] == [4, 2, 1]
    assert np.exp(sweep["nll_q"][-1]) == pytest.approx(eps["eps_ppl_q"], rel=1e-9)
    assert np.exp(sweep["nll_p"]) == pytest.approx(exact_eps_ppl, rel=1e-9)
    assert eps["smoothing_mass"] == pytest.approx(0.3 / 1.3)
    # µ = 0: q_ε is p_ε and every sample's weight is 1, so Ẑ_ε = 1 exactly
    zero = s.epsilon_perplexity(np.zeros(2), 8, jax.random.key(3), epsilon=0.05)
    assert zero["eps_ppl_q"] == pytest.approx(exact_eps_ppl, rel=1e-9)
    assert zero["weights"]["ess_min"] == pytest.approx(8.0) and zero["weights"]["share_top_over_half"] == 0.0


@pytest.mark.slow
def test_epsilon_ladder_point_interleaves_its_rungs_and_weighs_by_the_mixture():
    """Sample ``k·R + r`` of each prompt is drawn from rung r (so every block of R samples, and every
    N-sweep group, holds each rung once) in one decode; its ratio is ``log p_ε − log p_mix``; the point
    records the ladder and refuses sweep sizes the rungs do not divide."""
    s, eps, mu = _tiny_study(["a", "a", "b", "c", "c", "c"]), 0.05, np.array([0.5, -0.5])
    key, ladder = jax.random.key(4), (eps, eps / 2)
    feats, ratios = s.pipeline.epsilon_ladder_samples(s.eval_prompts, 8, key, ladder=ladder)
    assert feats.shape == (6, 8, 2) and ratios.shape == (6, 8)
    per_row = np.array([eps, eps / 2] * 24, np.float32)  # 6 prompts × 8 samples, prompt-major
    np.testing.assert_array_equal(study.ladder_rows(ladder, 48), per_row)
    pipe = s.pipeline  # one chunk (i = 0): the decode drew with fold_in(key, 0)
    out, alone, _ = fit_lib.draw_candidates(
        pipe.model,
        pipe.params,
        list(s.eval_prompts),
        pipe.metric_names,
        num_samples=8,
        max_new_tokens=pipe.max_new_tokens,
        key=jax.random.fold_in(key, 0),
        proposal=EpsilonSmoothing(per_row),
        stop_tokens=(),
        functions=list(pipe.functions),
    )
    np.testing.assert_allclose(feats, alone, rtol=1e-6)
    smoothed = [
        tp.epsilon_log_probs(out.logp_model, out.mask(), epsilon=e, vocab_size=tiny_models.VOCAB) for e in ladder
    ]
    expected = smoothed[0] - np.log((np.exp(smoothed[0]) + np.exp(smoothed[1])) / 2)
    # per-token log p_θ are float32 (a unit in the last place near |log p| ≈ 4 is 5e-7), two decodes apart
    np.testing.assert_allclose(ratios, expected.reshape(6, 8), rtol=1e-6, atol=2e-6)
    assert ratios.max() <= np.log(2) + 1e-9
    point = s.epsilon_perplexity(mu, 8, jax.random.key(5), epsilon=eps, rungs=2, sizes=(2, 4, 8))
    assert point["ladder"] == [eps, eps / 2] and point["n_sweep"]["groups"] == [4, 2, 1]
    assert len(point["weights"]["rung_shares"]) == 2 and sum(point["weights"]["rung_shares"]) == pytest.approx(1)
    with pytest.raises(ValueError, match="multiple of 2"):
        s.epsilon_perplexity(mu, 8, key, epsilon=eps, rungs=2, sizes=(1, 2, 8))


@pytest.mark.slow
def test_baseline_epsilon_perplexity_is_each_policys_smoothed_law_on_the_human_tokens():
    """Greedy's π is one-hot on the model's argmax: against an independent cache-free argmax, each human
    token gets (1[argmax] + ε) / (1 + ε|V|). Ancestral sampling's π is p_θ, so its ε-perplexity is p_ε's.
    Searches have no per-token law and are left out."""
    s = _tiny_study(["a", "a", "b", "c"])
    eps, vocab = 0.05, tiny_models.VOCAB
    out = s.baseline_epsilon_perplexity(["greedy", "beam", "sampling"], epsilon=eps)
    assert list(out["decoders"]) == ["greedy", "sampling"]
    full = np.concatenate([s.prefix, s.human_tokens], axis=1)
    logits, _ = s.pipeline.model.apply(s.pipeline.params, full, np.tile(np.arange(full.shape[1]), (len(full), 1)))
    width = s.prefix.shape[1]
    argmax = np.asarray(logits)[:, width - 1 : -1].argmax(-1)
    hits = argmax == s.human_tokens
    expected = np.exp(-np.log((hits + eps) / (1 + eps * vocab)).mean())
    greedy = out["decoders"]["greedy"]
    assert 0 < hits.sum() < hits.size  # both kinds of token occur
    assert greedy["eps_ppl"] == pytest.approx(expected, rel=1e-6)
    assert greedy["truncated_tokens"] == (~hits).sum()
    assert greedy["paired"]["clusters"] == 3
    assert greedy["paired"]["ppl_ratio"] == pytest.approx(greedy["eps_ppl"] / out["eps_ppl_model"])
    sampling = out["decoders"]["sampling"]
    assert sampling["truncated_tokens"] == 0
    assert sampling["eps_ppl"] == pytest.approx(out["eps_ppl_model"], rel=1e-5)


@pytest.mark.slow
def test_report_builds_gap_and_perplexity_tables_from_a_results_folder(tmp_path):
    """An old folder (no paired gaps, no clusters) plus synthetic new records: the new tables appear and
    their numbers are the records' own."""
    folder = tmp_path / "run"
    shutil.copytree(RESULTS, folder)
    records = _records(folder)
    sampling = next(r for r in records if r.get("decoder") == "sampling")
    sampling["paired_gap"] = {n: {"mean": 0.2, "se": 0.05, "n": 96, "clusters": 34} for n in sampling["metrics"]}
    sweep = {
        "sizes": [25, 50],
        "groups": [2, 1],
        "nll_q": [3.0, 3.01],
        "nll_p": 3.05,
        "intercept": 3.02,
        "slope": -0.5,
        "bias_at_largest": -0.01,
        "ppl_q_extrapolated": float(np.exp(3.02)),
    }
    paired = {
        "log_ppl_difference": -0.01,
        "se": 0.004,
        "low": -0.018,
        "high": -0.002,
        "ppl_ratio": float(np.exp(-0.01)),
        "ppl_ratio_low": float(np.exp(-0.018)),
        "ppl_ratio_high": float(np.exp(-0.002)),
        "level": 0.95,
        "dof": 33,
        "n": 96,
        "clusters": 34,
    }
    records.append(
        {
            "key": "wiki/human_perplexity/N=50",
            "corpus": "wiki",
            "study": "human_perplexity",
            "num_samples": 50,
            "num_texts": 96,
            "num_tokens": 12288.0,
            "ppl_model": 22.8,
            "ppl_q": 22.6,
            "paired": paired,
            "n_sweep": sweep,
            "epsilon": 1e-6,  # a first-run point: ε-perplexities with Ẑ_ε from reweighted p_θ samples
            "eps_ppl_model": 22.9,
            "eps_ppl_q": 22.7,
            "eps_paired": paired,
        }
    )
    _rewrite(folder, records)
    _, config, loaded = report.load(folder)
    withdrawn = report.epsilon_result(loaded, config, "wiki")
    assert withdrawn == {"epsilon": 1e-6, "eps_ppl_model": 22.9, "eps_q": report.WITHDRAWN_EPSILON}
    records.append(
        {
            "key": "wiki/epsilon_perplexity/N=50,eps=1e-06",
            "corpus": "wiki",
            "study": "epsilon_perplexity",
            "num_samples": 50,
            "num_texts": 96,
            "num_tokens": 12288.0,
            "epsilon": 1e-6,
            "smoothing_mass": 0.2,
            "eps_ppl_model": 28.0,
            "eps_ppl_q": 27.7,
            "paired": {**paired, "ppl_ratio": 0.99, "ppl_ratio_low": 0.98, "ppl_ratio_high": 0.995},
            "weights": {
                "ess_median": 1.5,
                "ess_p10": 1.01,
                "ess_min": 1.0,
                "top_weight_median": 0.8,
                "share_top_over_half": 0.9,
            },
            "n_sweep": {
                "sizes": [8, 16, 32, 64],
                "groups": [8, 4, 2, 1],
                "nll_q": [3.2, 3.24, 3.26, 3.27],  # rises 0.04, 0.02, 0.01: the b/N form
                "nll_p": 3.3,
                "intercept": 3.28,
                "slope": -1.0,
                "bias_at_largest": -0.02,
                "ppl_q_extrapolated": float(np.exp(3.28)),
            },
        }
    )
    ladder_point = {**records[-1], "key": "wiki/epsilon_ladder_perplexity/N=50,eps=1e-06,rungs=2"}
    ladder_point.update(study="epsilon_ladder_perplexity", ladder=[1e-6, 5e-7], eps_ppl_q=28.5)
    ladder_point["paired"] = {**paired, "ppl_ratio": 1.0179, "ppl_ratio_low": 1.01, "ppl_ratio_high": 1.03}
    ladder_point["weights"] = {**ladder_point["weights"], "rung_shares": [0.8, 0.2]}
    records.append(ladder_point)
    top_p_paired = {**paired, "ppl_ratio": 1.5, "ppl_ratio_low": 1.4, "ppl_ratio_high": 1.6}
    records.append(
        {
            "key": "wiki/baseline_epsilon_perplexity/eps=1e-06",
            "corpus": "wiki",
            "study": "baseline_epsilon_perplexity",
            "num_texts": 96,
            "num_tokens": 12288.0,
            "epsilon": 1e-6,
            "eps_ppl_model": 28.0,
            "decoders": {"top_p": {"eps_ppl": 42.0, "truncated_tokens": 310, "paired": top_p_paired, "score_s": 9.0}},
        }
    )
    _rewrite(folder, records)
    path = report.write_report(folder)
    with (folder / "decoder_epsilon_perplexity.csv").open() as f:
        eps_rows = list(csv.DictReader(f))
    assert [(r["decoder"], float(r["eps_ppl"]), r["ppl_ratio_low"]) for r in eps_rows] == [
        ("model", 28.0, ""),
        ("top_p", 42.0, "1.4"),
        ("daemon", 27.7, "0.98"),  # the epsilon_perplexity point's q_ε, on the same 96 texts
        ("daemon_ladder", 28.5, "1.01"),  # the same q_ε, Ẑ_ε from the ε ladder's samples
    ]
    with (folder / "gaps.csv").open() as f:
        gaps = list(csv.DictReader(f))
    row = next(r for r in gaps if r["decoder"] == "sampling" and r["metric"] == "div")
    assert float(row["gap_in_paired_se"]) == pytest.approx(4.0) and row["clusters"] == "34"
    main = {r["decoder"]: r for r in report.main_rows(report.load(folder)[2], report.load(folder)[1])}
    se = np.hypot(main["sampling"]["div_se"], main["human_split"]["div_se"])
    assert float(row["gap_in_combined_se"]) == pytest.approx(
        (main["sampling"]["div"] - main["human_split"]["div"]) / se
    )
    with (folder / "human_perplexity.csv").open() as f:
        (ppl,) = list(csv.DictReader(f))
    assert float(ppl["ppl_ratio_low"]) == pytest.approx(np.exp(-0.018)) and ppl["N"] == "50"
    assert (ppl["eps_ppl_q"], ppl["eps_ppl_ratio_high"], ppl["eps_N"]) == ("27.7", "0.995", "50")
    # the ε point's own N sweep: ratio at N → ∞ = exp(intercept − nll_p) = exp(−0.02)
    assert float(ppl["eps_ppl_ratio_extrapolated"]) == pytest.approx(np.exp(-0.02))
    assert float(ppl["eps_decay_per_doubling"]) == pytest.approx(0.5)
    assert float(ppl["eps_ppl_ratio_geometric_tail"]) == pytest.approx(np.exp(3.27 + 0.01 - 3.3), rel=1e-5)
    assert float(ppl["eps_bias_at_N"]) == -0.02 and float(ppl["eps_ppl_q_extrapolated"]) == pytest.approx(
        np.exp(3.28), rel=1e-5
    )
    text = path.read_text()
    assert "Human-text perplexity under q_µ (wiki)" in text and "gap to human in standard errors" in text
    assert "28 under the model, 27.7 under q_ε" in text and "ratio 0.9900, 95% CI [0.9800, 0.9950]" in text
    assert "shrinking by 0.50 per doubling" in text and "the ratio at N → ∞ is 0.9802" in text
    assert "the sweep has under three doubling sizes" in text  # the plain point's two-size sweep
    assert "25 from each smoothing ε = 1e-06, 5e-07" in text and "ratio 1.0179, 95% CI [1.0100, 1.0300]" in text
    assert "| DAEMON (q_ε, ε ladder) | 28.5 | 1.0179 [1.0100, 1.0300] | – |" in text
    # the ladder's sweep halves its rises, but 1.5 of 50 is too few effective samples for the rule
    assert "ESS median at least 6.25 of 50; here 0.50 and 1.5), the ladder's ratio is **not estimable" in text
    assert "so the ratio at N = 50 errs in q's favour" in text  # log Ẑ_N is biased low at every N
    # only the ladder point has rungs to share the weight among
    assert text.count("held by each rung's samples, averaged over prompts: 0.80 (ε = 1e-06), 0.20 (ε = 5e-07).") == 1
    assert text.count("held by each rung's samples") == 1
    odd = {"sizes": [1, 3, 6], "nll_q": [1.0, 1.1, 1.15], "nll_p": 1.2}  # default_sweep_sizes(6)
    assert report.doubling_fields(odd) == {"decay_per_doubling": None, "ppl_ratio_geometric_tail": None}
    assert "effective sample size median 1.5 (10th percentile 1.01, minimum 1)" in text
    assert "exceeds one half in 90% of prompts" in text and float(ppl["eps_share_top_over_half"]) == 0.9
    assert "1/N bias of log Ẑ_ε: fitted nll_q_ε(N) = a + b/N with b = -1" in text and "(ratio at N → ∞: 0.9802)" in text
    assert "| top_p | 42 | 1.5000 [1.4000, 1.6000] | 310 |" in text and "| DAEMON (q_ε) | 27.7 | 0.9900" in text


@pytest.mark.parametrize(
    "totals, daemon_z, status",
    [
        ({"daemon": 3.0, "top_p": 5.0, "greedy": 90.0}, [1.0, -1.0, 1.0], "held"),
        ({"daemon": 3.0, "top_p": 5.0}, [1.0, -1.0, 2.0], "not shown"),  # |z| = 2 resolves a gap
        ({"daemon": 6.0, "top_p": 5.0}, [1.0, 1.0, 2.0], "failed"),
        ({"daemon": 6.0}, [0.0], "not tested"),
        ({"top_p": 5.0}, [], "not tested"),
    ],
)
def test_closest_to_human_follows_the_rule_fixed_before_the_runs(totals, daemon_z, status):
    assert report.closest_to_human_status(totals, daemon_z) == status


@pytest.mark.parametrize(
    "low, high, extrapolated, status",
    [
        (0.97, 0.99, 0.98, "held"),
        (0.97, 0.99, 1.01, "not shown"),  # the 1/N bias carries the whole "improvement"
        (0.98, 1.01, 0.99, "not shown"),
        (1.01, 1.03, 1.02, "failed"),
    ],
)
def test_perplexity_claim_follows_the_rule_fixed_before_the_runs(low, high, extrapolated, status):
    assert report.perplexity_status(low, high, extrapolated) == status


@pytest.mark.parametrize(
    "decay, ess_median, status",
    [
        (0.5, 10.0, "measurement"),
        (0.6, 8.0, "measurement"),  # both bounds are inclusive
        (0.61, 30.0, "not estimable at this N"),  # the sweep is not shown to be near the b/N form
        (0.5, 7.9, "not estimable at this N"),  # too few effective samples per prompt
        (None, 30.0, "not estimable at this N"),  # the sweep cannot say (a rise that is not positive)
    ],
)
def test_ladder_point_is_a_measurement_only_by_the_rule_fixed_before_it_ran(decay, ess_median, status):
    assert report.ladder_status(decay, ess_median, num_samples=64) == status


def test_claims_table_computes_t_from_the_paired_gaps(tmp_path):
    """DAEMON's and the baselines' T = Σ z² come from the records' paired gaps; the verdict follows."""
    folder = tmp_path / "run"
    shutil.copytree(RESULTS, folder)
    records = _records(folder)
    z_of = {"daemon": 0.5, "sampling": 1.5}  # the folder's decoders
    for r in records:
        if r.get("study") == "main" and r.get("decoder") in z_of:
            z = z_of[r["decoder"]]
            r["paired_gap"] = {n: {"mean": z * 0.1, "se": 0.1, "n": 24, "clusters": 9} for n in r["metrics"]}
    _rewrite(folder, records)
    report.write_report(folder)
    with (folder / "claims.csv").open() as f:
        rows = {r["corpus"]: r for r in csv.DictReader(f)}
    k = len(report.load(folder)[1].metrics)
    wiki = rows["wiki"]
    assert float(wiki["daemon_T"]) == pytest.approx(k * 0.25) and float(wiki["T_sampling"]) == pytest.approx(k * 2.25)
    assert (wiki["best_baseline"], wiki["status"]) == ("sampling", "held")
    assert "**wiki, closest to human: held.**" in (folder / "report.md").read_text()


def test_an_sr4_point_file_gets_its_own_generated_page(tmp_path):
    """Early SR-4 runs kept one JSON line each; the report renders it beside the file, numbers from it."""
    source = RESULTS.parent / "sr4_128_leads.jsonl"
    record = json.loads(source.read_text())
    copy = tmp_path / source.name
    shutil.copy(source, copy)
    text = report.write_report(copy).read_text()
    assert (tmp_path / "sr4_128_leads.md").exists()
    expected = record["expected_over_resampling"]["daemon"]
    assert f"| DAEMON, expected | {expected['mean']:.4g} ± {expected['se']:.2g} | 48 |" in text
    assert "num_fit_prefixes 48" in text
    (tmp_path / "empty.jsonl").write_text('{"key": "wiki/fit/tau=1", "study": "fit"}\n')
    with pytest.raises(FileNotFoundError, match="no SR-4 study point"):
        report.write_report(tmp_path / "empty.jsonl")


def test_perplexity_summary_pools_tokens_and_refuses_an_empty_row():
    logp = np.log(np.array([[0.5, 0.25, 1.0], [0.125, 1.0, 1.0]]))
    mask = np.array([[True, True, False], [True, False, False]])
    summary = study.perplexity_summary(logp, mask)
    assert summary["ppl"] == pytest.approx(np.exp((np.log(2) + np.log(4) + np.log(8)) / 3))  # 3 tokens pooled
    assert summary["nll_per_row"]["mean"] == pytest.approx((np.log(8) / 2 + np.log(8)) / 2)
    with pytest.raises(ValueError, match=r"rows \[1\] have no real token"):
        study.perplexity_summary(logp, np.array([[True, True, False], [False, False, False]]))


def test_m_sweep_reports_a_decode_time_only_where_each_m_drew_its_own_candidates(tmp_path):
    """A nested sweep's points share one decode (paid by whichever ran first), so a time per M would
    mislead; a folder whose points drew apart keeps its times. Per-metric gaps come from the records."""
    folder = _sweep_run(tmp_path)
    records = _records(folder)
    sweep = [r for r in records if r.get("study") == "m_sweep"]
    assert sweep and all("candidates_drawn" not in r for r in sweep)
    report.write_report(folder)
    text = (folder / "report.md").read_text()
    assert "decode s |" in text and "drawn once" not in text
    with (folder / "sweeps.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["study"] == "m_sweep"]
    # the CSV keeps 6 significant digits
    assert [float(r["decode_s"]) for r in rows] == pytest.approx([r["decode_s"] for r in sweep], rel=1e-5)
    assert [float(r["gap_info"]) for r in rows] == pytest.approx([r["gap"]["info"] for r in sweep], rel=1e-5)

    largest = max(r["num_candidates"] for r in sweep)
    for r in sweep:
        r["candidates_drawn"] = largest
    _rewrite(folder, records)
    report.write_report(folder)
    text = (folder / "report.md").read_text()
    assert "decode s |" not in text and f"one set of {largest} candidates per prompt, drawn once" in text
    with (folder / "sweeps.csv").open() as f:
        assert all(r["decode_s"] == "" for r in csv.DictReader(f) if r["study"] == "m_sweep")


def test_a_tau_point_that_resamples_the_m_sweeps_set_says_so(tmp_path):
    """The τ = 1 point of a nested sweep resamples the M sweep's set; the page says whose texts it shows
    (and a folder whose τ points drew their own sets says nothing of the kind)."""
    folder = _sweep_run(tmp_path)
    report.write_report(folder)
    assert "resamples the first" not in (folder / "report.md").read_text()
    records = _records(folder)
    [tau_1] = [r for r in records if r.get("study") == "temperature" and r["proposal_temperature"] == 1]
    tau_1["candidates_of"] = "wiki/m_sweep"
    _rewrite(folder, records)
    report.write_report(folder)
    m = json.loads((folder / "flags.json").read_text())["num_candidates"]
    sentence = f"At τ = 1 (corrected) the point resamples the first {m} of the M sweep's candidates per prompt"
    assert sentence in (folder / "report.md").read_text()
    with (folder / "sweeps.csv").open() as f:
        marked = [r["tau"] for r in csv.DictReader(f) if r["study"] == "temperature" and r["candidates_of"]]
    assert [float(t) for t in marked] == [1.0]


def test_the_tau_table_states_each_points_paired_gap_to_the_same_prompts_human_text(tmp_path):
    """A τ point with paired gaps gets z = gap / SE per metric and T = Σ z² (in sweeps.csv and the page),
    and the page adds the human mean of the sweep's prompts (point mean − paired gap); without paired
    gaps neither appears."""
    folder = _sweep_run(tmp_path)
    report.write_report(folder)
    assert "human (same prompts)" not in (folder / "report.md").read_text()
    records = _records(folder)
    taus = [r for r in records if r.get("study") == "temperature"]
    names = list(taus[0]["metrics"])
    for i, r in enumerate(taus):
        # z = (i + 1) · (k − 1) on metric k, so T = (i + 1)² · Σ_k (k − 1)²
        r["paired_gap"] = {
            n: {"mean": 0.01 * (i + 1) * (k - 1), "se": 0.01, "n": 24, "clusters": 9} for k, n in enumerate(names)
        }
    _rewrite(folder, records)
    report.write_report(folder)
    with (folder / "sweeps.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["study"] == "temperature"]
    for i, row in enumerate(rows):
        assert float(row["z_" + names[0]]) == pytest.approx(-(i + 1))
        assert float(row["T"]) == pytest.approx((i + 1) ** 2 * sum((k - 1) ** 2 for k in range(len(names))), rel=1e-5)
    text = (folder / "report.md").read_text()
    human_row = next(line for line in text.splitlines() if line.startswith("| human (same prompts)"))
    first = taus[0]["metrics"][names[0]]["mean"]
    assert f"| {first + 0.01:.4g} |" in human_row


def _sweep_run(tmp_path: Path) -> Path:
    """A copy of the SmolLM2 wiki run's settings and points (it holds M and τ sweeps) to edit."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("flags.json", "points.jsonl"):
        shutil.copy(RESULTS.parent / name, folder / name)
    return folder


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]


def _rewrite(folder: Path, records: list[dict]) -> None:
    (folder / "points.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
