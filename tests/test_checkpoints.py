"""infodec.load: source resolution, caching, clear errors, and the real registry models against HF."""

import json
import shutil
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import infodec
from infodec import cache
from infodec.models import checkpoints, registry
from infodec.models.base import CheckpointMismatchError
from tests.hf_tiny import save_tiny_llama

PROSE = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type with an oil-based ink and a screw press adapted from those used to make wine. "
    "Within a few decades, print shops had spread to most of the major cities of Europe, and the price "
    "of books fell sharply. Scholars could now compare identical copies of a text, which changed the way "
    "knowledge was checked, shared and argued about."
)


# --- resolution and errors (no network) ---------------------------------------------------------------


def test_resolve_classifies_every_source(tmp_path):
    save_tiny_llama(tmp_path / "hf")
    (tmp_path / "model.gguf").write_bytes(b"")
    assert checkpoints.resolve("smollm2-135m") == ("registry", "smollm2-135m")
    assert checkpoints.resolve(tmp_path / "hf") == ("directory", str(tmp_path / "hf"))
    assert checkpoints.resolve(str(tmp_path / "model.gguf")) == ("gguf", str(tmp_path / "model.gguf"))
    assert checkpoints.resolve("HuggingFaceTB/SmolLM2-135M") == ("hub", "HuggingFaceTB/SmolLM2-135M")


def test_unknown_name_lists_known_models():
    with pytest.raises(registry.ModelNotFoundError, match="smollm2-135m.*gemma3-270m|gemma3-270m.*smollm2-135m"):
        infodec.load("no-such-model")
    with pytest.raises(registry.ModelNotFoundError, match="known names"):
        registry.fetch("no-such-model")


def test_hub_id_goes_through_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    save_tiny_llama(tmp_path)
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, tuple(allow_patterns)))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model, params, _ = infodec.load("someone/tiny-llama")
    # First the config and tokenizer files, then the weights (every *.safetensors: the repo has no index).
    assert [repo for repo, _ in calls] == ["someone/tiny-llama"] * 2
    assert "*.json" in calls[0][1] and "*.safetensors" not in calls[0][1] and calls[1][1] == ("*.safetensors",)
    assert model.config.num_layers == 3

    def offline(repo_id, allow_patterns):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(registry.ModelNotFoundError, match="could not download 'someone/x'.*registry name"):
        infodec.load("someone/x")


def test_truncated_safetensors_is_one_clear_error(tmp_path):
    save_tiny_llama(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(checkpoints.CheckpointError, match="corrupt or truncated"):
        infodec.load(tmp_path)


@pytest.mark.download
def test_truncated_gguf_is_one_clear_error(tmp_path, smollm2_gguf, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    broken = tmp_path / "broken.gguf"
    with open(smollm2_gguf, "rb") as source:
        broken.write_bytes(source.read(3_000_000))
    with pytest.raises(checkpoints.CheckpointError, match="broken.gguf.*corrupt or truncated"):
        infodec.load(broken)
    assert not list((tmp_path / "cache" / "converted").glob("broken*"))  # nothing half-written is cached


def test_mismatched_config_and_weights(tmp_path):
    save_tiny_llama(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_size"] = 60
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match="config.json and the weights disagree"):
        infodec.load(tmp_path)


def test_unsupported_architecture_and_missing_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(checkpoints.CheckpointError, match="model_type 't5' is not supported; supported:"):
        infodec.load(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="no config.json"):
        infodec.load(tmp_path / "empty")


# --- the real default model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    return infodec.load("smollm2-135m")


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()


def _full_logits(model, params, ids):
    tokens = np.asarray(ids)[None]
    logits, _ = jax.jit(model.apply)(params, tokens, np.arange(tokens.shape[1])[None])
    return np.asarray(logits[0])


@pytest.mark.download
def test_paris_is_the_top_next_token(smollm2):
    model, params, tokenizer = smollm2
    ids = tokenizer.encode("The capital of France is")
    probs = jax.nn.softmax(_full_logits(model, params, ids)[-1])
    assert tokenizer.decode([int(jnp.argmax(probs))]) == " Paris"
    assert float(jnp.max(probs)) > 0.5


@pytest.mark.download
def test_smollm2_logits_and_perplexity_match_hf_gguf_loader(smollm2, hf_smollm2):
    model, params, tokenizer = smollm2
    ids = tokenizer.encode(PROSE)
    ours = _full_logits(model, params, ids)
    with torch.no_grad():
        theirs = hf_smollm2(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ours - theirs).max() < 1e-3

    def perplexity(logits):
        logp = jax.nn.log_softmax(jnp.asarray(logits[:-1]))
        return float(jnp.exp(-jnp.mean(jnp.take_along_axis(logp, jnp.asarray(ids[1:])[:, None], 1))))

    ppl, hf_ppl = perplexity(ours), perplexity(theirs)
    assert abs(ppl - hf_ppl) / hf_ppl < 0.01
    assert 5 < ppl < 100  # ordinary prose under a real LM, not a broken one


@pytest.mark.download
def test_smollm2_greedy_64_tokens_match_hf(smollm2, hf_smollm2):
    model, params, tokenizer = smollm2
    prompt = "The history of the printing press begins"
    out = infodec.generate(
        model,
        params,
        [prompt],
        infodec.Greedy(),
        jax.random.key(0),
        max_new_tokens=64,
        tokenizer=tokenizer,
        stop_tokens=(),
    )
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.no_grad():
        hf = hf_smollm2.generate(
            ids, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=tokenizer.eos_ids[0]
        )
    assert out.tokens[0].tolist() == hf[0, ids.shape[1] :].tolist()


@pytest.mark.download
def test_second_load_is_served_from_the_cache(smollm2):
    converted = cache.cache_dir() / "converted" / "smollm2-135m-float32"
    assert (converted / "model.safetensors").exists() and (converted / "tokenizer.json").exists()
    start = time.perf_counter()
    model, params, tokenizer = infodec.load("smollm2-135m")
    assert time.perf_counter() - start < 15
    assert model == smollm2[0] and hash(model) == hash(smollm2[0])


@pytest.mark.download
def test_cache_location_follows_the_environment(tmp_path, monkeypatch, smollm2_gguf):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    copy = tmp_path / "my-model.gguf"
    shutil.copy(smollm2_gguf, copy)
    model, _, tokenizer = infodec.load(copy)
    assert tokenizer is not None
    assert model.config.num_layers == 30 and tokenizer.vocab_size == 49152
    assert len(list((tmp_path / "converted").glob("my-model-*"))) == 1


@pytest.mark.download
def test_gemma3_270m_matches_hf_gguf_loader(gemma3_gguf):
    from transformers import AutoModelForCausalLM

    model, params, tokenizer = infodec.load("gemma3-270m")
    assert tokenizer is not None
    ids = tokenizer.encode(PROSE)
    assert ids[0] == tokenizer.bos_id == 2
    ours = _full_logits(model, params, ids)
    hf = AutoModelForCausalLM.from_pretrained(
        gemma3_gguf.parent, gguf_file=gemma3_gguf.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ours - theirs).max() < 1e-3
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


@pytest.mark.download
def test_minilm_registry_model_encodes(minilm_dir):
    encoder, params, tokenizer = infodec.load("minilm-l6")
    assert tokenizer is not None
    ids = tokenizer.encode("A man is playing a guitar.")
    embedding = encoder.encode(params, np.asarray([ids]), np.ones((1, len(ids)), int))
    chex.assert_shape(embedding, (1, 384))
    assert abs(float(jnp.linalg.norm(embedding)) - 1.0) < 1e-5


def test_bfloat16_checkpoint_is_widened_exactly(tmp_path):
    from tests.hf_tiny import hf_logits

    hf_model = save_tiny_llama(tmp_path).to(torch.bfloat16)  # pyright: ignore[reportArgumentType] (transformers' @wraps'd .to)
    hf_model.save_pretrained(tmp_path)
    model, params, _ = infodec.load(tmp_path)
    tokens = np.random.RandomState(0).randint(0, 97, (2, 8))
    logits, _ = model.apply(params, tokens, np.broadcast_to(np.arange(8), (2, 8)))
    assert np.abs(np.asarray(logits) - hf_logits(hf_model.float(), tokens)).max() < 1e-4
