"""Evaluation measures (infodec.eval): diversity, attribution, sensibleness, the topic judge.

References are hand-computed values, NLTK's published doctest values for BLEU, and a cache-free
full-sequence recomputation of the evaluator's log-probabilities (tests/tiny_models.Reference).
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from infodec.decoding.state import sequence_bucket
from infodec.eval import attribution, diversity, sensibleness
from infodec.eval.topic_judge import TopicJudge
from tests.tiny_models import Reference, tiny_llama

# --- BLEU -------------------------------------------------------------------------------------------

# NLTK's bleu_score doctests (Papineni et al.'s example sentences).
HYP = "It is a guide to action which ensures that the military always obeys the commands of the party".split()
REF1 = "It is a guide to action that ensures that the military will forever heed Party commands".split()
REF2 = (
    "It is the guiding principle which guarantees the military forces always being under the command of the Party"
).split()
REF3 = "It is the practical guide for the army always to heed the directions of the party".split()


def test_bleu_matches_nltk_doctests():
    assert diversity.sentence_bleu(HYP, [REF1, REF2, REF3]) == pytest.approx(0.5045666840058485, abs=1e-12)
    assert diversity.sentence_bleu(HYP, [REF1]) == pytest.approx(0.4118, abs=1e-4)


def test_bleu_hand_computed_cases():
    # All four precisions nonzero, equal lengths: (4/5 · 3/4 · 2/3 · 1/2)^(1/4).
    assert diversity.sentence_bleu([1, 2, 3, 4, 5], [[1, 2, 3, 4, 6]]) == pytest.approx(0.2**0.25)
    # Smoothing: p3 has no match (0.1 / 1), p4 has no n-gram at all (0.1 / max(1, 0)).
    assert diversity.sentence_bleu([1, 2, 3], [[1, 2, 4]]) == pytest.approx((2 / 3 * 1 / 2 * 0.1 * 0.1) ** 0.25)
    # Clipping: "7" occurs once in the reference, four times in the hypothesis.
    assert diversity.sentence_bleu([7, 7, 7, 7], [[7, 8]]) == pytest.approx(
        (1 / 4 * 0.1 / 3 * 0.1 / 2 * 0.1 / 1) ** 0.25
    )
    # Brevity penalty exp(1 - r/c) with every precision 1.
    assert diversity.sentence_bleu([1, 2, 3, 4], [[1, 2, 3, 4, 5, 6, 7, 8]]) == pytest.approx(math.exp(1 - 8 / 4))
    # The closest reference length (3, not 8) sets the penalty: c = 4 > 3, so no penalty.
    assert diversity.sentence_bleu([1, 2, 3, 4], [[1, 2, 3], [1, 2, 3, 4, 5, 6, 7, 8]]) == pytest.approx(1.0)
    assert diversity.sentence_bleu([1, 2], [[3, 4]]) == 0.0  # no unigram match
    assert diversity.sentence_bleu([], [[1]]) == 0.0


def test_self_bleu():
    assert diversity.self_bleu([[1, 2, 3, 4, 5]] * 3) == pytest.approx(1.0)
    assert diversity.self_bleu([[1, 2, 3], [4, 5, 6]]) == 0.0
    a, b, c = [1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [9, 9, 9]
    expected = np.mean(
        [diversity.sentence_bleu(a, [b, c]), diversity.sentence_bleu(b, [a, c]), diversity.sentence_bleu(c, [a, b])]
    )
    assert diversity.self_bleu([a, b, c]) == pytest.approx(expected)
    assert math.isnan(diversity.self_bleu([a]))
    tokens = np.array([a, a, b, [1, 2, 3, 0, 0]])
    per_input = diversity.self_bleu_per_input(tokens, [5, 5, 5, 3], num_samples=2)
    assert per_input[0] == pytest.approx(1.0)
    assert per_input[1] == pytest.approx(
        np.mean([diversity.sentence_bleu(b, [[1, 2, 3]]), diversity.sentence_bleu([1, 2, 3], [b])])
    )


def test_distinct_n():
    # bigrams (1,2) (2,1) (1,2) | (1,2) (2,3): 3 distinct of 5
    assert diversity.distinct_n([[1, 2, 1, 2], [1, 2, 3]], 2) == pytest.approx(3 / 5)
    assert diversity.distinct_n([[1, 2, 1, 2], [1, 2, 3]], 1) == pytest.approx(3 / 7)
    assert math.isnan(diversity.distinct_n([[1], []], 2))
    tokens = np.array([[1, 2, 1, 2], [1, 2, 3, 0], [5, 5, 5, 5], [5, 6, 7, 8]])
    np.testing.assert_allclose(
        diversity.distinct_per_input(tokens, [4, 3, 4, 4], num_samples=2, n=2), [3 / 5, (1 + 3) / 6]
    )
    with pytest.raises(ValueError, match="num_samples=3"):
        diversity.distinct_per_input(tokens, [4, 3, 4, 4], num_samples=3)


def test_token_mean():
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    out = diversity.token_mean(values, [2, 0, 3])
    assert out[0] == pytest.approx(1.5) and math.isnan(out[1]) and out[2] == pytest.approx(8.0)


# --- attribution ------------------------------------------------------------------------------------


def test_content_words_and_precision():
    assert attribution.content_words("The cat's hat, and THE dog; it is 42.") == ["cat's", "hat", "dog", "42"]
    evidence = "A black cat sat on the mat near the dog."
    # content words of the output: cat, cat, flew, moon -> cat once in the evidence (clipped): 1 / 4
    assert attribution.content_precision("The cat and the cat flew to the moon", evidence) == pytest.approx(1 / 4)
    assert attribution.content_precision("black cat sat", evidence) == pytest.approx(1.0)
    # bigrams: (black, cat) yes, (cat, sat) yes, (sat, dog) no
    assert attribution.content_precision("black cat sat dog", evidence, n=2) == pytest.approx(2 / 3)
    assert math.isnan(attribution.content_precision("it is what it is", evidence))


def test_encoder_similarity_is_the_cosine_of_embeddings():
    def embed(texts):  # counts of letters a..e: a transparent stand-in for a sentence encoder
        return np.array([[t.count(c) for c in "abcde"] for t in texts], float)

    outputs, evidence = ["abc", "aab", "", "eee"], ["abd", "abd", "abd", "ee"]
    sims = attribution.encoder_similarity(outputs, evidence, embed)
    for i in (0, 1, 3):
        a, b = embed([outputs[i]])[0], embed([evidence[i]])[0]
        assert sims[i] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert math.isnan(sims[2])


@pytest.fixture(scope="module")
def tiny():
    model, params = tiny_llama(seed=3)
    return model, params, Reference(model, params)


def _reference_logp(ref, prefix, continuation):
    return [
        float(ref.log_model(list(prefix) + list(continuation[:t]))[continuation[t]]) for t in range(len(continuation))
    ]


def test_full_sequence_widths_are_powers_of_two_up_to_64_then_multiples_of_64():
    widths = {n: sequence_bucket(n) for n in (1, 16, 17, 33, 64, 65, 129, 165, 192, 193, 1000)}
    assert widths == {
        1: 16,
        16: 16,
        17: 32,
        33: 64,
        64: 64,
        65: 128,
        129: 192,
        165: 192,
        192: 192,
        193: 256,
        1000: 1024,
    }


def test_scored_log_probs_and_pmi_match_a_cache_free_recomputation(tiny):
    model, params, ref = tiny
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 6, (5, 4))
    lengths = np.array([4, 2, 0, 3, 1])
    with_ev = [list(rng.integers(0, 6, n)) for n in (5, 3, 4, 6, 2)]
    query = [p[-2:] for p in with_ev]
    # batch_size 2: three batches, the last padded
    out = attribution.evidence_pmi(model, params, tokens, lengths, with_ev, query, batch_size=2)
    for b in range(5):
        n = lengths[b]
        expected_c = _reference_logp(ref, with_ev[b], tokens[b, :n])
        expected_u = _reference_logp(ref, query[b], tokens[b, :n])
        np.testing.assert_allclose(out["logp"][b, :n], expected_c, atol=1e-4)
        assert (out["logp"][b, n:] == 0).all() and out["mask"][b].sum() == n
        if n:
            assert out["pmi"][b] == pytest.approx(np.mean(np.subtract(expected_c, expected_u)), abs=1e-4)
            assert sensibleness.row_perplexity(out["logp"], out["mask"])[b] == pytest.approx(
                math.exp(-np.mean(expected_c)), rel=1e-4
            )
        else:
            assert math.isnan(out["pmi"][b])


@pytest.mark.download
def test_text_embedder_matches_single_unpadded_encodes(minilm_dir):
    import infodec

    encoder, params, tokenizer = infodec.load("minilm-l6")
    assert tokenizer is not None
    texts = [
        "A short sentence.",
        "A somewhat longer sentence about the history of Lisbon and its port.",
        "Cats.",
        "x " * 300,
    ]
    embed = attribution.text_embedder(encoder, params, tokenizer, batch_size=3)
    got = embed(texts)
    for i, text in enumerate(texts[:3]):
        ids = jnp.asarray([tokenizer.encode(text)])
        expected = np.asarray(encoder.encode(params, ids, jnp.ones_like(ids)))[0]
        np.testing.assert_allclose(got[i], expected, atol=1e-5)
    assert got.shape == (4, 384) and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


# --- topic judge ------------------------------------------------------------------------------------


def test_topic_judge_learns_separable_topics():
    centres = np.eye(3) * 4.0
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    vectors = {f"t{i}": centres[y] + rng.normal(0, 0.5, 3) for i, y in enumerate(labels)}

    def embed(texts):
        return np.stack([vectors[t] for t in texts])

    texts = list(vectors)
    judge = TopicJudge.fit(embed, texts[:40], labels[:40], ["a", "b", "c"], steps=200)
    assert judge.accuracy(texts[40:], labels[40:]) == 1.0
    with pytest.raises(ValueError, match="labels must index"):
        TopicJudge.fit(embed, texts[:2], [0, 5], ["a", "b", "c"])
