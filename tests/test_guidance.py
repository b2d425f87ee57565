"""Classifier guidance (P1 §3.1) with a FUDGE-style topic discriminator: closed form, value-policy form,
sampling against exact enumeration, training, persistence and errors."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infodec
from infodec.policies import guidance_training as gt
from infodec.policies.base import StepInfo
from infodec.policies.guidance import ClassifierGuidance, discriminator_logits, init_discriminator, input_embeddings
from infodec.studies.guidance import format_table
from infodec.theory import chi_square
from tests.tiny_models import VOCAB, tiny_llama

TOPICS, WIDTH, HEAD = 3, 16, 16


def random_head(seed=0, width=WIDTH, topics=TOPICS, sharpen=4.0):
    params = init_discriminator(jax.random.key(seed), width, topics, HEAD)
    params = jax.tree.map(lambda x: x, params)
    params["out"] = {**params["out"], "kernel": params["out"]["kernel"] * sharpen}
    return params


def closed_form(policy, logits, hidden):
    """numpy reference: top-k of log P_G, g = log_softmax(D)[target], π ∝ exp(log P_G + λ g) on the top-k."""
    logits = np.asarray(logits, np.float64)
    log_p = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    rows, vocab = log_p.shape
    k = min(policy.top_k, vocab)
    targets = np.broadcast_to(np.asarray(policy.target), (rows,))
    lam = np.broadcast_to(np.asarray(policy.scale, np.float64), (rows,))
    out = np.full((rows, vocab), -np.inf)
    for b in range(rows):
        top = np.argsort(-log_p[b], kind="stable")[:k]
        d = np.asarray(
            discriminator_logits(
                policy.discriminator_params,
                jnp.asarray(hidden[b : b + 1], jnp.float32),
                jnp.asarray(policy.embeddings)[top][None],
                TOPICS,
                HEAD,
            )[0],
            np.float64,
        )
        g = d[:, int(targets[b])] - np.logaddexp.reduce(d, axis=-1)
        u = log_p[b, top] + lam[b] * g
        out[b, top] = u - np.logaddexp.reduce(u)
    return out


def setup(rows=4, vocab=20, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    logits = jax.random.normal(keys[0], (rows, vocab)) * 2
    hidden = jax.random.normal(keys[1], (rows, WIDTH))
    embeddings = jax.random.normal(keys[2], (vocab, WIDTH))
    return logits, hidden, embeddings


@pytest.mark.slow
@pytest.mark.parametrize("top_k,scale,target", [(5, 1.0, 0), (20, 2.5, 2), (7, 0.5, np.array([0, 1, 2, 1]))])
def test_closed_form(top_k, scale, target):
    logits, hidden, embeddings = setup()
    policy = ClassifierGuidance(
        random_head(), embeddings, target=target, scale=scale, top_k=top_k, num_topics=TOPICS, hidden_dim=HEAD
    )
    log_pi, diagnostics = policy(logits, StepInfo(jnp.zeros((4, 1), jnp.int32), jnp.int32(0), hidden))
    expected = closed_form(policy, logits, hidden)
    pi = np.exp(np.asarray(log_pi, np.float64))
    np.testing.assert_allclose(pi, np.exp(expected), atol=1e-5)
    assert np.all((pi > 0).sum(-1) == min(top_k, 20))
    for name in ("p_target", "p_target_model", "topic_entropy", "entropy", "kl_to_model"):
        assert diagnostics[name].shape == (4,)
    assert np.all((diagnostics["p_target"] >= 0) & (diagnostics["p_target"] <= 1))
    # guidance toward the target raises the discriminator's expected belief in it
    assert np.all(np.asarray(diagnostics["p_target"]) >= np.asarray(diagnostics["p_target_model"]) - 1e-6)


@pytest.mark.slow
def test_scale_zero_is_top_k_truncation():
    logits, hidden, embeddings = setup(seed=1)
    for k in (1, 3, 20, 50):
        policy = ClassifierGuidance(
            random_head(1), embeddings, target=1, scale=0.0, top_k=k, num_topics=TOPICS, hidden_dim=HEAD
        )
        log_pi, _ = policy(logits, StepInfo(jnp.zeros((4, 1), jnp.int32), jnp.int32(0), hidden))
        expected, _ = infodec.TopK(min(k, 20))(logits)
        np.testing.assert_allclose(np.exp(log_pi), np.exp(expected), atol=1e-6)


def test_equals_value_policy_on_the_top_k_support():
    logits, hidden, embeddings = setup(seed=2)
    policy = ClassifierGuidance(
        random_head(2),
        embeddings,
        target=np.array([2, 0, 1, 2]),
        scale=np.array([0.5, 1.0, 2.0, 4.0]),
        top_k=6,
        num_topics=TOPICS,
        hidden_dim=HEAD,
    )
    step = StepInfo(jnp.zeros((4, 1), jnp.int32), jnp.int32(0), hidden)
    log_pi = np.asarray(policy(logits, step)[0], np.float64)
    value = policy.as_value_policy()
    assert isinstance(value, infodec.ValuePolicy) and isinstance(value.score, infodec.FunctionScore)
    general = np.asarray(value(logits, step)[0], np.float64)
    support = np.asarray(policy.support(logits))
    restricted = np.where(support, general, -np.inf)
    restricted -= np.logaddexp.reduce(restricted, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.exp(log_pi), np.exp(restricted), atol=1e-6)
    # and the same with a user FunctionScore built from the discriminator
    user = infodec.ValuePolicy(
        beta=1.0, gamma=0.0, lam=policy.scale, score=infodec.FunctionScore(lambda lp, s: policy.score(lp, s))
    )
    np.testing.assert_allclose(np.asarray(user(logits, step)[0]), general, atol=1e-6)


def exact_log_probs(model, params, policy, prompt, horizon):
    """log π of all V**H continuations (lexicographic order); hidden state per prefix from a full,
    cache-free ``model.apply(..., return_hidden=True)`` over ``prompt + prefix``."""
    seqs = np.array(list(itertools.product(range(VOCAB), repeat=horizon)), np.int64)
    total = np.zeros(len(seqs))
    for t in range(horizon):
        prefixes = list(itertools.product(range(VOCAB), repeat=t))
        tokens = np.array([list(prompt) + list(p) for p in prefixes], np.int32)
        positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
        logits, _, hidden = model.apply(params, jnp.asarray(tokens), jnp.asarray(positions), return_hidden=True)
        step = StepInfo(jnp.asarray(tokens), jnp.int32(t), hidden[:, -1])
        log_pi = np.asarray(policy(logits[:, -1], step)[0], np.float64)
        log_pi -= np.logaddexp.reduce(log_pi, axis=-1, keepdims=True)
        index = (seqs[:, :t] * VOCAB ** np.arange(t - 1, -1, -1)).sum(1) if t else np.zeros(len(seqs), np.int64)
        total += log_pi[index, seqs[:, t]]
    return total


@pytest.mark.slow
@pytest.mark.parametrize("top_k", [VOCAB, 4])
def test_generate_matches_exact_enumeration(top_k):
    model, params = tiny_llama(seed=3)
    policy = ClassifierGuidance.from_model(
        model, params, random_head(4, sharpen=6.0), num_topics=TOPICS, hidden_dim=HEAD, target=1, scale=2.0, top_k=top_k
    )
    prompt, horizon, n = [1, 4, 2], 3, 6000
    out = infodec.generate(
        model, params, [prompt], policy, jax.random.key(7), max_new_tokens=horizon, num_samples=n, stop_tokens=()
    )
    exact = exact_log_probs(model, params, policy, prompt, horizon)
    result = chi_square(out.tokens, exact)
    assert result.p_value > 1e-3, result
    # the guided law differs from the model's own law (the test has power)
    base = exact_log_probs(model, params, policy.replace(scale=0.0), prompt, horizon)  # pyright: ignore[reportAttributeAccessIssue] (flax.struct's replace)
    assert chi_square(out.tokens, base).p_value < 1e-6
    assert set(out.diagnostics) >= {"p_target", "p_target_model", "entropy"}
    # the engine's logp_policy is the enumerated per-step law
    np.testing.assert_allclose(
        out.logp_policy.sum(1), exact[(out.tokens * VOCAB ** np.arange(horizon - 1, -1, -1)).sum(1)], atol=1e-4
    )


def test_other_policies_get_no_hidden_state():
    assert not infodec.TopP(0.9).needs_hidden and ClassifierGuidance.needs_hidden


def test_needs_hidden_state_error():
    logits, _, embeddings = setup()
    policy = ClassifierGuidance(random_head(), embeddings, num_topics=TOPICS, hidden_dim=HEAD)
    with pytest.raises(ValueError, match="hidden state"):
        policy(logits)


def test_clear_errors():
    _, _, embeddings = setup()
    head = random_head()
    with pytest.raises(ValueError, match="scale"):
        ClassifierGuidance(head, embeddings, scale=-1.0, num_topics=TOPICS)
    with pytest.raises(ValueError, match="top_k"):
        ClassifierGuidance(head, embeddings, top_k=0, num_topics=TOPICS)
    with pytest.raises(ValueError, match="target"):
        ClassifierGuidance(head, embeddings, target=3, num_topics=TOPICS)
    with pytest.raises(ValueError, match="target"):
        ClassifierGuidance(head, embeddings, target=np.array([0, -1]), num_topics=TOPICS)
    with pytest.raises(ValueError, match="num_topics"):
        ClassifierGuidance(head, embeddings)


def test_input_embeddings_of_the_model():
    model, params = tiny_llama()
    np.testing.assert_array_equal(input_embeddings(model, params), params["embed_tokens"]["embedding"])


def synthetic_features(n, seed, width=WIDTH, topics=TOPICS, vocab=VOCAB):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=(topics, width)) * 1.5
    label = rng.integers(0, topics, n).astype(np.int32)
    label[: n // 2] = 0  # imbalanced: majority ~ 2/3
    hidden = (centres[label] + rng.normal(size=(n, width))).astype(np.float16)
    position = rng.integers(1, 9, n).astype(np.int32)
    return gt.Features(
        hidden, rng.integers(0, vocab, n).astype(np.int32), label, position, position == 8, np.arange(n, dtype=np.int32)
    )


def test_training_learns_separable_topics(tmp_path):
    train, valid = synthetic_features(3000, 0), synthetic_features(600, 1)
    embeddings = np.random.default_rng(2).normal(size=(VOCAB, WIDTH))
    params = gt.train_discriminator(train, embeddings, TOPICS, steps=150, batch_size=128, hidden_dim=HEAD)
    majority = int(np.bincount(train.label).argmax())
    table = gt.evaluate(params, valid, embeddings, TOPICS, majority=majority, hidden_dim=HEAD, positions=(1, 8))
    assert table["all"]["majority"] < 0.75
    assert table["all"]["accuracy"] > 0.9, table
    assert "t=1" in format_table(table)
    # save / load round trip
    gt.save_discriminator(
        tmp_path / "head",
        params,
        {"topics": ["a", "b", "c"], "model": "tiny", "hidden_size": WIDTH, "hidden_dim": HEAD},
    )
    loaded, meta = gt.load_discriminator(tmp_path / "head")
    assert meta["topics"] == ["a", "b", "c"] and meta["hidden_size"] == WIDTH
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(params) == jax.tree.structure(loaded)
    np.testing.assert_allclose(
        gt.predict(loaded, valid, embeddings, TOPICS, hidden_dim=HEAD),
        gt.predict(params, valid, embeddings, TOPICS, hidden_dim=HEAD),
        atol=1e-6,
    )
    with pytest.raises(FileNotFoundError):
        gt.load_discriminator(tmp_path / "missing")
    with pytest.raises(ValueError, match="topics"):
        gt.save_discriminator(tmp_path / "bad", params, {})


@pytest.mark.slow
def test_extract_features_pairs_prefix_states_with_next_tokens():
    model, params = tiny_llama()
    texts, labels = [[1, 2, 3, 4], [5, 0], [3]], [2, 0, 1]
    f = gt.extract_features(model, params, texts, labels, max_tokens=3, batch_size=2)
    assert list(f.next_token) == [2, 3, 4, 0] and list(f.label) == [2, 2, 2, 0]
    assert list(f.position) == [1, 2, 3, 1] and list(f.last) == [False, False, True, True]
    tokens = jnp.asarray([[1, 2, 3, 4]])
    _, _, hidden = model.apply(params, tokens, jnp.arange(4)[None], return_hidden=True)
    np.testing.assert_allclose(f.hidden[:3].astype(np.float32), np.asarray(hidden[0, :3]), atol=2e-2, rtol=1e-2)


def test_generate_with_per_row_targets_and_scales():
    model, params = tiny_llama(seed=5)
    head = random_head(6, sharpen=6.0)
    prompts = [[1, 2], [3, 4, 5], [0]]
    policy = ClassifierGuidance.from_model(
        model,
        params,
        head,
        num_topics=TOPICS,
        hidden_dim=HEAD,
        target=np.array([0, 1, 2]),
        scale=np.array([0.0, 1.0, 3.0]),
        top_k=4,
    )
    out = infodec.generate(model, params, prompts, policy, jax.random.key(0), max_new_tokens=4, stop_tokens=())
    assert out.tokens.shape == (3, 4)
    np.testing.assert_allclose(out.diagnostics["guidance"][:, 0], [0.0, 1.0, 3.0])
    # row 0 has λ = 0: its expected P_D(target) is the model's own
    np.testing.assert_allclose(out.diagnostics["p_target"][0], out.diagnostics["p_target_model"][0], atol=1e-6)


def test_report_states_the_judge_shares_with_binomial_intervals(tmp_path):
    from infodec.studies.guidance import report as guidance_report

    row = {"n": 100, "accuracy": 0.7, "majority": 0.2}
    metadata = {
        "model": "m",
        "topics": ["a", "b"],
        "valid": {"by_position": {"1": row, "4": row}, "final": row, "all": row},
    }
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    results = {
        "judge_accuracy": 0.8,
        "num_prompts": 100,
        "top_k": 50,
        "own/scale=0": {"judge_share": 0.5, "disc_p_target": 0.3},
    }
    (tmp_path / guidance_report.TOPIC_EVAL_FILE).write_text(json.dumps(results))
    text = guidance_report.write_report(tmp_path).read_text()
    assert "| own | 0 | 0.500 ± 0.098 | 0.300 |" in text  # 1.96 · √(0.25 / 100) = 0.098
    assert guidance_report.share_ci(0.0, 10) == 0.0 and np.isnan(guidance_report.share_ci(0.5, 0))
