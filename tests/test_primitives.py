"""The public decode primitives (``prefill``, ``step``, ``select``, ``finish``, ``score``) as a user sees them.

* A hand-written loop of ``prefill`` -> ``step`` x n -> ``finish`` whose prefill has ``generate``'s output
  buffer (``chunk=DEFAULT_CHUNK``) equals ``generate`` bit for bit in every recorded buffer: one- and
  two-stream policies, ``num_samples > 1``, eager, jitted and under ``lax.scan``. With the default
  ``chunk=1`` its cache is shorter, the attention sums run over a different length, and the floats differ
  in the last bits (by up to 9 float32 ulps on an AVX-512 CPU), so there it gives the same tokens. (The
  same on a mesh: ``tests/sharding_check.py``.)
* ``select`` forks the cache, not only the tokens: a selected row continues exactly as its parent.
* ``score`` equals the log-probabilities ``generate`` recorded for its own tokens; with a policy, the log π
  it recorded (truncating, context-reading, stateful and two-stream policies), and under ``Temperature(1)``
  the cache-free score of the model.
* Bad input gets one clear error each.
"""

import jax
import numpy as np
import pytest

import infodec
from infodec.decoding import engine, finish, prefill, score, select, step
from infodec.decoding.state import DEFAULT_CHUNK
from infodec.models.layers import MASK_VALUE
from tests.tiny_models import tiny_llama

PROMPTS = [[1, 2, 3], [4, 0, 2, 5, 1, 1, 2]]
EVIDENCE = [[5, 5, 1], [2]]
NEW = 6
KEY = jax.random.key(7)


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=1, scale=1.5)


CASES = {
    "temperature": (lambda: infodec.chain(infodec.Temperature(0.9), infodec.TopK(4)), None, 3),
    "cfg": (lambda: infodec.ClassifierFreeGuidance(1.5), EVIDENCE, 2),
    "kl_guided": (lambda: infodec.KLGuidedTemperature(), EVIDENCE, 1),
}


def user_loop(model, params, policy, evidence, samples, key, how, chunk=1):
    state = prefill(
        model,
        params,
        PROMPTS,
        key,
        max_new_tokens=NEW,
        evidence=evidence,
        num_samples=samples,
        policy=policy,
        chunk=chunk,
    )
    if how == "eager":
        for _ in range(NEW):
            state = step(model, params, policy, state)
    elif how == "jit":
        jitted = jax.jit(step, static_argnums=0, donate_argnums=3)
        for _ in range(NEW):
            state = jitted(model, params, policy, state)
    else:  # one jitted lax.scan over the steps

        @jax.jit
        def loop(params, policy, state):
            return jax.lax.scan(lambda s, _: (step(model, params, policy, s), None), state, None, length=NEW)[0]

        state = loop(params, policy, state)
    return finish(state)


def _generate(model, params, case):
    make_policy, evidence, samples = CASES[case]
    return infodec.generate(
        model, params, PROMPTS, make_policy(), KEY, max_new_tokens=NEW, evidence=evidence, num_samples=samples
    )


@pytest.mark.parametrize("how", ["eager", "jit", "scan"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_user_loop_with_generates_buffer_equals_generate_bit_for_bit(tiny, case, how):
    model, params = tiny
    make_policy, evidence, samples = CASES[case]
    expected = _generate(model, params, case)
    got = user_loop(model, params, make_policy(), evidence, samples, KEY, how, chunk=DEFAULT_CHUNK)
    for field in ("tokens", "lengths", "prompt_tokens", "logp_model", "logp_policy"):
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), err_msg=field)
    assert sorted(got.diagnostics) == sorted(expected.diagnostics)
    for name in expected.diagnostics:
        np.testing.assert_array_equal(got.diagnostics[name], expected.diagnostics[name], err_msg=name)


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_loop_with_the_default_buffer_gives_generates_tokens(tiny, case):
    model, params = tiny
    make_policy, evidence, samples = CASES[case]
    expected = _generate(model, params, case)
    got = user_loop(model, params, make_policy(), evidence, samples, KEY, "jit")
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    np.testing.assert_array_equal(got.lengths, expected.lengths)


def test_stop_tokens_end_rows_in_a_user_loop(tiny):
    model, params = tiny
    policy = infodec.Temperature(1.0)
    key = jax.random.key(3)
    expected = infodec.generate(
        model, params, PROMPTS, policy, key, max_new_tokens=NEW, stop_tokens=(0, 1), num_samples=4
    )
    assert expected.lengths.min() < NEW  # the stops matter in this draw
    state = prefill(model, params, PROMPTS, key, max_new_tokens=NEW, stop_tokens=(0, 1), num_samples=4, policy=policy)
    while not np.all(np.asarray(state.done)):
        state = step(model, params, policy, state)
    got = finish(state)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    np.testing.assert_array_equal(got.lengths, expected.lengths)


def test_select_forks_the_cache(tiny):
    """Rows reordered and duplicated after 3 steps continue exactly as their parents do without the
    selection: the same tokens and log-probabilities, which needs each parent's cache, logits and keys."""
    model, params = tiny
    policy = infodec.Temperature(1.2)
    state = prefill(model, params, PROMPTS, jax.random.key(5), max_new_tokens=NEW, num_samples=2, policy=policy)
    for _ in range(3):
        state = step(model, params, policy, state)
    rows = np.array([3, 0, 0, 2])
    forked = select(state, rows)
    for _ in range(NEW - 3):
        state = step(model, params, policy, state)
        forked = step(model, params, policy, forked)
    parent, child = finish(state), finish(forked)
    np.testing.assert_array_equal(child.tokens, parent.tokens[rows])
    np.testing.assert_allclose(child.logp_model, parent.logp_model[rows], atol=1e-6)
    np.testing.assert_array_equal(child.prompt_tokens, parent.prompt_tokens[rows])
    np.testing.assert_array_equal(np.asarray(forked.cache.k), np.asarray(state.cache.k)[:, rows])


def test_select_with_a_key_gives_forks_their_own_draws(tiny):
    model, params = tiny
    policy = infodec.Temperature(1.5)
    state = prefill(model, params, PROMPTS[:1], jax.random.key(5), max_new_tokens=NEW, policy=policy)
    state = step(model, params, policy, state)
    same = select(state, np.zeros(16, int))
    fresh = select(state, np.zeros(16, int), key=jax.random.key(9))
    for _ in range(NEW - 1):
        same, fresh = step(model, params, policy, same), step(model, params, policy, fresh)
    assert len({tuple(row) for row in finish(same).tokens}) == 1
    assert len({tuple(row) for row in finish(fresh).tokens}) > 1


def test_score_equals_the_log_probs_generate_records(tiny):
    model, params = tiny
    out = infodec.generate(model, params, PROMPTS, infodec.Temperature(1.0), jax.random.key(2), max_new_tokens=NEW)
    continuations = [row[:n].tolist() for row, n in zip(out.tokens, out.lengths)]
    logp, mask = score(model, params, PROMPTS, continuations)
    assert logp.shape == mask.shape == (2, out.lengths.max())
    np.testing.assert_allclose(logp, np.where(out.mask(), out.logp_model, 0.0)[:, : logp.shape[1]], atol=1e-5)


SCORED = {
    "top_p": (lambda: infodec.chain(infodec.Temperature(0.8), infodec.TopP(0.7)), None),
    "penalties": (lambda: infodec.chain(infodec.RepetitionPenalty(1.6), infodec.DRY(0.8, allowed_length=1)), None),
    "mirostat": (lambda: infodec.MirostatV2(tau=2.0, eta=0.3), None),
    "cfg": (lambda: infodec.ClassifierFreeGuidance(1.5), EVIDENCE),
    "kl_guided": (lambda: infodec.KLGuidedTemperature(), EVIDENCE),
}


@pytest.mark.parametrize("case", SCORED)
def test_score_under_a_policy_equals_the_log_pi_generate_records(tiny, case):
    """Teacher forcing the engine's own samples gives back the log π it recorded while sampling them:
    the policy saw the same logits, context (penalties), per-row state (Mirostat) and evidence stream."""
    model, params = tiny
    make, evidence = SCORED[case]
    out = infodec.generate(
        model, params, PROMPTS, make(), jax.random.key(3), max_new_tokens=NEW, evidence=evidence, num_samples=3
    )
    prompts = [p for p in PROMPTS for _ in range(3)]
    continuations = [row[:n].tolist() for row, n in zip(out.tokens, out.lengths)]
    evidence_rows = None if evidence is None else [e for e in evidence for _ in range(3)]
    logp, mask = score(model, params, prompts, continuations, policy=make(), evidence=evidence_rows, batch_size=4)
    recorded = np.where(out.mask(), out.logp_policy, 0.0)[:, : logp.shape[1]]
    assert mask.sum() == out.lengths.sum() > 0
    assert not np.allclose(recorded, np.where(out.mask(), out.logp_model, 0.0)[:, : logp.shape[1]])  # π is not p_θ
    np.testing.assert_allclose(logp, recorded, atol=2e-5)


def test_score_under_temperature_one_is_the_models_score(tiny):
    model, params = tiny
    continuations = [[3, 3, 1, 0, 5], [2, 4]]
    plain, mask = score(model, params, PROMPTS, continuations)
    forced, forced_mask = score(model, params, PROMPTS, continuations, policy=infodec.Temperature(1.0))
    np.testing.assert_array_equal(mask, forced_mask)
    np.testing.assert_allclose(forced, plain, atol=2e-5)


def test_scoring_under_another_setting_of_a_policy_does_not_recompile(tiny):
    model, params = tiny
    continuations = [[3, 3, 1], [2, 5, 4]]
    score(model, params, PROMPTS, continuations, policy=infodec.TopP(0.9))
    before = engine.compile_count()
    score(model, params, PROMPTS, continuations, policy=infodec.TopP(0.6))
    assert engine.compile_count() == before


def test_score_gives_truncated_tokens_no_mass(tiny):
    """Under greedy decoding every token but the model's argmax has (numerically) zero probability."""
    model, params = tiny
    plain, _ = score(model, params, PROMPTS, [[3, 3, 1], [2, 5, 4]])
    argmax = int(np.argmax(np.asarray(model.apply(params, np.array([PROMPTS[0]]), np.arange(3)[None])[0][0, -1])))
    other = (argmax + 1) % model.vocab_size
    logp, _ = score(model, params, PROMPTS[:1] * 2, [[argmax], [other]], policy=infodec.Greedy())
    assert logp[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert logp[1, 0] < MASK_VALUE / 2
    assert plain.min() > -30  # the model itself gives every token mass


def test_steps_do_not_recompile_across_calls(tiny):
    model, params = tiny
    for temperature in (0.7, 1.3):
        policy = infodec.Temperature(temperature)
        state = prefill(model, params, PROMPTS, jax.random.key(0), max_new_tokens=NEW, policy=policy)
        state = step(model, params, policy, state)
        state = select(state, np.array([1, 0]))
        if temperature == 0.7:
            before = engine.compile_count()
    assert engine.compile_count() == before


def test_clear_errors(tiny):
    model, params = tiny
    policy = infodec.Temperature(1.0)
    state = prefill(model, params, PROMPTS, jax.random.key(0), max_new_tokens=1, policy=policy)
    with pytest.raises(ValueError, match=r"rows \[2, -1\] are out of range: the state has 2 rows"):
        select(state, np.array([0, 2, -1]))
    with pytest.raises(ValueError, match="reads 2 stream"):
        step(model, params, infodec.ClassifierFreeGuidance(1.0), state)
    state = step(model, params, policy, state)
    with pytest.raises(ValueError, match="every row of the state is done"):
        step(model, params, policy, state)
    with pytest.raises(TypeError, match="must be a DecodeState"):
        finish({"tokens": None})  # pyright: ignore[reportArgumentType] (a dict is not a state)
    with pytest.raises(ValueError, match="one each"):
        score(model, params, PROMPTS, [[1]])
    with pytest.raises(ValueError, match="1 evidence prompts for 2 continuations"):
        score(model, params, PROMPTS, [[1], [2]], policy=infodec.ClassifierFreeGuidance(1.0), evidence=[[1]])
    state = prefill(model, params, PROMPTS, jax.random.key(0), max_new_tokens=2, policy=policy)
    with pytest.raises(ValueError, match="3 tokens do not fit the state's 2 free output slots"):
        engine.teacher_force(model, params, policy, state, np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match=r"tokens must be integer ids \[rows=2, L\]"):
        engine.teacher_force(model, params, policy, state, np.ones((3, 2), np.int32))
