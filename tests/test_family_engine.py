"""The decoding machinery on every model family (issue 16, item 2), against HF transformers.

One representative per architecture file (``tests/test_families.FAMILIES``; variants that differ only in
RoPE scaling or a config detail share the engine paths checked here). Each family's tiny checkpoint is
saved with ``save_pretrained`` once per module and loaded with ``infodec.load`` in float32. Per family:

* the two-stream engine: ``generate`` with classifier-free guidance (evidence of different lengths
  before prompts of different lengths, so both streams are left-padded differently): the per-step
  ``pmi`` diagnostic is ``log P_HF(a | e, s) - log P_HF(a | s)`` from full-sequence HF forwards, and the
  chosen token maximises the CFG combination of the HF log-probabilities;
* beam search: tokens and scores of HF ``generate(num_beams=3)`` (HF runs each prompt unpadded);
* contrastive search: tokens of the cache-free HF reference of ``tests/test_search.py``;
* DAEMON: the importance log-weights are ``Σ log p_HF − Σ log r_HF − µ·sr2`` recomputed by HF
  teacher forcing of the sampled candidates, and the pick is one of them;
* mesh placement (child process, 4 forced CPU devices, mesh 2 x 2): every parameter's sharding is the
  one this file expects from the weight's role (an independent table, not ``param_spec``), the values
  equal the single-device load, and greedy ``generate`` on the mesh equals HF's greedy ``generate`` (which
  one device equals, ``tests/test_families.py``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import infodec
from infodec import daemon
from infodec.decoding import beam_search, contrastive_search
from tests.family_engine_check import NEW_TOKENS as MESH_TOKENS
from tests.family_engine_check import PROMPTS as MESH_PROMPTS
from tests.family_engine_check import REPRESENTATIVES
from tests.test_families import FAMILIES
from tests.test_search import _reference_contrastive
from tests.test_sharding import REPO, child_env, last_json

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 8
PAD = 0
rng = np.random.RandomState(16)
# Token ids from 3 up: clear of the tiny configs' pad / bos / eos ids (0, 1, 2). Different lengths.
PROMPTS = [rng.randint(3, 128, 5).tolist(), rng.randint(3, 128, 9).tolist()]
EVIDENCE = [rng.randint(3, 128, 7).tolist(), rng.randint(3, 128, 2).tolist()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``checkpoint(family) -> (hf_model, model, params)``, each family saved and loaded once per module."""
    memo: dict = {}

    def get(family):
        if family not in memo:
            hf_model = FAMILIES[family]().eval().float()
            directory = tmp_path_factory.mktemp(family)
            hf_model.save_pretrained(directory)
            model, params, _ = infodec.load(directory, dtype=jnp.float32)
            # HF's references run without an end-of-sequence token (infodec's calls pass stop_tokens=()).
            hf_model.config.eos_token_id = hf_model.generation_config.eos_token_id = None
            memo[family] = hf_model, model, params
        return memo[family]

    return get


def hf_log_probs(hf_model, ids) -> np.ndarray:
    """``[T, V]`` float64 log-softmax of HF's full-sequence logits of the unpadded ``ids``."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([list(ids)], dtype=torch.long)).logits[0]
    return torch.log_softmax(logits.double(), -1).numpy()


def continuation_log_probs(hf_model, prompt, continuation) -> np.ndarray:
    """``[N, V]``: HF's next-token log-probabilities before each of the ``N`` continuation tokens."""
    return hf_log_probs(hf_model, list(prompt) + list(continuation))[len(prompt) - 1 : -1]


# --- 1. the two-stream engine -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", REPRESENTATIVES)
def test_two_stream_pmi_and_cfg_choice_match_hf(checkpoint, family):
    hf_model, model, params = checkpoint(family)
    scale = 2.0  # ℓ_u + w (ℓ_c − ℓ_u) = 2 log P(.|e,s) − log P(.|s); the tiny temperature makes it an argmax
    policy = infodec.ClassifierFreeGuidance(scale, temperature=1e-5)
    out = infodec.generate(
        model, params, PROMPTS, policy, jax.random.key(0), max_new_tokens=STEPS, evidence=EVIDENCE, stop_tokens=()
    )
    assert (out.lengths == STEPS).all()
    pmi_seen = []
    for row, (prompt, evidence) in enumerate(zip(PROMPTS, EVIDENCE)):
        tokens = out.tokens[row].tolist()
        conditional = continuation_log_probs(hf_model, evidence + prompt, tokens)
        unconditional = continuation_log_probs(hf_model, prompt, tokens)
        steps = np.arange(STEPS)
        pmi = conditional[steps, tokens] - unconditional[steps, tokens]
        np.testing.assert_allclose(out.diagnostics["pmi"][row], pmi, atol=1e-4)
        np.testing.assert_allclose(out.logp_model[row], conditional[steps, tokens], atol=1e-4)
        combined = unconditional + scale * (conditional - unconditional)
        # The chosen token is the argmax of HF's combination (up to float32 noise on a near tie).
        shortfall = combined.max(-1) - combined[steps, tokens]
        assert shortfall.max() < 1e-4, f"row {row}: chosen tokens fall short of the CFG argmax by {shortfall}"
        pmi_seen.append(pmi)
    assert np.abs(pmi_seen).max() > 1e-2  # the evidence changes the distribution: the check has power


# --- 2. beam search ----------------------------------------------------------------------------------


def hf_beam(hf_model, prompt, num_beams):
    ids = torch.tensor([prompt])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        out = hf_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            num_beams=num_beams,
            length_penalty=1.0,
            early_stopping=False,
            max_new_tokens=STEPS,
            eos_token_id=None,
            pad_token_id=PAD,
            return_dict_in_generate=True,
            output_scores=True,
        )
    return out.sequences[0, len(prompt) :].tolist(), float(out.sequences_scores[0])


@pytest.mark.slow
@pytest.mark.parametrize("family", REPRESENTATIVES)
def test_beam_search_matches_hf(checkpoint, family):
    hf_model, model, params = checkpoint(family)
    num_beams = 3
    out = beam_search(model, params, PROMPTS, num_beams=num_beams, max_new_tokens=STEPS, stop_tokens=())
    assert (out.lengths == STEPS).all()
    for row, prompt in enumerate(PROMPTS):
        tokens, score = hf_beam(hf_model, prompt, num_beams)
        assert out.tokens[row].tolist() == tokens, f"row {row}: beam search differs from HF"
        np.testing.assert_allclose(out.diagnostics["beam_score"][row, 0], score, rtol=1e-4)
        logp = continuation_log_probs(hf_model, prompt, tokens)[np.arange(STEPS), tokens]
        np.testing.assert_allclose(out.logp_model[row], logp, atol=1e-4)


# --- 3. contrastive search ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", REPRESENTATIVES)
def test_contrastive_search_matches_reference(checkpoint, family):
    hf_model, model, params = checkpoint(family)
    top_k, alpha = 4, 0.6
    out = contrastive_search(
        model, params, PROMPTS, top_k=top_k, penalty_alpha=alpha, max_new_tokens=STEPS, stop_tokens=()
    )
    assert (out.lengths == STEPS).all()
    for row, prompt in enumerate(PROMPTS):
        expected = _reference_contrastive(hf_model, prompt, top_k, alpha, STEPS)
        assert out.tokens[row].tolist() == expected, f"row {row}: contrastive search differs from the reference"
        logp = continuation_log_probs(hf_model, prompt, expected)[np.arange(STEPS), expected]
        np.testing.assert_allclose(out.logp_model[row], logp, atol=1e-4)


# --- 4. DAEMON ---------------------------------------------------------------------------------------


def repetition_rate(x, n=2) -> float:
    """``sr_n``: the fraction of repeated n-grams (the reference of ``tests/test_daemon.py``)."""
    grams = [tuple(x[i : i + n]) for i in range(len(x) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


@pytest.mark.slow
@pytest.mark.parametrize("family", REPRESENTATIVES)
def test_daemon_log_weights_match_hf(checkpoint, family):
    hf_model, model, params = checkpoint(family)
    mu, tau, m = 1.5, 1.5, 4
    out = daemon.sample(
        model,
        params,
        PROMPTS,
        [mu],
        ["sr2"],
        num_candidates=m,
        max_new_tokens=STEPS,
        key=jax.random.key(3),
        proposal_temperature=tau,
        stop_tokens=(),
    )
    candidates = out.candidates
    assert (candidates.lengths == STEPS).all()
    expected = np.zeros((len(PROMPTS), m))
    for p, prompt in enumerate(PROMPTS):
        for i in range(m):
            tokens = candidates.tokens[p * m + i].tolist()
            logits = torch.tensor(continuation_log_probs(hf_model, prompt, tokens))  # log-softmax: logits up to a shift
            log_p = logits[np.arange(STEPS), tokens]
            log_r = torch.log_softmax(logits / tau, -1)[np.arange(STEPS), tokens]
            expected[p, i] = float((log_p - log_r).sum()) - mu * repetition_rate(tokens)
    np.testing.assert_allclose(out.log_weights, expected, atol=1e-3)
    rows = np.arange(len(PROMPTS)) * m + out.index
    np.testing.assert_array_equal(out.tokens, candidates.tokens[rows])


# --- 5. mesh placement (child process) ---------------------------------------------------------------

COLUMN = (
    r"(^|/)(q_proj|k_proj|v_proj|query_key_value|gate_proj|up_proj|c_fc|fc1|dense_h_to_4h)/(kernel|bias)$"
    r"|(^|/)lm_head/kernel$"
)
ROW = r"(^|/)(o_proj|attention/dense|down_proj|c_proj|fc2|dense_4h_to_h)/kernel$"
VOCABULARY = r"(^|/)(embed_tokens|wte|embed_in)/embedding$"
EXPERTS = r"mlp/experts/(gate_proj|up_proj|down_proj)$"
# Replicated by design: norms, biases added after a row-parallel matmul, learned positions, the MoE
# router, OPT's small project_in/out.
REPLICATED = (
    r"(norm|ln_1|ln_2|ln_f)/(scale|bias)$|(o_proj|attention/dense|down_proj|c_proj|fc2|dense_4h_to_h)/bias$"
    r"|(wpe|embed_positions)/embedding$|mlp/gate/kernel$|project_(in|out)/kernel$"
)


def expected_spec(name: str, ndim: int) -> list:
    """The sharding this file expects on a ``(data 2, model 2)`` mesh for the tiny configs (heads 4, KV heads
    2 or 4, MLP width 96 or 256, vocabulary 128, 4 experts: every count divides 2), trailing Nones dropped."""
    if re.search(EXPERTS, name):
        return ["model"]
    if re.search(COLUMN, name):
        return [None] * (ndim - 1) + ["model"]
    if re.search(ROW, name) or re.search(VOCABULARY, name):
        return ["model"]
    if re.search(REPLICATED, name):
        return []
    raise AssertionError(f"parameter {name} has no expected placement: a new weight name for the sharding rules?")


@pytest.fixture(scope="module")
def mesh_report():
    proc = subprocess.run(
        [sys.executable, "-m", "tests.family_engine_check"],
        cwd=REPO,
        env=child_env(4),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"family_engine_check failed:\n{proc.stderr[-4000:]}"
    return last_json(proc.stdout)


def hf_greedy(hf_model, prompt, steps):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=steps, pad_token_id=PAD
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("family", REPRESENTATIVES)
def test_mesh_placement_and_tokens(mesh_report, checkpoint, family):
    """Placement by the rules; greedy on the mesh (3 rows on a data axis of 2: one padding row) equals HF's
    greedy ``generate``, which one device equals (``tests/test_families.py``), log-probabilities included."""
    report = mesh_report[family]
    assert report["devices"] == 4 and report["mesh"] == {"data": 2, "model": 2}
    wrong = {
        name: (spec, expected_spec(name, ndim))
        for name, (spec, ndim) in report["specs"].items()
        if spec != expected_spec(name, ndim)
    }
    assert not wrong, f"parameters placed against the rules (actual, expected): {wrong}"
    assert report["values_equal"], "parameters loaded on the mesh differ from the single-device load"
    hf_model = checkpoint(family)[0]
    for row, prompt in enumerate(MESH_PROMPTS):
        expected = hf_greedy(hf_model, prompt, MESH_TOKENS)
        assert report["tokens"][row] == expected, f"row {row}: greedy on the mesh differs from HF"
        logp = continuation_log_probs(hf_model, prompt, expected)[np.arange(MESH_TOKENS), expected]
        np.testing.assert_allclose(report["logp_model"][row], logp, atol=1e-4)


def test_expected_specs_classify_every_role():
    """The independent table above, on names of each family (a smoke test of the table itself)."""
    assert expected_spec("layers_0/self_attn/q_proj/kernel", 2) == [None, "model"]
    assert expected_spec("layers_0/attention/query_key_value/bias", 1) == ["model"]
    assert expected_spec("layers_0/mlp/experts/down_proj", 3) == ["model"]
    assert expected_spec("layers_0/mlp/gate/kernel", 2) == []
    assert expected_spec("layers_0/attention/dense/bias", 1) == []
    assert expected_spec("embed_in/embedding", 2) == ["model"]
    with pytest.raises(AssertionError, match="no expected placement"):
        expected_spec("layers_0/self_attn/qkv_proj/kernel", 2)
