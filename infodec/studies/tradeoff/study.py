r"""The tradeoffs of [P1]: sensibleness, diversity and attribution of decoders on evidence-grounded tasks.

A sweep is a list of *points*, each one decoder setting in a *family*:

``temperature`` (one stream)
  ``Temperature(T)``; ``T = 0`` (greedy, the limit) always included.
``top_k``, ``top_p`` (one stream)
  ``TopK(k)``, ``TopP(p)`` at ``T = 1``.
``cfg`` (two streams)
  ``ClassifierFreeGuidance(w)`` (``w = 1``: plain conditional sampling).
``classifier`` (one stream)
  ``ClassifierGuidance`` toward the input's topic, scale λ, top-k support (wiki-leads only; needs a
  trained discriminator).
``kl_guided`` (two streams)
  ``KLGuidedTemperature(t0, h)`` per half-life ``h``; the static ``Temperature(t0)`` (``h = 0``, same
  tokens as two-stream ``h = 0`` under the same key) is put in the ``temperature`` family.
``dynamic`` (two streams)
  ``DynamicValuePolicy(SigmoidSchedule(0, λ_max), target="guidance")``: CFG whose λ rises with the
  streams' KL.

Every input is one (evidence, query) pair (:func:`task_inputs`): ``wiki-leads`` ("Tell me about
{title}." with the lead as evidence) or ``aclsum`` ("Summarise the {aspect} of this paper in one
sentence." with the abstract as evidence). One-stream decoders read evidence + query in their prompt;
two-stream decoders read stream 0 = evidence + query and stream 1 = the query alone — the same token
ids, so every decoder sees the same evidence and attribution is comparable. For an instruct model
(:func:`use_chat_template`; ``config.chat_template``) the query is the user turn of the model's own chat
template, ending with the header that opens the assistant's answer, and the evidence is the document
before it (see :class:`TradeoffStudy`); otherwise both are plain text. Each input gets
``num_samples`` continuations; all points use the same PRNG keys (common random numbers), so
differences between points are paired by input.

Measures per point (mean over inputs ± ``1.96·SE``, a normal approximation; per-row values are first
averaged over an input's samples; rows without text are left out):

* diversity: ``distinct1``/``distinct2`` of each input's samples pooled, ``self_bleu`` among them (low =
  diverse), ``entropy`` (mean per-token ``H(π)``), and ``corpus_distinct2`` over all outputs with a
  bootstrap CI over inputs;
* attribution: ``pmi`` (per-token PMI with the evidence under the evaluator LM), ``content_precision``
  (content-unigram precision against the evidence; ``content_precision2`` for bigrams), ``similarity``
  (MiniLM cosine to the evidence);
* sensibleness: ``nll`` (mean token negative log-likelihood under the evaluator given evidence +
  query) and ``perplexity`` (``exp`` of a row's ``nll``, averaged like the rest), ``kl_to_model`` (mean
  per-token ``KL(π ‖ P_G)``, from the decoder's diagnostics; ``P_G`` is the model given evidence + query).

A final stop token is not part of an output. When the evaluator is the decoding model, log p(y |
evidence + query) is the engine's ``logp_model`` and, for two-stream decoders, log p(y | query) comes
from its per-token ``pmi`` diagnostic; only the missing query-alone pass of one-stream decoders runs
(tests check these equal a separate evaluator's teacher-forced passes).

:func:`run` computes the points into a resumable :class:`~infodec.results.ResultsFolder`, then writes
``tradeoff.csv``, the plots, ``verdict.txt`` (``report.kl_guided_verdict``: does KL-guided temperature
dominate static temperature at the same ``t0``, and does it lie above the static-temperature frontier?)
and ``report.md`` (``report.write_report`` regenerates them from the folder alone).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from infodec.batching import map_in_chunks
from infodec.data import load_wiki_leads, split
from infodec.data.aclsum import load_aclsum
from infodec.data.wiki_leads import UNCATEGORIZED, sample_leads
from infodec.decoding import generate
from infodec.eval import attribution, diversity
from infodec.eval.sensibleness import mean_log_prob, row_perplexity
from infodec.eval.stats import bootstrap_ci
from infodec.models import registry
from infodec.models.checkpoints import load
from infodec.policies import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    DynamicValuePolicy,
    KLGuidedTemperature,
    SigmoidSchedule,
    TopK,
    TopP,
    named,
)
from infodec.policies.guidance_training import load_discriminator
from infodec.results import ResultsFolder
from infodec.studies.tradeoff.config import MEASURES, TASKS, TradeoffConfig
from infodec.studies.tradeoff.report import interval, write_files

EVIDENCE_SEPARATOR = "\n\n"  # appended to the evidence: the query starts a new paragraph
QUERY_SUFFIX = "\n"  # appended to the query: the answer starts on a new line (plain prompts)
WIKI_QUERY = "Tell me about {title}."
# A hub id or path naming an instruct / chat fine-tune.
_INSTRUCT = re.compile(r"instruct|chat|(^|[-_./ ])(it|sft|dpo|rlhf)($|[-_./ ])", re.IGNORECASE)


def is_instruct(model: str) -> bool:
    """Whether ``model`` names an instruct model: a registry name says so in its entry (``smollm2-135m`` is
    SmolLM2-135M-Instruct; ``gemma3-270m`` is a base model); a hub id or path when its name says
    "instruct", "chat", "-it", "sft", "dpo" or "rlhf"."""
    entry = registry.REGISTRY.get(model)
    if entry is not None:
        return entry.instruct
    return bool(_INSTRUCT.search(model))


def use_chat_template(mode: str, model: str, tokenizer: Any) -> bool:
    """Whether the study frames the query with ``tokenizer``'s chat template.

    ``mode`` (``config.chat_template``): ``"off"`` never; ``"on"`` always (``ValueError`` when the
    tokenizer has no template); ``"auto"`` when the tokenizer has a template and :func:`is_instruct`
    says ``model`` is an instruct model (base models often ship a template they were not tuned on).
    """
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if mode == "off":
        return False
    if mode == "on":
        if not has_template:
            raise ValueError(
                f"chat_template='on' but the tokenizer of {model!r} has no chat template; use 'auto' or 'off'"
            )
        return True
    if mode == "auto":
        return has_template and is_instruct(model)
    raise ValueError(f"chat_template must be 'auto', 'on' or 'off', got {mode!r}")


def encode_inputs(
    tokenizer: Any, evidence: Sequence[str], queries: Sequence[str], *, chat: bool, cut: int | None = None
) -> tuple[list[list[int]], list[list[int]], list[str]]:
    """``(evidence_ids, query_ids, evidence_text)`` per input: stream 0 (or a one-stream prompt) reads
    ``evidence_ids + query_ids``, stream 1 ``query_ids``.

    The evidence is cut to ``cut`` tokens (``evidence_text`` is what remains, decoded) and followed by
    :data:`EVIDENCE_SEPARATOR`. Plain (``chat=False``): the query is followed by :data:`QUERY_SUFFIX` and
    nothing adds a BOS, since one could not start both streams. ``chat=True``: the query is the user turn
    of ``tokenizer.apply_chat_template`` (system prompt, if the template adds one, and the generation
    prompt included); when that starts with the BOS the template writes, the evidence starts with one
    too, so both streams begin with BOS.
    """
    body = [tokenizer.encode(text, add_bos=False)[:cut] for text in evidence]
    evidence_text = [tokenizer.decode(ids) for ids in body]
    separator = tokenizer.encode(EVIDENCE_SEPARATOR, add_bos=False)
    if not chat:
        query_ids = [tokenizer.encode(q + QUERY_SUFFIX, add_bos=False) for q in queries]
        return [ids + separator for ids in body], query_ids, evidence_text
    query_ids = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
        for q in queries
    ]
    bos = tokenizer.bos_id
    lead = [bos] if bos is not None and all(q[:1] == [bos] for q in query_ids) else []
    return [lead + ids + separator for ids in body], query_ids, evidence_text


# --- tasks ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskInput:
    """One input of a task.

    Attributes:
      id: a stable identifier (wiki title, or ``paper_id/aspect``).
      evidence: the evidence text ``c``.
      query: the instruction read by both streams.
      reference: a human answer when the task has one (aclsum's summary), else "".
      topic: the wiki-leads topic label (classifier guidance's target), else "".
    """

    id: str
    evidence: str
    query: str
    reference: str = ""
    topic: str = ""


def task_inputs(task: str, num_inputs: int, *, seed: int = 0) -> list[TaskInput]:
    """``num_inputs`` inputs of ``task`` from its held-out split, drawn by a seeded shuffle.

    ``wiki-leads``: test-split leads (topic "Uncategorized" left out, as for the discriminator).
    ``aclsum``: test-split (paper, aspect) pairs; the evidence is the abstract.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if num_inputs < 1:
        raise ValueError(f"num_inputs must be >= 1, got {num_inputs}")
    if task == "wiki-leads":
        pool = [
            TaskInput(r.title, r.lead, WIKI_QUERY.format(title=r.title), topic=r.topic)
            for r in sample_leads(split(load_wiki_leads(), "test"), 0, seed, exclude=(UNCATEGORIZED,))
        ]
    else:
        examples = load_aclsum("test")
        order = np.random.default_rng(seed).permutation(len(examples))
        pool = [
            TaskInput(f"{ex.paper_id}/{ex.aspect}", ex.evidence(), ex.query, reference=ex.summary)
            for ex in (examples[i] for i in order)
        ]
    if num_inputs > len(pool):
        raise ValueError(f"{task} has {len(pool)} held-out inputs, asked for {num_inputs}")
    return pool[:num_inputs]


# --- the sweep --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One decoder setting: ``key`` = ``"{family}/{setting}"``; ``build(topics[R]) -> Policy`` for the
    R rows of one ``generate`` call (only classifier guidance reads the per-row topic indices)."""

    family: str
    setting: str
    build: Callable[[np.ndarray], Any]
    two_stream: bool = False

    @property
    def key(self) -> str:
        return f"{self.family}/{self.setting}"


def _g(value: float) -> str:
    return f"{value:g}"


def sweep_points(
    config: TradeoffConfig,
    discriminator: tuple[Any, dict] | None = None,
    lm: tuple[Any, Any] | Callable[[], tuple[Any, Any]] | None = None,
) -> list[SweepPoint]:
    """The points of ``config.families`` in a fixed order. ``discriminator`` = ``(params, metadata)``
    and ``lm`` = ``(model, params)`` are needed for the classifier family only (its points are built
    lazily, so ``lm`` may be a zero-argument callable returning the pair). Static temperatures come
    from ``named.build`` (the launchers' name -> policy table); ``TopK`` / ``TopP`` are built bare,
    at ``T = 1``, because ``named.build`` chains them after an identity ``Temperature(1)``, which
    compiles to a different program (same tokens, log-probabilities different in the 8th digit)."""
    points: list[SweepPoint] = []
    families = config.families
    temperatures = sorted({0.0, *config.temperatures} if "temperature" in families else set())
    if "kl_guided" in families:  # the static reference at every t0
        temperatures = sorted({*temperatures, *config.kl_t0s})
    for t in temperatures:
        points.append(
            SweepPoint(
                "temperature",
                "greedy" if t == 0 else f"T={_g(t)}",
                lambda rows, t=t: named.build("temperature", temperature=t),
            )
        )
    if "top_k" in families:
        points += [SweepPoint("top_k", f"k={int(k)}", lambda rows, k=int(k): TopK(k)) for k in config.top_ks]
    if "top_p" in families:
        points += [SweepPoint("top_p", f"p={_g(p)}", lambda rows, p=p: TopP(p)) for p in config.top_ps]
    if "cfg" in families:
        points += [
            SweepPoint("cfg", f"w={_g(w)}", lambda rows, w=w: ClassifierFreeGuidance(w), True)
            for w in config.cfg_scales
        ]
    if "classifier" in families:
        if discriminator is None:
            raise ValueError("the classifier family needs discriminator=(params, metadata)")
        head, meta = discriminator

        def classifier(rows, scale):
            if lm is None:
                raise ValueError("the classifier family needs lm=(model, params) or a callable returning it")
            model, params = lm() if callable(lm) else lm
            return ClassifierGuidance.from_model(
                model,
                params,
                head,
                num_topics=len(meta["topics"]),
                hidden_dim=meta["hidden_dim"],
                target=np.asarray(rows, np.int32),
                scale=scale,
                top_k=config.classifier_top_k,
            )

        points += [
            SweepPoint("classifier", f"lambda={_g(s)}", functools.partial(classifier, scale=s))
            for s in config.classifier_scales
        ]
    if "kl_guided" in families:
        points += [
            SweepPoint("kl_guided", f"t0={_g(t0)},h={_g(h)}", lambda rows, t0=t0, h=h: KLGuidedTemperature(t0, h), True)
            for t0 in config.kl_t0s
            for h in config.half_lives
        ]
    if "dynamic" in families:
        points += [
            SweepPoint(
                "dynamic",
                f"lambda_max={_g(s)}",
                lambda rows, s=s: DynamicValuePolicy(
                    SigmoidSchedule(0.0, s, config.dynamic_midpoint, config.dynamic_width), target="guidance"
                ),
                True,
            )
            for s in config.dynamic_scales
        ]
    return points


# --- one point --------------------------------------------------------------------------------------


@dataclasses.dataclass
class TradeoffStudy:
    """What a point needs: the decoding LM, the evaluator LM, the sentence embedder and the encoded inputs.

    Attributes:
      model, params, tokenizer: the decoding LM (``infodec.load``).
      evaluator: ``(model, params, tokenizer)`` scoring PMI and perplexity; its ids are used directly when
        its tokenizer is the decoding tokenizer, else the texts are re-encoded.
      embed: ``texts -> [N, D]`` (``attribution.text_embedder``).
      inputs: the task inputs; ``evidence_ids`` / ``query_ids`` their encodings (:func:`encode_inputs`:
        evidence cut to ``config.max_evidence_tokens`` and followed by :data:`EVIDENCE_SEPARATOR`; the
        query plain or in the chat template); ``evidence_text`` the evidence as the model saw it (after
        the cut).
      topics: per input, the classifier-guidance target index (-1 when unknown).
      mesh: optional device mesh for ``generate`` (``infodec.sharding.make_mesh``).
      chat: frame the query with the decoding model's chat template (:func:`use_chat_template`); a
        separate evaluator uses its own template too when it has one.

    With a chat template the evidence stays a document *before* the conversation rather than inside
    the user turn: ``generate`` builds stream 0 as evidence + stream 1, so only this form gives every
    decoder, one- or two-stream, the same token ids.
    """

    config: TradeoffConfig
    model: Any
    params: Any
    tokenizer: Any
    evaluator: tuple[Any, Any, Any]
    embed: Callable[[Sequence[str]], np.ndarray]
    inputs: list[TaskInput]
    topics: np.ndarray
    mesh: Any = None
    chat: bool = False
    evidence_ids: list[list[int]] = dataclasses.field(init=False)
    query_ids: list[list[int]] = dataclasses.field(init=False)
    evidence_text: list[str] = dataclasses.field(init=False)

    def __post_init__(self):
        self.evidence_ids, self.query_ids, self.evidence_text = encode_inputs(
            self.tokenizer,
            [x.evidence for x in self.inputs],
            [x.query for x in self.inputs],
            chat=self.chat,
            cut=self.config.max_evidence_tokens,
        )

    def decode(self, point: SweepPoint) -> dict[str, Any]:
        """Runs ``point`` on every input: ``{"tokens" [N, L], "lengths" [N] (a final stop token not
        counted), "text" [N], "logp_model" [N, L] (log P_G(y_t | evidence + query, y_<t)), "entropy"
        [N, L], "kl_to_model" [N, L], "pmi" [N, L] (two-stream decoders: log P(y_t | evidence + query, ·) −
        log P(y_t | query, ·); NaN for one-stream decoders)}`` with ``N = inputs × samples``."""
        cfg, m = self.config, self.config.num_samples
        stops = np.asarray(getattr(self.tokenizer, "eos_ids", ()) or (), np.int64)

        def call(index: np.ndarray, number: int) -> dict[str, Any]:
            policy = point.build(np.repeat(self.topics[index], m))
            key = jax.random.fold_in(jax.random.key(cfg.seed), number)
            if point.two_stream:
                prompts, evidence = [self.query_ids[i] for i in index], [self.evidence_ids[i] for i in index]
            else:
                prompts, evidence = [self.evidence_ids[i] + self.query_ids[i] for i in index], None
            out = generate(
                self.model,
                self.params,
                prompts,
                policy,
                key,
                max_new_tokens=cfg.max_new_tokens,
                num_samples=m,
                tokenizer=self.tokenizer,
                evidence=evidence,
                mesh=self.mesh,
            )
            return {
                "tokens": out.tokens,
                "lengths": out.lengths,
                "text": out.text,
                "logp_model": out.logp_model,
                "entropy": out.diagnostics["entropy"],
                "kl_to_model": out.diagnostics["kl_to_model"],
                "pmi": out.diagnostics.get("pmi", np.full_like(out.logp_model, np.nan)),
            }

        decoded = map_in_chunks(call, len(self.inputs), min(cfg.inputs_per_call, len(self.inputs)), rows_per_item=m)
        tokens, lengths = decoded["tokens"], decoded["lengths"]
        ends = lengths > 0
        last = tokens[np.arange(len(tokens)), np.maximum(lengths - 1, 0)]
        return {**decoded, "lengths": lengths - (ends & np.isin(last, stops))}

    def evaluator_inputs(self, tokens, lengths, text) -> tuple[np.ndarray, np.ndarray, list, list]:
        """``(tokens, lengths, with_evidence, without_evidence)`` in the evaluator's ids, per row."""
        m = self.config.num_samples
        ev_model, _, ev_tok = self.evaluator
        rows = range(len(tokens))
        if ev_tok is self.tokenizer:
            with_ev = [self.evidence_ids[r // m] + self.query_ids[r // m] for r in rows]
            return tokens, lengths, with_ev, [self.query_ids[r // m] for r in rows]
        ids = [ev_tok.encode(t, add_bos=False) for t in text]
        out = np.zeros((len(ids), max(1, max(map(len, ids)))), np.int32)
        for r, x in enumerate(ids):
            out[r, : len(x)] = x
        queries = [x.query for x in self.inputs]
        if self.chat and getattr(ev_tok, "chat_template", None) is not None:
            bos: list[int] = []  # the template writes it
            evidence, query, _ = encode_inputs(ev_tok, self.evidence_text, queries, chat=True)
        else:
            bos = [ev_tok.bos_id] if getattr(ev_tok, "add_bos", False) and ev_tok.bos_id is not None else []
            query = [ev_tok.encode(q + QUERY_SUFFIX, add_bos=False) for q in queries]
            evidence = [ev_tok.encode(t + EVIDENCE_SEPARATOR, add_bos=False) for t in self.evidence_text]
        return (
            out,
            np.array([len(x) for x in ids]),
            [bos + evidence[r // m] + query[r // m] for r in rows],
            [bos + query[r // m] for r in rows],
        )

    def measure(self, decoded: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Per-input ``[B]`` values of every measure in :data:`MEASURES` (NaN where undefined)."""
        m = self.config.num_samples
        tokens, lengths, text = decoded["tokens"], decoded["lengths"], decoded["text"]
        ev_model, ev_params, ev_tok = self.evaluator
        ev_tokens, ev_lengths, with_ev, without_ev = self.evaluator_inputs(tokens, lengths, text)
        # The decoding model scored each token given evidence + query while decoding (the engine's
        # logp_model, stream 0), and two-stream decoders also given the query alone (stream 1, through the
        # per-token pmi); when the decoding model is the evaluator, only what is missing is recomputed.
        same = ev_model is self.model and ev_params is self.params and ev_tok is self.tokenizer
        two_stream = not np.isnan(decoded["pmi"]).all()
        scored = attribution.evidence_pmi(
            ev_model,
            ev_params,
            ev_tokens,
            ev_lengths,
            with_ev,
            without_ev,
            logp_with_evidence=decoded["logp_model"] if same else None,
            logp_without_evidence=decoded["logp_model"] - decoded["pmi"] if same and two_stream else None,
        )
        evidence = [self.evidence_text[r // m] for r in range(len(text))]
        per_row = {
            "pmi": scored["pmi"],
            "nll": -mean_log_prob(scored["logp"], scored["mask"]),
            "perplexity": row_perplexity(scored["logp"], scored["mask"]),
            "content_precision": np.array([attribution.content_precision(t, e) for t, e in zip(text, evidence)]),
            "content_precision2": np.array([attribution.content_precision(t, e, 2) for t, e in zip(text, evidence)]),
            "similarity": attribution.encoder_similarity(text, evidence, self.embed),
            "entropy": diversity.token_mean(decoded["entropy"], lengths),
            "kl_to_model": diversity.token_mean(decoded["kl_to_model"], lengths),
            "length": lengths.astype(np.float64),
        }
        per_input = {name: _nanmean_groups(v, m) for name, v in per_row.items()}
        per_input["distinct1"] = diversity.distinct_per_input(tokens, lengths, m, 1)
        per_input["distinct2"] = diversity.distinct_per_input(tokens, lengths, m, 2)
        per_input["self_bleu"] = diversity.self_bleu_per_input(tokens, lengths, m)
        return {name: per_input[name] for name in MEASURES}

    def evaluate(self, point: SweepPoint) -> dict[str, Any]:
        """Decodes and measures one point: a JSON-able record (``measures[name]`` = ``report.interval``
        of ``per_input[name]``, ``corpus_distinct2``, two example outputs, ``decode_seconds``)."""
        start = time.perf_counter()
        decoded = self.decode(point)
        decode_seconds = time.perf_counter() - start
        per_input = self.measure(decoded)
        groups = diversity.by_input(diversity.rows(decoded["tokens"], decoded["lengths"]), self.config.num_samples)
        corpus = bootstrap_ci(
            np.arange(len(groups)),
            lambda idx: diversity.distinct_n([row for i in idx for row in groups[i]], 2),
            resamples=200,
            seed=self.config.seed,
        )
        return {
            "family": point.family,
            "setting": point.setting,
            "two_stream": point.two_stream,
            "measures": {name: interval(v) for name, v in per_input.items()},
            "corpus_distinct2": corpus,
            "per_input": {name: [None if math.isnan(x) else float(x) for x in v] for name, v in per_input.items()},
            "examples": [
                {"query": self.inputs[i].query, "output": decoded["text"][i * self.config.num_samples]}
                for i in range(min(2, len(self.inputs)))
            ],
            "decode_seconds": decode_seconds,
        }


def _nanmean_groups(values: np.ndarray, num_samples: int) -> np.ndarray:
    groups = np.asarray(values, np.float64).reshape(-1, num_samples)
    finite = np.isfinite(groups)
    count = finite.sum(1)
    return np.where(count > 0, np.where(finite, groups, 0.0).sum(1) / np.maximum(count, 1), np.nan)


# --- the whole sweep --------------------------------------------------------------------------------


@dataclasses.dataclass
class TradeoffResult:
    """What :func:`run` returns: the point records (in sweep order), the CSV rows, file paths, the verdict,
    the families skipped (with the reason) and ``report.md``."""

    records: list[dict]
    rows: list[dict]
    csv: Path
    plots: list[Path]
    verdict: list[str]
    skipped: list[str]
    markdown: Path


def load_study(
    config: TradeoffConfig,
    *,
    loaded=None,
    evaluator=None,
    embed=None,
    inputs: Sequence[TaskInput] | None = None,
    topics: Sequence[str] = (),
    mesh=None,
) -> TradeoffStudy:
    """Loads what ``config`` names unless given: ``loaded`` = ``(model, params, tokenizer)``,
    ``evaluator`` likewise (default: the decoding LM when ``config.evaluator`` is "" or the model's
    name), ``embed`` (MiniLM), ``inputs`` (:func:`task_inputs`). ``topics``: the discriminator's topic
    names (index = classifier-guidance target); ``mesh``: passed to ``generate``. Whether prompts use the
    chat template follows ``config.chat_template`` (:func:`use_chat_template`)."""
    model, params, tokenizer = loaded if loaded is not None else load(config.model)
    if evaluator is None:
        same = config.evaluator in ("", config.model)
        evaluator = (model, params, tokenizer) if same else load(config.evaluator)
    if embed is None:
        embed = attribution.text_embedder(*load("minilm-l6"))
    inputs = list(inputs) if inputs is not None else task_inputs(config.task, config.num_inputs, seed=config.seed)
    index = {t: i for i, t in enumerate(topics)}
    return TradeoffStudy(
        config,
        model,
        params,
        tokenizer,
        evaluator,
        embed,
        inputs,
        np.array([index.get(x.topic, -1) for x in inputs], np.int32),
        mesh,
        chat=use_chat_template(config.chat_template, config.model, tokenizer),
    )


def check_discriminator(
    config: TradeoffConfig, discriminator, inputs: Sequence[TaskInput] | None
) -> tuple[tuple[Any, dict] | None, str]:
    """``(discriminator or None, reason)``: the classifier family runs only with a head trained for this
    model whose topics cover every input's topic; otherwise it is skipped with ``reason``."""
    if "classifier" not in config.families:
        return None, ""
    if discriminator is None:
        try:
            discriminator = load_discriminator(config.discriminator)
        except FileNotFoundError:
            return None, (
                f"classifier family skipped: no trained discriminator in {config.discriminator}; "
                "train one with `python -m experiments.train_discriminator` (about 2 minutes) "
                "or pass --discriminator=<folder>"
            )
    head, meta = discriminator
    if meta.get("model") != config.model:
        return None, (
            f"classifier family skipped: the discriminator in {config.discriminator} was trained on "
            f"{meta.get('model')!r}, not {config.model!r}"
        )
    missing = sorted({x.topic for x in inputs or ()} - set(meta["topics"]))
    if missing:
        return None, f"classifier family skipped: inputs have topics the discriminator lacks: {missing}"
    return discriminator, ""


def run(
    config: TradeoffConfig,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    folder: ResultsFolder | None = None,
    loaded=None,
    evaluator=None,
    embed=None,
    inputs: Sequence[TaskInput] | None = None,
    discriminator=None,
    mesh=None,
    log: Callable[[str], None] = print,
) -> TradeoffResult:
    """Computes every point of ``config`` not yet in the results folder, then writes ``tradeoff.csv``,
    ``frontier_<measure>.png`` (attribution against distinct-2), ``sensibleness.png`` and
    ``sensibleness_kl.png`` (evaluator NLL and KL to the model against distinct-2), ``verdict.txt`` and
    ``report.md`` (``report.write_files``). Models, the embedder and the inputs are loaded only when a
    point is computed, unless given (see :func:`load_study`). ``discriminator``: ``(params, metadata)``
    for the classifier family (default: loaded from ``config.discriminator``; the family is skipped, with
    a message, when it is missing or does not fit). ``mesh``: a device mesh for decoding (the numbers do
    not depend on it)."""
    if folder is None:
        if out is None:
            raise ValueError("pass out= (a results folder path) or folder=")
        folder = ResultsFolder(out, config.to_dict(), overwrite=overwrite)
    if inputs is None and "classifier" in config.families:
        inputs = task_inputs(config.task, config.num_inputs, seed=config.seed)
    discriminator, reason = check_discriminator(config, discriminator, inputs)
    skipped = [reason] if reason else []
    if reason:
        log(reason)
        config = config.replace(families=tuple(f for f in config.families if f != "classifier") or ("temperature",))
    topics = discriminator[1]["topics"] if discriminator else ()

    @functools.cache
    def study() -> TradeoffStudy:
        start = time.perf_counter()
        s = load_study(config, loaded=loaded, evaluator=evaluator, embed=embed, inputs=inputs, topics=topics, mesh=mesh)
        framing = "the model's chat template" if s.chat else "plain text"
        log(
            f"loaded {config.model} and {len(s.inputs)} {config.task} inputs "
            f"({time.perf_counter() - start:.0f} s); prompts in {framing}"
        )
        return s

    points = sweep_points(config, discriminator, lm=lambda: (study().model, study().params))
    records = folder.run([(p.key, functools.partial(lambda p: study().evaluate(p), p)) for p in points], log=log)
    records = [{"key": p.key, **r} for p, r in zip(points, records)]
    rows, csv, plots, verdict, markdown = write_files(config, records, folder)
    return TradeoffResult(records, rows, csv, plots, verdict, skipped, markdown)
