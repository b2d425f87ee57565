"""MAUVE on fixed-model features (infodec.eval.mauve)."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from infodec.eval import mauve as mauve_lib
from tests import tiny_models


@pytest.mark.slow
def test_features_equal_an_unpadded_forward_pass_at_the_last_token():
    model, params = tiny_models.tiny_llama()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, tiny_models.VOCAB, (5, 7))
    lengths = np.array([7, 1, 4, 6, 3])
    prefix = np.array([[1, 2, -1], [3, -1, -1], [4, 5, 0], [2, -1, -1], [1, 1, 1]])
    feats = mauve_lib.features(model, params, tokens, lengths, prefix, batch_size=2)
    chex.assert_shape(feats, (5, 16))
    for b in range(5):
        row = [int(t) for t in prefix[b] if t >= 0] + list(tokens[b, : lengths[b]])
        _, _, hidden = model.apply(params, jnp.asarray([row]), jnp.arange(len(row))[None], return_hidden=True)
        np.testing.assert_allclose(feats[b], np.asarray(hidden[0, -1]), atol=1e-5)


def test_features_reject_empty_texts():
    model, params = tiny_models.tiny_llama()
    with pytest.raises(ValueError, match="at least 1"):
        mauve_lib.features(model, params, np.zeros((2, 3), int), np.array([3, 0]))


@pytest.mark.slow  # faiss k-means threads: 0.5 s on an idle machine, 7-23 s while the 2 cores are shared
def test_mauve_separates_same_from_shifted_distributions():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(200, 8))
    same = mauve_lib.mauve_score(p, rng.normal(size=(200, 8)))
    shifted = mauve_lib.mauve_score(p, rng.normal(size=(200, 8)) + 1.5)
    assert same["mauve"] > 0.9 and shifted["mauve"] < 0.3, (same, shifted)
    assert same["n_p"] == same["n_q"] == 200
    with pytest.raises(ValueError, match="same D"):
        mauve_lib.mauve_score(p, p[:, :4])
