"""Sampling policies against HF transformers' logits processors, plus the spec's conventions (§1).

Comparisons are made on probabilities (softmax of both sides: HF masks with ``-inf``, infodec with the
finite ``MASK_VALUE``) to 1e-5, and on the kept support. Two kinds of token are excluded from the
support comparison and checked otherwise:

- HF's top-p orders tokens with an unstable ``torch.sort``, so where a tie group straddles the top-p
  boundary its choice is arbitrary; there infodec is checked against an exact float64 nucleus with
  its lower-index tie rule, and against the nucleus invariants.
- Where the mass accumulated up to a token lies within ``TOL`` of ``p`` (top-p, typical), float32
  rounding may legitimately decide either way; only that token (for typical: the tokens whose
  surprise gaps are within float32 resolution of the crossing gap) is excluded.

To stay fast, every policy of a sweep is evaluated by one jitted call per parameter setting, and a
Python counter in that function checks that new parameter values never retrace.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation import logits_process as lp

from infodec.models.layers import MASK_VALUE
from infodec.policies import (
    Epsilon,
    EpsilonSmoothing,
    Eta,
    Greedy,
    MinP,
    RepetitionPenalty,
    StepInfo,
    Temperature,
    TopK,
    TopP,
    Typical,
    chain,
)
from infodec.policies.standard import _CANDIDATES

KEPT = MASK_VALUE / 2  # a log-probability or score above this: the token is in the support
TOL = 2e-5  # cumulative-mass distance to p below which float32 rounding may decide either way
GAP_TOL = 2e-5  # typical: surprise-gap distance within which float32 may reorder tokens


# --- data -------------------------------------------------------------------------------------------


def _rows(vocab, seed=0):
    """16 rows: near-uniform to peaked random rows, an LM-shaped Zipf row, then adversarial rows (huge
    magnitudes, all-equal rows, ties at the top and everywhere, entries already at MASK_VALUE)."""
    rng = np.random.default_rng(seed + vocab)
    normal = lambda scale: rng.normal(size=vocab) * scale
    zipf = rng.permutation(-1.1 * np.log(np.arange(1, vocab + 1))) + normal(0.1)
    top_tie = np.full(vocab, -1e4)
    top_tie[[3, 7]] = 1e4
    masked = normal(2)
    masked[::3] = MASK_VALUE
    tied_max = normal(2)
    tied_max[[1, 4, 9]] = tied_max.max() + 1
    rows = [
        normal(0.01),
        normal(0.1),
        normal(0.3),
        normal(1),
        normal(4),
        normal(15),
        zipf,
        np.zeros(vocab),
        np.full(vocab, 1e4),
        normal(1e4),
        np.where(np.arange(vocab) % 2, -1e4, 1e4),
        top_tie,
        np.round(normal(2)) / 2,
        np.round(normal(1)),
        masked,
        tied_max,
    ]
    return np.stack(rows).astype(np.float32)


def _context(vocab, seed=0):
    """``[16, 12]`` decode context with ``-1`` for empty slots (left and right padding, repeats)."""
    rng = np.random.default_rng(seed)
    context = rng.integers(-1, min(vocab, 40), size=(16, 12))
    context[0] = -1
    context[1, :5] = -1
    context[2, 7:] = -1
    context[3] = [5, 5, 5, 0, vocab - 1, 0, 2, 2, 9, 9, -1, -1]
    return context.astype(np.int32)


# --- what is compared: (name, kind, make policy, make HF processors, scalar values) ------------------


def _hf_chain(*makers):
    return lambda v: [make(x) for make, x in zip(makers, v)]


_T = lambda v: lp.TemperatureLogitsWarper(float(v))
_K = lambda v: lp.TopKLogitsWarper(int(v))
_P = lambda v: lp.TopPLogitsWarper(float(v))
_MIN_P = lambda v: lp.MinPLogitsWarper(float(v))
_TYP = lambda v: lp.TypicalLogitsWarper(float(v))
_EPS = lambda v: lp.EpsilonLogitsWarper(float(v))
_ETA = lambda v: lp.EtaLogitsWarper(float(v))
_REP = lambda v: lp.RepetitionPenaltyLogitsProcessor(float(v))

SINGLE = [
    ("temperature", "plain", Temperature, lambda v: [_T(v)], [0.3, 1.0, 2.5, 1e-4]),
    ("top_k", "plain", TopK, lambda v: [_K(v)], [1, 2, 10, 63, 257, 1000, 60000]),
    ("top_p", "top_p", TopP, lambda v: [_P(v)], [0.0, 0.05, 0.3, 0.5, 0.9, 0.99, 1.0]),
    ("min_p", "plain", MinP, lambda v: [_MIN_P(v)], [0.0, 0.05, 0.5, 1.0]),
    ("typical", "typical", Typical, lambda v: [_TYP(v)], [0.2, 0.5, 0.9, 0.99]),
    ("epsilon", "plain", Epsilon, lambda v: [_EPS(v)], [1e-4, 3e-4, 0.02, 0.3]),
    ("eta", "plain", Eta, lambda v: [_ETA(v)], [1e-4, 3e-4, 0.02, 0.3]),
    ("repetition_penalty", "plain", RepetitionPenalty, lambda v: [_REP(v)], [1.3, 0.7, 1.0, 2.0]),
]
CHAINS = [
    (
        "rep-temp-topk-topp",
        "top_p",
        lambda v: chain(RepetitionPenalty(v[0]), Temperature(v[1]), TopK(v[2]), TopP(v[3])),
        _hf_chain(_REP, _T, _K, _P),
        [(1.3, 0.7, 20, 0.9), (0.8, 1.5, 600, 0.95), (1.1, 1.0, 5, 0.5)],
    ),
    (
        "temp-minp",
        "plain",
        lambda v: chain(Temperature(v[0]), MinP(v[1])),
        _hf_chain(_T, _MIN_P),
        [(0.5, 0.1), (1.5, 0.05)],
    ),
    (
        "minp-temp",
        "plain",
        lambda v: chain(MinP(v[0]), Temperature(v[1])),
        _hf_chain(_MIN_P, _T),
        [(0.1, 0.5), (0.05, 1.5)],
    ),
    (
        "temp-typical",
        "typical",
        lambda v: chain(Temperature(v[0]), Typical(v[1])),
        _hf_chain(_T, _TYP),
        [(1.5, 0.9), (0.7, 0.5)],
    ),
    (
        "temp-epsilon",
        "plain",
        lambda v: chain(Temperature(v[0]), Epsilon(v[1])),
        _hf_chain(_T, _EPS),
        [(1.2, 1e-3), (0.6, 0.01)],
    ),
    (
        "temp-eta",
        "plain",
        lambda v: chain(Temperature(v[0]), Eta(v[1])),
        _hf_chain(_T, _ETA),
        [(0.9, 1e-3), (2.0, 0.01)],
    ),
    (
        "topk-temp-topp",
        "top_p",
        lambda v: chain(TopK(v[0]), Temperature(v[1]), TopP(v[2])),
        _hf_chain(_K, _T, _P),
        [(600, 2.0, 0.95), (300, 0.5, 0.99)],
    ),
]
ENTRIES = {entry[0]: entry for entry in SINGLE + CHAINS}


def _last_param(value):
    return value[-1] if isinstance(value, tuple) else value


def _per_row(values):
    """Per-row parameter arrays (a tuple of them for chains) from one value per row."""
    if isinstance(values[0], tuple):
        return tuple(_per_row([v[i] for v in values]) for i in range(len(values[0])))
    return np.asarray(values, np.int32 if isinstance(values[0], int) else np.float32)


# --- references -------------------------------------------------------------------------------------


def _hf(processors, logits, context):
    """HF-processed float32 scores (``-inf`` masked). Empty context slots become id ``V``, which HF's
    repetition penalty clamps into a dropped column, so every row gets exactly its own tokens."""
    scores = torch.tensor(np.asarray(logits, np.float32))
    ids = torch.tensor(np.where(context < 0, logits.shape[-1], context).astype(np.int64))
    for processor in processors:
        scores = processor(ids, scores)
    return scores.numpy()


def _softmax64(scores):
    return torch.softmax(torch.tensor(scores, dtype=torch.float64), -1).numpy()


def _log_softmax64(logits):
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _nucleus(row, p):
    """Exact float64 top-p set of one row with infodec's lower-index tie rule; whether a tie group
    straddles the boundary; the tokens whose decision is within TOL of p (float32 may go either way)."""
    probs = np.exp(_log_softmax64(row))
    order = np.argsort(-row.astype(np.float64), kind="stable")  # descending, ties: lower index first
    before = np.cumsum(probs[order]) - probs[order]
    count = row.size if p >= 1 else max(1, int(np.sum(before < p)))
    keep = np.zeros(row.size, bool)
    keep[order[:count]] = True
    ambiguous = np.zeros(row.size, bool)
    if 0 < p < 1:
        ambiguous[order[np.abs(before - p) < TOL]] = True
    if p >= 1:  # HF drops tokens whose float32 probability underflows to 0 even at p = 1
        ambiguous |= torch.softmax(torch.tensor(row), -1).numpy() == 0
    tie_split = count < row.size and row[order[count - 1]] == row[order[count]]
    return keep, tie_split, ambiguous


def _typical_ambiguous(row, p):
    """Tokens whose typical-sampling decision float32 rounding may flip: those whose accumulated mass is
    within TOL of p (with their gap ties) and, where distinct surprise gaps lie within GAP_TOL of the
    crossing gap (dense near-uniform rows: the entropy itself is only good to ~1e-6 in float32), every
    token in the fuzzy window of gaps around the crossing."""
    log_probs = _log_softmax64(row)
    probs = np.exp(log_probs)
    entropy = -np.sum(np.where(probs > 0, probs * log_probs, 0.0))
    gap = np.abs(-log_probs - entropy)
    order = np.argsort(gap, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    crossing = gap[order[min(max(int(np.sum(before < p)) - 1, 0), row.size - 1)]]
    close = np.abs(gap - crossing) <= GAP_TOL
    if not np.any(close & (gap != crossing)):
        return np.isin(gap, gap[order[np.abs(before - p) < TOL]])
    near = gap[order[np.abs(before - p) < TOL + probs[close].sum()]]
    low, high = min(near.min(initial=crossing), crossing) - GAP_TOL, max(near.max(initial=crossing), crossing) + GAP_TOL
    return (gap >= low) & (gap <= high)


def _check_top_p_invariants(log_pi, row, p, what):
    """Kept mass >= p and minimal, kept = top tokens, tied boundary tokens kept lowest index first."""
    probs = np.exp(_log_softmax64(row))
    keep = log_pi > KEPT
    live = row > KEPT  # tokens not already masked on input
    if p <= 0:
        np.testing.assert_array_equal(keep, np.arange(row.size) == np.argmax(row), err_msg=what)
        return
    if p >= 1:
        np.testing.assert_array_equal(keep, live, err_msg=f"{what}: p >= 1 must keep every token")
        return
    mass = probs[keep].sum()
    assert mass >= p - TOL, f"{what}: kept mass {mass} < p={p}"
    assert mass - probs[keep].min() < p + TOL, f"{what}: not minimal (mass {mass})"
    if (live & ~keep).any():
        assert row[keep].min() >= row[live & ~keep].max(), f"{what}: kept set is not the top tokens"
        tied = keep[row == row[keep].min()]
        assert np.all(tied[: tied.sum()]), f"{what}: tied boundary tokens must be kept lowest index first"


def _assert_finite_and_diagnostics(log_pi, diagnostics, logits, what, log_p=None):
    assert np.all(np.isfinite(log_pi)), f"{what}: non-finite log_pi"
    for name, value in diagnostics.items():
        assert np.all(np.isfinite(value)), f"{what}: non-finite diagnostic {name}"
    log_pi = np.asarray(log_pi, np.float64)
    pi = np.exp(log_pi)
    np.testing.assert_allclose(pi.sum(-1), 1.0, atol=1e-5, err_msg=what)
    entropy = -np.sum(np.where(pi > 0, pi * log_pi, 0.0), -1)
    log_p = _log_softmax64(logits) if log_p is None else log_p
    kl = np.sum(np.where(pi > 0, pi * (log_pi - log_p), 0.0), -1)
    np.testing.assert_allclose(diagnostics["entropy"], entropy, rtol=1e-4, atol=1e-4, err_msg=f"{what}: entropy")
    np.testing.assert_allclose(diagnostics["kl_to_model"], kl, rtol=1e-4, atol=1e-4, err_msg=f"{what}: KL")


def _check_setting(kind, chosen, log_pi, hf_probs, hf_keep, truncated_input, what):
    """One parameter setting of one entry (``chosen``: the value of each row) against HF, row by row
    where the ambiguity analysis needs it, all rows at once otherwise."""
    ambiguous = np.zeros(log_pi.shape, bool)
    skip = np.zeros(len(log_pi), bool)
    for r, value in enumerate(chosen):
        where = f"{what}={value} row={r}"
        if kind == "top_p":
            p = _last_param(value)
            keep, skip[r], ambiguous[r] = _nucleus(truncated_input[r], p)
            _check_top_p_invariants(log_pi[r], truncated_input[r], p, where)
            np.testing.assert_array_equal(
                (log_pi[r] > KEPT)[~ambiguous[r]], keep[~ambiguous[r]], err_msg=f"{where}: nucleus"
            )
        elif kind == "typical":
            ambiguous[r] = _typical_ambiguous(truncated_input[r], _last_param(value))
    compared = ~ambiguous & ~skip[:, None]
    probs = np.exp(np.float64(log_pi))
    bad = compared & ((np.abs(probs - hf_probs) > 1e-5) | ((log_pi > KEPT) != hf_keep))
    if bad.any():
        r = int(np.flatnonzero(bad.any(-1))[0])
        tokens = np.flatnonzero(bad[r])[:5]
        raise AssertionError(
            f"{what}={chosen[r]} row={r}: tokens {tokens.tolist()} ours {probs[r, tokens]} "
            f"HF {hf_probs[r, tokens]} (kept: ours {(log_pi[r, tokens] > KEPT).tolist()}, "
            f"HF {hf_keep[r, tokens].tolist()})"
        )
    return int(skip.sum()), int((~skip).sum())


# --- sweeps: one jitted call per parameter setting, all policies at once ----------------------------

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _jitted():
    traces = []

    def apply(policies, logits, step):
        traces.append(len(policies))
        return [policy(logits, step) for policy in policies]

    return jax.jit(apply), traces


def _sweep(vocab, names, per_row, rows: slice | list[int] = slice(None)):
    """Runs every entry on ``rows`` of ``_rows(vocab)``; returns the rows, context, per-entry results and
    the number of traces. Scalar mode: setting i gives every row value i. Per-row mode: setting s gives
    row r the value ``(r + s) % n`` (so each row meets every value)."""
    logits, context = _rows(vocab)[rows], _context(vocab)[rows]
    step = StepInfo(jnp.asarray(context), jnp.int32(len(context[0])))
    apply, traces = _jitted()
    settings = max(len(ENTRIES[name][4]) for name in names)
    results = {name: [] for name in names}  # per setting: (row values, log_pi, diagnostics)
    for s in range(settings):
        policies, row_values = [], []
        for name in names:
            values = ENTRIES[name][4]
            if per_row:
                chosen = [values[(r + s) % len(values)] for r in range(len(logits))]
                policies.append(ENTRIES[name][2](_per_row(chosen)))
            else:
                chosen = [values[s % len(values)]] * len(logits)
                policies.append(ENTRIES[name][2](chosen[0]))
            row_values.append(chosen)
        outputs = apply(tuple(policies), jnp.asarray(logits), step)
        for name, chosen, (log_pi, diagnostics) in zip(names, row_values, outputs):
            results[name].append((chosen, np.asarray(log_pi), {k: np.asarray(v) for k, v in diagnostics.items()}))
    return logits, context, results, len(traces)


def _check_sweep(sweep, name):
    """Checks every setting of one entry; returns (rows checked by invariants only, rows compared to HF)."""
    logits, context, results, _ = sweep
    _, kind, _, make_hf, _ = ENTRIES[name]
    hf = {}  # value -> HF probabilities, HF support, and the logits entering the last transform
    counts = np.zeros(2, int)
    log_p = _log_softmax64(logits)
    for chosen, log_pi, diagnostics in results[name]:
        what = f"{name} V={logits.shape[-1]}"
        _assert_finite_and_diagnostics(log_pi, diagnostics, logits, what, log_p)
        for value in set(chosen) - set(hf):
            processors = make_hf(value)
            scores = _hf(processors, logits, context)
            hf[value] = (_softmax64(scores), scores > KEPT, _hf(processors[:-1], logits, context))
        rows = np.arange(len(logits))
        hf_probs, hf_keep, truncated_input = (np.stack([hf[v][i][r] for r, v in zip(rows, chosen)]) for i in range(3))
        counts += _check_setting(kind, chosen, log_pi, hf_probs, hf_keep, truncated_input, what)
    return counts


SWEPT = [entry[0] for entry in SINGLE + CHAINS]
SWEPT_1000 = [entry[0] for entry in SINGLE] + ["rep-temp-topk-topp", "topk-temp-topp"]
SWEPT_49152 = [entry[0] for entry in SINGLE] + ["topk-temp-topp"]


@pytest.fixture(scope="module")
def scalar_sweep():
    return _sweep(64, SWEPT, per_row=False)


@pytest.fixture(scope="module")
def per_row_sweep_1000():
    return _sweep(1000, SWEPT_1000, per_row=True)


@pytest.fixture(scope="module")
def per_row_sweep_49152():
    # Fewer rows at this size (keeps the file fast): near-uniform rows that need the bisection,
    # peaked and LM-shaped rows the candidates settle, huge magnitudes and ties.
    return _sweep(49152, SWEPT_49152, per_row=True, rows=[0, 1, 2, 3, 5, 6, 9, 12])


# --- 1, 2, 3, 4. every policy and chain equals HF (scalar and per-row parameters) --------------------


@pytest.mark.parametrize("name", SWEPT)
def test_scalar_parameters_match_hf(scalar_sweep, name):
    invariants_only, against_hf = _check_sweep(scalar_sweep, name)
    if name == "top_p":  # both kinds of check happened
        assert invariants_only >= 5 and against_hf >= 50, (invariants_only, against_hf)


@pytest.mark.parametrize("name", SWEPT_1000)
def test_per_row_parameters_match_hf_v1000(per_row_sweep_1000, name):
    _check_sweep(per_row_sweep_1000, name)


@pytest.mark.parametrize("name", SWEPT_49152)
@pytest.mark.slow
def test_per_row_parameters_match_hf_v49152(per_row_sweep_49152, name):
    _check_sweep(per_row_sweep_49152, name)


def test_bisection_fallback_is_exercised(per_row_sweep_1000, per_row_sweep_49152):
    """Rows that need more than the lax.top_k candidates (exact bisection) were compared above, in
    batches that also hold rows settled by the candidates."""
    for sweep in (per_row_sweep_1000, per_row_sweep_49152):
        for name in ("top_k", "top_p", "typical", "topk-temp-topp"):
            kept = np.array([(log_pi > KEPT).sum(-1) for _, log_pi, _ in sweep[2][name]])  # [settings, rows]
            mixed = np.any(kept > _CANDIDATES, axis=1) & np.any(kept < _CANDIDATES, axis=1)
            assert mixed.any(), f"{name}: no batch mixed rows needing the bisection with settled rows"


def test_top_p_boundary_ties():
    """Designed rows (padded with MASK_VALUE): lower-index rule at the boundary, HF away from it."""
    pad = lambda values: np.concatenate([values, np.full(64 - len(values), MASK_VALUE)])
    middle = np.log([0.05, 0.1, 0.4, 0.1, 0.05, 0.1, 0.1, 0.1])  # 0.4, five tokens of 0.1, two of 0.05
    # Rows 5-7 reach p exactly (dyadic probabilities, exact in float32): the smallest set reaching p.
    designed = [
        pad(np.zeros(10)),
        pad(middle),
        pad(middle),
        pad([1.0, 5.0, 5.0, -3.0]),
        pad([20.0, 0.0, -5.0, -30.0, -80.0]),
        np.zeros(64),
        pad(np.zeros(4)),
        pad(np.zeros(4)),
    ]
    logits = np.stack(designed + designed[:1] * 8).astype(np.float32)  # the sweeps' [16, 64] shape
    p = np.array([0.35, 0.65, 0.85, 0.0, 1.0, 0.5, 0.5, 0.75] + [0.35] * 8, np.float32)
    log_pi = np.asarray(TopP(p)(jnp.asarray(logits))[0])
    kept = [np.flatnonzero(row > KEPT).tolist() for row in log_pi[:8]]
    assert kept == [
        [0, 1, 2, 3],
        [1, 2, 3, 5],
        [1, 2, 3, 5, 6, 7],
        [1],
        [0, 1, 2, 3, 4],
        list(range(32)),
        [0, 1],
        [0, 1, 2],
    ]
    np.testing.assert_allclose(np.exp(log_pi[0]), [0.25] * 4 + [0.0] * 60, atol=1e-7)
    hf = _hf([lp.TopPLogitsWarper(0.85)], logits[2:3], np.zeros((1, 0), np.int32))
    np.testing.assert_allclose(np.exp(log_pi[2]), _softmax64(hf)[0], atol=1e-6)  # ties inside the nucleus
    np.testing.assert_array_equal(log_pi[2] > KEPT, hf[0] > KEPT)


def test_repetition_penalty_needs_step():
    with pytest.raises(ValueError, match="step"):
        RepetitionPenalty(1.2)(jnp.zeros((16, 64)))
    with pytest.raises(ValueError, match="step"):
        chain(Temperature(0.7), RepetitionPenalty(1.2))(jnp.zeros((16, 64)))


def test_repetition_penalty_context(scalar_sweep):
    """Empty context leaves a row unchanged; a row's own tokens (only) are penalised."""
    logits, context, results, _ = scalar_sweep
    for chosen, log_pi, _ in results["repetition_penalty"]:
        if chosen[0] == 1.0:
            continue
        np.testing.assert_allclose(log_pi[0], _log_softmax64(logits[0]), atol=1e-5)  # row 0: all -1
        changed = np.flatnonzero(
            np.abs(log_pi[3] - _log_softmax64(logits[3]) - (log_pi[3, 1] - _log_softmax64(logits[3])[1])) > 1e-5
        )
        assert set(changed) == {0, 2, 5, 9, 63}


def test_chain_order_matters(scalar_sweep):
    """Temperature then min-p keeps a different set from min-p then temperature (both equal HF above)."""
    results = scalar_sweep[2]
    for (_, first, _), (_, second, _) in zip(results["temp-minp"], results["minp-temp"]):
        assert not np.array_equal(first > KEPT, second > KEPT)


# --- 5. greedy and temperature 0 ---------------------------------------------------------------------


def test_greedy_and_zero_temperature():
    logits = _rows(64)
    logits[7, [5, 9]] = 1.0  # ties at the top of an otherwise all-zero row
    greedy, diagnostics = Greedy()(jnp.asarray(logits))
    greedy = np.asarray(greedy)
    _assert_finite_and_diagnostics(greedy, diagnostics, logits, "greedy")
    np.testing.assert_array_equal(np.exp(greedy), np.eye(64)[np.argmax(logits, -1)])  # first index among ties
    assert np.exp(greedy[7, 5]) == 1.0 and np.exp(greedy[11, 3]) == 1.0 and np.exp(greedy[15, 1]) == 1.0
    np.testing.assert_array_equal(diagnostics["entropy"], 0.0)
    for temperature in (0.0, 0, 1e-5, 9.9e-5):
        np.testing.assert_array_equal(
            Temperature(temperature)(jnp.asarray(logits))[0], greedy, err_msg=str(temperature)
        )
    per_row = np.where(np.arange(16) % 3 == 0, 0.0, np.where(np.arange(16) % 3 == 1, 1e-5, 1.0)).astype(np.float32)
    mixed, _ = Temperature(per_row)(jnp.asarray(logits))
    np.testing.assert_array_equal(np.asarray(mixed)[per_row < 1], greedy[per_row < 1])
    np.testing.assert_allclose(np.asarray(mixed)[per_row == 1], _log_softmax64(logits[per_row == 1]), atol=1e-4)


def test_stream_shapes():
    logits = _rows(64)
    flat, _ = Temperature(0.7)(jnp.asarray(logits))
    np.testing.assert_array_equal(Temperature(0.7)(jnp.asarray(logits[:, None]))[0], flat)
    two = np.stack([logits, logits[::-1]], axis=1)
    np.testing.assert_array_equal(Temperature(0.7)(jnp.asarray(two))[0], flat)  # one-stream: stream 0


# --- 6. jit ------------------------------------------------------------------------------------------


def test_no_retrace_for_new_parameter_values(scalar_sweep, per_row_sweep_1000, per_row_sweep_49152):
    for sweep in (scalar_sweep, per_row_sweep_1000, per_row_sweep_49152):
        assert sweep[3] == 1, f"retraced: {sweep[3]} traces for {len(sweep[2]['top_p'])} parameter settings"


EAGER = [entry[0] for entry in SINGLE]


@pytest.mark.parametrize("name", EAGER)
def test_jit_matches_eager(scalar_sweep, name):
    logits, context, results, _ = scalar_sweep
    step = StepInfo(jnp.asarray(context), jnp.int32(len(context[0])))
    chosen, jitted, jitted_diagnostics = results[name][1]
    eager, eager_diagnostics = ENTRIES[name][2](chosen[0])(jnp.asarray(logits), step)
    np.testing.assert_array_equal(jitted > KEPT, np.asarray(eager) > KEPT, err_msg=name)
    np.testing.assert_allclose(np.exp(jitted), np.exp(eager), atol=1e-6, err_msg=name)
    for key, value in eager_diagnostics.items():
        np.testing.assert_allclose(jitted_diagnostics[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


# --- 7. construction and shape errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Temperature(-0.1), r"temperature.*>= 0"),
        (lambda: Temperature(np.array([0.5, -1.0])), r"temperature.*>= 0"),
        (lambda: Temperature(float("nan")), r"temperature"),
        (lambda: TopP(-0.01), r"top_p.*\[0, 1\]"),
        (lambda: TopP(1.5), r"top_p.*\[0, 1\]"),
        (lambda: TopK(0), r"top_k.*>= 1"),
        (lambda: TopK(-3), r"top_k.*>= 1"),
        (lambda: MinP(1.1), r"min_p.*\[0, 1\]"),
        (lambda: Typical(0.0), r"typical_p.*\(0, 1\)"),
        (lambda: Typical(1.0), r"typical_p.*\(0, 1\)"),
        (lambda: Epsilon(0.0), r"epsilon.*\(0, 1\)"),
        (lambda: Epsilon(1.0), r"epsilon.*\(0, 1\)"),
        (lambda: EpsilonSmoothing(0.0), r"epsilon.*\(0, 1\)"),
        (lambda: Eta(0.0), r"eta.*\(0, 1\)"),
        (lambda: Eta(1.2), r"eta.*\(0, 1\)"),
        (lambda: RepetitionPenalty(0.0), r"repetition_penalty.*> 0"),
        (lambda: RepetitionPenalty(-1.0), r"repetition_penalty.*> 0"),
    ],
)
def test_construction_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_chain_rejects_non_transforms():
    with pytest.raises(TypeError, match="transform"):
        chain(Temperature(0.7), lambda x: x)  # pyright: ignore[reportArgumentType] (the wrong type on purpose)
    with pytest.raises(TypeError, match="transform"):
        chain(0.7)  # pyright: ignore[reportArgumentType] (the wrong type on purpose)


@pytest.mark.parametrize("shape", [(10,), (1, 1, 1, 10)])
def test_logits_rank_errors(shape):
    for policy in (Greedy(), TopP(0.9), chain(Temperature(0.5), TopK(3))):
        with pytest.raises(ValueError, match=r"logits must be \[batch, vocab\]"):
            policy(jnp.zeros(shape))


# --- 8. spec test vector -----------------------------------------------------------------------------


def test_spec_temperature_vector():
    log_pi, _ = Temperature(0.5)(jnp.log(jnp.array([[0.7, 0.2, 0.1]])))
    np.testing.assert_allclose(np.exp(log_pi[0]), [0.907407, 0.074074, 0.018519], atol=1e-6)


@pytest.mark.parametrize("policy", [TopP, MinP, Typical, Epsilon, Eta])
def test_min_tokens_to_keep_must_be_positive(policy):
    with pytest.raises(ValueError, match="min_tokens_to_keep must be an integer >= 1"):
        policy(0.5, min_tokens_to_keep=0)


def test_epsilon_smoothing_is_martins_mixture_and_gives_truncated_tokens_epsilon_back():
    """π = (p + ε) / (1 + ε|V|) over the possible tokens, p what the chain so far leaves; a -inf logit
    (impossible token) stays impossible."""
    logits = jax.random.normal(jax.random.key(3), (2, 7)) * 3
    eps = 0.01
    p = np.asarray(jax.nn.softmax(logits, -1), np.float64)
    log_pi, _ = EpsilonSmoothing(eps)(logits)
    np.testing.assert_allclose(np.exp(np.asarray(log_pi)), (p + eps) / (1 + 7 * eps), rtol=1e-5)
    log_pi, _ = chain(TopK(2), EpsilonSmoothing(eps))(logits)
    top = np.asarray(jax.lax.top_k(logits, 2)[1])
    truncated = np.zeros_like(p)
    for b in range(2):
        truncated[b, top[b]] = p[b, top[b]] / p[b, top[b]].sum()
    np.testing.assert_allclose(np.exp(np.asarray(log_pi)), (truncated + eps) / (1 + 7 * eps), rtol=1e-5)
    banned = logits.at[:, 0].set(-jnp.inf)
    log_pi, _ = EpsilonSmoothing(eps)(banned)
    assert np.all(np.asarray(log_pi)[:, 0] == MASK_VALUE)
    rest = np.asarray(jax.nn.softmax(banned[:, 1:], -1), np.float64)
    np.testing.assert_allclose(np.exp(np.asarray(log_pi))[:, 1:], (rest + eps) / (1 + 6 * eps), rtol=1e-5)
