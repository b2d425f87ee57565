"""The tradeoff study (infodec.studies.tradeoff) and its launcher on a tiny random model: every family
runs, an interrupted sweep resumes without recomputing, the CSV and PNGs are written, the verdict
logic classifies paired differences correctly, and bad settings are refused with clear errors."""

import copy
import csv
import subprocess
import sys
import types
from typing import Any

import jax
import numpy as np
import pytest
from scipy import stats as scipy_stats

from infodec.policies.guidance import TopicDiscriminator
from infodec.policies.guidance_training import save_discriminator
from infodec.studies import tradeoff
from tests.tiny_models import tiny_llama

EOS = 256
TOPICS = ["Arts", "Science"]


class ByteTokenizer:
    """Bytes are ids 0..255, id 256 is EOS; no BOS."""

    bos_id, eos_ids, pad_id, add_bos = None, (EOS,), None, False

    def encode(self, text, *, add_bos=None):
        return list(text.encode("utf-8"))

    def decode(self, ids, **_):
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def decode_batch(self, batch, **_):
        return [self.decode(ids) for ids in batch]


def bag_of_letters(texts):
    """A transparent stand-in for MiniLM: letter counts."""
    return np.array([[t.lower().count(c) + 0.1 for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts])


INPUTS = [
    tradeoff.TaskInput("a", "The cat sat on the mat in Paris.", "Tell me about cats.", topic="Arts"),
    tradeoff.TaskInput("b", "Rivers flow to the sea; water is wet.", "Tell me about rivers.", topic="Science"),
    tradeoff.TaskInput("c", "Music has rhythm and melody.", "Tell me about music.", topic="Arts"),
]


@pytest.fixture(scope="module")
def tiny():
    model, params = tiny_llama(seed=1, vocab_size=EOS + 1, max_position_embeddings=128)
    return model, params, ByteTokenizer()


def small_config(**overrides):
    settings = dict(
        model="tiny",
        families=tradeoff.FAMILIES,
        num_inputs=3,
        num_samples=2,
        max_new_tokens=6,
        max_evidence_tokens=24,
        inputs_per_call=2,
        temperatures=(1.0,),
        top_ks=(3,),
        top_ps=(0.9,),
        cfg_scales=(2.0,),
        classifier_scales=(1.0,),
        kl_t0s=(1.0,),
        half_lives=(1.0,),
        dynamic_scales=(1.0,),
    )
    return tradeoff.smoke_config(**{**settings, **overrides})


def discriminator(model):
    head = TopicDiscriminator(len(TOPICS), hidden_dim=8).init(
        jax.random.key(0),
        np.zeros((1, model.config.hidden_size), np.float32),
        np.zeros((1, 3, model.config.hidden_size), np.float32),
    )["params"]
    return head, {"topics": TOPICS, "model": "tiny", "hidden_dim": 8, "hidden_size": model.config.hidden_size}


@pytest.mark.slow
def test_sweep_runs_every_family_and_resumes(tiny, tmp_path):
    config = small_config()
    model = tiny[0]
    logs = []
    kwargs: dict[str, Any] = dict(
        loaded=tiny, embed=bag_of_letters, inputs=INPUTS, discriminator=discriminator(model), log=logs.append
    )
    result = tradeoff.run(config, tmp_path, **kwargs)
    keys = [r["key"] for r in result.records]
    assert keys == [
        "temperature/greedy",
        "temperature/T=1",
        "top_k/k=3",
        "top_p/p=0.9",
        "cfg/w=2",
        "classifier/lambda=1",
        "kl_guided/t0=1,h=1",
        "dynamic/lambda_max=1",
    ]
    for r in result.records:
        for name in tradeoff.MEASURES:
            assert set(r["measures"][name]) == {"mean", "ci", "n"}
            assert len(r["per_input"][name]) == 3
        assert 0 <= r["measures"]["distinct2"]["mean"] <= 1 and r["measures"]["length"]["mean"] <= 6
    greedy = result.records[0]["measures"]
    assert greedy["self_bleu"]["mean"] == pytest.approx(1.0)  # identical samples
    assert greedy["entropy"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert greedy["kl_to_model"]["mean"] > 0  # greedy moves mass onto one token

    with open(result.csv) as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == keys and "pmi_ci" in rows[0]
    assert {p.name for p in result.plots} == {
        "frontier_pmi.png",
        "frontier_content_precision.png",
        "frontier_similarity.png",
        "sensibleness.png",
        "sensibleness_kl.png",
    }
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in result.plots)
    assert (tmp_path / "verdict.txt").read_text().startswith("KL-guided vs static temperature")

    before = (tmp_path / "points.jsonl").read_text()
    logs.clear()
    again = tradeoff.run(config, tmp_path, **kwargs)
    assert (tmp_path / "points.jsonl").read_text() == before  # nothing recomputed
    assert any("8 of 8 points already done" in line for line in logs)
    assert not any(line.startswith("loaded") for line in logs)  # nor even loaded
    assert [r["measures"] for r in again.records] == [r["measures"] for r in result.records]

    with pytest.raises(ValueError, match="other settings"):
        tradeoff.run(config.replace(num_samples=3), tmp_path, **kwargs)


@pytest.mark.slow
def test_pmi_from_the_engine_equals_a_separate_evaluator(tiny, tmp_path):
    """The shortcuts (log-probs from decoding: stream 0, and stream 1 for two-stream decoders) match the
    teacher-forced passes of a separate evaluator."""
    model, params, tok = tiny
    config = small_config(families=("temperature", "kl_guided"), temperatures=(1.0,))
    copy = jax.tree.map(lambda x: x + 0, params)  # another object: forces the full evaluator path
    shortcut = tradeoff.run(config, tmp_path / "a", loaded=tiny, embed=bag_of_letters, inputs=INPUTS, log=print)
    full = tradeoff.run(
        config,
        tmp_path / "b",
        loaded=tiny,
        evaluator=(model, copy, tok),
        embed=bag_of_letters,
        inputs=INPUTS,
        log=print,
    )
    for a, b in zip(shortcut.records, full.records):
        for name in ("pmi", "perplexity"):
            np.testing.assert_allclose(
                np.array(a["per_input"][name], float), np.array(b["per_input"][name], float), rtol=1e-4, atol=1e-4
            )


@pytest.mark.slow
def test_classifier_family_is_skipped_with_a_reason(tiny, tmp_path):
    head, meta = discriminator(tiny[0])
    config = small_config(families=("temperature", "classifier"), discriminator=str(tmp_path / "none"))
    disc, reason = tradeoff.check_discriminator(config, None, INPUTS)
    assert disc is None and "no trained discriminator" in reason and "train_discriminator" in reason
    save_discriminator(tmp_path / "other", head, {**meta, "model": "smollm2-135m"})
    disc, reason = tradeoff.check_discriminator(config.replace(discriminator=str(tmp_path / "other")), None, INPUTS)
    assert disc is None and "trained on 'smollm2-135m'" in reason
    disc, reason = tradeoff.check_discriminator(config, (head, {**meta, "topics": ["Arts"]}), INPUTS)
    assert disc is None and "['Science']" in reason
    logs = []
    result = tradeoff.run(config, tmp_path / "run", loaded=tiny, embed=bag_of_letters, inputs=INPUTS, log=logs.append)
    assert result.skipped and not any(r["family"] == "classifier" for r in result.records)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(task="squad"), "unknown task 'squad'"),
        (dict(families=("temperature", "beam")), "unknown families \\['beam'\\]"),
        (dict(temperatures=(-0.5,)), "temperatures must be >= 0"),
        (dict(top_ps=(1.5,)), "top_ps must be in \\(0, 1\\]"),
        (dict(top_ks=(2.5,)), "top_ks must be integers"),
        (dict(half_lives=(0.0,)), "half_lives must be > 0"),
        (dict(num_samples=0), "num_samples must be >= 1"),
        (dict(task="aclsum", families=("classifier",)), "classifier family steers toward a wiki-leads topic"),
    ],
)
def test_bad_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        small_config(**change)


@pytest.mark.subprocess
def test_launcher_usage_errors():
    # Two launches (each imports jax); the rest of the validation is TradeoffConfig's, tested above.
    for flag, message in [
        ("--task=squad", "--task must be one of"),
        ("--temperatures=0.5,-1", "temperatures must be >= 0"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "experiments.tradeoff", flag, "--out=/nonexistent/x"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0 and message in done.stderr, (flag, done.stderr[-500:])
        assert "Traceback" not in done.stderr


def verdict_record(key, attr, div):
    """A point record with per-input ``pmi`` and ``distinct2`` (family and setting from ``key``)."""
    family, setting = key.split("/")
    per_input = {"pmi": attr, "distinct2": div}
    measures = {k: tradeoff.interval(v) for k, v in per_input.items()}
    return {"key": key, "family": family, "setting": setting, "per_input": per_input, "measures": measures}


def test_verdict_classifies_paired_differences():
    base = np.linspace(0, 1, 20)
    records = [
        verdict_record("temperature/greedy", base, base * 0 + 0.2),
        verdict_record("temperature/T=1", base, base * 0 + 0.8 + base / 100),
        verdict_record("kl_guided/t0=1,h=1", base + 0.5, base * 0 + 0.6 + base / 100),
        verdict_record("kl_guided/t0=1,h=2", base + 0.5, base * 0 + 0.9 + base / 100),
    ]
    lines = tradeoff.kl_guided_verdict(records, attribution_measures=("pmi",))
    text = "\n".join(lines)
    assert "h=1 vs T=1: Δpmi +0.5000" in text and "trades off (more attribution, less diversity)" in text
    assert "h=2 vs T=1" in text and "-> dominates" in text
    assert "h=1 vs the temperature curve at equal distinct2 (between greedy and T=1): +0.5000" in text
    assert "above it" in text  # h=1 sits above the interpolated curve
    assert "h=2 vs the temperature curve: its distinct2 is outside the temperature curve's range" in text
    assert "no top_k points in this sweep: skipped" in text and "no top_p points in this sweep: skipped" in text
    assert "Holm–Bonferroni over m = 1 comparisons" in text  # the out-of-range point is not a test
    assert lines[-2:] == [
        "  pmi: KL-guided dominates static temperature at matched t0 in 1 of 2 settings",
        "  pmi vs temperature: KL-guided significantly above the temperature curve at equal distinct2 in 1 of 1 "
        "settings (Holm-adjusted), below in 0; 1 of 2 outside its distinct2 range -> held",
    ]
    assert (
        tradeoff.compare({"mean": 0.1, "ci": 0.5, "n": 9}, {"mean": 0.0, "ci": 0.1, "n": 9})
        == "is indistinguishable (same attribution, same diversity within CIs)"
    )
    assert (
        tradeoff.compare({"mean": -1, "ci": 0.5, "n": 9}, {"mean": 0.0, "ci": 0.1, "n": 9})
        == "is dominated (less attribution, same diversity within CIs)"
    )
    assert tradeoff.compare({"mean": 0.1, "ci": 0.5, "n": 9}, {"mean": 0.2, "ci": 0.1, "n": 9}).startswith("dominates")


def test_verdict_corrects_matched_diversity_comparisons_with_holm():
    """Temperature and top-p curves, two KL-guided points inside both: m = 4 tests. h=2 lies above the
    temperature curve at raw p ≈ 0.02 < 0.05, but its Holm-adjusted p (3 · p, second smallest of 4) is
    ≈ 0.06, so it is "on" the curve at α = 0.05 and "above" it at α = 0.1."""
    base = np.linspace(0, 1, 20)
    e, f = np.tile([1.0, -1.0], 10), np.tile([1.0, 1.0, -1.0, -1.0], 5)  # zero-mean, orthogonal patterns

    def sweep(sign):
        return [
            verdict_record("temperature/T=0.5", sign * base, 0.2 + base / 100),
            verdict_record("temperature/T=1", sign * base, 0.8 + base / 100),
            verdict_record("top_p/p=0.5", sign * (base + 0.55 + f), 0.4 + base / 100),
            verdict_record("top_p/p=0.9", sign * (base + 0.55 + f), 0.7 + base / 100),
            verdict_record("kl_guided/t0=1,h=1", sign * (base + 0.5 + 0.1 * e), 0.5 + base / 100),
            verdict_record("kl_guided/t0=1,h=2", sign * (base + 0.58 + e), 0.6 + base / 100),
        ]

    raw = np.asarray(scipy_stats.ttest_1samp(0.58 + e, 0.0)).item(1)  # h=2 − the temperature curve, per input
    assert 0.01 < raw < 0.05 and 3 * raw > 0.05  # significant alone, not after the correction
    lines = tradeoff.kl_guided_verdict(sweep(1), attribution_measures=("pmi",))
    text = "\n".join(lines)
    assert lines[0].startswith("KL-guided vs static temperature at the same t0")
    assert [tradeoff.claim_status(s) for s in ([], [1, 1, 0], [1, 0], [1, 1, -1])] == [
        "not tested",
        "held",
        "not shown",
        "failed",
    ]
    assert "Holm–Bonferroni over m = 4 comparisons, family-wise α = 0.05" in text
    assert "(temperature, top_p)" in text and "no top_k points in this sweep: skipped" in text
    assert (
        f"h=2 vs the temperature curve at equal distinct2 (between T=0.5 and T=1): +0.5800 ± 0.4497, "
        f"p = {raw:.3g}, Holm-adjusted p = {3 * raw:.3g} -> on it"
    ) in text
    assert "h=1 vs the temperature curve at equal distinct2 (between T=0.5 and T=1): +0.5000" in text
    assert "h=1 vs the top_p curve at equal distinct2 (between p=0.5 and p=0.9): -0.0500" in text
    assert text.count("-> above it") == 1 and text.count("-> on it") == 3  # only h=1 vs temperature
    assert lines[-2:] == [
        "  pmi vs temperature: KL-guided significantly above the temperature curve at equal distinct2 in 1 of 2 "
        "settings (Holm-adjusted), below in 0 -> not shown",  # 1 of 2 is not a majority
        "  pmi vs top_p: KL-guided significantly above the top_p curve at equal distinct2 in 0 of 2 settings "
        "(Holm-adjusted), below in 0 -> not shown",
    ]
    looser = "\n".join(tradeoff.kl_guided_verdict(sweep(1), attribution_measures=("pmi",), alpha=0.1))
    assert "family-wise α = 0.1" in looser and looser.count("-> above it") == 2
    mirrored = tradeoff.kl_guided_verdict(sweep(-1), attribution_measures=("pmi",))
    assert "in 0 of 2 settings (Holm-adjusted), below in 1 -> failed" in mirrored[-2]
    only = "\n".join(
        tradeoff.kl_guided_verdict(sweep(1), attribution_measures=("pmi",), reference_families=("temperature",))
    )
    # two tests: h=2's p is the larger, so Holm leaves it at raw < 0.05 and h=2 is above the curve
    assert "m = 2 comparisons" in only and only.count("-> above it") == 2 and "top_p" not in only
    assert f"p = {raw:.3g}, Holm-adjusted p = {raw:.3g} -> above it" in only


# --- chat templates ---------------------------------------------------------------------------------


def test_chat_template_mode_follows_the_model_and_the_tokenizer():
    with_template, without = types.SimpleNamespace(chat_template="{{ x }}"), ByteTokenizer()
    assert tradeoff.is_instruct("smollm2-135m")  # the registry says SmolLM2-135M-Instruct
    assert not tradeoff.is_instruct("gemma3-270m")  # "Gemma 3 270M base"
    assert tradeoff.is_instruct("Qwen/Qwen2.5-0.5B-Instruct") and tradeoff.is_instruct("google/gemma-3-1b-it")
    assert not tradeoff.is_instruct("meta-llama/Llama-3.2-1B") and not tradeoff.is_instruct("tiny")
    assert tradeoff.use_chat_template("auto", "smollm2-135m", with_template)
    assert not tradeoff.use_chat_template("auto", "smollm2-135m", without)
    assert not tradeoff.use_chat_template("auto", "meta-llama/Llama-3.2-1B", with_template)  # a base model
    assert tradeoff.use_chat_template("on", "meta-llama/Llama-3.2-1B", with_template)
    assert not tradeoff.use_chat_template("off", "smollm2-135m", with_template)
    with pytest.raises(ValueError, match="has no chat template"):
        tradeoff.use_chat_template("on", "tiny", without)
    with pytest.raises(ValueError, match="chat_template must be one of auto, on, off"):
        small_config(chat_template="yes")


@pytest.fixture(scope="module")
def chat_tiny():
    """A tiny Llama over a byte-level vocabulary with Gemma 3's chat template (it writes ``<bos>``)."""
    from infodec.models.tokenizer import Tokenizer
    from tests.tiny_tokenizers import GEMMA3_TEMPLATE, byte_level_backend

    backend = byte_level_backend(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"])
    ids = {t: int(backend.token_to_id(t) or 0) for t in ("<bos>", "<eos>", "<end_of_turn>")}
    tok = Tokenizer(
        backend,
        bos_id=ids["<bos>"],
        eos_ids=[ids["<eos>"], ids["<end_of_turn>"]],
        pad_id=None,
        add_bos=True,
        chat_template=GEMMA3_TEMPLATE,
    )
    model, params = tiny_llama(seed=1, vocab_size=tok.vocab_size, max_position_embeddings=128)
    return model, params, tok


def test_chat_prompts_frame_the_query_and_keep_the_streams_aligned(chat_tiny):
    model, params, tok = chat_tiny
    study = tradeoff.TradeoffStudy(
        small_config(chat_template="on"), model, params, tok, chat_tiny, bag_of_letters, INPUTS, np.zeros(3), chat=True
    )
    bos = tok.bos_id
    for x, evidence, query in zip(INPUTS, study.evidence_ids, study.query_ids):
        expected = f"<bos><start_of_turn>user\n{x.query}<end_of_turn>\n<start_of_turn>model\n"
        assert tok.decode(query, skip_special_tokens=False) == expected
        assert query == tok.apply_chat_template([{"role": "user", "content": x.query}], tokenize=True)
        # Both streams start with one BOS; the evidence is the document before the conversation.
        assert evidence[0] == bos and bos not in evidence[1:]
        assert tok.decode(evidence[1:], skip_special_tokens=False).endswith(tradeoff.EVIDENCE_SEPARATOR)
    plain = tradeoff.TradeoffStudy(
        small_config(), model, params, tok, chat_tiny, bag_of_letters, INPUTS, np.zeros(3), chat=False
    )
    assert plain.query_ids[0] == tok.encode(INPUTS[0].query + tradeoff.QUERY_SUFFIX, add_bos=False)
    assert [e[1:] for e in study.evidence_ids] == plain.evidence_ids  # same evidence, plus the BOS

    # An evaluator with its own tokenizer (same template) re-encodes the text into the same framing.
    other = copy.copy(tok)
    study.evaluator = (model, params, other)
    texts = ["A reply.", "Another one", "x"]
    tokens = np.zeros((3 * 2, 4), np.int32)
    _, _, with_evidence, without = study.evaluator_inputs(tokens, np.ones(6, int), texts * 2)
    assert with_evidence == [study.evidence_ids[r // 2] + study.query_ids[r // 2] for r in range(6)]
    assert without == [study.query_ids[r // 2] for r in range(6)]


@pytest.mark.slow
def test_sweep_runs_with_a_chat_template(chat_tiny, tmp_path):
    """One- and two-stream decoders on chat-framed prompts; the engine's log-probs (the PMI shortcut)
    equal a separate evaluator's teacher-forced passes over the same chat-framed prompts."""
    model, params, tok = chat_tiny
    config = small_config(model="tiny-it", chat_template="auto", families=("temperature", "cfg"))
    logs = []
    kwargs: dict[str, Any] = dict(loaded=chat_tiny, embed=bag_of_letters, inputs=INPUTS)
    shortcut = tradeoff.run(config, tmp_path / "a", log=logs.append, **kwargs)
    assert any("prompts in the model's chat template" in line for line in logs)
    full = tradeoff.run(
        config, tmp_path / "b", evaluator=(model, jax.tree.map(lambda x: x + 0, params), tok), log=print, **kwargs
    )
    for a, b in zip(shortcut.records, full.records):
        for name in ("pmi", "perplexity"):
            np.testing.assert_allclose(
                np.array(a["per_input"][name], float), np.array(b["per_input"][name], float), rtol=1e-4, atol=1e-4
            )
