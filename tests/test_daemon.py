"""DAEMON (docs/math.md §3): metrics against Python references, Algorithm 1 against the exact dual on an
enumerated toy, the perplexity identity, SIR convergence in M, and the model-level wrappers on a tiny
random Llama (exact sequence laws by enumeration)."""

from __future__ import annotations

from math import factorial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize
from scipy.special import softmax

import infodec
from infodec import daemon
from infodec.daemon import metrics as M
from infodec.theory import stats
from tests import tiny_models

# --- metrics ---------------------------------------------------------------------------------------


def ref_sr(x, n):
    grams = [tuple(x[i : i + n]) for i in range(len(x) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def ref_tr(x, l):
    if not len(x):
        return 0.0
    return sum(x[i] in x[max(0, i - l) : i] for i in range(len(x))) / len(x)


def ref_div(x):
    return float(np.prod([1.0 - ref_sr(x, n) for n in (2, 3, 4)]))


@pytest.fixture(scope="module")
def padded():
    rng = np.random.default_rng(0)
    batch, width = 40, 37
    tokens = rng.integers(0, 4, (batch, width)).astype(np.int32)
    tokens[::3] = rng.integers(0, 50, (len(tokens[::3]), width))  # some rows with few repeats
    lengths = rng.integers(0, width + 1, batch).astype(np.int32)
    lengths[:6] = [0, 1, 2, 3, 4, width]
    garbage = rng.integers(0, 4, (batch, width))
    tokens = np.where(np.arange(width)[None] < lengths[:, None], tokens, garbage).astype(np.int32)
    rows = [list(tokens[b, : lengths[b]]) for b in range(batch)]
    return tokens, lengths, rows


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_sr_matches_reference(padded, n):
    tokens, lengths, rows = padded
    got = np.asarray(daemon.get_metric(f"sr{n}")(tokens, lengths, None))
    np.testing.assert_allclose(got, [ref_sr(r, n) for r in rows], atol=1e-6)


@pytest.mark.parametrize("l", [1, 3, 32, 100])
def test_tr_matches_reference(padded, l):
    tokens, lengths, rows = padded
    got = np.asarray(daemon.get_metric(f"tr{l}")(tokens, lengths, None))
    np.testing.assert_allclose(got, [ref_tr(r, l) for r in rows], atol=1e-6)


def test_div_defaults_jit_and_compute(padded):
    tokens, lengths, rows = padded
    np.testing.assert_allclose(
        np.asarray(daemon.get_metric("div")(tokens, lengths)), [ref_div(r) for r in rows], atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(daemon.get_metric("sr")(tokens, lengths)), [ref_sr(r, 4) for r in rows], atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(daemon.get_metric("tr")(tokens, lengths)), [ref_tr(r, 32) for r in rows], atol=1e-6
    )
    jitted = jax.jit(lambda t, n: M.compute(["sr4", "tr32", "div"], t, n))
    out = np.asarray(jitted(jnp.asarray(tokens), jnp.asarray(lengths)))
    assert out.shape == (len(rows), 3)
    np.testing.assert_allclose(out, np.asarray(M.compute(["sr4", "tr32", "div"], tokens, lengths)), atol=1e-7)
    np.testing.assert_allclose(out[:, 2], [ref_div(r) for r in rows], atol=1e-6)
    # pooled (SimCTG) diversity over the corpus
    pooled = daemon.pooled_diversity(tokens, lengths)
    product = 1.0
    for n in (2, 3, 4):
        grams = [tuple(r[i : i + n]) for r in rows for i in range(len(r) - n + 1)]
        rep = 1.0 - len(set(grams)) / len(grams)
        assert pooled[f"rep-{n}"] == pytest.approx(rep)
        product *= 1.0 - rep
    assert pooled["diversity"] == pytest.approx(product)
    with pytest.raises(ValueError, match="unknown metric"):
        daemon.get_metric("mauve")
    with pytest.raises(ValueError, match=r"sr\{n\} needs an n-gram order n >= 1, got 0"):
        daemon.get_metric("sr0")
    with pytest.raises(ValueError, match=r"tr\{l\} needs a look-back window l >= 1, got 0"):
        daemon.get_metric("tr0")
    with pytest.raises(ValueError, match="needs"):
        daemon.get_metric("info")


class _CharTokenizer:
    """Stub tokenizers: the LM maps ids to letters; the encoder maps letters to ids with [CLS]/[SEP]."""

    def decode(self, ids):
        return "".join(chr(ord("a") + int(i)) for i in ids)

    def encode_batch(self, texts):
        return [[1] + [3 + ord(c) - ord("a") for c in t] + [2] for t in texts]


@pytest.mark.slow
def test_coherence_matches_unbatched_embeddings():
    from infodec.models import bert

    cfg = bert.BertConfig(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, max_position_embeddings=64
    )
    encoder = bert.build(cfg)
    t0 = jnp.zeros((1, 4), jnp.int32)
    params = jax.jit(bert.Bert(cfg).init)(jax.random.key(0), t0, t0 > -1, t0)["params"]
    tok = _CharTokenizer()
    coh = daemon.get_metric("coh", encoder=encoder, encoder_params=params, encoder_tokenizer=tok, lm_tokenizer=tok)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 20, (5, 9)).astype(np.int32)
    lengths = np.array([9, 3, 0, 5, 1], np.int32)
    prefix = np.full((5, 6), -1, np.int32)
    for b, n in enumerate([6, 2, 3, 1, 4]):
        prefix[b, :n] = rng.integers(0, 20, n)
    prefix[3] = prefix[0]  # candidates of one prompt share its prefix, which the metric embeds once
    got = np.asarray(coh(tokens, lengths, prefix))

    embed_rows = jax.jit(encoder.encode)

    def embed(ids):  # one row, at another padded width (40) than the metric's bucket (16)
        ids = tok.encode_batch([tok.decode(ids)])[0]
        x = np.zeros((1, 40), np.int32)
        x[0, : len(ids)] = ids
        return np.asarray(embed_rows(params, jnp.asarray(x), jnp.asarray(x != 0)))[0]

    want = [embed(prefix[b][prefix[b] >= 0]) @ embed(tokens[b, : lengths[b]]) for b in range(5)]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.all(np.abs(got) <= 1 + 1e-5)


@pytest.fixture(scope="module")
def tiny():
    return tiny_models.tiny_llama(seed=3)


@pytest.mark.slow
def test_information_equals_engine_log_probs(tiny):
    model, params = tiny
    out = infodec.generate(
        model,
        params,
        [[1, 2, 3], [4], [5, 0]],
        infodec.Temperature(1.0),
        jax.random.key(2),
        max_new_tokens=7,
        num_samples=2,
        stop_tokens=[0],
    )
    info = daemon.get_metric("info", evaluator=model, evaluator_params=params)
    got = np.asarray(info(out.tokens, out.lengths, out.prompt_tokens))
    mask = out.mask()
    want = -np.where(mask, out.logp_model, 0).sum(1) / mask.sum(1)
    np.testing.assert_allclose(got, want, atol=1e-4)


# --- Algorithm 1: fitting µ ------------------------------------------------------------------------


def exact_dual_solution(p, f, target, normalization="prefix"):
    """µ* on an enumerated support: root of ∇L(µ) = F − E_{q_µ}[f] (scipy, float64)."""
    num_prefixes = p.shape[0]

    def grad(mu):
        lw = np.log(p) - f @ mu  # [J, S]
        if normalization == "prefix":
            q = softmax(lw, axis=1)
            return target - np.einsum("js,jsk->k", q, f) / num_prefixes
        q = softmax(lw.reshape(-1)).reshape(lw.shape)
        return target - np.einsum("js,jsk->k", q, f)

    sol = optimize.root(grad, np.zeros(f.shape[-1]), tol=1e-13)
    assert sol.success and np.abs(grad(sol.x)).max() < 1e-10
    return sol.x


@pytest.fixture(scope="module")
def toy():
    """J = 3 prefixes, S = 6 outcomes each, K = 2 metrics; F = human moments under another law p_d."""
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.ones(6), size=3)
    f = rng.normal(size=(3, 6, 2))
    p_d = rng.dirichlet(np.ones(6), size=3)
    target = np.einsum("js,jsk->k", p_d, f) / 3
    return p, f, p_d, target


def test_spec_two_outcome_case():
    mu, report = daemon.fit_coefficients(np.array([[[1.0], [0.0]]]), np.zeros((1, 2)), [0.8])
    assert mu[0] == pytest.approx(-np.log(4), abs=1e-5)
    assert report.fitted_moments[0] == pytest.approx(0.8, abs=1e-6)
    assert report.converged and report.residual_norm < 1e-6
    assert report.mu_standardized[0] == pytest.approx(-np.log(4) * 0.5, abs=1e-5)  # std of f is 0.5
    assert report.ess[0] == pytest.approx(1 / (0.8**2 + 0.2**2), rel=1e-5)
    assert np.all(np.diff(report.loss_history) <= 1e-7)  # L-BFGS with line search descends


@pytest.mark.parametrize("normalization", ["prefix", "global"])
@pytest.mark.parametrize("standardize", [True, False])
def test_fit_exact_on_enumerated_support(toy, normalization, standardize):
    """All outcomes once, ρ = log p_θ − log(1/S): L̂ is the exact dual, so µ must match scipy's root."""
    p, f, _, target = toy
    want = exact_dual_solution(p, f, target, normalization)
    rho = np.log(p) + np.log(p.shape[1])
    mu, report = daemon.fit_coefficients(f, rho, target, normalization=normalization, standardize=standardize)
    np.testing.assert_allclose(mu, want, atol=2e-4)
    np.testing.assert_allclose(report.fitted_moments, target, atol=1e-5)
    assert report.converged
    np.testing.assert_allclose(report.mu, report.mu_standardized / report.feature_std)


def test_fit_monte_carlo_recovers_exact_mu(toy):
    """N samples per prefix from p_θ (ρ = 0) and from a tempered proposal (ρ ≠ 0): µ to 1e-2."""
    p, f, _, target = toy
    want = exact_dual_solution(p, f, target)
    rng = np.random.default_rng(11)
    n = 40_000
    draws = np.stack([rng.choice(6, size=n, p=p[j]) for j in range(3)])
    feats = np.stack([f[j][draws[j]] for j in range(3)])
    mu, report = daemon.fit_coefficients(feats, None, target)
    np.testing.assert_allclose(mu, want, atol=1e-2)
    np.testing.assert_allclose(report.fitted_moments, target, atol=1e-5)  # q̂ matches the target moments
    assert report.ess.shape == (3,) and np.all((report.ess > 1) & (report.ess <= n))
    # exact q_µ̂ moments are close to F too
    q = softmax(np.log(p) - f @ mu, axis=1)
    np.testing.assert_allclose(np.einsum("js,jsk->k", q, f) / 3, target, atol=1e-2)

    tau = 1.5
    r = softmax(np.log(p) / tau, axis=1)
    draws = np.stack([rng.choice(6, size=n, p=r[j]) for j in range(3)])
    feats = np.stack([f[j][draws[j]] for j in range(3)])
    rho = np.stack([np.log(p[j][draws[j]]) - np.log(r[j][draws[j]]) for j in range(3)])
    mu_t, report_t = daemon.fit_coefficients(feats, rho, target)
    np.testing.assert_allclose(mu_t, want, atol=1e-2)
    assert np.all(report_t.ess < n)

    sub_f, sub_rho = feats[:, :4000], rho[:, :4000]
    mu_adam, _ = daemon.fit_coefficients(
        sub_f, sub_rho, target, optimizer=optax.adam(0.05), steps=1500, tol=1e-5, polish=False
    )
    np.testing.assert_allclose(mu_adam, daemon.fit_coefficients(sub_f, sub_rho, target)[0], atol=1e-3)


# --- perplexity under q ----------------------------------------------------------------------------


def test_perplexity_spec_numbers():
    # p_θ = [.5, .5], f = [1, 0], µ = −ln 4; human text from p_d = [.8, .2] (4 of outcome 0, 1 of outcome 1).
    mu = np.array([-np.log(4)])
    human = np.array([0, 0, 0, 0, 1])
    f = np.array([[1.0], [0.0]])
    samples = np.broadcast_to(f, (5, 2, 1))  # both outcomes once: Ẑ = Z exactly for p_θ = [.5, .5]
    report = daemon.perplexity_under_q(np.full(5, np.log(0.5)), f[human], samples, mu)
    assert report.nll_p == pytest.approx(0.693147, abs=1e-6)
    assert report.nll_q == pytest.approx(0.500402, abs=1e-6)
    kl = 0.8 * np.log(0.8 / 0.5) + 0.2 * np.log(0.2 / 0.5)
    assert kl == pytest.approx(0.192745, abs=1e-6)
    assert report.nll_q == pytest.approx(report.nll_p - kl, abs=1e-9)
    assert report.num_samples == 2 and report.ppl_q < report.ppl_p


def test_perplexity_identity_at_optimum(toy):
    """H(p_d, q*) = H(p_d, p_θ) − KL(q*‖p_θ) per prefix-averaged, with the exact Ẑ (ρ-weighted support)."""
    p, f, p_d, target = toy
    mu = exact_dual_solution(p, f, target)
    q = softmax(np.log(p) - f @ mu, axis=1)
    h_p = -np.sum(p_d * np.log(p)) / 3
    kl = np.sum(q * (np.log(q) - np.log(p))) / 3
    # Human "corpus": every (prefix, outcome) weighted by p_d, as a weighted mean of per-example log q.
    rho = np.log(p) + np.log(6)
    report = daemon.perplexity_under_q(
        np.log(p).reshape(-1),
        f.reshape(-1, 2),
        np.repeat(f, 6, axis=0),
        mu,
        sample_log_ratios=np.repeat(rho, 6, axis=0),
    )
    h_q = -np.sum(p_d.reshape(-1) * report.log_q) / 3
    np.testing.assert_allclose(report.log_q.reshape(3, 6), np.log(q), atol=1e-10)
    assert h_q == pytest.approx(h_p - kl, abs=1e-9)
    assert h_q < h_p
    spread, reports = daemon.perplexity_over_seeds(np.log(p[:, 0]), f[:, 0], np.stack([f, f[:, ::-1]]), mu)
    assert len(reports) == 2 and spread.min <= spread.mean <= spread.max


# --- Algorithm 2: SIR ------------------------------------------------------------------------------

P3 = np.array([0.4, 0.35, 0.25])
F3 = np.array([0.0, 1.0, 2.0])
MU3 = -0.7


def exact_sir_law(p, w, m):
    """Law of SIR's output over 3 outcomes with M candidates (enumerating the multinomial counts)."""
    out = np.zeros(3)
    for a in range(m + 1):
        for b in range(m + 1 - a):
            counts = np.array([a, b, m - a - b])
            prob = factorial(m) / (factorial(a) * factorial(b) * factorial(m - a - b)) * np.prod(p**counts)
            out += prob * counts * w / np.sum(counts * w)
    return out


@pytest.mark.slow
def test_sir_converges_to_q_like_one_over_m():
    w = np.exp(-MU3 * F3)
    q = P3 * w / np.sum(P3 * w)
    batch = 400_000
    ms = np.array([2, 4, 8, 16, 32])
    rng = np.random.default_rng(0)
    tv = []
    for m in ms:
        key_r = jax.random.fold_in(jax.random.key(0), int(m))
        cand = rng.choice(3, size=(batch, int(m)), p=P3)
        lw = daemon.log_weights([MU3], F3[cand][:, :, None])
        index, ess = daemon.resample(key_r, lw)
        chosen = cand[np.arange(batch), np.asarray(index)]
        freq = np.bincount(chosen, minlength=3) / batch
        exact = exact_sir_law(P3, w, int(m))
        # the implementation follows the exact SIR law (5 sigma) ...
        assert np.all(np.abs(freq - exact) < 5 * np.sqrt(exact * (1 - exact) / batch)), (m, freq, exact)
        assert np.all((np.asarray(ess) >= 1 - 1e-5) & (np.asarray(ess) <= m + 1e-4))
        tv.append(0.5 * np.abs(freq - q).sum())
    tv = np.array(tv)
    slope = np.polyfit(np.log(ms), np.log(tv), 1)[0]
    assert np.all(np.diff(tv) < 0), tv
    assert -1.25 < slope < -0.75, (slope, tv)


def test_resample_extreme_and_degenerate_weights():
    key = jax.random.key(5)
    feats = np.array([[[0.3], [0.1], [0.2]], [[1.0], [1.0], [1.0]]])
    lw = daemon.log_weights([1e4], feats)
    assert np.all(np.isfinite(lw))
    index, ess = daemon.resample(key, lw)
    assert int(index[0]) == 1 and float(ess[0]) == pytest.approx(1.0)
    assert float(ess[1]) == pytest.approx(3.0)
    # identical candidates: uniform choice, ESS = M
    idx, ess = daemon.resample(key, jnp.zeros((20_000, 4)))
    np.testing.assert_allclose(np.bincount(np.asarray(idx), minlength=4) / 20_000, 0.25, atol=0.02)
    np.testing.assert_allclose(np.asarray(ess), 4.0)
    # -inf / nan / +inf rows stay finite
    bad = jnp.array([[-jnp.inf, -jnp.inf], [jnp.nan, 0.0], [jnp.inf, 3.0], [-1e30, 1e30]])
    idx, ess = daemon.resample(key, bad)
    assert np.all(np.isfinite(np.asarray(ess)))
    assert list(np.asarray(idx)[1:]) == [1, 0, 1]
    # M = 1 always picks the only candidate
    idx, ess = daemon.resample(key, jnp.array([[-5e4], [3.0]]))
    assert list(np.asarray(idx)) == [0, 0] and np.allclose(np.asarray(ess), 1.0)


# --- with a model ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sample_m1_is_plain_sampling_and_candidates_consistent(tiny):
    model, params = tiny
    prompts = [[1, 2], [3, 4, 5]]
    key = jax.random.key(9)
    out = daemon.sample(
        model,
        params,
        prompts,
        [2.0],
        ["sr2"],
        num_candidates=1,
        max_new_tokens=6,
        key=key,
        proposal_temperature=1.3,
        stop_tokens=[0],
    )
    plain = infodec.generate(
        model, params, prompts, infodec.Temperature(1.3), jax.random.split(key)[0], max_new_tokens=6, stop_tokens=[0]
    )
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    np.testing.assert_array_equal(out.lengths, plain.lengths)
    out = daemon.sample(
        model, params, prompts, [2.0], ["sr2"], num_candidates=8, max_new_tokens=6, key=key, proposal_temperature=1.3
    )
    assert out.log_weights.shape == (2, 8) and out.features.shape == (2, 8, 1)
    rows = np.arange(2) * 8 + out.index
    np.testing.assert_array_equal(out.tokens, out.candidates.tokens[rows])
    logp_model, logp_policy = out.candidates.sequence_logp()
    np.testing.assert_allclose(
        out.log_weights.reshape(-1), (logp_model - logp_policy) - 2.0 * out.features.reshape(-1), atol=1e-5
    )
    assert np.all((out.ess >= 1 - 1e-5) & (out.ess <= 8 + 1e-4))
    # µ on the standardised scale (std 4 -> raw µ = 0.5), proposal correction off: lw = −0.5 f exactly.
    raw = daemon.sample(
        model,
        params,
        prompts,
        [2.0],
        ["sr2"],
        num_candidates=8,
        max_new_tokens=6,
        key=key,
        proposal_temperature=1.3,
        correct_proposal=False,
        standardization=(0.0, 4.0),
    )
    np.testing.assert_allclose(raw.log_weights, -0.5 * raw.features[..., 0])
    np.testing.assert_array_equal(raw.candidates.tokens, out.candidates.tokens)


@pytest.mark.slow
def test_sample_follows_exact_sir_law_on_tiny_model(tiny):
    """Horizon 2 over 6 tokens, f = sr1 ∈ {0, ½}: the exact SIR law is computable (Binomial count of
    repeats among M candidates), and the engine's SIR samples follow it (chi-square)."""
    model, params = tiny
    prompt, horizon, m, mu = [2, 5], 2, 6, -6.0
    ref = tiny_models.Reference(model, params)
    seqs, prob, _, _ = tiny_models.exact_sequences(ref, infodec.Temperature(1.0), prompt, horizon)
    repeat = seqs[:, 0] == seqs[:, 1]
    pi = prob[repeat].sum()
    w_rep, w_not = np.exp(-mu * 0.5), 1.0
    p_choose_rep = sum(
        factorial(m)
        / (factorial(k) * factorial(m - k))
        * pi**k
        * (1 - pi) ** (m - k)
        * k
        * w_rep
        / (k * w_rep + (m - k) * w_not)
        for k in range(1, m + 1)
    )
    law = np.where(repeat, prob / pi * p_choose_rep, prob / (1 - pi) * (1 - p_choose_rep))
    q = prob * np.where(repeat, w_rep, w_not)
    q /= q.sum()
    trials = 3000
    out = daemon.sample(
        model,
        params,
        [prompt] * trials,
        [mu],
        ["sr1"],
        num_candidates=m,
        max_new_tokens=horizon,
        key=jax.random.key(4),
        stop_tokens=None,
    )
    counts = np.bincount(tiny_models.sequence_index(out.tokens), minlength=len(seqs))
    result = stats.chi_square(out.tokens, np.log(law))
    assert result.p_value > 1e-3, result
    rep_freq = counts[repeat].sum() / trials
    assert abs(rep_freq - p_choose_rep) < 4 * np.sqrt(p_choose_rep * (1 - p_choose_rep) / trials)
    # and SIR moved the output from p_θ toward q_µ
    assert abs(p_choose_rep - q[repeat].sum()) < abs(pi - q[repeat].sum())
    assert rep_freq > pi + 4 * np.sqrt(pi * (1 - pi) / trials)


@pytest.mark.slow
def test_fit_and_perplexity_with_model(tiny):
    model, params = tiny
    prefixes = [[1, 2], [3], [4, 4, 1], [5, 2]]
    human = infodec.generate(
        model, params, prefixes, infodec.Temperature(0.7), jax.random.key(1), max_new_tokens=8, stop_tokens=None
    )
    human_rows = [human.tokens[j, : human.lengths[j]] for j in range(4)]
    names = ["sr2", "tr2"]
    mu, report = daemon.fit(
        model,
        params,
        prefixes,
        human_rows,
        names,
        num_samples=64,
        max_new_tokens=8,
        key=jax.random.key(2),
        proposal_temperature=1.2,
        stop_tokens=None,
    )
    assert mu.shape == (2,) and report.metric_names == tuple(names)
    assert report.sample_features is not None and report.human_features is not None
    assert report.sample_features.shape == (4, 64, 2) and report.human_features.shape == (4, 2)
    np.testing.assert_allclose(report.target, report.human_features.mean(0))
    assert report.converged and report.residual_norm < 1e-3
    assert np.any(report.log_ratios != 0)
    ppl = daemon.perplexity(
        model,
        params,
        prefixes,
        human_rows,
        mu,
        names,
        num_samples=64,
        max_new_tokens=8,
        key=jax.random.key(3),
        stop_tokens=None,
    )
    mask = human.mask()
    want_nll = -np.where(mask, human.logp_model, 0).sum() / mask.sum()
    assert ppl.nll_p == pytest.approx(want_nll, abs=1e-4)
    assert ppl.num_tokens == mask.sum() and ppl.num_samples == 64
    # The paper's qualitative claim, on this fixed seed (human text = p_θ at τ = 0.7): 2.52 vs 2.82.
    assert np.isfinite(ppl.ppl_q) and ppl.ppl_q < ppl.ppl_p


@pytest.mark.slow
@pytest.mark.parametrize("draws, fit_target", [(1, "split"), (2, "prefixes")])
def test_single_metric_study_end_to_end_on_tiny_model(tiny, monkeypatch, draws, fit_target):
    from infodec.data.corpora import Window
    from infodec.studies.daemon import study as studies

    model, params = tiny
    pools = {}

    def fake_split_windows(corpus, tokenizer, split, prompt_tokens, continuation_tokens, max_per_document):
        rng = np.random.default_rng(0 if split == "fit" else 1)
        ids = rng.integers(1, 6, size=(12, prompt_tokens + continuation_tokens))
        pools[split] = [
            Window(
                doc_id=f"{split}-{i // 3}",
                index=i % 3,
                start=0,  # 4 documents of 3 windows
                prompt=tuple(map(int, row[:prompt_tokens])),
                continuation=tuple(map(int, row[prompt_tokens:])),
                prompt_text="",
                continuation_text="",
            )
            for i, row in enumerate(ids)
        ]
        return pools[split]

    monkeypatch.setattr(studies, "split_windows", fake_split_windows)
    result = studies.single_metric_study(
        model,
        params,
        None,
        metric="sr2",
        num_fit_prefixes=5,
        num_fit_samples=4,
        num_eval_prompts=5,
        num_candidates=4,
        max_new_tokens=8,
        prompt_tokens=3,
        rows_per_call=8,
        draws_per_prompt=draws,
        fit_target=fit_target,
        log=lambda s: None,
    )
    assert result["plain"]["n"] == result["daemon"]["n"] == result["human_prompts"]["n"] == 5  # prompts, not draws
    assert result["human"]["n"] == result["human_fit_split"]["n"] == 12 and result["human"]["clusters"] == 4
    assert result["human_fit_prefixes"]["n"] == 5

    def sr2(windows):  # an independent reference: repeated bigrams / bigrams of each continuation
        values = []
        for w in windows:
            grams = list(zip(w.continuation, w.continuation[1:]))
            values.append(1.0 - len(set(grams)) / len(grams))
        return np.mean(values)

    assert result["human"]["mean"] == pytest.approx(sr2(pools["eval"]), abs=1e-6)
    want_target = result["human_fit_split"]["mean"] if fit_target == "split" else result["human_fit_prefixes"]["mean"]
    assert result["fit"]["target"] == pytest.approx([want_target], abs=1e-6)
    assert result["human_fit_split"]["mean"] == pytest.approx(sr2(pools["fit"]), abs=1e-6)
    assert len(result["fit"]["mu"]) == 1 and 1 <= result["daemon_ess"]["mean"] <= 4 + 1e-4
    assert len(result["daemon_chosen_index"]) == 5 * draws
    assert result["perplexity"]["daemon"]["nll_per_row"]["n"] == 5 * draws
    for name in ("plain", "daemon", "human"):
        assert np.isfinite(result["perplexity"][name]["ppl"])
    assert set(result["criterion"]) >= {
        "metric_within_human_se",
        "metric_within_combined_se",
        "perplexity_within_10pct",
        "expected_metric_within_human_se",
        "expected_perplexity_within_10pct",
    }
    expected = result["expected_over_resampling"]
    assert expected["plain"]["n"] == expected["daemon"]["n"] == 5
    assert 0 <= expected["daemon"]["mean"] <= 1 and np.isfinite(expected["ppl_ratio_daemon_vs_plain"])
    with pytest.raises(ValueError, match="at least one window"):
        studies.window_features(M.metric_functions(("sr2",)), [], 8)
    with pytest.raises(ValueError, match="fit_target must be one of split, prefixes"):
        studies.single_metric_study(model, params, None, fit_target="eval")
    with pytest.raises(ValueError, match="has 12 windows, asked for 20"):
        studies.single_metric_study(
            model,
            params,
            None,
            metric="sr2",
            num_fit_prefixes=20,
            max_new_tokens=8,
            prompt_tokens=3,
            log=lambda s: None,
        )


def test_expected_over_resampling_is_the_mean_of_the_sir_draw():
    from infodec.studies.daemon import study as studies

    rng = np.random.default_rng(4)
    prompts, m = 3, 5
    log_w = rng.normal(size=(prompts, m)) * 3
    features = rng.uniform(size=(prompts, m, 2))
    nll = rng.uniform(0.1, 4.0, size=(prompts, m))  # each candidate's mean token NLL
    got = studies.expected_over_resampling(log_w, features, nll)
    # Monte Carlo over the resampling step itself (daemon.resample) converges to the closed form
    draws = 20000
    index, _ = daemon.resample(jax.random.key(0), np.repeat(log_w, draws, axis=0))
    chosen = np.repeat(np.arange(prompts), draws), np.asarray(index)
    tolerance = 4 / np.sqrt(draws)  # 4 SE of a mean of values within [0, 4] (metric SD <= 0.5)
    np.testing.assert_allclose(features[chosen].reshape(prompts, draws, 2).mean(1), got["daemon"], atol=tolerance)
    np.testing.assert_allclose(nll[chosen].reshape(prompts, draws).mean(1), got["nll_daemon"], atol=2 * tolerance)
    np.testing.assert_allclose(got["plain"], features.mean(1))
    np.testing.assert_allclose(got["nll_plain"], nll.mean(1))
    # equal weights (µ = 0): DAEMON's expectation is plain sampling's
    flat = studies.expected_over_resampling(np.zeros_like(log_w), features, nll)
    np.testing.assert_allclose(flat["daemon"], flat["plain"])


def test_ridge_keeps_mu_finite_for_an_unreachable_target_and_barely_moves_a_reachable_fit():
    rng = np.random.default_rng(3)
    features = rng.uniform(0, 1, (6, 20, 2))
    outside = np.array([1.5, 0.5])  # the first metric's target lies beyond every sample
    _, exact = daemon.fit_coefficients(features, None, outside, steps=100)
    mu, ridged = daemon.fit_coefficients(features, None, outside, steps=100, l2=0.1)
    assert not exact.converged and np.abs(exact.mu_standardized).max() > 50
    assert ridged.converged and np.all(np.isfinite(mu))
    assert np.abs(ridged.mu_standardized).max() < np.abs(exact.mu_standardized).max() / 2
    # the ridge's stationarity condition: (F − Ê[f]) / s = −l2 · ν
    np.testing.assert_allclose(ridged.residual / ridged.feature_std, -0.1 * ridged.mu_standardized, atol=1e-6)
    inside = features.mean((0, 1)) + 0.05
    mu0, _ = daemon.fit_coefficients(features, None, inside)
    mu1, _ = daemon.fit_coefficients(features, None, inside, l2=1e-4)
    np.testing.assert_allclose(mu1, mu0, rtol=1e-2, atol=1e-3)
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        daemon.fit_coefficients(features, None, inside, l2=-1.0)


def test_cross_validated_ridge_shrinks_a_fit_to_noise_and_keeps_a_real_shift():
    rng = np.random.default_rng(5)
    # pure noise, 4 samples per prefix: the exact in-sample match fits noise; µ = 0 is right for new prefixes
    noise = rng.normal(size=(16, 4, 6))
    choice = daemon.cross_validate_l2(noise, None, np.zeros(6), [0.0, 1e-2, 1.0, 100.0], folds=4)
    assert choice.l2 >= 1.0 and choice.score[-1] < choice.score[0]
    assert choice.held_out_moments.shape == (4, 6) and choice.folds == 4
    # a real shift with many samples: exponential tilting of N(0, 1) by µ moves the mean by −µ
    gauss = rng.normal(size=(16, 400, 2))
    target = np.array([0.5, -0.3])
    choice = daemon.cross_validate_l2(gauss, None, target, [100.0, 0.0, 1e-2, 1.0], folds=4)
    np.testing.assert_array_equal(choice.l2_values, [0.0, 1e-2, 1.0, 100.0])
    assert choice.l2 <= 1e-2
    np.testing.assert_allclose(choice.held_out_moments[list(choice.l2_values).index(choice.l2)], target, atol=0.05)


def test_cross_validated_held_out_moments_use_the_proposal_correction():
    rng = np.random.default_rng(6)
    features, rho = rng.uniform(size=(8, 5, 2)), rng.normal(size=(8, 5))
    # an overwhelming ridge gives µ ≈ 0: each held-out prefix's moment is Σ_i softmax(ρ)_i f_i
    choice = daemon.cross_validate_l2(features, rho, features.mean((0, 1)) + 0.1, [1e9], folds=2)
    w = np.exp(rho) / np.exp(rho).sum(1, keepdims=True)
    np.testing.assert_allclose(choice.held_out_moments[0], np.einsum("jn,jnk->k", w, features) / 8, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"l2_values": [], "folds": 2}, "l2_values must be"),
        ({"l2_values": [-1.0], "folds": 2}, "l2_values must be"),
        ({"l2_values": [0.0], "folds": 1}, "folds must be between 2"),
        ({"l2_values": [0.0], "folds": 9}, "folds must be"),
        ({"l2_values": [0.0], "folds": 2, "normalization": "global"}, "needs normalization='prefix'"),
    ],
)
def test_cross_validate_l2_rejects_bad_input(kwargs, message):
    features = np.random.default_rng(0).uniform(size=(8, 4, 2))
    with pytest.raises(ValueError, match=message):
        daemon.cross_validate_l2(features, None, features.mean((0, 1)), **kwargs)


@pytest.mark.parametrize("add_bos, bos_id, lead", [(True, 2, (2,)), (False, 1, ()), (True, None, ())])
def test_study_prompts_start_as_the_tokenizer_starts_a_text(monkeypatch, add_bos, bos_id, lead):
    """Windows are cut from documents encoded without BOS; the study's prompts get BOS back exactly when the
    tokenizer adds it to a text (Gemma: True; SmolLM2: False), so the model reads them as it was trained."""
    from types import SimpleNamespace

    from infodec.data import corpora
    from infodec.data.corpora import Window
    from infodec.studies.daemon import study as studies

    window = Window(
        doc_id="d", index=0, start=0, prompt=(7, 8), continuation=(9,), prompt_text="", continuation_text=""
    )
    monkeypatch.setattr(corpora, "load_windows", lambda *args, **kwargs: [window])
    tokenizer = SimpleNamespace(add_bos=add_bos, bos_id=bos_id)
    (got,) = studies.split_windows("wiki", tokenizer, "eval", 2, 1, None)
    assert studies.sequence_start(tokenizer) == lead
    assert got.prompt == lead + (7, 8) and got.continuation == (9,) and got.doc_id == "d"
