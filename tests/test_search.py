"""Beam search and contrastive search: parity with HF transformers on a tiny random Llama.

Beam search is compared with ``LlamaForCausalLM.generate(num_beams=k, do_sample=False)`` itself.
Contrastive search left transformers' core in v5 (it lives in the hub repo
``transformers-community/contrastive-search``), so it is compared with a brute-force torch reference
of HF 4.x's ``_contrastive_search`` that recomputes everything without a cache.
"""

import dataclasses
import re
import types
import warnings
from typing import Any, cast

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import infodec
from infodec.decoding import beam_search, compile_count, contrastive_search, search
from tests.hf_tiny import save_tiny_llama

STEPS = 20
PAD = 0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama_search")
    # A wider init than HF's 0.02 gives peaked, varied next-token distributions: search results that
    # differ from greedy, and score margins far above float32 noise between torch and XLA.
    hf_model = save_tiny_llama(directory, initializer_range=0.4, num_hidden_layers=2)
    model, params, _ = infodec.load(directory)
    return hf_model, model, params


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.RandomState(0)
    return [rng.randint(3, 97, 5).tolist(), rng.randint(3, 97, 9).tolist()]  # different lengths


def _hf_generate(hf_model, prompts, **kwargs):
    """HF's continuations of the left-padded batch ``prompts`` and its beam scores (None for greedy)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        out = hf_model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=STEPS,
            pad_token_id=PAD,
            return_dict_in_generate=True,
            output_scores=True,
            **kwargs,
        )
    scores = getattr(out, "sequences_scores", None)
    return [row[width:].tolist() for row in out.sequences], None if scores is None else scores.numpy()


def _hf_token_logp(hf_model, prompt, continuation):
    with torch.no_grad():
        logits = hf_model(torch.tensor([prompt + continuation])).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits.double(), -1)[torch.arange(len(continuation)), continuation].numpy()


def _assert_row_matches(out, row, expected, fill=(PAD,)):
    """``out`` row equals HF's continuation ``expected``, which HF pads after a stop with a ``fill`` id."""
    n = int(out.lengths[row])
    assert len(expected) >= n and out.tokens[row, :n].tolist() == expected[:n]
    assert all(t in fill for t in expected[n:]), (n, expected)
    assert (out.tokens[row, n:] == PAD).all()


def _check_beam_output(out, hf_model, prompts, hf_tokens, hf_scores, length_penalty, eos=None):
    chex.assert_shape([out.tokens, out.lengths], [(2, STEPS), (2,)])
    np.testing.assert_array_equal(out.logp_policy, out.logp_model)
    for row, (prompt, expected) in enumerate(zip(prompts, hf_tokens)):
        # HF's beam search fills finished rows with ``pad_token_id or eos``: the EOS id when PAD is 0.
        _assert_row_matches(out, row, expected, fill=(PAD, eos))
        n = int(out.lengths[row])
        logp = out.logp_model[row, :n]
        np.testing.assert_allclose(logp, _hf_token_logp(hf_model, prompt, expected[:n]), atol=1e-4)
        score = out.diagnostics["beam_score"][row, 0]
        np.testing.assert_allclose(score, logp.sum() / n**length_penalty, rtol=1e-5)
        if hf_scores is not None:  # num_beams > 1: HF's sequences_scores is the same quantity
            np.testing.assert_allclose(score, hf_scores[row], rtol=1e-4)


@pytest.mark.parametrize(
    "num_beams,length_penalty,early_stopping",
    [
        (1, 1.0, False),
        (3, 1.0, False),
        (4, 1.0, False),
        (4, 2.0, True),
        (3, -1.0, "never"),
    ],
)
@pytest.mark.slow
def test_beam_search_matches_hf(tiny, prompts, num_beams, length_penalty, early_stopping):
    """Without a stop token, then with one that HF's beam search produces."""
    hf_model, model, params = tiny
    options = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)
    hf_tokens, hf_scores = _hf_generate(hf_model, prompts, eos_token_id=None, **options)
    out = beam_search(model, params, prompts, max_new_tokens=STEPS, stop_tokens=(), **options)
    _check_beam_output(out, hf_model, prompts, hf_tokens, hf_scores, length_penalty)
    assert (out.lengths == STEPS).all()

    # A stop token that HF's search really produces: the first of the tokens above that ends a row early.
    for eos in dict.fromkeys(hf_tokens[0][1:] + hf_tokens[1][1:]):
        hf_tokens, hf_scores = _hf_generate(hf_model, prompts, eos_token_id=eos, **options)
        if any(eos in row[: STEPS - 1] for row in hf_tokens):
            break
    out = beam_search(model, params, prompts, max_new_tokens=STEPS, stop_tokens=(eos,), **options)
    _check_beam_output(out, hf_model, prompts, hf_tokens, hf_scores, length_penalty, eos)
    assert (out.lengths < STEPS).any()  # the stop token is really produced: EOS bookkeeping exercised
    early = int(np.argmin(out.lengths))
    assert out.tokens[early, out.lengths[early] - 1] == eos


@pytest.mark.slow  # with test_beam_search_matches_hf: it reuses the shapes that test compiled
def test_beam_search_is_not_greedy_and_does_not_recompile(tiny, prompts):
    hf_model, model, params = tiny
    greedy = beam_search(model, params, prompts, num_beams=1, max_new_tokens=STEPS, stop_tokens=())
    count = compile_count()
    beams = beam_search(model, params, prompts, num_beams=4, max_new_tokens=STEPS, stop_tokens=())
    assert compile_count() == count  # compiled by the parametrised test: same shapes, same flags
    assert (greedy.tokens != beams.tokens).any()
    assert (beams.sequence_logp()[0] >= greedy.sequence_logp()[0] - 1e-4).all()
    # New length penalty, stop tokens and a shorter horizon in the same output bucket: no recompile.
    beam_search(model, params, prompts, num_beams=4, max_new_tokens=STEPS - 3, stop_tokens=(2, 5), length_penalty=0.7)
    assert compile_count() == count


def test_top_k_over_beams_is_the_flat_top_k_ties_included():
    # Scores drawn from 5 values: most of the top entries tie, so the order among equals is tested.
    scores = jax.random.randint(jax.random.key(0), (3, 4 * 50), 0, 5).astype(jnp.float32)
    expected = jax.lax.top_k(scores, 4)
    got = search._top_k_over_beams(scores, 4, 50)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_beam_step_sorts_no_full_vocabulary_row():
    # The regression this guards: XLA's CPU backend lowered the running beams' flat top-k to a stable
    # sort of all K * V scores (10 s a step at a 262k vocabulary). Only the K * k survivors are sorted.
    batch, beams, vocab = 2, 4, 4096
    state = search.BeamState(
        running=cast(Any, None),  # set inside the traced function
        run_scores=jnp.zeros((batch, beams)),
        fin_scores=jnp.zeros((batch, beams)),
        fin_tokens=jnp.zeros((batch, beams, 8), jnp.int32),
        fin_logp=jnp.zeros((batch, beams, 8)),
        fin_lengths=jnp.zeros((batch, beams), jnp.int32),
        fin_full=jnp.zeros((batch, beams), bool),
        open=jnp.ones((batch,), bool),
    )

    def choose(state, scores, tokens, stops):
        running = types.SimpleNamespace(
            step=jnp.int32(0), max_new_tokens=jnp.int32(8), tokens=tokens, logp_model=tokens.astype(jnp.float32),
            stop_tokens=stops,
        )  # fmt: skip
        new, source, token = search.beam_choose(dataclasses.replace(state, running=running), scores, scores, 1.0, 0)
        return dataclasses.replace(new, running=None), source, token

    scores = jnp.zeros((batch * beams, vocab))
    compiled = jax.jit(choose).lower(state, scores, jnp.zeros((batch * beams, 8), jnp.int32), jnp.array([2, -1]))
    hlo = compiled.compile().as_text()
    assert hlo is not None
    sorted_widths = [int(m) for m in re.findall(r"= \(f32\[\d+,(\d+)\]\S* s32\[[^=]*\bsort\(", hlo)]
    assert max(sorted_widths, default=0) <= beams * beams, sorted_widths


def _reference_contrastive(hf_model, prompt, top_k, alpha, steps, eos=None):
    """HF 4.x contrastive search, recomputed without a cache (no padding), scored in float64.

    Each step runs the whole sequence extended by each of the ``top_k`` candidates; the chosen row's
    final-layer hidden states (``hidden_states[-1]``, after the final norm) and last logits are the
    next step's context and distribution.
    """
    normalise = lambda h: torch.nn.functional.normalize(h.double(), dim=-1)
    ids, out = list(prompt), []
    with torch.no_grad():
        result = hf_model(torch.tensor([ids]), output_hidden_states=True)
        hidden, logits = result.hidden_states[-1][0], result.logits[0, -1]
        for _ in range(steps):
            top_p, top_ids = torch.softmax(logits.double(), -1).topk(top_k)
            result = hf_model(torch.tensor([ids + [v] for v in top_ids.tolist()]), output_hidden_states=True)
            candidates = result.hidden_states[-1]  # [k, T + 1, D]
            penalty = (normalise(candidates[:, -1]) @ normalise(hidden).T).max(-1).values
            choice = int(((1 - alpha) * top_p - alpha * penalty).argmax())
            token = int(top_ids[choice])
            out.append(token)
            ids.append(token)
            hidden, logits = candidates[choice], result.logits[choice, -1]
            if token == eos:
                break
    return out


def test_contrastive_search_matches_reference(tiny, prompts):
    hf_model, model, params = tiny
    top_k, alpha = 4, 0.6
    out = contrastive_search(
        model, params, prompts, top_k=top_k, penalty_alpha=alpha, max_new_tokens=STEPS, stop_tokens=()
    )
    assert (out.lengths == STEPS).all()
    for row, prompt in enumerate(prompts):
        expected = _reference_contrastive(hf_model, prompt, top_k, alpha, STEPS)
        assert out.tokens[row].tolist() == expected
        np.testing.assert_allclose(out.logp_model[row], _hf_token_logp(hf_model, prompt, expected), atol=1e-4)
    penalty = out.diagnostics["degeneration_penalty"]  # a max cosine similarity
    assert ((penalty >= -1 - 1e-5) & (penalty <= 1 + 1e-5)).all()
    greedy = beam_search(model, params, prompts, num_beams=1, max_new_tokens=STEPS, stop_tokens=())
    assert (out.tokens != greedy.tokens).any()  # the penalty changes the continuation


def test_contrastive_search_stops_and_alpha_zero_is_greedy(tiny, prompts):
    hf_model, model, params = tiny
    top_k, alpha = 3, 0.4
    free = contrastive_search(
        model, params, prompts, top_k=top_k, penalty_alpha=alpha, max_new_tokens=STEPS, stop_tokens=()
    )
    count = compile_count()
    stop = int(free.tokens[0, 4])  # a stop token that the first row really produces, by step 5
    out = contrastive_search(
        model, params, prompts, top_k=top_k, penalty_alpha=alpha, max_new_tokens=STEPS, stop_tokens=(stop,)
    )
    for row, prompt in enumerate(prompts):
        expected = _reference_contrastive(hf_model, prompt, top_k, alpha, STEPS, eos=stop)
        assert out.lengths[row] == len(expected)
        assert out.tokens[row, : len(expected)].tolist() == expected
        assert (out.tokens[row, len(expected) :] == PAD).all()
    assert out.lengths[0] <= 5
    zero = contrastive_search(
        model, params, prompts, top_k=top_k, penalty_alpha=0.0, max_new_tokens=STEPS, stop_tokens=()
    )
    greedy = beam_search(model, params, prompts, num_beams=1, max_new_tokens=STEPS, stop_tokens=())
    np.testing.assert_array_equal(zero.tokens, greedy.tokens)
    assert compile_count() == count  # alpha and stop tokens are traced: nothing recompiled


def test_clear_errors(tiny, prompts):
    _, model, params = tiny
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(model, params, prompts, num_beams=0, max_new_tokens=4)
    with pytest.raises(ValueError, match="early_stopping"):
        beam_search(model, params, prompts, num_beams=2, max_new_tokens=4, early_stopping="sometimes")
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(model, params, prompts, num_beams=2, max_new_tokens=4, length_penalty=float("nan"))
    with pytest.raises(ValueError, match="top_k"):
        contrastive_search(model, params, prompts, top_k=0, max_new_tokens=4)
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="penalty_alpha"):
            contrastive_search(model, params, prompts, penalty_alpha=alpha, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        contrastive_search(model, params, prompts, max_new_tokens=0)
    with pytest.raises(ValueError, match="context"):
        beam_search(model, params, prompts, num_beams=2, max_new_tokens=1000)
