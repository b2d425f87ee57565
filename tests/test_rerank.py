"""Best-of-N and MBR select exactly what brute-force Python loops over the same candidates select."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from infodec.daemon import rerank
from infodec.decoding import GenerateOutput
from infodec.eval import sentence_bleu
from tests.tiny_models import tiny_llama


def fake_candidates(prompts: int, m: int, seed: int = 0, vocab: int = 5, text: bool = False) -> GenerateOutput:
    """``prompts * m`` random candidate rows over a small vocabulary (so BLEU ties and overlaps happen)."""
    rng = np.random.default_rng(seed)
    n, width = prompts * m, 8
    tokens = rng.integers(0, vocab, (n, width)).astype(np.int32)
    lengths = rng.integers(0, width + 1, n).astype(np.int32)
    lengths[::3] = width
    zeros = np.zeros((n, width), np.float32)
    texts = [" ".join(f"w{t}" for t in row[:k]) for row, k in zip(tokens, lengths)] if text else None
    return GenerateOutput(tokens, lengths, zeros, zeros, {}, np.zeros((n, 1), np.int32), texts)


def brute_best(scores):
    """First index of the largest score; NaN is the worst (all NaN: 0)."""
    best, best_value = 0, None
    for i, s in enumerate(scores):
        if s != s:
            continue
        if best_value is None or s > best_value:
            best, best_value = i, s
    return best


def brute_mbr(items, measure):
    expected = []
    for i, h in enumerate(items):
        total = 0.0
        for j, r in enumerate(items):
            if i != j:
                total += measure(h, r)
        expected.append(total / (len(items) - 1))
    return brute_best(expected), expected


@pytest.mark.parametrize("seed", range(6))
def test_mbr_bleu_selects_what_brute_force_selects(seed):
    """6 seeds x 4 prompts x M = 5 candidates over a 5-token vocabulary (ties and empty rows included)."""
    m = 5
    cands = fake_candidates(4, m, seed)
    out = rerank.mbr(cands, rerank.bleu_utility(), num_candidates=m)
    for p in range(4):
        items = [list(cands.tokens[r, : cands.lengths[r]]) for r in range(p * m, (p + 1) * m)]
        index, expected = brute_mbr(items, lambda h, r: sentence_bleu(h, [r]))
        assert out.index[p] == index
        np.testing.assert_allclose(out.scores[p], expected, rtol=1e-12)
        np.testing.assert_array_equal(out.tokens[p], cands.tokens[p * m + index])
    assert out.utility is not None and out.utility.shape == (4, m, m)


def test_mbr_text_and_embedding_utilities():
    m = 4
    cands = fake_candidates(3, m, 7, text=True)
    table = {f"w{i}": np.eye(5)[i] for i in range(5)}
    embed = lambda texts: np.stack([sum((table[w] for w in t.split()), np.full(5, 0.1)) for t in texts])
    out = rerank.mbr(cands, rerank.embedding_utility(embed), num_candidates=m, on="text")

    def cosine(a, b):
        u, v = embed([a])[0], embed([b])[0]
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    assert cands.text is not None and out.text is not None
    for p in range(3):
        index, _ = brute_mbr(cands.text[p * m : (p + 1) * m], cosine)
        assert out.index[p] == index and out.text[p] == cands.text[p * m + index]


def test_best_of_n_callable_and_precomputed_with_ties_and_nan():
    m = 4
    cands = fake_candidates(3, m, 3)
    reward = lambda items: [float(len(x)) for x in items]  # ties among full-length rows: lowest index wins
    out = rerank.best_of_n(cands, reward, num_candidates=m)
    for p in range(3):
        assert out.index[p] == brute_best([float(cands.lengths[r]) for r in range(p * m, (p + 1) * m)])
    scores = np.array([[np.nan, 1.0, 3.0, 3.0], [np.nan] * 4, [-np.inf, -5.0, np.nan, -5.0]])
    out = rerank.best_of_n(cands, scores.reshape(-1), num_candidates=m)
    assert out.index.tolist() == [brute_best(row) for row in scores] == [2, 0, 1]


def test_bad_input_raises():
    cands = fake_candidates(2, 3)
    with pytest.raises(ValueError, match="divide the 6 candidate rows"):
        rerank.best_of_n(cands, np.zeros(6), num_candidates=4)
    with pytest.raises(ValueError, match="precomputed rewards"):
        rerank.best_of_n(cands, np.zeros(5), num_candidates=3)
    with pytest.raises(ValueError, match="must return 3 scores"):
        rerank.best_of_n(cands, lambda items: [0.0], num_candidates=3)
    with pytest.raises(ValueError, match="num_candidates >= 2"):
        rerank.mbr(cands, rerank.bleu_utility(), num_candidates=1)
    with pytest.raises(ValueError, match=r"\[M, M\]"):
        rerank.mbr(cands, np.zeros((2, 3, 2)), num_candidates=3)
    with pytest.raises(ValueError, match="needs candidates with text"):
        rerank.mbr(cands, rerank.bleu_utility(), num_candidates=3, on="text")
    with pytest.raises(ValueError, match="on must be"):
        rerank.mbr(cands, rerank.bleu_utility(), num_candidates=3, on="ids")
    with pytest.raises(ValueError, match="GenerateOutput"):
        rerank.mbr([[1, 2]], rerank.bleu_utility(), num_candidates=3)  # pyright: ignore[reportArgumentType]


@pytest.mark.slow
def test_draw_then_rerank_by_log_p():
    """Candidates drawn once on a tiny model; best-of-N by log p_theta picks each prompt's likeliest."""
    model, params = tiny_llama()
    cands = rerank.draw(
        model, params, [[1, 2], [3]], jax.random.key(0), num_candidates=4, max_new_tokens=5, stop_tokens=()
    )
    logp = cands.sequence_logp()[0]
    out = rerank.best_of_n(cands, logp, num_candidates=4)
    assert out.index.tolist() == [brute_best(logp[p * 4 : (p + 1) * 4]) for p in range(2)]
