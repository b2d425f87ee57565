r"""The tradeoffs of [P1]: sensibleness, diversity and attribution of decoders on evidence-grounded tasks.

A sweep is a list of *points*, each one decoder setting in a *family*:

| family | points | streams |
|---|---|---|
| ``temperature`` | ``Temperature(T)``; ``T = 0`` (greedy, the limit) always included | 1 |
| ``top_k``, ``top_p`` | ``TopK(k)``, ``TopP(p)`` at ``T = 1`` | 1 |
| ``cfg`` | ``ClassifierFreeGuidance(w)`` (``w = 1``: plain conditional sampling) | 2 |
| ``classifier`` | ``ClassifierGuidance`` toward the input's topic, scale λ, top-k support (wiki-leads only; needs a trained discriminator) | 1 |
| ``kl_guided`` | ``KLGuidedTemperature(t0, h)`` per half-life ``h``; the static ``Temperature(t0)`` (``h = 0``, same tokens as two-stream ``h = 0`` under the same key) is put in the ``temperature`` family | 2 |
| ``dynamic`` | ``DynamicValuePolicy(SigmoidSchedule(0, λ_max), target="guidance")``: CFG whose λ rises with the streams' KL | 2 |

Every input is one (evidence, query) pair (:func:`task_inputs`): ``wiki-leads`` ("Tell me about
{title}." with the lead as evidence) or ``aclsum`` ("Summarise the {aspect} of this paper in one
sentence." with the abstract as evidence). One-stream decoders read evidence + query in their prompt;
two-stream decoders read stream 0 = evidence + query and stream 1 = the query alone — the same token
ids, so every decoder sees the same evidence and attribution is comparable. Each input gets
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
  query) and ``perplexity`` (``exp`` of a row's ``nll``, averaged like the rest), ``kl_to_model`` (mean per-token ``KL(π ‖ P_G)``, from the decoder's
  diagnostics; ``P_G`` is the model given evidence + query).

A final stop token is not part of an output. When the evaluator is the decoding model, log p(y |
evidence + query) is the engine's ``logp_model`` and, for two-stream decoders, log p(y | query) comes
from its per-token ``pmi`` diagnostic; only the missing query-alone pass of one-stream decoders runs
(tests check these equal a separate evaluator's teacher-forced passes).

:func:`run` computes the points into a resumable :class:`~infodec.results.ResultsFolder`, writes
``tradeoff.csv``, the plots, and ``verdict.txt`` (:func:`kl_guided_verdict`: does KL-guided temperature
dominate static temperature at the same ``t0``, and does it lie above the static-temperature frontier?).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from infodec.eval import attribution, diversity
from infodec.eval.sensibleness import mean_log_prob, perplexity
from infodec.eval.stats import bootstrap_ci, mean_se
from infodec.results import ResultsFolder, plot_series

TASKS = ("wiki-leads", "aclsum")
FAMILIES = ("temperature", "top_k", "top_p", "cfg", "classifier", "kl_guided", "dynamic")
TWO_STREAM = ("cfg", "kl_guided", "dynamic")
EVIDENCE_SEPARATOR = "\n\n"  # appended to the evidence: the query starts a new paragraph
QUERY_SUFFIX = "\n"  # appended to the query: the answer starts on a new line
WIKI_QUERY = "Tell me about {title}."

ATTRIBUTION = ("pmi", "content_precision", "similarity")
MEASURES = ("distinct1", "distinct2", "self_bleu", "entropy", "pmi", "content_precision", "content_precision2",
            "similarity", "nll", "perplexity", "kl_to_model", "length")
LABELS = {"distinct1": "distinct-1 (within input)", "distinct2": "distinct-2 across an input's samples",
          "self_bleu": "self-BLEU (lower = more diverse)", "entropy": "mean per-token entropy of π (nats)",
          "pmi": "PMI with the evidence (nats / token)", "content_precision": "content-word precision vs evidence",
          "content_precision2": "content-bigram precision vs evidence",
          "similarity": "MiniLM cosine to the evidence", "perplexity": "perplexity under the evaluator",
          "nll": "NLL under the evaluator (nats / token)",
          "kl_to_model": "KL(π ‖ P_G) per token", "length": "tokens per output"}


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
        from infodec.data import load_wiki_leads, split
        from infodec.guidance_training import sample_leads

        pool = [TaskInput(r.title, r.lead, WIKI_QUERY.format(title=r.title), topic=r.topic)
                for r in sample_leads(split(load_wiki_leads(), "test"), 0, seed, exclude=("Uncategorized",))]
    else:
        from infodec.data.aclsum import load_aclsum

        examples = load_aclsum("test")
        order = np.random.default_rng(seed).permutation(len(examples))
        pool = [TaskInput(f"{ex.paper_id}/{ex.aspect}", ex.evidence(), ex.query, reference=ex.summary)
                for ex in (examples[i] for i in order)]
    if num_inputs > len(pool):
        raise ValueError(f"{task} has {len(pool)} held-out inputs, asked for {num_inputs}")
    return pool[:num_inputs]


# --- the sweep --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TradeoffConfig:
    """Everything that determines a sweep's numbers (stored as the results folder's settings).

    Sweep values: ``temperatures`` (greedy is always added), ``top_ks``, ``top_ps``, ``cfg_scales``
    (``w``), ``classifier_scales`` (λ, on the top ``classifier_top_k`` tokens), ``kl_t0s`` ×
    ``half_lives`` (nats), ``dynamic_scales`` (``λ_max`` of a sigmoid in the streams' KL with
    ``dynamic_midpoint`` / ``dynamic_width``). Sizes: ``num_inputs`` inputs × ``num_samples``
    continuations of at most ``max_new_tokens`` tokens; evidence cut to ``max_evidence_tokens``;
    ``inputs_per_call`` inputs per ``generate`` call. ``evaluator``: the LM that scores PMI and
    perplexity ("" = the decoding model). ``discriminator``: folder of the classifier-guidance head.
    """

    task: str = "wiki-leads"
    families: tuple[str, ...] = ("temperature", "top_p", "cfg", "kl_guided")
    temperatures: tuple[float, ...] = (0.5, 0.7, 1.0, 1.3)
    top_ks: tuple[int, ...] = (10, 50)
    top_ps: tuple[float, ...] = (0.5, 0.8, 0.95)
    cfg_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    classifier_scales: tuple[float, ...] = (0.0, 1.0, 2.0)
    classifier_top_k: int = 50
    kl_t0s: tuple[float, ...] = (1.0,)
    half_lives: tuple[float, ...] = (0.5, 1.0, 2.0)
    dynamic_scales: tuple[float, ...] = (1.0, 2.0)
    dynamic_midpoint: float = 0.5
    dynamic_width: float = 0.25
    num_inputs: int = 32
    num_samples: int = 4
    max_new_tokens: int = 48
    max_evidence_tokens: int = 224
    inputs_per_call: int = 16
    seed: int = 0
    model: str = "smollm2-135m"
    evaluator: str = ""
    discriminator: str = "results/discriminator"

    def __post_init__(self):
        for name in ("families", "temperatures", "top_ks", "top_ps", "cfg_scales", "classifier_scales", "kl_t0s",
                     "half_lives", "dynamic_scales"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first bad setting."""
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"unknown families {unknown}; known: {', '.join(FAMILIES)}" if unknown
                             else "families is empty; choose from " + ", ".join(FAMILIES))
        checks = [
            ("temperatures", self.temperatures, lambda v: v >= 0, ">= 0 (0 = greedy)"),
            ("top_ks", self.top_ks, lambda v: v >= 1 and float(v).is_integer(), "integers >= 1"),
            ("top_ps", self.top_ps, lambda v: 0 < v <= 1, "in (0, 1]"),
            ("cfg_scales", self.cfg_scales, lambda v: v >= 0, ">= 0 (1 = plain conditional sampling)"),
            ("classifier_scales", self.classifier_scales, lambda v: v >= 0, ">= 0"),
            ("kl_t0s", self.kl_t0s, lambda v: v > 0, "> 0"),
            ("half_lives", self.half_lives, lambda v: v > 0, "> 0 nats (the static h = 0 point is added)"),
            ("dynamic_scales", self.dynamic_scales, lambda v: v >= 0, ">= 0"),
        ]
        for name, values, ok, allowed in checks:
            bad = [v for v in values if not (isinstance(v, (int, float)) and math.isfinite(v) and ok(v))]
            if bad:
                raise ValueError(f"{name} must be {allowed}, got {bad}")
        for name in ("num_inputs", "num_samples", "max_new_tokens", "max_evidence_tokens", "inputs_per_call",
                     "classifier_top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dynamic_width <= 0:
            raise ValueError(f"dynamic_width must be > 0, got {self.dynamic_width}")
        if "classifier" in self.families and self.task != "wiki-leads":
            raise ValueError("the classifier family steers toward a wiki-leads topic; use --task=wiki-leads or "
                             "drop it from the families")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TradeoffConfig":
        return dataclasses.replace(self, **changes)


def smoke_config(**overrides) -> TradeoffConfig:
    """Tiny settings that check the pipeline end to end in well under a minute on the default model:
    2 inputs x 2 samples x 8 tokens, two points per family (greedy and T=1, top-p, CFG, KL-guided)."""
    settings = dict(families=("temperature", "top_p", "cfg", "kl_guided"), temperatures=(1.0,), top_ps=(0.9,),
                    cfg_scales=(2.0,), kl_t0s=(1.0,), half_lives=(1.0,), top_ks=(50,), classifier_scales=(1.0,),
                    dynamic_scales=(1.0,), num_inputs=2, num_samples=2, max_new_tokens=8, max_evidence_tokens=64,
                    inputs_per_call=2)
    settings.update(overrides)
    return TradeoffConfig(**settings)


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


def sweep_points(config: TradeoffConfig, discriminator: tuple[Any, dict] | None = None,
                 lm: tuple[Any, Any] | None = None) -> list[SweepPoint]:
    """The points of ``config.families`` in a fixed order. ``discriminator`` = ``(params, metadata)``
    and ``lm`` = ``(model, params)`` are needed for the classifier family only (its points are built
    lazily, so ``lm`` may be a zero-argument callable returning the pair)."""
    import infodec

    points: list[SweepPoint] = []
    families = config.families
    temperatures = sorted({0.0, *config.temperatures} if "temperature" in families else set())
    if "kl_guided" in families:  # the static reference at every t0
        temperatures = sorted({*temperatures, *config.kl_t0s})
    for t in temperatures:
        points.append(SweepPoint("temperature", "greedy" if t == 0 else f"T={_g(t)}",
                                 lambda rows, t=t: infodec.Temperature(t)))
    if "top_k" in families:
        points += [SweepPoint("top_k", f"k={int(k)}", lambda rows, k=int(k): infodec.TopK(k)) for k in config.top_ks]
    if "top_p" in families:
        points += [SweepPoint("top_p", f"p={_g(p)}", lambda rows, p=p: infodec.TopP(p)) for p in config.top_ps]
    if "cfg" in families:
        points += [SweepPoint("cfg", f"w={_g(w)}", lambda rows, w=w: infodec.ClassifierFreeGuidance(w), True)
                   for w in config.cfg_scales]
    if "classifier" in families:
        if discriminator is None:
            raise ValueError("the classifier family needs discriminator=(params, metadata)")
        head, meta = discriminator

        def classifier(rows, scale):
            model, params = lm() if callable(lm) else lm
            return infodec.ClassifierGuidance.from_model(
                model, params, head, num_topics=len(meta["topics"]), hidden_dim=meta["hidden_dim"],
                target=np.asarray(rows, np.int32), scale=scale, top_k=config.classifier_top_k)

        points += [SweepPoint("classifier", f"lambda={_g(s)}", functools.partial(classifier, scale=s))
                   for s in config.classifier_scales]
    if "kl_guided" in families:
        points += [SweepPoint("kl_guided", f"t0={_g(t0)},h={_g(h)}",
                              lambda rows, t0=t0, h=h: infodec.KLGuidedTemperature(t0, h), True)
                   for t0 in config.kl_t0s for h in config.half_lives]
    if "dynamic" in families:
        points += [SweepPoint("dynamic", f"lambda_max={_g(s)}", lambda rows, s=s: infodec.DynamicValuePolicy(
            infodec.SigmoidSchedule(0.0, s, config.dynamic_midpoint, config.dynamic_width), target="guidance"), True)
            for s in config.dynamic_scales]
    return points


# --- one point --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Study:
    """What a point needs: the decoding LM, the evaluator LM, the sentence embedder and the encoded inputs.

    Attributes:
      model, params, tokenizer: the decoding LM (``infodec.load``).
      evaluator: ``(model, params, tokenizer)`` scoring PMI and perplexity; its ids are used directly when
        its tokenizer is the decoding tokenizer, else the texts are re-encoded.
      embed: ``texts -> [N, D]`` (``attribution.text_embedder``).
      inputs: the task inputs; ``evidence_ids`` / ``query_ids`` their encodings (evidence cut to
        ``config.max_evidence_tokens`` and followed by :data:`EVIDENCE_SEPARATOR`); ``evidence_text`` the
        evidence as the model saw it (after the cut).
      topics: per input, the classifier-guidance target index (-1 when unknown).
      mesh: optional device mesh for ``generate`` (``infodec.sharding.make_mesh``).
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
    evidence_ids: list[list[int]] = dataclasses.field(init=False)
    query_ids: list[list[int]] = dataclasses.field(init=False)
    evidence_text: list[str] = dataclasses.field(init=False)

    def __post_init__(self):
        tok, cut = self.tokenizer, self.config.max_evidence_tokens
        separator = tok.encode(EVIDENCE_SEPARATOR, add_bos=False)
        body = [tok.encode(x.evidence, add_bos=False)[:cut] for x in self.inputs]
        self.evidence_text = [tok.decode(ids) for ids in body]
        # No BOS: stream 0 is evidence + query and stream 1 the query alone, so a BOS could not start both.
        self.evidence_ids = [ids + separator for ids in body]
        self.query_ids = [tok.encode(x.query + QUERY_SUFFIX, add_bos=False) for x in self.inputs]

    def decode(self, point: SweepPoint) -> dict[str, Any]:
        """Runs ``point`` on every input: ``{"tokens" [N, L], "lengths" [N] (a final stop token not
        counted), "text" [N], "logp_model" [N, L] (log P_G(y_t | evidence + query, y_<t)), "entropy"
        [N, L], "kl_to_model" [N, L], "pmi" [N, L] (two-stream decoders: log P(y_t | evidence + query, ·) −
        log P(y_t | query, ·); NaN for one-stream decoders)}`` with ``N = inputs × samples``."""
        import infodec

        cfg, m = self.config, self.config.num_samples
        per_call = min(cfg.inputs_per_call, len(self.inputs))
        stops = np.asarray(getattr(self.tokenizer, "eos_ids", ()) or (), np.int64)
        parts = []
        for call, start in enumerate(range(0, len(self.inputs), per_call)):
            index = list(range(start, min(start + per_call, len(self.inputs))))
            index += [index[-1]] * (per_call - len(index))  # one shape per call: pad, then drop the copies
            kept = min(per_call, len(self.inputs) - start) * m
            policy = point.build(np.repeat(self.topics[index], m))
            key = jax.random.fold_in(jax.random.key(cfg.seed), call)
            if point.two_stream:
                out = infodec.generate(self.model, self.params, [self.query_ids[i] for i in index], policy, key,
                                       max_new_tokens=cfg.max_new_tokens, num_samples=m, tokenizer=self.tokenizer,
                                       evidence=[self.evidence_ids[i] for i in index], mesh=self.mesh)
            else:
                out = infodec.generate(self.model, self.params,
                                       [self.evidence_ids[i] + self.query_ids[i] for i in index], policy, key,
                                       max_new_tokens=cfg.max_new_tokens, num_samples=m, tokenizer=self.tokenizer,
                                       mesh=self.mesh)
            pmi = out.diagnostics.get("pmi", np.full_like(out.logp_model, np.nan))
            parts.append((out.tokens[:kept], out.lengths[:kept], out.text[:kept], out.logp_model[:kept],
                          out.diagnostics["entropy"][:kept], out.diagnostics["kl_to_model"][:kept], pmi[:kept]))
        tokens, lengths, text, logp, entropy, kl, pmi = (np.concatenate(x) if i != 2 else sum(x, [])
                                                         for i, x in enumerate(zip(*parts)))
        ends = lengths > 0
        last = tokens[np.arange(len(tokens)), np.maximum(lengths - 1, 0)]
        lengths = lengths - (ends & np.isin(last, stops))
        return {"tokens": tokens, "lengths": lengths, "text": text, "logp_model": logp, "entropy": entropy,
                "kl_to_model": kl, "pmi": pmi}

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
            out[r, :len(x)] = x
        bos = [ev_tok.bos_id] if getattr(ev_tok, "add_bos", False) and ev_tok.bos_id is not None else []
        query = [ev_tok.encode(x.query + QUERY_SUFFIX, add_bos=False) for x in self.inputs]
        evidence = [ev_tok.encode(t + EVIDENCE_SEPARATOR, add_bos=False) for t in self.evidence_text]
        return (out, np.array([len(x) for x in ids]), [bos + evidence[r // m] + query[r // m] for r in rows],
                [bos + query[r // m] for r in rows])

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
            ev_model, ev_params, ev_tokens, ev_lengths, with_ev, without_ev,
            logp_with_evidence=decoded["logp_model"] if same else None,
            logp_without_evidence=decoded["logp_model"] - decoded["pmi"] if same and two_stream else None)
        evidence = [self.evidence_text[r // m] for r in range(len(text))]
        per_row = {
            "pmi": scored["pmi"],
            "nll": -mean_log_prob(scored["logp"], scored["mask"]),
            "perplexity": perplexity(scored["logp"], scored["mask"]),
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
        """Decodes and measures one point: a JSON-able record (see :func:`summarise`)."""
        start = time.perf_counter()
        decoded = self.decode(point)
        decode_seconds = time.perf_counter() - start
        per_input = self.measure(decoded)
        groups = diversity.by_input(diversity.rows(decoded["tokens"], decoded["lengths"]), self.config.num_samples)
        corpus = bootstrap_ci(np.arange(len(groups)), lambda idx: diversity.distinct_n(
            [row for i in idx for row in groups[i]], 2), resamples=200, seed=self.config.seed)
        return {"family": point.family, "setting": point.setting, "two_stream": point.two_stream,
                "measures": {name: interval(v) for name, v in per_input.items()},
                "corpus_distinct2": corpus,
                "per_input": {name: [None if math.isnan(x) else float(x) for x in v] for name, v in per_input.items()},
                "examples": [{"query": self.inputs[i].query, "output": decoded["text"][i * self.config.num_samples]}
                             for i in range(min(2, len(self.inputs)))],
                "decode_seconds": decode_seconds}


def _nanmean_groups(values: np.ndarray, num_samples: int) -> np.ndarray:
    groups = np.asarray(values, np.float64).reshape(-1, num_samples)
    finite = np.isfinite(groups)
    count = finite.sum(1)
    return np.where(count > 0, np.where(finite, groups, 0.0).sum(1) / np.maximum(count, 1), np.nan)


def interval(values) -> dict[str, float]:
    """``{"mean", "ci" (1.96·SE), "n"}`` over the finite entries of ``values`` (NaN when none; ci NaN for n < 2)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"mean": float("nan"), "ci": float("nan"), "n": 0}
    s = mean_se(v)
    return {"mean": s["mean"], "ci": 1.96 * s["se"], "n": s["n"]}


# --- the whole sweep --------------------------------------------------------------------------------

@dataclasses.dataclass
class TradeoffResult:
    """What :func:`run` returns: the point records (in sweep order), the CSV rows, file paths, the verdict."""

    records: list[dict]
    rows: list[dict]
    csv: Path
    plots: list[Path]
    verdict: list[str]
    skipped: list[str]


def load_study(config: TradeoffConfig, *, loaded=None, evaluator=None, embed=None,
               inputs: Sequence[TaskInput] | None = None, topics: Sequence[str] = (), mesh=None) -> Study:
    """Loads what ``config`` names unless given: ``loaded`` = ``(model, params, tokenizer)``,
    ``evaluator`` likewise (default: the decoding LM when ``config.evaluator`` is "" or the model's
    name), ``embed`` (MiniLM), ``inputs`` (:func:`task_inputs`). ``topics``: the discriminator's topic
    names (index = classifier-guidance target); ``mesh``: passed to ``generate``."""
    import infodec

    model, params, tokenizer = loaded if loaded is not None else infodec.load(config.model)
    if evaluator is None:
        same = config.evaluator in ("", config.model)
        evaluator = (model, params, tokenizer) if same else infodec.load(config.evaluator)
    if embed is None:
        embed = attribution.text_embedder(*infodec.load("minilm-l6"))
    inputs = list(inputs) if inputs is not None else task_inputs(config.task, config.num_inputs, seed=config.seed)
    index = {t: i for i, t in enumerate(topics)}
    return Study(config, model, params, tokenizer, evaluator, embed, inputs,
                 np.array([index.get(x.topic, -1) for x in inputs], np.int32), mesh)


def check_discriminator(config: TradeoffConfig, discriminator, inputs: Sequence[TaskInput] | None) \
        -> tuple[tuple[Any, dict] | None, str]:
    """``(discriminator or None, reason)``: the classifier family runs only with a head trained for this
    model whose topics cover every input's topic; otherwise it is skipped with ``reason``."""
    if "classifier" not in config.families:
        return None, ""
    if discriminator is None:
        from infodec.guidance_training import load_discriminator

        try:
            discriminator = load_discriminator(config.discriminator)
        except FileNotFoundError:
            return None, (f"classifier family skipped: no trained discriminator in {config.discriminator}; "
                          "train one with `python -m experiments.train_discriminator` (about 2 minutes) "
                          "or pass --discriminator=<folder>")
    head, meta = discriminator
    if meta.get("model") != config.model:
        return None, (f"classifier family skipped: the discriminator in {config.discriminator} was trained on "
                      f"{meta.get('model')!r}, not {config.model!r}")
    missing = sorted({x.topic for x in inputs or ()} - set(meta["topics"]))
    if missing:
        return None, f"classifier family skipped: inputs have topics the discriminator lacks: {missing}"
    return discriminator, ""


def run(config: TradeoffConfig, out: str | Path | None = None, *, overwrite: bool = False,
        folder: ResultsFolder | None = None, loaded=None, evaluator=None, embed=None,
        inputs: Sequence[TaskInput] | None = None, discriminator=None, mesh=None,
        log: Callable[[str], None] = print) -> TradeoffResult:
    """Computes every point of ``config`` not yet in the results folder, then writes ``tradeoff.csv``,
    ``frontier_<measure>.png`` (attribution against distinct-2), ``sensibleness.png`` and
    ``sensibleness_kl.png`` (evaluator NLL and KL to the model against distinct-2) and ``verdict.txt``. Models, the embedder and the inputs are loaded only when a point is
    computed, unless given (see :func:`load_study`). ``discriminator``: ``(params, metadata)`` for the
    classifier family (default: loaded from ``config.discriminator``; the family is skipped, with a
    message, when it is missing or does not fit). ``mesh``: a device mesh for decoding (the numbers do
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
    def study() -> Study:
        start = time.perf_counter()
        s = load_study(config, loaded=loaded, evaluator=evaluator, embed=embed, inputs=inputs, topics=topics,
                       mesh=mesh)
        log(f"loaded {config.model} and {len(s.inputs)} {config.task} inputs ({time.perf_counter() - start:.0f} s)")
        return s

    points = sweep_points(config, discriminator, lm=lambda: (study().model, study().params))
    records = folder.run([(p.key, functools.partial(lambda p: study().evaluate(p), p)) for p in points], log=log)
    records = [{"key": p.key, **r} for p, r in zip(points, records)]
    rows = table_rows(records)
    csv = folder.write_csv("tradeoff.csv", rows)
    plots = write_plots(records, folder.path)
    verdict = kl_guided_verdict(records)
    (folder.path / "verdict.txt").write_text("\n".join(verdict) + "\n")
    return TradeoffResult(records, rows, csv, plots, verdict, skipped)


# --- tables, plots, verdict -------------------------------------------------------------------------

def table_rows(records: Sequence[Mapping]) -> list[dict]:
    """One flat row per point: key, family, setting, then ``<measure>`` and ``<measure>_ci`` columns."""
    rows = []
    for r in records:
        row = {"key": r["key"], "family": r["family"], "setting": r["setting"]}
        for name in MEASURES:
            row[name], row[name + "_ci"] = r["measures"][name]["mean"], r["measures"][name]["ci"]
        c = r["corpus_distinct2"]
        row.update(corpus_distinct2=c["value"], corpus_distinct2_low=c["low"], corpus_distinct2_high=c["high"],
                   seconds=r.get("seconds", float("nan")))
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping], measures: Sequence[str] = ("distinct2", "self_bleu", "entropy", "pmi",
                                                                     "content_precision", "similarity", "perplexity",
                                                                     "kl_to_model")) -> str:
    """A markdown table of :func:`table_rows` output: one line per point, ``mean ± ci`` per measure."""
    def cell(row, name):
        mean, ci = row[name], row[name + "_ci"]
        if not math.isfinite(mean):
            return "—"
        digits = 1 if name == "perplexity" else 3
        return f"{mean:.{digits}f} ± {ci:.{digits}f}" if math.isfinite(ci) else f"{mean:.{digits}f}"

    lines = ["| point | " + " | ".join(measures) + " |", "|---" * (len(measures) + 1) + "|"]
    lines += [f"| {row['key']} | " + " | ".join(cell(row, m) for m in measures) + " |" for row in rows]
    return "\n".join(lines)


def _series(records, x: str, y: str) -> dict[str, list[dict]]:
    series: dict[str, list[dict]] = {}
    for r in records:
        mx, my = r["measures"][x], r["measures"][y]
        if not (math.isfinite(mx["mean"]) and math.isfinite(my["mean"])):
            continue
        series.setdefault(r["family"], []).append(
            {x: mx["mean"], y: my["mean"], x + "_err": _finite(mx["ci"]), y + "_err": _finite(my["ci"]),
             "setting": r["setting"]})
    return series


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def write_plots(records: Sequence[Mapping], folder: str | Path, *, diversity_measure: str = "distinct2") -> list[Path]:
    """``frontier_<a>.png`` for each attribution measure, ``sensibleness.png`` (evaluator NLL) and
    ``sensibleness_kl.png`` (``KL(π ‖ P_G)``, [P1]'s sensibleness), each against ``diversity_measure``, one
    curve per family, error bars 1.96·SE, points labelled by their setting."""
    folder = Path(folder)
    paths = []
    for name in ATTRIBUTION:
        paths.append(plot_series(folder / f"frontier_{name}.png", _series(records, diversity_measure, name),
                                 x=diversity_measure, y=name, xlabel=LABELS[diversity_measure], ylabel=LABELS[name],
                                 title=f"attribution ({name}) vs diversity", annotate="setting"))
    for name, y, title in (("sensibleness", "nll", "sensibleness (evaluator NLL) vs diversity"),
                           ("sensibleness_kl", "kl_to_model", "sensibleness (KL to the model, [P1]) vs diversity")):
        paths.append(plot_series(folder / f"{name}.png", _series(records, diversity_measure, y), x=diversity_measure,
                                 y=y, xlabel=LABELS[diversity_measure], ylabel=LABELS[y], title=title,
                                 annotate="setting"))
    return paths


def paired_difference(a: Sequence, b: Sequence) -> dict[str, float]:
    """``{"mean", "ci", "n"}`` of the per-input differences ``a − b`` (inputs where both are defined)."""
    a = np.asarray([np.nan if x is None else x for x in a], np.float64)
    b = np.asarray([np.nan if x is None else x for x in b], np.float64)
    return interval(a - b)


def _sign(diff: Mapping[str, float]) -> int:
    """+1 / −1 when the 95% CI excludes 0 on that side, else 0."""
    if diff["n"] < 2 or not math.isfinite(diff["ci"]):
        return 0
    return 1 if diff["mean"] - diff["ci"] > 0 else -1 if diff["mean"] + diff["ci"] < 0 else 0


def compare(attr: Mapping[str, float], div: Mapping[str, float]) -> str:
    """Classifies paired differences (candidate − reference) in attribution and diversity from their 95%
    CIs: "dominates" (neither significantly worse, at least one significantly better), "is dominated"
    (the reverse), "trades off" (one significantly better, the other significantly worse) or "is
    indistinguishable"; the reason follows in brackets."""
    sa, sd = _sign(attr), _sign(div)
    words = {1: "more", -1: "less", 0: "same"}
    reason = f"({words[sa]} attribution, {words[sd]} diversity{' within CIs' if 0 in (sa, sd) else ''})"
    if sa >= 0 and sd >= 0 and (sa or sd):
        return "dominates " + reason
    if sa <= 0 and sd <= 0 and (sa or sd):
        return "is dominated " + reason
    if sa and sd:
        return "trades off " + reason
    return "is indistinguishable " + reason


def kl_guided_verdict(records: Sequence[Mapping], *, attribution_measures: Sequence[str] = ATTRIBUTION,
                      diversity_measure: str = "distinct2") -> list[str]:
    """Lines of text: for each KL-guided point and attribution measure, (1) paired differences against
    static temperature at the same ``t0`` and their classification (dominates / is dominated / trades off
    / is indistinguishable, from 95% CIs of per-input differences), (2) the attribution gap to the
    static-temperature curve interpolated (per input, linearly in mean diversity) at the KL-guided
    point's diversity. Ends with a one-line summary per measure."""
    by_key = {r["key"]: r for r in records}
    kl = [r for r in records if r["family"] == "kl_guided"]
    temps = sorted((r for r in records if r["family"] == "temperature"),
                   key=lambda r: r["measures"][diversity_measure]["mean"])
    if not kl:
        return ["no KL-guided points in this sweep: nothing to compare"]
    n = kl[0]["measures"][diversity_measure]["n"]
    lines = [f"KL-guided vs static temperature at the same t0 (diversity = {diversity_measure}; paired 95% CIs "
             f"over {n} inputs):"]
    summary = []
    for measure in attribution_measures:
        dominates = above = 0
        for r in kl:
            t0 = r["setting"].split(",")[0].split("=")[1]
            static = by_key.get(f"temperature/T={t0}")
            if static is None:
                lines.append(f"  {r['setting']}: no static temperature point T={t0}")
                continue
            d_attr = paired_difference(r["per_input"][measure], static["per_input"][measure])
            d_div = paired_difference(r["per_input"][diversity_measure], static["per_input"][diversity_measure])
            verdict = compare(d_attr, d_div)
            dominates += verdict.startswith("dominates")
            text = (f"  {measure}, {r['setting']} vs T={t0}: Δ{measure} {d_attr['mean']:+.4f} ± {d_attr['ci']:.4f}, "
                    f"Δ{diversity_measure} {d_div['mean']:+.4f} ± {d_div['ci']:.4f} -> {verdict}")
            gap = _frontier_gap(r, temps, measure, diversity_measure)
            if gap is None:
                text += f"; its {diversity_measure} is outside the static-temperature curve's range"
            else:
                diff, between = gap
                side = _sign(diff)
                above += side > 0
                text += (f"; vs the temperature curve at equal {diversity_measure} ({between}): "
                         f"{diff['mean']:+.4f} ± {diff['ci']:.4f} -> "
                         + ("above" if side > 0 else "below" if side < 0 else "on") + " it")
            lines.append(text)
        summary.append(f"{measure}: KL-guided dominates static temperature at matched t0 in {dominates} of "
                       f"{len(kl)} settings and lies significantly above the temperature frontier in {above} of "
                       f"{len(kl)}")
    return lines + ["Verdict:"] + ["  " + s for s in summary]


def _frontier_gap(point, temps, measure, diversity_measure):
    """Paired difference between ``point`` and the temperature curve interpolated at its diversity, or None."""
    x = point["measures"][diversity_measure]["mean"]
    xs = [t["measures"][diversity_measure]["mean"] for t in temps]
    for lo, hi, x_lo, x_hi in zip(temps, temps[1:], xs, xs[1:]):
        if x_lo <= x <= x_hi:
            w = 0.0 if x_hi == x_lo else (x - x_lo) / (x_hi - x_lo)
            a_lo = np.asarray([np.nan if v is None else v for v in lo["per_input"][measure]], np.float64)
            a_hi = np.asarray([np.nan if v is None else v for v in hi["per_input"][measure]], np.float64)
            return (paired_difference(point["per_input"][measure], (1 - w) * a_lo + w * a_hi),
                    f"between {lo['setting']} and {hi['setting']}")
    return None


__all__ = ["TASKS", "FAMILIES", "MEASURES", "TaskInput", "task_inputs", "TradeoffConfig", "smoke_config",
           "SweepPoint", "sweep_points", "Study", "load_study", "check_discriminator", "run", "TradeoffResult",
           "interval", "table_rows", "markdown_table", "write_plots", "paired_difference", "compare", "kl_guided_verdict"]
