"""Sequential Monte Carlo (``infodec.smc``) against exact laws on an enumerable toy.

On ``tiny_llama`` (vocabulary 6) with horizon 3 every sequence is enumerable, so the SMC target is known
exactly: DAEMON's ``q_µ ∝ p_θ exp(−µ·tr4)`` (proposal ``Temperature(1.3)``, incremental potential) and the
sequence-level Bellman optimum of ``theory.solve`` (proposal ``p_θ``, the exact twist). ``R`` independent
SMC runs are one call with ``R`` copies of the prompt.

* the output law converges: total variation of the law of SMC's draw (estimated by the runs' normalised
  weighted particles, whose mean is exactly that law) decreases over M = 4, 16, 64, and a chi-square test
  of the draws at M = 64 accepts the target (p > 1e-3) and rejects a wrong one (p < 1e-3);
* ``Ẑ`` is unbiased: its mean over runs is within 3 standard errors of the exact ``Z``;
* SMC's error beside SIR's (resampling never) at equal token budget is printed (``-s``), not ranked;
* the resamplers give each particle ``M w_i`` offspring on average; SIR equals ``daemon.sample``;
* bad input gets one clear error each.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infodec
from infodec import smc as smc_lib
from infodec import theory
from tests.tiny_models import tiny_llama

PROMPT = [1, 2, 3]
H = 3
V = 6
RUNS = 512
MS = (4, 16, 64)
MU = 3.0
SMC_THRESHOLD = 0.9  # resample when ESS < 0.9 M: the intermediate steps resample most runs


@functools.cache
def tiny():
    return tiny_llama(seed=1, scale=1.5)


@functools.cache
def tree():
    model, params = tiny()
    return theory.prefix_log_probs(model, params, PROMPT, H)


@functools.cache
def target(name: str):
    """``(proposal, potential, log q [V**H], log Z)`` with everything exact."""
    seqs = theory.sequences(V, H)
    log_p = tree().sequence_log_model().reshape(-1)
    if name == "daemon":
        tr4 = np.asarray(
            infodec.daemon.compute(["tr4"], jnp.asarray(seqs, jnp.int32), jnp.full(len(seqs), H, jnp.int32))
        )[:, 0]
        log_unnorm = log_p - MU * tr4
        log_z = float(np.log(np.sum(np.exp(log_unnorm))))
        return infodec.Temperature(1.3), smc_lib.DaemonPotential([MU], ["tr4"]), log_unnorm - log_z, log_z
    reward = 2.0 * np.random.default_rng(0).normal(size=(V,) * H)
    solution = theory.solve(tree(), beta=1.0, gamma=0.5, terminal_reward=reward)
    log_q, best = theory.sequence_optimum(tree(), beta=1.0, gamma=0.5, terminal_reward=reward)
    np.testing.assert_allclose(solution.log_seq_probs, log_q, atol=1e-9)
    tau = 1.5
    return infodec.Temperature(1.0), smc_lib.exact_twist(tree(), solution), log_q.reshape(-1), best / tau


@functools.cache
def run(name: str, m: int, threshold: float, seed: int = 0):
    """``(law estimate [V**H], draws [R, H], Ẑ [R], fraction of runs resampled per check)``."""
    model, params = tiny()
    proposal, potential, _, _ = target(name)
    out = smc_lib.smc(
        model,
        params,
        [PROMPT] * RUNS,
        proposal,
        potential,
        jax.random.key(seed),
        num_particles=m,
        max_new_tokens=H,
        ess_threshold=threshold,
        stop_tokens=(),
    )
    w = np.asarray(smc_lib.normalized_weights(jnp.asarray(out.log_weights)), np.float64).reshape(-1)
    law = np.bincount(theory.sequence_index(out.tokens[:, :H], V), weights=w, minlength=V**H) / RUNS
    return law, out.sample_tokens[:, :H], np.exp(out.log_z), out.resampled.mean(1)


def tv(law, log_q) -> float:
    return 0.5 * float(np.abs(law - np.exp(log_q)).sum())


@pytest.mark.parametrize("name", ["daemon", "bellman"])
def test_output_law_converges_to_the_exact_target(name):
    _, _, log_q, _ = target(name)
    errors = [tv(run(name, m, SMC_THRESHOLD)[0], log_q) for m in MS]
    assert errors[0] > errors[1] > errors[2], errors
    _, draws, _, resampled = run(name, MS[-1], SMC_THRESHOLD)
    assert resampled[:-1].max() > 0.5  # the intermediate checks did resample
    assert theory.chi_square(draws, log_q).p_value > 1e-3
    # power: the same draws against a wrong target (the base model, and µ halved / no twist) are rejected
    wrong = tree().sequence_log_model().reshape(-1)
    assert theory.chi_square(draws, wrong).p_value < 1e-3


@pytest.mark.parametrize("name", ["daemon", "bellman"])
def test_normaliser_estimate_is_unbiased(name):
    _, _, _, log_z = target(name)
    for m in (4, 16):
        _, _, z_hat, resampled = run(name, m, SMC_THRESHOLD)
        assert resampled.max() > 0.3
        se = z_hat.std(ddof=1) / np.sqrt(len(z_hat))
        assert abs(z_hat.mean() - np.exp(log_z)) < 3 * se + 1e-12, (m, z_hat.mean(), np.exp(log_z), se)


def test_smc_beside_sir_at_equal_token_budget():
    """The table of docs/smc.md: TV to the exact law, SMC (ESS < 0.9 M) and SIR (never), same M and runs."""
    lines = ["| target | M | tokens | TV SMC | TV SIR |", "|---|---|---|---|---|"]
    for name in ("daemon", "bellman"):
        _, _, log_q, _ = target(name)
        for m in MS:
            smc_tv, sir_tv = tv(run(name, m, SMC_THRESHOLD)[0], log_q), tv(run(name, m, 0.0)[0], log_q)
            assert np.isfinite(smc_tv) and np.isfinite(sir_tv)
            lines.append(f"| {name} | {m} | {RUNS * m * H} | {smc_tv:.4f} | {sir_tv:.4f} |")
        assert run(name, MS[0], 0.0)[3].max() == 0.0  # SIR never resampled
    print("\n" + "\n".join(lines))


# --- resamplers -------------------------------------------------------------------------------------

with np.errstate(divide="ignore"):
    LOG_W = np.log(np.array([0.05, 0.4, 0.0, 0.25, 0.3], np.float32))  # a zero weight: log 0 = -inf


@pytest.mark.parametrize("scheme", sorted(smc_lib.RESAMPLERS))
def test_resamplers_are_unbiased(scheme):
    m, draws = len(LOG_W), 40000
    lw = jnp.broadcast_to(jnp.asarray(LOG_W), (draws, m))
    ancestors = np.asarray(smc_lib.resample_groups(jax.random.key(0), lw, scheme=scheme))
    counts = np.stack([np.bincount(row, minlength=m) for row in ancestors[:2000]])
    counts = np.concatenate([counts, np.apply_along_axis(np.bincount, 1, ancestors[2000:], minlength=m)])
    expected = m * np.exp(LOG_W)
    se = counts.std(0, ddof=1) / np.sqrt(draws)
    assert np.all(np.abs(counts.mean(0) - expected) <= 4 * se + 1e-9), (counts.mean(0), expected)
    assert counts[:, 2].max() == 0  # a zero weight never has offspring
    if scheme != "multinomial":  # low variance: floor or ceil of M w_i (systematic); at least floor (residual)
        assert np.all(counts >= np.floor(expected))
    if scheme == "systematic":
        assert np.all(counts <= np.ceil(expected))


def test_systematic_offspring_exactly():
    """Over a fine grid of the single uniform, systematic resampling's mean offspring is exactly M w."""
    m = len(LOG_W)
    w = np.exp(LOG_W)
    cdf = np.cumsum(w) / w.sum()
    grid = (np.arange(100000) + 0.5) / 100000
    u = (grid[:, None] + np.arange(m)[None, :]) / m
    counts = np.stack([np.bincount(np.searchsorted(cdf, row, side="right"), minlength=m) for row in u[::50]])
    np.testing.assert_allclose(counts.mean(0), m * w, atol=2e-3)
    # the jax function agrees with this inversion at given uniforms
    key = jax.random.key(3)
    got = np.asarray(smc_lib.systematic(key, jnp.asarray(LOG_W)))
    u0 = float(jax.random.uniform(key, dtype=jnp.float32))
    want = np.minimum(np.searchsorted(cdf, (u0 + np.arange(m)) / m, side="right"), m - 1)
    np.testing.assert_array_equal(got, want)


def test_resamplers_with_degenerate_weights():
    for scheme, fn in smc_lib.RESAMPLERS.items():
        dead = np.asarray(fn(jax.random.key(1), jnp.full(4, -jnp.inf)))
        assert dead.min() >= 0 and dead.max() < 4, scheme  # all -inf: uniform
        one = np.asarray(fn(jax.random.key(1), jnp.array([-jnp.inf, 0.0, -jnp.inf, -jnp.inf])))
        np.testing.assert_array_equal(one, 1, err_msg=scheme)
        nan = np.asarray(fn(jax.random.key(1), jnp.array([jnp.nan, 0.0, -jnp.inf, jnp.nan])))
        np.testing.assert_array_equal(nan, 1, err_msg=scheme)


# --- SIR is DAEMON ----------------------------------------------------------------------------------


def test_never_resampling_is_daemon_sir():
    model, params = tiny()
    prompts = [[1, 2, 3], [4, 0, 2, 5]]
    key = jax.random.key(11)
    want = infodec.daemon.sample(
        model,
        params,
        prompts,
        [2.0, -1.0],
        ["tr4", "sr2"],
        num_candidates=8,
        key=key,
        proposal_temperature=1.3,
        max_new_tokens=5,
        stop_tokens=(0,),
    )
    potential = smc_lib.DaemonPotential([2.0, -1.0], ["tr4", "sr2"])
    got = smc_lib.smc(
        model,
        params,
        prompts,
        infodec.Temperature(1.3),
        potential,
        key,
        num_particles=8,
        ess_threshold=0.0,
        max_new_tokens=5,
        stop_tokens=(0,),
    )
    np.testing.assert_array_equal(got.tokens, want.candidates.tokens)
    np.testing.assert_allclose(got.log_weights, want.log_weights, atol=1e-5)
    np.testing.assert_array_equal(got.index, want.index)
    np.testing.assert_array_equal(got.sample_tokens, want.tokens)
    assert not got.resampled.any() and got.check_steps[-1] <= 5


# --- bad input --------------------------------------------------------------------------------------


def test_clear_errors():
    model, params = tiny()
    policy, key = infodec.Temperature(1.0), jax.random.key(0)
    potential = smc_lib.DaemonPotential([1.0], ["tr4"])
    call = lambda **kw: smc_lib.smc(
        model, params, [PROMPT], policy, kw.pop("potential", potential), key, max_new_tokens=2, **kw
    )
    with pytest.raises(ValueError, match="unknown resampling scheme 'stratified'"):
        call(num_particles=4, resampling="stratified")
    with pytest.raises(ValueError, match=r"ess_threshold must lie in \[0, 1\]"):
        call(num_particles=4, ess_threshold=1.5)
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
        call(num_particles=0)
    with pytest.raises(ValueError, match=r"one float per particle, shape \(4,\)"):
        call(num_particles=4, potential=lambda tokens, lengths, prefix: np.zeros((4, 2)))
