"""DAEMON's paper variants as reconstructed (docs/math.md §3): the relative-error objective with Adam against
the dual on a feasible toy whose µ is known, the pooled ("global") bank, the uncorrected τ < 1 decode
against its formula on a tiny model, and the study's τ-sweep forms and fit options."""

from __future__ import annotations

from typing import Any, cast

import jax
import numpy as np
import pytest
from scipy.special import softmax

from infodec import daemon
from infodec.daemon import fitting
from infodec.daemon import metrics as metrics_lib
from infodec.results import ResultsFolder
from infodec.studies.daemon import DaemonConfig
from infodec.studies.daemon import study as study_lib
from tests import tiny_models

# --- the relative-error objective ------------------------------------------------------------------


@pytest.fixture(scope="module")
def feasible():
    """J = 3 prefixes, S = 6 outcomes each, K = 2 positive metrics, and a known µ*: every outcome once with
    ``ρ = log p + log S``, so the sample moments are the exact ones and F = E_{q_µ*}[f] is attainable."""
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(6), size=3)
    f = rng.uniform(0.5, 2.0, size=(3, 6, 2))
    return p, f, np.log(p) + np.log(6), np.array([0.8, -0.5])


def exact_moments_and_hessian(p, f, mu, normalization):
    """``(E_{q_µ}[f] [K], ∇²L = Cov_{q_µ}[f] [K, K])`` by enumeration: per prefix (the mean of the prefixes'
    moments and covariances) or pooled over all (prefix, outcome) pairs."""
    lw = np.log(p) - f @ mu
    if normalization == "prefix":
        q = softmax(lw, axis=1)
        means = np.einsum("js,jsk->jk", q, f)
        centred = f - means[:, None]
        cov = np.einsum("js,jsk,jsl->kl", q, centred, centred) / len(p)
        return means.mean(0), cov
    q = softmax(lw.reshape(-1)).reshape(lw.shape)
    mean = np.einsum("js,jsk->k", q, f)
    centred = f - mean
    return mean, np.einsum("js,jsk,jsl->kl", q, centred, centred)


@pytest.mark.slow
@pytest.mark.parametrize("normalization", ["prefix", "global"])
def test_relative_error_fit_reaches_the_duals_mu_on_a_feasible_toy(feasible, normalization):
    p, f, rho, mu_star = feasible
    target, hessian = exact_moments_and_hessian(p, f, mu_star, normalization)

    mu_dual, dual = daemon.fit_coefficients(f, rho, target, normalization=normalization)
    np.testing.assert_allclose(dual.fitted_moments, target, rtol=1e-9)
    np.testing.assert_allclose(mu_dual, mu_star, atol=1e-7)

    tol = 1e-5
    mu_rel, rel = daemon.fit_coefficients(
        f,
        rho,
        target,
        normalization=normalization,
        objective="relative_error",
        learning_rate=0.01,
        tol=tol,
        steps=20000,
    )
    assert rel.objective == "relative_error" and rel.converged and rel.steps < 20000
    # the moments equal the target to the stopping tolerance: |rel_k| <= sqrt(K) * RMS < sqrt(K) * tol
    relative = (rel.fitted_moments - target) / target
    assert np.sqrt(np.mean(relative**2)) == pytest.approx(rel.relative_error, rel=1e-9)
    assert np.all(np.abs(relative) < np.sqrt(2) * tol)
    # and µ is µ*: to first order Δµ = H⁻¹ ΔF, so ‖Δµ‖ <= ‖H⁻¹‖ ‖ΔF‖ (1.5x for the second-order term)
    bound = 1.5 * np.linalg.norm(np.linalg.inv(hessian), 2) * np.linalg.norm(relative * target)
    assert np.linalg.norm(mu_rel - mu_star) <= bound
    assert np.linalg.norm(mu_rel - mu_dual) <= bound + 1e-7
    assert bound < 1e-3  # the check above is a real one


def test_relative_error_objective_is_the_rms_relative_moment_error(feasible):
    """The paper's defaults (Adam at 0.005, tolerance 1e-3) converge, and the loss history is the RMS
    relative error written from its formula: at µ = 0 the plain weighted moments."""
    p, f, rho, mu_star = feasible
    target, _ = exact_moments_and_hessian(p, f, mu_star, "prefix")
    _, report = daemon.fit_coefficients(f, rho, target, objective="relative_error")
    assert report.converged and report.relative_error < fitting.RELATIVE_ERROR_TOL
    start = exact_moments_and_hessian(p, f, np.zeros(2), "prefix")[0]
    assert report.loss_history[0] == pytest.approx(np.sqrt(np.mean(((start - target) / target) ** 2)), rel=1e-5)
    assert report.loss_history[-1] == pytest.approx(report.relative_error, rel=1e-3)


def test_relative_error_fit_stops_finite_where_the_dual_has_no_optimum():
    """F outside the samples' hull: no µ matches it; Adam's step cap leaves µ finite, not converged."""
    f = np.array([[[1.0], [2.0], [3.0]]])
    mu, report = daemon.fit_coefficients(f, None, [3.5], objective="relative_error", steps=300)
    assert np.all(np.isfinite(mu)) and not report.converged and report.steps == 300
    assert report.fitted_moments[0] < 3.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(objective="rmse"), "objective must be one of"),
        (dict(objective="relative_error", polish=True), "polish refines the dual"),
        (dict(objective="relative_error", l2=1e-3), "has no ridge"),
        (dict(objective="relative_error", target=[0.0]), "has a zero"),
    ],
)
def test_relative_error_rejects_bad_input(kwargs, message):
    target = kwargs.pop("target", [1.5])
    with pytest.raises(ValueError, match=message):
        daemon.fit_coefficients(np.array([[[1.0], [2.0]]]), None, target, **kwargs)


def test_cross_validation_is_for_the_dual_only():
    with pytest.raises(ValueError, match="relative-error objective has none"):
        daemon.cross_validate_l2(np.ones((4, 3, 1)), None, [1.0], [0.0, 1.0], folds=2, objective="relative_error")


# --- the uncorrected τ < 1 decode ------------------------------------------------------------------


def sequence_log_ratio(ref, prompt, tokens, tau):
    """``Σ_t log p_θ(x_t | ·) − log softmax(ℓ_t / τ)[x_t]`` by full-sequence recomputation (no cache)."""
    total, context = 0.0, list(prompt)
    for token in tokens:
        logits = ref.logits(context).astype(np.float64)
        log_p = logits - np.logaddexp.reduce(logits)
        log_r = logits / tau - np.logaddexp.reduce(logits / tau)
        total += log_p[token] - log_r[token]
        context.append(int(token))
    return total


def sr1(tokens):
    """SR-1 written from its definition: 1 − |unique tokens| / |tokens|."""
    return 1.0 - len(set(tokens)) / len(tokens) if len(tokens) else 0.0


@pytest.mark.slow
def test_uncorrected_tau_weights_are_minus_mu_f_on_the_same_candidates():
    """``sample(proposal_temperature=τ, correct_proposal=False)``: candidates from Temperature(τ), log weights
    −µᵀf exactly (no ρ); the corrected form weights the same candidates by ρ − µᵀf, ρ recomputed without
    the engine."""
    model, params = tiny_models.tiny_llama(seed=3)
    prompts, tau, mu, m = [[1, 2], [3, 4, 5]], 0.7, 1.5, 6
    key = jax.random.key(2)
    common: dict[str, Any] = dict(num_candidates=m, max_new_tokens=5, key=key, proposal_temperature=tau, stop_tokens=())
    paper = daemon.sample(model, params, prompts, [mu], ["sr1"], correct_proposal=False, **common)
    corrected = daemon.sample(model, params, prompts, [mu], ["sr1"], **common)
    np.testing.assert_array_equal(paper.candidates.tokens, corrected.candidates.tokens)
    ref = tiny_models.Reference(model, params)
    tokens, lengths = np.asarray(paper.candidates.tokens), np.asarray(paper.candidates.lengths)
    for row in range(len(prompts) * m):
        b, i = divmod(row, m)
        chosen = [int(t) for t in tokens[row, : lengths[row]]]
        f = sr1(chosen)
        assert paper.log_weights[b, i] == pytest.approx(-mu * f, abs=1e-6)
        rho = sequence_log_ratio(ref, prompts[b], chosen, tau)
        assert abs(rho) > 1e-3  # the correction the paper's form drops is not zero here
        assert corrected.log_weights[b, i] == pytest.approx(rho - mu * f, abs=2e-4)
    # the draw is the reference SIR step on those weights: resampling with the same key
    want, _ = daemon.resample(jax.random.split(key)[1], -mu * paper.features[..., 0])
    np.testing.assert_array_equal(paper.index, np.asarray(want))


# --- the study: τ-sweep forms and fit options ------------------------------------------------------


class _FakeStudy:
    """Records :meth:`DaemonStudy.daemon` calls; returns fixed outputs."""

    corpus = "wiki"

    def __init__(self):
        self.calls = []

    def daemon(self, mu, num_candidates, key, **kwargs):
        self.calls.append(dict(mu=np.asarray(mu), num_candidates=num_candidates, key=key, **kwargs))
        return {"ess": np.ones(2), "tokens": np.zeros((2, 3), np.int32), "lengths": np.full(2, 3)}

    def evaluate(self, tokens, lengths, mauve=True):
        return {"metrics": {}}

    def features(self, tokens, lengths):
        return np.zeros((len(tokens), 1))

    def gap_to_human(self, features):
        return {}


def test_the_tau_sweeps_uncorrected_form_uses_the_tau_1_fit_and_the_same_candidates():
    config = DaemonConfig(temperature_forms=("corrected", "uncorrected"), num_candidates=7, sweep_prompts=2)
    records = {"wiki/fit/tau=1": {"mu": [1.0, 2.0]}, "wiki/fit/tau=0.8": {"mu": [3.0, 4.0]}}
    fake, ckey = _FakeStudy(), jax.random.key(0)
    study = cast(Any, fake)  # stands in for a DaemonStudy
    [(key_c, run_c)] = study_lib._temperature_point(study, config, 0.8, records, ckey)
    [(key_u, run_u)] = study_lib._temperature_point(study, config, 0.8, records, ckey, form="uncorrected")
    assert key_c == "wiki/temperature/tau=0.8" and key_u == "wiki/temperature/tau=0.8/uncorrected"
    record_c, record_u = run_c(), run_u()
    corrected, uncorrected = fake.calls
    np.testing.assert_array_equal(corrected["mu"], [3.0, 4.0])
    np.testing.assert_array_equal(uncorrected["mu"], [1.0, 2.0])
    assert corrected["correct_proposal"] and not uncorrected["correct_proposal"]
    assert corrected["proposal_temperature"] == uncorrected["proposal_temperature"] == 0.8
    np.testing.assert_array_equal(jax.random.key_data(corrected["key"]), jax.random.key_data(uncorrected["key"]))
    assert (record_c["form"], record_c["mu_from"]) == ("corrected", "wiki/fit/tau=0.8")
    assert (record_u["form"], record_u["mu_from"]) == ("uncorrected", "wiki/fit/tau=1")


def _key_and_size(call: dict) -> tuple[list[int], int | None]:
    return jax.random.key_data(call["key"]).tolist(), call["drawn"]


@pytest.mark.parametrize("m_values, shared", [((1, 7, 10), True), ((1, 5), False)])
def test_at_tau_1_the_sweep_resamples_the_m_sweeps_set_when_it_is_large_enough(m_values, shared):
    """At τ = 1 (µ of the τ = 1 fit, corrected) the τ point is the M sweep's point at M = num_candidates:
    the same µ, key and candidate set, hence the same texts. A smaller M-sweep set cannot hold M
    candidates, so the point then draws its own set of M."""
    config = DaemonConfig(m_values=m_values, num_candidates=7, sweep_prompts=2)
    records = {"wiki/fit/tau=1": {"mu": [1.0, 2.0]}}
    fake, ckey = _FakeStudy(), jax.random.key(0)
    study = cast(Any, fake)  # stands in for a DaemonStudy
    [(_, run_tau)] = study_lib._temperature_point(study, config, 1.0, records, ckey)
    record = run_tau()
    [(_, run_other)] = study_lib._temperature_point(study, config, 0.9, {"wiki/fit/tau=0.9": {"mu": [0.0]}}, ckey)
    run_other()
    tau_1, tau_09 = fake.calls
    assert tau_1["num_candidates"] == tau_09["num_candidates"] == 7
    assert _key_and_size(tau_09)[1] == 7  # other τ draw their own set of M
    assert _key_and_size(tau_09)[0] != _key_and_size(tau_1)[0]
    if shared:
        m_sweep = _FakeStudy()
        points = study_lib._m_sweep_points(cast(Any, m_sweep), config, np.array([1.0, 2.0]), ckey)
        [run_7] = [run for key, run in points if key == "wiki/m_sweep/M=7"]
        run_7()
        [at_7] = m_sweep.calls
        assert _key_and_size(tau_1) == _key_and_size(at_7) and _key_and_size(at_7)[1] == 10
        np.testing.assert_array_equal(tau_1["mu"], at_7["mu"])
        assert tau_1["proposal_temperature"] == 1.0 and tau_1["correct_proposal"]
        assert (record["candidates_drawn"], record["candidates_of"]) == (10, "wiki/m_sweep")
    else:
        assert _key_and_size(tau_1)[1] == 7 and "candidates_of" not in record


def _tiny_pipeline(rows_per_call: int, bank=None) -> study_lib.Pipeline:
    model, params = tiny_models.tiny_llama(seed=3)
    functions = tuple(metrics_lib.metric_functions(["sr1"]))
    return study_lib.Pipeline(model, params, ("sr1",), functions, 5, rows_per_call, log=lambda _: None, bank=bank)


@pytest.mark.slow
def test_the_studys_daemon_is_sampling_sample_chunk_by_chunk():
    """Pipeline.daemon (candidates, then weights and resampling) = daemon.sample on each chunk's prompts
    with that chunk's key, in both τ forms."""
    pipeline = _tiny_pipeline(rows_per_call=6)  # M = 3: two prompts per chunk
    prompts, key, mu = [[1, 2], [3, 4, 5], [0, 1], [2, 2, 2]], jax.random.key(4), [0.8]
    for correct in (True, False):
        got = pipeline.daemon(prompts, mu, 3, key, proposal_temperature=0.7, correct_proposal=correct)
        for i, rows in enumerate(([0, 1], [2, 3])):
            want = daemon.sample(
                pipeline.model,
                pipeline.params,
                [prompts[r] for r in rows],
                mu,
                ["sr1"],
                num_candidates=3,
                max_new_tokens=5,
                key=jax.random.fold_in(key, i),
                proposal_temperature=0.7,
                correct_proposal=correct,
                stop_tokens=(),
            )
            np.testing.assert_array_equal(got["index"][rows], want.index)
            np.testing.assert_array_equal(got["tokens"][rows], want.tokens)
            np.testing.assert_allclose(got["features"][rows], want.features)
            np.testing.assert_allclose(got["ess"][rows], want.ess, rtol=1e-6)
            candidate_nll = -want.candidates.sequence_logp()[0] / want.candidates.lengths  # [2 * M] prompt-major
            np.testing.assert_allclose(got["expected_nll_plain"][rows], candidate_nll.reshape(2, 3).mean(1), rtol=1e-6)


@pytest.mark.slow
def test_points_that_share_a_candidate_set_decode_it_once(tmp_path, monkeypatch):
    """With a bank, the two τ forms resample one candidate set, and smaller M take the first M of it."""
    draws = []
    real_draw = fitting.draw_candidates
    monkeypatch.setattr(
        fitting, "draw_candidates", lambda *a, **k: draws.append(k["num_samples"]) or real_draw(*a, **k)
    )
    pipeline = _tiny_pipeline(rows_per_call=8, bank=tmp_path / "bank")
    prompts, key = [[1, 2], [3, 4, 5], [0, 1]], jax.random.key(6)
    full = pipeline.daemon(prompts, [0.5], 4, key)
    small = pipeline.daemon(prompts, [0.5], 2, key, drawn=4)
    assert draws == [4, 4]  # two chunks of two prompts, drawn for the first call only
    np.testing.assert_array_equal(small["features"], full["features"][:, :2])
    assert np.all(small["index"] < 2)
    np.testing.assert_array_equal(
        small["tokens"],
        study_lib.Pipeline.candidates(pipeline, prompts, 4, key)["tokens"][np.arange(3), small["index"]],
    )
    corrected = pipeline.daemon(prompts, [0.5], 4, key, proposal_temperature=0.8)
    uncorrected = pipeline.daemon(prompts, [0.5], 4, key, proposal_temperature=0.8, correct_proposal=False)
    assert draws == [4, 4, 4, 4]  # one more set, for τ = 0.8
    np.testing.assert_array_equal(corrected["features"], uncorrected["features"])
    with pytest.raises(ValueError, match="num_candidates must be in"):
        pipeline.daemon(prompts, [0.5], 5, key, drawn=4)


def test_fit_options_default_to_the_dual_and_old_results_folders_still_resume(tmp_path):
    config = DaemonConfig()
    assert config.forms == ("corrected",)
    assert config.fit_options() == dict(
        normalization="prefix", objective="dual", learning_rate=None, steps=None, tol=None
    )
    # a folder written before the new fields existed: its flags.json lacks them
    new_fields = (
        "temperature_forms",
        "fit_normalization",
        "fit_objective",
        "fit_learning_rate",
        "fit_steps",
        "fit_tol",
    )
    old = {k: v for k, v in config.flags().items() if k not in new_fields}
    folder = ResultsFolder(tmp_path, old)
    folder.append("wiki/fit/tau=1", {"mu": [0.0]})
    ResultsFolder(tmp_path, config.flags())  # resumes: the defaults record the same settings
    assert DaemonConfig.from_flags(old) == config
    paper = DaemonConfig(fit_normalization="global", fit_objective="relative_error", temperature_forms=("uncorrected",))
    assert paper.fit_options()["normalization"] == "global" and paper.forms == ("uncorrected",)
    with pytest.raises(ValueError, match="differing"):
        ResultsFolder(tmp_path, paper.flags())


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(temperature_forms=("both",)), "--temperature_forms must list some of"),
        (dict(fit_normalization="pooled"), "--fit_normalization must be one of"),
        (dict(fit_objective="adam"), "--fit_objective must be one of"),
        (dict(fit_learning_rate=0.0), "--fit_learning_rate must be > 0"),
        (dict(fit_steps=0), "--fit_steps must be >= 1"),
        (dict(fit_objective="relative_error", l2_values=[0.0, 1.0]), "--fit_objective=relative_error has none"),
        (dict(fit_normalization="global", l2_values=[0.0, 1.0]), "it needs --fit_normalization=prefix"),
        (dict(num_eval_prompts=8, perplexity_prompts=9), "--perplexity_prompts must be between 0"),
        (dict(studies=("main", "perplexity")), "pass --perplexity_samples >= 1"),
        (dict(studies=("perplexity",), perplexity_samples=12), "--perplexity_samples must be a multiple of 8"),
    ],
)
def test_bad_variant_settings_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        DaemonConfig(**changes)


@pytest.mark.slow
def test_at_tau_1_the_two_forms_are_one_decode():
    """Why the sweep skips the uncorrected form at τ = 1: ρ = 0 there, so the weights agree exactly."""
    model, params = tiny_models.tiny_llama(seed=3)
    common: dict[str, Any] = dict(num_candidates=3, max_new_tokens=3, key=jax.random.key(5), stop_tokens=())
    a = daemon.sample(model, params, [[1, 2]], [0.7], ["sr1"], **common)
    b = daemon.sample(model, params, [[1, 2]], [0.7], ["sr1"], correct_proposal=False, **common)
    np.testing.assert_array_equal(a.log_weights, b.log_weights)
    np.testing.assert_array_equal(a.index, b.index)
