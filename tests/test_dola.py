"""DoLa against HF transformers' algorithm (4.45's ``_dola_decoding``), on tiny HF models run in torch.

The references never touch infodec's decoding: the early-exit logits are HF's ``lm_head(hidden_states[i])``
of full-sequence torch forwards (one per token), the contrast is HF's ``_dola_select_contrast`` and
``_relative_top_filter`` rewritten in numpy from its source, and the penalty is HF's own
``RepetitionPenaltyLogitsProcessor``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

import infodec
from infodec.decoding.dola import candidate_layers, contrast_layers, dola
from infodec.policies import Temperature
from tests.tiny_models import tiny_gemma3, tiny_llama

torch = pytest.importorskip("torch")


# --- numpy references, written from HF's source ------------------------------------------------------


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def kl_div(log_input: np.ndarray, target: np.ndarray) -> np.ndarray:
    """torch's ``F.kl_div(input, target, reduction='none')``: ``target * (log target - input)``, 0 where
    ``target == 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(target > 0, target * (np.log(np.where(target > 0, target, 1.0)) - log_input), 0.0)


def hf_select_contrast(final: np.ndarray, layers: dict[int, np.ndarray], relative_top: float):
    """HF's ``_dola_select_contrast`` + ``_relative_top_filter`` for one row: ``(scores [V], layer)``,
    filtered scores at -inf."""
    order = list(layers)
    stacked = np.stack([layers[i] for i in order])  # [K, V]
    p = np.exp(log_softmax(final))
    q = np.exp(log_softmax(stacked))
    m = 0.5 * (p[None] + q)
    kl1 = kl_div(log_softmax(final)[None], m).mean(-1)
    kl2 = kl_div(log_softmax(stacked), m).mean(-1)
    layer = order[int(np.argmax(0.5 * (kl1 + kl2)))]
    final_n, base_n = log_softmax(final), log_softmax(layers[layer])
    threshold = np.max(final_n) + np.log(relative_top)  # min_tokens_to_keep = 1: min(top, max + log α)
    base_n = np.where(final_n < threshold, -1e-3, base_n)
    final_n = np.where(final_n < threshold, -np.inf, final_n)
    return final_n - base_n, layer


def hf_dola_greedy(hf_model, prompt, layers, steps, relative_top, penalty):
    """HF's DoLa greedy loop for one prompt: full-sequence forwards, one token at a time.
    Returns ``(tokens, chosen scores, premature layers, top-2 margins)``."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    processor = RepetitionPenaltyLogitsProcessor(penalty)
    ids = list(prompt)
    tokens, scores, chosen, margins = [], [], [], []
    for _ in range(steps):
        with torch.no_grad():
            out = hf_model(torch.tensor([ids]), output_hidden_states=True)
            final = out.logits[0, -1].double().numpy()
            early = {i: hf_model.lm_head(out.hidden_states[i][:, -1])[0].double().numpy() for i in layers}
        contrast, layer = hf_select_contrast(final, early, relative_top)
        processed = processor(torch.tensor([ids]), torch.tensor(contrast[None]))[0].numpy()
        token = int(np.argmax(processed))
        finite = np.sort(processed[np.isfinite(processed)])
        margins.append(finite[-1] - finite[-2] if finite.size > 1 else np.inf)
        tokens.append(token)
        scores.append(processed[token])
        chosen.append(layer)
        ids.append(token)
    return np.array(tokens), np.array(scores), np.array(chosen), np.array(margins)


# --- tiny HF models ----------------------------------------------------------------------------------


def hf_llama(directory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        initializer_range=0.1,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    return model


def hf_gpt2(directory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    config = GPT2Config(vocab_size=89, n_embd=32, n_layer=6, n_head=4, n_positions=64, initializer_range=0.1)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory)
    return model


FAMILIES = {"llama": hf_llama, "gpt2": hf_gpt2}
PROMPTS = [[5, 17, 3], [8, 2, 44, 9, 31], [60, 1, 7, 7, 12, 40, 3]]


# --- the contrast of one step -------------------------------------------------------------------------


def test_contrast_matches_hf_on_random_rows_with_inf_masks():
    """Full score rows and the premature layer against HF's formulas: 40 random rows of 3 layers over 50
    tokens with random ``-inf`` vocabulary masks (shared by every layer, as a banned token is), 5 of them
    with a single possible token, at α = 0.1 and 0.5. Masks that differ between layers make HF's
    divergence infinite (its choice is then an artefact of argmax over infinities): those rows are only
    checked to be finite, with every impossible token masked."""
    rng = np.random.default_rng(0)
    batch, k, vocab = 40, 3, 50
    final = rng.normal(size=(batch, vocab)).astype(np.float32) * 3
    early = rng.normal(size=(batch, k, vocab)).astype(np.float32) * 3
    banned = rng.random((batch, vocab)) < 0.2
    banned[:5] = True
    banned[np.arange(5), rng.integers(0, vocab, 5)] = False  # one possible token
    final[banned] = -np.inf
    early[np.broadcast_to(banned[:, None], early.shape)] = -np.inf
    for alpha in (0.1, 0.5):
        scores, premature = contrast_layers(final, early, alpha)
        scores, premature = np.asarray(scores), np.asarray(premature)
        assert np.all(np.isfinite(scores))
        for row in range(batch):
            ref, layer = hf_select_contrast(final[row], {i: early[row, i] for i in range(k)}, alpha)
            assert premature[row] == layer
            kept = np.isfinite(ref)
            np.testing.assert_array_equal(scores[row] > -1e29, kept)
            np.testing.assert_allclose(scores[row][kept], ref[kept], rtol=0, atol=1e-4)
    independent = np.where(rng.random(early.shape) < 0.3, -np.inf, early)
    independent[:, :, 0] = 1.0  # no layer row entirely impossible
    scores, premature = contrast_layers(final, independent, 0.1)
    assert np.all(np.isfinite(np.asarray(scores))) and np.all((0 <= premature) & (premature < k))
    assert np.all(np.asarray(scores)[banned] < -1e29)


def test_candidate_layers_follow_hf_rules():
    assert candidate_layers(6, False, "low") == (0, 2)
    assert candidate_layers(6, False, "high") == (3, 5)
    assert candidate_layers(6, True, "low") == (2,)  # tied: start at 2
    assert candidate_layers(2, True, "low") == (1,)
    assert candidate_layers(48, False, "low") == tuple(range(0, 20, 2))
    assert candidate_layers(48, True, "high") == tuple(range(28, 48, 2))
    assert candidate_layers(6, False, [4, 1]) == (4, 1)
    for layers, match in [("mid", "'low', 'high'"), ([], "non-empty"), ([6], "0 <= i < 6"), ([1.5], "0 <= i < 6")]:
        with pytest.raises(ValueError, match=match):
            candidate_layers(6, False, layers)
    with pytest.raises(ValueError, match="selects no layer"):
        candidate_layers(3, True, "low")  # HF: range(2, 1, 2) is empty


# --- the model hook -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("scan", [False, True])
def test_layer_logits_equal_hf_lm_head_of_hidden_states(tmp_path, family, scan):
    """``return_layers`` equals HF's ``lm_head(hidden_states[i][:, -1])`` for every layer (and with
    ``norm_layers``, ``lm_head(final_norm(...))``), unrolled and scanned, left-padded batch."""
    hf = FAMILIES[family](tmp_path)
    model, params, _ = infodec.load(tmp_path, scan_layers=scan)
    n = model.config.num_layers
    tokens = np.zeros((2, 6), np.int32)
    positions = np.full((2, 6), -1, np.int32)
    tokens[0], positions[0] = [3, 9, 4, 1, 7, 2], np.arange(6)
    tokens[1, 2:], positions[1, 2:] = [8, 5, 6, 11], np.arange(4)
    final, _, layer_logits = model.apply(params, tokens, positions, return_layers=tuple(range(n)))
    _, _, normed = model.apply(params, tokens, positions, return_layers=(1, 4), norm_layers=True)
    norm = hf.model.norm if family == "llama" else hf.transformer.ln_f
    for row, ids in enumerate([tokens[0], tokens[1, 2:]]):
        with torch.no_grad():
            out = hf(torch.tensor([ids.tolist()]), output_hidden_states=True)
            for i in range(n):
                ref = hf.lm_head(out.hidden_states[i][:, -1])[0].numpy()
                np.testing.assert_allclose(layer_logits[row, i], ref, atol=1e-4, rtol=1e-4)
            for j, i in enumerate((1, 4)):
                ref = hf.lm_head(norm(out.hidden_states[i][:, -1]))[0].numpy()
                np.testing.assert_allclose(normed[row, j], ref, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(final[row, -1], out.logits[0, -1].numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_unsupported_family_and_bad_layers_raise():
    model, params = tiny_gemma3()
    with pytest.raises(ValueError, match="cannot return early-exit layer logits"):
        dola(model, params, [[1, 2]], max_new_tokens=2, layers=[0])
    model, params = tiny_llama()
    with pytest.raises(ValueError, match="0 <= i < 2"):
        model.apply(params, np.ones((1, 2), np.int32), np.arange(2)[None], return_layers=(2,))
    with pytest.raises(ValueError, match="relative_top must be in"):
        dola(model, params, [[1, 2]], max_new_tokens=2, layers=[0], relative_top=1.5)
    with pytest.raises(ValueError, match="repetition_penalty must be"):
        dola(model, params, [[1, 2]], max_new_tokens=2, layers=[0], repetition_penalty=0.0)
    with pytest.raises(ValueError, match="one-stream Transform"):
        dola(model, params, [[1, 2]], max_new_tokens=2, layers=[0], transform="top_p")  # pyright: ignore[reportArgumentType]


# --- decoding -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_dola_equals_hf_reference(tmp_path, family):
    """Token-identical to HF's DoLa greedy loop (3 prompts of 3, 5 and 7 tokens decoded as one left-padded
    batch, 8 steps) for ``"high"``, ``"low"`` and an explicit list, repetition penalty 1.2 and 1.0 and
    relative_top 0.1 and 0.3; the chosen tokens' processed scores within 1e-4 and the premature layers
    equal. Each reference step's top-2 margin exceeds 5e-4 (> twice the score tolerance), so float32
    rounding cannot flip a token."""
    hf = FAMILIES[family](tmp_path)
    model, params, _ = infodec.load(tmp_path)
    tied = bool(model.config.tie_word_embeddings)
    steps = 8
    for layers, alpha, penalty in [("high", 0.1, 1.2), ("low", 0.3, 1.2), ([1, 2, 4], 0.1, 1.0)]:
        out = dola(
            model,
            params,
            PROMPTS,
            max_new_tokens=steps,
            layers=layers,
            relative_top=alpha,
            repetition_penalty=penalty,
            stop_tokens=(),
        )
        chosen_layers = candidate_layers(model.config.num_layers, tied, layers)
        for row, prompt in enumerate(PROMPTS):
            tokens, scores, premature, margins = hf_dola_greedy(hf, prompt, chosen_layers, steps, alpha, penalty)
            assert np.all(margins > 5e-4), (layers, row, margins)
            np.testing.assert_array_equal(out.tokens[row], tokens, err_msg=f"{layers} row {row}")
            np.testing.assert_array_equal(out.diagnostics["premature_layer"][row], premature)
            np.testing.assert_allclose(out.diagnostics["dola_score"][row], scores, atol=1e-4, rtol=0)
            assert np.all(out.logp_policy[row] == 0.0)  # greedy: all mass on the chosen token


@pytest.mark.slow
def test_sampled_dola_follows_the_contrast_and_never_recompiles():
    """Sampling: every chosen token is inside the relative-top set (its score is finite) and log π is the
    log-softmax of the processed scores; new relative_top / penalty / temperature values and a new key
    reuse the compiled loop."""
    model, params = tiny_llama(num_layers=4, vocab_size=16)
    kwargs: dict[str, Any] = dict(max_new_tokens=6, layers=[0, 1, 2], do_sample=True, stop_tokens=(), num_samples=4)

    prompts = [[p % 16 for p in prompt] for prompt in PROMPTS]
    out = dola(model, params, prompts, jax.random.key(0), transform=Temperature(1.0), **kwargs)
    assert np.all(out.diagnostics["dola_score"] > -1e29)
    assert np.all(np.isfinite(out.logp_policy)) and np.all(out.logp_policy <= 0)
    before = infodec.compile_count()
    again = dola(
        model,
        params,
        prompts,
        jax.random.key(1),
        relative_top=0.5,
        repetition_penalty=1.5,
        transform=Temperature(0.7),
        **kwargs,
    )
    assert infodec.compile_count() == before
    assert not np.array_equal(again.tokens, out.tokens)
