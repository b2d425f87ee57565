"""The decoding engine against exact, cache-free references on a tiny random Llama (vocabulary 6).

* Distributions: every policy's sequence distribution over 3 new tokens is enumerated exactly from
  full-sequence logits; ``generate``'s samples pass a chi-square goodness-of-fit test (and a wrong
  reference is rejected, so the test has power). Per-token log P_G and log π are exact too.
* Independence of rows with identical prompts, greedy == uncached argmax, stop tokens, left padding,
  ``num_samples`` sharing one prefill, no recompilation, jit == no jit, ``stream`` == ``generate``,
  and the errors at the boundary.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infodec
from infodec import theory
from infodec.decoding import engine
from tests.tiny_models import VOCAB, Reference, exact_sequences, policy_log_probs, sequence_index, tiny_llama

PROMPT = [1, 2, 3]
HORIZON = 3
DRAWS = 2000
ALPHA = 1e-3
# Three prompts of different lengths in one bucket (16): left padding differs per row.
PROMPTS = [[1, 2, 3], [4, 0, 2, 5, 1, 1, 2], [3, 3, 1, 0, 5, 2, 4, 4, 1, 0, 2, 5]]
STEPS = 8  # new tokens in the greedy / chained-policy tests (chunk 4: one compiled shape for them)

POLICIES = {
    "temperature-0.7": lambda: infodec.Temperature(0.7),
    "temperature-1.3+top_k-3": lambda: infodec.chain(infodec.Temperature(1.3), infodec.TopK(3)),
    "top_p-0.8": lambda: infodec.TopP(0.8),
    "min_p-0.2": lambda: infodec.MinP(0.2),
    "typical-0.9": lambda: infodec.Typical(0.9),
    "epsilon-0.1": lambda: infodec.Epsilon(0.1),
    "eta-0.1": lambda: infodec.Eta(0.1),
    "top_k-2+epsilon_smoothing-0.05": lambda: infodec.chain(infodec.TopK(2), infodec.EpsilonSmoothing(0.05)),
}


def sampled_policy(temperature=0.8, top_p=0.9):
    return infodec.chain(infodec.Temperature(temperature), infodec.TopP(top_p))


@pytest.fixture(scope="module")
def tiny():
    model, params = tiny_llama(seed=1, scale=1.5)
    return model, params, Reference(model, params)


@pytest.fixture(scope="module")
def draws(tiny):
    """``draw(name) -> (exact, out)``: the exact distribution of a policy and ``DRAWS`` samples of it
    (one ``generate`` call, ``num_samples=DRAWS``), memoised so several tests share them."""
    model, params, ref = tiny
    memo = {}

    def draw(name):
        if name not in memo:
            policy = POLICIES[name]()
            key = jax.random.key(100 + list(POLICIES).index(name))
            out = infodec.generate(
                model, params, [PROMPT], policy, key, max_new_tokens=HORIZON, num_samples=DRAWS, chunk=4
            )
            memo[name] = exact_sequences(ref, policy, PROMPT, HORIZON), out
        return memo[name]

    return draw


def chi_square(samples: np.ndarray, prob: np.ndarray) -> float:
    """p-value of sampled ``[N, H]`` sequences against exact probabilities (``infodec.theory``'s test)."""
    with np.errstate(divide="ignore"):
        return theory.chi_square(samples, np.log(prob)).p_value


def counts(tokens: np.ndarray) -> np.ndarray:
    return np.bincount(sequence_index(tokens), minlength=VOCAB ** tokens.shape[1])


# --- 1. distributions -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.slow
def test_samples_follow_exact_policy_distribution(tiny, draws, name):
    (seqs, prob, log_pi, log_p), out = draws(name)
    assert out.tokens.shape == (DRAWS, HORIZON) and np.all(out.lengths == HORIZON)
    observed = counts(out.tokens)
    # Truncated policies: tokens outside the kept set are never sampled.
    assert observed[prob == 0].sum() == 0, f"{name} sampled sequences of probability 0"
    p_value = chi_square(out.tokens, prob)
    print(f"\nchi-square {name}: p = {p_value:.4g} ({int((prob > 0).sum())} sequences in the support)")
    assert p_value > ALPHA, f"{name}: samples do not follow the exact distribution (p = {p_value:.3g})"
    # Per-token log P_G and log π of the sampled tokens, against the cache-free enumeration.
    index = sequence_index(out.tokens)
    np.testing.assert_allclose(out.logp_model, log_p[index], atol=2e-4)
    np.testing.assert_allclose(out.logp_policy, log_pi[index], atol=2e-4)
    lm, lp = out.sequence_logp()
    np.testing.assert_allclose(lp, log_pi[index].sum(1), atol=5e-4)
    np.testing.assert_allclose(lm, log_p[index].sum(1), atol=5e-4)
    # Diagnostics of the first step (same state for every row): entropy of π and KL(π || P_G).
    ref = tiny[2]
    first_pi = policy_log_probs(POLICIES[name](), ref.logits(PROMPT)[None])[0]
    first_p = ref.log_model(PROMPT)
    pi = np.exp(first_pi)
    np.testing.assert_allclose(out.diagnostics["entropy"][:, 0], -np.sum(pi * np.where(pi > 0, first_pi, 0)), atol=1e-4)
    np.testing.assert_allclose(
        out.diagnostics["kl_to_model"][:, 0], np.sum(np.where(pi > 0, pi * (first_pi - first_p), 0)), atol=1e-4
    )


@pytest.mark.slow
def test_chi_square_rejects_a_wrong_distribution(tiny, draws):
    """Negative control: samples at T = 0.7 are rejected against the exact T = 1.0 distribution."""
    _, out = draws("temperature-0.7")
    _, wrong, _, _ = exact_sequences(tiny[2], infodec.Temperature(1.0), PROMPT, HORIZON)
    p_value = chi_square(out.tokens, wrong)
    print(f"\nnegative control (T=0.7 samples vs T=1.0): p = {p_value:.3g}")
    assert p_value < ALPHA


def _flat_inversion(log_pi: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the first token whose float64 CDF reaches ``u`` (``u`` in (0, 1]), and the CDF."""
    cdf = np.cumsum(np.exp(log_pi.astype(np.float64)), axis=-1)
    cdf /= cdf[:, -1:]
    return np.array([np.searchsorted(row, x) for row, x in zip(cdf, u, strict=True)]), cdf


def test_sample_tokens_inverts_the_cdf_of_the_same_uniforms():
    """The two-level inversion picks the token the flat float64 CDF picks for each row's uniform, except
    within float32 rounding of a boundary; tokens of probability 0 (single ones, whole blocks, the
    padded tail of a vocabulary that is not a multiple of the block) are never picked."""
    rows, vocab = 3000, 3 * engine.SAMPLE_BLOCK + 37
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, (rows, vocab))
    logits[rng.random((rows, vocab)) < 0.3] = -np.inf  # scattered zeros
    logits[: rows // 3, : 2 * engine.SAMPLE_BLOCK] = -np.inf  # whole blocks of zeros, mass only at the end
    logits[rows // 3 : rows // 2, engine.SAMPLE_BLOCK :] = -np.inf  # mass only in the first block
    logits[-1] = -np.inf
    logits[-1, vocab - 1] = 0.0  # the very last token alone
    log_pi = np.asarray(jax.nn.log_softmax(logits.astype(np.float32)))
    keys = jax.random.split(jax.random.key(7), rows)
    u = 1.0 - np.asarray(jax.vmap(jax.random.uniform)(keys), np.float64)
    got = np.asarray(engine.sample_tokens(keys, jnp.asarray(log_pi)))
    want, cdf = _flat_inversion(log_pi, u)
    assert np.all(np.isfinite(log_pi[np.arange(rows), got])), "a token of probability 0 was picked"
    assert got[-1] == vocab - 1
    differ = np.flatnonzero(got != want)
    near_boundary = np.abs(cdf[differ, want[differ]] - u[differ]) < 1e-5
    near_boundary |= np.abs(cdf[differ, np.maximum(want[differ] - 1, 0)] - u[differ]) < 1e-5
    assert np.all(near_boundary), f"rows {differ[~near_boundary][:8]} pick tokens away from a CDF boundary"
    assert differ.size <= rows // 200, differ.size


# --- 2. independence ----------------------------------------------------------------------------------


def _check_pairs_independent(tokens, exact_prob, seqs, label):
    """Adjacent rows (2i, 2i+1) as pairs: the joint of their first tokens is the product of the
    marginals (chi-square), and they coincide as often as two independent draws (Σ P(y)²)."""
    first = np.array([exact_prob[seqs[:, 0] == v].sum() for v in range(VOCAB)])
    a, b = tokens[0::2], tokens[1::2]
    p_value = chi_square(np.stack([a[:, 0], b[:, 0]], axis=1), np.outer(first, first).reshape(-1))
    print(f"\npair independence ({label}): p = {p_value:.4g}")
    assert p_value > ALPHA
    same = np.mean(np.all(a == b, axis=1))
    expected = np.sum(exact_prob**2)
    assert abs(same - expected) < 5 * np.sqrt(expected * (1 - expected) / len(a)) + 1e-3, (same, expected)


def test_identical_prompts_give_independent_samples(tiny, draws):
    model, params, _ = tiny
    (seqs, prob, _, _), out = draws("temperature-0.7")
    assert len(np.unique(sequence_index(out.tokens))) > 20  # rows are not copies of each other
    _check_pairs_independent(out.tokens, prob, seqs, "num_samples rows")
    # The same prompt given DRAWS times: same distribution, independent rows.
    separate = infodec.generate(
        model, params, [PROMPT] * DRAWS, infodec.Temperature(0.7), jax.random.key(7), max_new_tokens=HORIZON, chunk=4
    )
    p_value = chi_square(separate.tokens, prob)
    print(f"\nchi-square separate identical prompts: p = {p_value:.4g}")
    assert p_value > ALPHA
    _check_pairs_independent(separate.tokens, prob, seqs, "separate prompts")


def test_num_samples_equals_repeated_prompts_with_the_same_key(tiny, draws):
    """Broadcasting the prefilled cache over samples is invisible: with the same key, num_samples=M on
    one prompt gives exactly the rows of M copies of the prompt."""
    model, params, _ = tiny
    _, out = draws("temperature-0.7")
    key = jax.random.key(100 + list(POLICIES).index("temperature-0.7"))
    copies = infodec.generate(
        model, params, [PROMPT] * DRAWS, infodec.Temperature(0.7), key, max_new_tokens=HORIZON, chunk=4
    )
    np.testing.assert_array_equal(copies.tokens, out.tokens)
    np.testing.assert_allclose(copies.logp_model, out.logp_model, atol=1e-5)


# --- 3. greedy, stop tokens, padding --------------------------------------------------------------------


def test_greedy_equals_uncached_argmax_with_stop_tokens_and_padding(tiny):
    model, params, ref = tiny
    expected = ref.greedy(PROMPTS, STEPS)  # full-sequence recomputation at every step
    out = infodec.generate(model, params, PROMPTS, infodec.Greedy(), jax.random.key(0), max_new_tokens=STEPS, chunk=4)
    np.testing.assert_array_equal(out.tokens, expected)
    assert np.all(out.lengths == STEPS)
    np.testing.assert_allclose(out.logp_policy, 0.0, atol=1e-6)
    for row, prompt in enumerate(PROMPTS):
        log_p = [ref.log_model(list(prompt) + list(expected[row, :t]))[expected[row, t]] for t in range(STEPS)]
        np.testing.assert_allclose(out.logp_model[row], log_p, atol=2e-4)
    # Each left-padded row decodes as its prompt does alone.
    for row, prompt in enumerate(PROMPTS):
        alone = infodec.generate(
            model, params, [prompt], infodec.Greedy(), jax.random.key(0), max_new_tokens=STEPS, chunk=4
        )
        np.testing.assert_array_equal(alone.tokens[0], out.tokens[row])

    # Stop tokens: a token that ends some rows early while at least one other row never produces it.
    stop, stops_at = None, None
    for token in range(VOCAB):
        first = [int(np.argmax(r == token)) if np.any(r == token) else None for r in expected]
        if any(f is not None and f < STEPS - 1 for f in first) and any(f is None for f in first):
            stop, stops_at = token, first
            break
    assert stop is not None, "the tiny model has no suitable stop token; change the seed"
    pad = next(t for t in range(VOCAB) if t != stop)
    out = infodec.generate(
        model,
        params,
        PROMPTS,
        infodec.Greedy(),
        jax.random.key(0),
        max_new_tokens=STEPS,
        stop_tokens=[stop],
        chunk=4,
        pad_id=pad,
    )
    assert stops_at is not None
    for row, at in enumerate(stops_at):
        length = STEPS if at is None else at + 1
        assert out.lengths[row] == length, (row, out.lengths)
        np.testing.assert_array_equal(out.tokens[row, :length], expected[row, :length])
        assert np.all(out.tokens[row, length:] == pad)
        assert np.all(out.logp_model[row, length:] == 0) and np.all(out.logp_policy[row, length:] == 0)
        assert np.all(out.diagnostics["entropy"][row, length:] == 0)
    np.testing.assert_array_equal(out.mask(), np.arange(STEPS)[None] < out.lengths[:, None])


# --- 4. no recompilation -----------------------------------------------------------------------------


def test_no_recompilation_within_a_bucket(tiny):
    model, params, _ = tiny
    rng = np.random.RandomState(0)

    def run(lengths, temperature, top_p, seed, stops):
        prompts = [rng.randint(0, VOCAB, n).tolist() for n in lengths]
        return infodec.generate(
            model,
            params,
            prompts,
            sampled_policy(temperature, top_p),
            jax.random.key(seed),
            max_new_tokens=STEPS,
            stop_tokens=stops,
            chunk=4,
        )

    run([5, 2, 9], 0.8, 0.9, 0, ())  # warm-up: compiles prefill and the decode loop
    before = infodec.compile_count()
    stop_sets = [(), None, (1,), (2, 4), (0, 1, 5), (3,), (), (5, 4, 3, 2), (1, 2), (0,)]
    for i in range(10):
        longest = 3 + (i * 5) % 13  # 3 .. 15: all in bucket 16
        run([longest, max(1, longest - 2), 1 + i % 3], 0.5 + 0.1 * i, 0.5 + 0.05 * i, i, stop_sets[i])
    assert infodec.compile_count() == before, dict(engine._TRACES)
    run([17, 4, 2], 0.8, 0.9, 0, ())  # bucket 32: a new shape
    assert infodec.compile_count() > before


def test_the_first_call_compiles_each_program_once(tiny):
    """The decode loop is compiled ahead, while prefill runs, for the state prefill will hand it; the call
    must then reuse that executable. XLA's cache key tells committed arrays from uncommitted ones, so a
    state whose placement differs from the lowered one compiles the loop a second time (it did: prefill's
    outputs mixed both)."""
    model, params, _ = tiny
    params = jax.device_put(params, jax.devices()[0])  # committed, as infodec.load's are
    compiled: list[str] = []
    listener = logging.Handler()
    listener.emit = lambda record: compiled.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("jax")
    logger.addHandler(listener)
    jax.config.update("jax_log_compiles", True)  # globally: the loop compiles in another thread
    try:  # a shape no other test uses (11 new tokens); num_samples > 1 repeats prefill's outputs per sample
        infodec.generate(
            model, params, [[1, 2], [3]], sampled_policy(), jax.random.key(0), max_new_tokens=11, num_samples=3
        )
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.removeHandler(listener)
    finished = [m for m in compiled if m.startswith("Finished XLA compilation")]
    assert sum("_decode_loop_impl" in m for m in finished) == 1, finished
    assert sum("_prefill_impl" in m for m in finished) == 1, finished


# --- 5. jit == no jit ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["greedy", "sampled"])
@pytest.mark.slow
def test_unjitted_engine_gives_identical_tokens(tiny, kind):
    model, params, _ = tiny
    policy = infodec.Greedy() if kind == "greedy" else sampled_policy()
    key = jax.random.key(11)
    # Same compiled shapes as the other tests; the first 3 tokens do not depend on max_new_tokens.
    jitted = infodec.generate(model, params, PROMPTS, policy, key, max_new_tokens=STEPS, chunk=4)
    with jax.disable_jit():
        eager = infodec.generate(model, params, PROMPTS, policy, key, max_new_tokens=3, chunk=1)
    np.testing.assert_array_equal(eager.tokens, jitted.tokens[:, :3])
    np.testing.assert_allclose(eager.logp_model, jitted.logp_model[:, :3], atol=1e-5)
    np.testing.assert_allclose(eager.logp_policy, jitted.logp_policy[:, :3], atol=1e-5)


# --- 6. num_samples -------------------------------------------------------------------------------------


def test_num_samples_rows_are_prompt_major_and_share_one_prefill(tiny, monkeypatch):
    model, params, ref = tiny
    prompts, m = PROMPTS[:2], 3
    prefill_batches = []
    original = engine.run_prompt

    def spy(model_, params_, tokens, positions, cache, **kwargs):
        prefill_batches.append(tokens.shape[0])
        return original(model_, params_, tokens, positions, cache, **kwargs)

    monkeypatch.setattr(engine, "run_prompt", spy)
    out = infodec.generate(
        model, params, prompts, infodec.Greedy(), jax.random.key(0), max_new_tokens=STEPS, num_samples=m, chunk=4
    )
    assert prefill_batches == [len(prompts)]  # one prefill over the B prompts, not B * M rows
    assert out.tokens.shape == (len(prompts) * m, STEPS)
    expected = ref.greedy(prompts, STEPS)
    np.testing.assert_array_equal(out.tokens, np.repeat(expected, m, axis=0))  # row = prompt * M + sample
    longest = max(map(len, prompts))
    want_prompts = np.full((len(prompts) * m, longest), -1)
    for row in range(len(prompts) * m):
        want_prompts[row, : len(prompts[row // m])] = prompts[row // m]
    np.testing.assert_array_equal(out.prompt_tokens, want_prompts)
    repeated = [p for p in prompts for _ in range(m)]
    separate = infodec.generate(
        model, params, repeated, infodec.Greedy(), jax.random.key(0), max_new_tokens=STEPS, chunk=4
    )
    assert prefill_batches[-1] == len(repeated)
    np.testing.assert_array_equal(separate.tokens, out.tokens)
    np.testing.assert_array_equal(separate.lengths, out.lengths)
    np.testing.assert_allclose(separate.logp_model, out.logp_model, atol=1e-5)
    np.testing.assert_array_equal(separate.prompt_tokens, out.prompt_tokens)


# --- 7. stream ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stops", [(), (5,)], ids=["no-stop", "stop"])
def test_stream_yields_the_tokens_of_generate(tiny, stops):
    model, params, _ = tiny
    key = jax.random.key(21)
    out = infodec.generate(
        model, params, PROMPTS, sampled_policy(), key, max_new_tokens=STEPS, stop_tokens=stops, chunk=4
    )
    if stops:
        assert np.any(out.lengths < STEPS)  # the stop token is exercised
    for chunk in (1, 4):
        pieces = list(
            infodec.stream(
                model, params, PROMPTS, sampled_policy(), key, max_new_tokens=STEPS, stop_tokens=stops, chunk=chunk
            )
        )
        assert all(p.shape[0] == len(PROMPTS) and 1 <= p.shape[1] <= chunk for p in pieces)
        tokens = np.concatenate(pieces, axis=1)
        # The stream ends once every row is done: the rest of generate's output is padding.
        assert out.lengths.max() <= tokens.shape[1] <= STEPS
        np.testing.assert_array_equal(tokens, out.tokens[:, : tokens.shape[1]])
        assert np.all(out.tokens[:, tokens.shape[1] :] == 0)
    if not stops:
        assert tokens.shape[1] == STEPS


# --- 8. errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompts, kwargs, match",
    [
        ([], {}, "prompts is empty"),
        ([[1, 2], []], {}, "prompt 1 is empty"),
        (np.zeros((1, 0), np.int32), {}, "prompt 0 is empty"),
        (["hello"], {}, "string prompts need tokenizer"),
        ("hello", {}, "string prompts need tokenizer"),
        ([[1] * 60], {"max_new_tokens": 5}, "exceeds the model's context of 64"),
        ([[1, 2]], {"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ([[1, 2]], {"max_new_tokens": -3}, "max_new_tokens must be an integer >= 1"),
        ([[1, 2]], {"num_samples": 0}, "num_samples must be an integer >= 1"),
    ],
    ids=[
        "no-prompts",
        "empty-prompt",
        "empty-array-prompt",
        "strings-no-tokenizer",
        "string-no-tokenizer",
        "too-long",
        "max-new-0",
        "max-new-negative",
        "num-samples-0",
    ],
)
def test_clear_errors(tiny, prompts, kwargs, match):
    model, params, _ = tiny
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        infodec.generate(model, params, prompts, infodec.Greedy(), jax.random.key(0), **kwargs)
    with pytest.raises(ValueError, match=match):
        next(iter(infodec.stream(model, params, prompts, infodec.Greedy(), jax.random.key(0), **kwargs)))


def test_policies_of_different_classes_never_share_compiled_code():
    """jax treedefs of flax dataclass policies with the same field layout compare equal across classes
    (MinP vs Epsilon, Temperature vs TopK), so a colliding jit-cache entry could run the wrong policy;
    the engine keys its compiled loop on the class-aware structure as well."""
    key = engine.policy_structure
    assert key(infodec.MinP(0.2)) != key(infodec.Epsilon(0.1))
    assert key(infodec.Temperature(0.7)) != key(infodec.TopK(3))
    assert key(infodec.chain(infodec.Temperature(0.7), infodec.TopP(0.9))) != key(
        infodec.chain(infodec.TopK(2), infodec.MinP(0.9))
    )
    # Same classes, other values: the same key (no recompilation).
    assert key(sampled_policy(0.5, 0.7)) == key(sampled_policy(1.5, 0.95))
    hash(key(sampled_policy()))
