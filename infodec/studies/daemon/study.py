"""DAEMON against the standard decoders on human text: the computation of [P3]'s studies.

One pipeline serves every study. A :class:`Pipeline` holds the LM and the metric functions and runs the
four things the studies do with prompts — draw Algorithm 1's proposal samples (:meth:`Pipeline.fit_samples`),
decode with a baseline (:meth:`Pipeline.decode`), run Algorithm 2 (:meth:`Pipeline.daemon`) and score
continuations (:meth:`Pipeline.metrics`, :meth:`Pipeline.perplexity`) — each in fixed-size chunks of
``rows_per_call`` rows (``infodec.batching.map_in_chunks``: the last chunk padded, so every call of a
decoder has one shape and compiles once).

* :class:`DaemonStudy` (built by :func:`prepare`) adds one corpus's fit prefixes and eval prompts with their
  human continuations; :func:`run_studies` runs the launcher's studies on it as resumable points (main
  table, M sweep, proposal-temperature sweep, Algorithm 1 alone).
* :func:`single_metric_study` fits µ for one metric (the SR-4 study) and compares human, plain sampling
  and DAEMON with several draws per prompt, through the same pipeline.

Conventions (docs/math.md §3 for the method): prompts are ``prompt_tokens`` ids cut from documents
(``corpora.load_windows``; at most ``max_per_document`` windows per document, every window by default)
and picked at random from one split's windows; fit and eval splits hold disjoint documents; human
continuations are the next ``max_new_tokens`` ids. EOS is suppressed in every decode (``stop_tokens=()``),
so human and decoded continuations all have exactly ``max_new_tokens`` tokens and the metrics compare
like with like. Windows of one document are not independent, so the human means over a split carry
standard errors clustered by document (``eval.stats.clustered_mean_se``). The human value µ is fitted to
(``fit_target="split"``) is the metric's mean over every window of the fit split, not only the ``J``
fit prefixes: the target is a corpus statistic, and a few dozen windows estimate it poorly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import numpy.typing as npt

from infodec.batching import checkpointed_chunks, map_in_chunks
from infodec.daemon import cross_validate_l2, fit_coefficients, perplexity_over_seeds, perplexity_under_q
from infodec.daemon import fitting as fit_lib
from infodec.daemon import metrics as metrics_lib
from infodec.daemon import sampling as sampling_lib
from infodec.daemon import tilted_perplexity as ppl_lib
from infodec.data import corpora
from infodec.decoding import beam_search, contrastive_decoding, contrastive_search, generate, memory
from infodec.decoding.scoring import policy_log_probs, prefix_lists, scored_log_probs
from infodec.eval import mauve as mauve_lib
from infodec.eval.sensibleness import mean_log_prob
from infodec.eval.stats import clustered_mean_se, mean_se, paired_difference
from infodec.models.checkpoints import load
from infodec.models.layers import MASK_VALUE
from infodec.policies import EpsilonSmoothing, named
from infodec.results import ResultsFolder
from infodec.studies.daemon.config import BASELINES, EPSILON_RUNGS, METRICS, DaemonConfig, check_fit_target

Log = Callable[[str], None]
Prompts = Sequence[Sequence[int]]

# A search decodes rows_per_call // 4 prompts per call: its beams or candidates multiply the rows.
SEARCH_ROWS_DIVISOR = 4
# Martins et al. (2020)'s ε for the ε-perplexity of the human texts (tilted_perplexity module docstring).
EPSILON = 1e-6


# --- windows: prompts and human continuations ------------------------------------------------------


def split_windows(
    corpus: str, tokenizer, split: str, prompt_tokens: int, continuation_tokens: int, max_per_document: int | None
) -> list[corpora.Window]:
    """Every window of one split of ``corpus`` (``corpora.load_windows``), each prompt led by
    :func:`sequence_start` (BOS for Gemma, nothing for SmolLM2): a window is cut from the middle of a
    document, but the model reads every sequence from its start token, so the prompt is ``prompt_tokens``
    text tokens after it."""
    windows = corpora.load_windows(
        corpus,
        tokenizer,
        split=split,
        prompt_tokens=prompt_tokens,
        continuation_tokens=continuation_tokens,
        max_per_document=max_per_document,
    )
    start = sequence_start(tokenizer)
    return [dataclasses.replace(w, prompt=start + w.prompt) for w in windows] if start else windows


def sequence_start(tokenizer) -> tuple[int, ...]:
    """``(BOS,)`` when ``tokenizer`` adds BOS to a text by default (its ``add_bos`` and ``bos_id``), else
    ``()``: the ids every sequence the model was trained on begins with. Token-id prompts are passed to the
    model as given, so a study that cuts them from encoded documents must add these itself; Gemma 3 270M
    without BOS continues wiki windows in loops (on 16 windows, human-text perplexity 86.6 without BOS and
    22.8 with it; top-k 50 samples' perplexity 1.1-1.9 against 5-11)."""
    bos = getattr(tokenizer, "bos_id", None)
    return (int(bos),) if bos is not None and getattr(tokenizer, "add_bos", False) else ()


def pick_windows(pool: Sequence[corpora.Window], count: int, seed: int, where: str) -> list[corpora.Window]:
    """``count`` windows of ``pool`` chosen without replacement (in pool order); ``where`` names the
    pool in the error."""
    if len(pool) < count:
        raise ValueError(f"{where} has {len(pool)} windows, asked for {count}")
    picked = np.random.default_rng(seed).choice(len(pool), size=count, replace=False)
    return [pool[i] for i in sorted(picked)]


def prompt_windows(
    corpus: str,
    tokenizer,
    *,
    num_fit_prefixes: int,
    num_eval_prompts: int,
    prompt_tokens: int,
    max_new_tokens: int,
    max_per_document: int | None,
    seed: int,
) -> tuple[dict[str, list[corpora.Window]], list[corpora.Window], list[corpora.Window]]:
    """``(pools, fit_windows, eval_windows)``: every window of the ``"fit"`` and ``"eval"`` splits, and the
    fit prefixes (``num_fit_prefixes`` picked with ``seed``) and eval prompts (``seed + 1``) among them."""
    where = f"{corpus} at {prompt_tokens}+{max_new_tokens} tokens (max_per_document={max_per_document})"
    pools = {
        split: split_windows(corpus, tokenizer, split, prompt_tokens, max_new_tokens, max_per_document)
        for split in ("fit", "eval")
    }
    fit_windows = pick_windows(pools["fit"], num_fit_prefixes, seed, f"the fit split of {where}")
    eval_windows = pick_windows(pools["eval"], num_eval_prompts, seed + 1, f"the eval split of {where}")
    return pools, fit_windows, eval_windows


def window_features(
    functions: Sequence[metrics_lib.Metric],
    pool: Sequence[corpora.Window],
    max_new_tokens: int,
    batch_size: int = 64,
    *,
    checkpoint: str | None = None,
) -> np.ndarray:
    """``[len(pool), K]`` float64 metrics (``metrics.metric_functions``) of the windows' human continuations,
    cut to ``max_new_tokens``, in fixed batches of ``batch_size`` windows (``checkpoint``: the batches'
    label for ``batching.checkpointed_chunks``)."""
    if not pool:
        raise ValueError("window_features needs at least one window, got none")

    def batch(rows: np.ndarray, _: int) -> np.ndarray:
        tokens, lengths = fit_lib.pad_rows([list(pool[r].continuation) for r in rows], max_new_tokens)
        prefix = fit_lib.pad_rows([list(pool[r].prompt) for r in rows], fill=-1)[0]
        return np.asarray(metrics_lib.compute_with(functions, tokens, lengths, prefix), np.float64)

    return map_in_chunks(batch, len(pool), batch_size, checkpoint=checkpoint)


# --- the pipeline: Algorithm 1's samples, the baselines, Algorithm 2, scoring -----------------------


def expected_over_resampling(log_weights: np.ndarray, features: np.ndarray, nll: np.ndarray) -> dict[str, np.ndarray]:
    """Per prompt, the expectation over the resampling step given its ``M`` candidates: ``log_weights
    [P, M]`` (SIR's), ``features [P, M, K]`` and ``nll [P, M]`` (each candidate's mean token NLL).

    ``daemon [P, K]`` = ``Σ_m w_m f(x_m)`` (the chosen text's expected metrics, ``w`` the normalised
    weights), ``plain [P, K]`` = ``mean_m f(x_m)`` (the candidates are plain samples), and likewise for the
    NLL: ``nll_daemon`` / ``nll_plain`` ``[P]``. The same quantities as a drawn text's, without the
    resampling step's noise.
    """
    weights = fit_lib.softmax(np.asarray(log_weights, np.float64), axis=1)
    metrics = np.asarray(features, np.float64)
    nll = np.asarray(nll, np.float64)
    return {
        "daemon": np.einsum("pm,pmk->pk", weights, metrics),
        "plain": metrics.mean(1),
        "nll_daemon": (weights * nll).sum(1),
        "nll_plain": nll.mean(1),
    }


def _key_tag(key: jax.Array) -> str:
    """A short name of a PRNG key's value (candidate sets are kept under it)."""
    return hashlib.sha1(np.asarray(jax.random.key_data(key)).tobytes()).hexdigest()[:12]


def perplexity_summary(logp: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Token-level perplexity over all rows of ``logp [B, L]`` (``mask [B, L]``: real tokens) and the
    per-row mean NLL's mean ± SE. Every row must hold at least one real token."""
    count = mask.sum(1)
    if not count.all():  # an empty row would enter the per-row mean as NLL 0
        raise ValueError(f"perplexity_summary: rows {np.flatnonzero(count == 0).tolist()} have no real token")
    nll = -np.where(mask, logp, 0.0).sum(1)
    return {"ppl": float(np.exp(nll.sum() / count.sum())), "nll_per_row": mean_se(nll / count)}


def weight_summary(report: ppl_lib.PerplexityReport, rungs: int = 1) -> dict[str, Any]:
    """How concentrated each prompt's ``Ẑ`` weights are (``PerplexityReport.ess`` / ``top_weight``): the
    median, first decile and minimum ESS of the ``N``, the median top weight, and the share of prompts
    whose top sample holds over half the weight. Heavy concentration is why an N sweep may not decay.

    With an ε ladder of ``rungs > 1`` (sample ``i`` from rung ``i mod rungs``, :func:`ladder_rows`), also
    ``rung_shares``: per rung, the weight its samples hold, averaged over prompts (sums to 1). It says
    where q_ε's mass is found: a ladder whose lower rungs hold little weight samples q_ε no better than
    p_ε alone."""
    summary: dict[str, Any] = {
        "ess_median": float(np.median(report.ess)),
        "ess_p10": float(np.percentile(report.ess, 10)),
        "ess_min": float(report.ess.min()),
        "top_weight_median": float(np.median(report.top_weight)),
        "share_top_over_half": float(np.mean(report.top_weight > 0.5)),
    }
    if rungs > 1:
        by_rung = report.weights.reshape(report.weights.shape[0], -1, rungs).sum(axis=1)  # [J, rungs]
        summary["rung_shares"] = [float(share) for share in by_rung.mean(axis=0)]
    return summary


def ladder_rows(ladder: Sequence[float], rows: int) -> np.ndarray:
    """``[rows]`` float32 per-row ε of :meth:`Pipeline.epsilon_ladder_samples`: row ``i`` (prompt-major, so
    sample ``i mod N`` of its prompt, ``N`` a multiple of ``R``) gets ``ladder[i mod R]``."""
    return np.resize(np.asarray(ladder, np.float32), rows)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """The LM and the metrics every decode of a study shares.

    Attributes:
      model, params: the LM (``infodec.load``).
      metric_names: the ``K`` metric names µ is fitted on; ``functions``: one resolved metric each
        (``metrics.metric_functions``; ``coh`` / ``info`` need their models).
      max_new_tokens: continuation length of every decode (EOS suppressed).
      rows_per_call: decoded rows per call (``chunk * N`` or ``chunk * M`` stays at or below it; bounds the
        KV-cache memory).
      log: progress messages.
      amateur: ``(model, params)`` of the amateur LM that baselines with ``needs_amateur`` (contrastive
        decoding) contrast the LM with; None if there is none.
      bank: a folder where :meth:`candidates` keeps candidate sets for every point of a run to share
        (``run_studies`` sets ``<out>/.partial/<corpus>__candidates`` and deletes it once the corpus's points
        are stored); None: kept only with the current point's chunks.
    """

    model: Any
    params: Any
    metric_names: tuple[str, ...]
    functions: tuple[metrics_lib.Metric, ...]
    max_new_tokens: int
    rows_per_call: int
    log: Log = print
    amateur: tuple[Any, Any] | None = None
    bank: Path | None = None

    def _draw(self, prompts: Prompts, rows: np.ndarray, num_samples: int, key: jax.Array, **proposal: Any):
        """``fitting.draw_candidates`` for the prompts ``rows`` with the pipeline's model, metrics and length
        and no stop token; ``proposal``: its ``proposal`` or ``proposal_temperature``."""
        return fit_lib.draw_candidates(
            self.model,
            self.params,
            [prompts[r] for r in rows],
            self.metric_names,
            num_samples=num_samples,
            max_new_tokens=self.max_new_tokens,
            key=key,
            stop_tokens=(),
            functions=list(self.functions),
            **proposal,
        )

    def fit_samples(
        self, prompts: Prompts, num_samples: int, key: jax.Array, *, proposal_temperature: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(features [J, N, K], log_ratios [J, N])`` of ``num_samples`` samples per prompt from
        ``Temperature(proposal_temperature)`` (``fitting.draw_candidates``; ``ρ = 0`` at ``τ = 1``)."""
        start = time.perf_counter()

        def chunk(rows: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
            _, feats, rho = self._draw(
                prompts, rows, num_samples, jax.random.fold_in(key, i), proposal_temperature=proposal_temperature
            )
            self._progress("fit samples", i, len(rows), len(prompts), "prefixes", start)
            return feats, rho

        return map_in_chunks(
            chunk,
            len(prompts),
            max(1, self.rows_per_call // num_samples),
            checkpoint=f"fit_samples-N{num_samples}-tau{proposal_temperature:g}",
        )

    def perplexity_samples(
        self, prompts: Prompts, num_samples: int, key: jax.Array, *, epsilon: float = 0.0
    ) -> np.ndarray:
        """``features [P, N, K]`` of ``num_samples`` samples per prompt from p_θ, or with ``epsilon > 0`` from
        its ε-smoothing p_ε (``EpsilonSmoothing``): the samples behind ``Ẑ`` and ``Ẑ_ε``."""
        start = time.perf_counter()
        proposal = EpsilonSmoothing(epsilon) if epsilon > 0 else None

        def chunk(rows: np.ndarray, i: int) -> np.ndarray:
            _, feats, _ = self._draw(prompts, rows, num_samples, jax.random.fold_in(key, i), proposal=proposal)
            self._progress("perplexity samples", i, len(rows), len(prompts), "prompts", start)
            return feats

        name = f"perplexity_samples-N{num_samples}" + (f"-eps{epsilon:g}" if epsilon > 0 else "")
        return map_in_chunks(chunk, len(prompts), max(1, self.rows_per_call // num_samples), checkpoint=name)

    def epsilon_ladder_samples(
        self, prompts: Prompts, num_samples: int, key: jax.Array, *, ladder: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(features [P, N, K], log_ratios [P, N])`` of ``num_samples`` samples per prompt drawn in equal
        numbers from each smoothing ``p_{ε_r}`` of ``ladder`` (``tilted_perplexity.epsilon_ladder``) in one
        decode: ``EpsilonSmoothing`` with a per-row ε, sample ``i`` of each prompt from rung ``i mod R``, so
        every block of a multiple of ``R`` consecutive samples holds each rung equally often (as
        ``n_sweep``'s groups need); and their ``log p_ε − log p_mix`` (``epsilon_ladder_log_ratios``,
        ``ε = ladder[0]``)."""
        rungs = len(ladder)
        if num_samples % rungs:
            raise ValueError(f"num_samples ({num_samples}) must be a multiple of the ladder's {rungs} rungs")
        vocab, start = int(self.model.vocab_size), time.perf_counter()

        def chunk(rows: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
            proposal = EpsilonSmoothing(ladder_rows(ladder, len(rows) * num_samples))
            out, feats, _ = self._draw(prompts, rows, num_samples, jax.random.fold_in(key, i), proposal=proposal)
            ratios = ppl_lib.epsilon_ladder_log_ratios(out.logp_model, out.mask(), ladder=ladder, vocab_size=vocab)
            self._progress("ε-ladder samples", i, len(rows), len(prompts), "prompts", start)
            return feats, ratios.reshape(len(rows), num_samples)

        name = f"epsilon_ladder_samples-N{num_samples}-eps{ladder[0]:g}-rungs{rungs}"
        return map_in_chunks(chunk, len(prompts), max(1, self.rows_per_call // num_samples), checkpoint=name)

    def decode(self, prompts: Prompts, name: str, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens [P, L], lengths [P])`` of baseline ``name`` (a :data:`~config.BASELINES` key): its named
        policy sampled with ``generate`` (key folded per chunk), or its search (a quarter of the rows per
        call: beams and contrastive candidates multiply them)."""
        if name not in BASELINES:
            raise ValueError(f"unknown decoder {name!r}; choose from {', '.join(BASELINES)}")
        baseline = BASELINES[name]
        searches = {
            "beam": beam_search,
            "contrastive": contrastive_search,
            "contrastive_decoding": self._contrastive_decoding,
        }
        common: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, stop_tokens=())

        def chunk(rows: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
            batch = [prompts[r] for r in rows]
            if baseline.search is not None:
                out = searches[baseline.search](self.model, self.params, batch, **baseline.settings, **common)
            else:
                if baseline.policy is None:
                    raise ValueError(f"baseline {name!r} names neither a policy nor a search")
                policy = named.build(baseline.policy, **baseline.settings)
                out = generate(self.model, self.params, batch, policy, jax.random.fold_in(key, i), **common)
            return np.asarray(out.tokens), np.asarray(out.lengths)

        per_call = self.rows_per_call // (SEARCH_ROWS_DIVISOR if baseline.search is not None else 1)
        return map_in_chunks(chunk, len(prompts), max(1, min(per_call, len(prompts))), checkpoint=f"decode-{name}")

    def _contrastive_decoding(self, model, params, prompts, **kwargs):
        """``contrastive_decoding`` with the pipeline's amateur, called as the other searches are."""
        if self.amateur is None:
            raise ValueError("the contrastive_decoding baseline needs an amateur model: pass amateur=(model, params)")
        return contrastive_decoding(model, params, *self.amateur, prompts, **kwargs)

    def candidates(
        self, prompts: Prompts, num_candidates: int, key: jax.Array, *, proposal_temperature: float = 1.0
    ) -> dict[str, np.ndarray]:
        """``num_candidates`` proposal candidates per prompt from ``Temperature(proposal_temperature)``, drawn
        as ``sampling.sample`` draws them (chunk ``i`` of ``rows_per_call // M`` prompts generates with
        ``split(fold_in(key, i))[0]``): ``features [P, M, K]``, ``log_ratios [P, M]`` (``ρ``), ``tokens
        [P, M, L]``, ``lengths [P, M]`` and ``nll [P, M]`` (mean token NLL under p_θ).

        With :attr:`bank` set, the finished chunks are kept there under a name made of the key, ``M``, ``τ``
        and the prompt count, so every point asking for the same set decodes it once: the two τ forms
        resample one set, and the M sweep takes the first M of one set of ``max(M)``."""
        deps: dict[str, Any] = {n: f for n, f in zip(self.metric_names, self.functions) if n in ("coh", "info")}
        start = time.perf_counter()

        def chunk(rows: np.ndarray, i: int) -> dict[str, np.ndarray]:
            gen_key, _ = jax.random.split(jax.random.fold_in(key, i))
            out, feats, rho = fit_lib.draw_candidates(
                self.model,
                self.params,
                [prompts[r] for r in rows],
                self.metric_names,
                num_samples=num_candidates,
                max_new_tokens=self.max_new_tokens,
                key=gen_key,
                proposal_temperature=proposal_temperature,
                stop_tokens=(),
                **deps,
            )
            self._progress(f"candidates (M={num_candidates})", i, len(rows), len(prompts), "prompts", start)
            nll = -mean_log_prob(out.logp_model, out.mask())  # every row has max_new_tokens tokens (no EOS)
            per_prompt = lambda x: np.asarray(x).reshape(len(rows), num_candidates, *np.shape(x)[1:])
            return {
                "features": np.asarray(feats),
                "log_ratios": np.asarray(rho),
                "tokens": per_prompt(out.tokens),
                "lengths": per_prompt(out.lengths),
                "nll": per_prompt(nll),
            }

        per_call = self._daemon_prompts_per_call(num_candidates, len(prompts))
        label = f"candidates-M{num_candidates}-tau{proposal_temperature:g}-key{_key_tag(key)}"
        with _kept_in(self.bank):
            return map_in_chunks(chunk, len(prompts), per_call, checkpoint=label)

    def daemon(
        self,
        prompts: Prompts,
        mu: npt.ArrayLike,
        num_candidates: int,
        key: jax.Array,
        *,
        proposal_temperature: float = 1.0,
        correct_proposal: bool = True,
        drawn: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Algorithm 2 (as ``sampling.sample``, ``M = num_candidates``, ``correct_proposal`` as there) on every
        prompt, from the first ``M`` of the ``drawn`` (default ``M``) candidates of :meth:`candidates`
        (chunk ``i`` resamples with ``split(fold_in(key, i))[1]``; with ``drawn = M`` the result is
        ``sampling.sample``'s, chunk by chunk): ``tokens [P, L]``, ``lengths [P]``, ``ess [P]``, ``index [P]``,
        the candidates' ``features [P, M, K]`` / ``log_ratios [P, M]``, and :func:`expected_over_resampling`'s
        values as ``expected_daemon`` / ``expected_plain`` ``[P, K]`` and ``expected_nll_daemon`` /
        ``expected_nll_plain`` ``[P]``."""
        drawn = num_candidates if drawn is None else drawn
        if not 1 <= num_candidates <= drawn:
            raise ValueError(f"num_candidates must be in [1, drawn={drawn}], got {num_candidates}")
        bank = self.candidates(prompts, drawn, key, proposal_temperature=proposal_temperature)
        first = {k: v[:, :num_candidates] for k, v in bank.items()}

        def choose(rows: np.ndarray, i: int) -> dict[str, np.ndarray]:
            _, pick_key = jax.random.split(jax.random.fold_in(key, i))
            ratios = first["log_ratios"][rows] if correct_proposal else None
            log_w = sampling_lib.log_weights(mu, first["features"][rows], ratios)
            index, ess = (np.asarray(x) for x in sampling_lib.resample(pick_key, log_w))
            return {"index": index, "ess": ess, "log_weights": log_w}

        chosen = map_in_chunks(choose, len(prompts), self._daemon_prompts_per_call(drawn, len(prompts)))
        everyone = np.arange(len(prompts))
        expected = expected_over_resampling(chosen["log_weights"], first["features"], first["nll"])
        return {
            "tokens": first["tokens"][everyone, chosen["index"]],
            "lengths": first["lengths"][everyone, chosen["index"]],
            "ess": chosen["ess"],
            "index": chosen["index"],
            "features": first["features"],
            "log_ratios": first["log_ratios"],
            **{f"expected_{k}": v for k, v in expected.items()},
        }

    def _daemon_prompts_per_call(self, num_candidates: int, prompts: int) -> int:
        return max(1, min(self.rows_per_call // num_candidates, prompts))

    def metrics(self, tokens: np.ndarray, lengths: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        """``[B, K]`` float32 metrics of continuations ``tokens [B, L]`` after ``prefix [B, W]`` (-1 padded)."""
        return np.asarray(metrics_lib.compute_with(self.functions, tokens, lengths, prefix))

    def scored(
        self, tokens: np.ndarray, lengths: np.ndarray, prefix: np.ndarray, policy=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(logp [B, L], mask [B, L])`` of continuations under the model, ``prefix [B, W]`` padded with -1
        (teacher-forced, in fixed batches of 16 rows: the full-sequence logits ``[rows, S, V]`` bound it), or
        with ``policy`` under that decoder's π (``scoring.policy_log_probs``, through the decode engine in
        batches of ``rows_per_call``: a decode step holds only ``[rows, V]`` logits)."""
        prefixes = prefix_lists(prefix, len(prefix))
        if policy is not None:
            return policy_log_probs(
                self.model, self.params, tokens, lengths, prefixes, policy, batch_size=self.rows_per_call
            )
        return scored_log_probs(self.model, self.params, tokens, lengths, prefixes, batch_size=16)

    def perplexity(self, tokens: np.ndarray, lengths: np.ndarray, prefix: np.ndarray) -> dict[str, Any]:
        """:func:`perplexity_summary` of continuations under the model."""
        return perplexity_summary(*self.scored(tokens, lengths, prefix))

    def _progress(self, what: str, chunk: int, size: int, total: int, unit: str, start: float) -> None:
        done = min((chunk + 1) * size, total)
        self.log(f"  {what}: {done}/{total} {unit} ({time.perf_counter() - start:.0f} s)")


def rows_per_call_that_fits(model, params, config: DaemonConfig, *, limit: int | None = None) -> int | None:
    """The largest ``rows_per_call`` at which the decodes of ``config``'s studies fit the device's memory
    (``infodec.decoding.memory``, against ``limit`` bytes per device or the device's own): a baseline's
    ``generate`` over that many prompts (every proposal and DAEMON decode has as many rows or fewer, and a
    shorter prefill), and in the main study the searches over ``rows_per_call // 4`` prompts with their
    beams or candidates (contrastive decoding counted as the LM's beam search: its amateur, a smaller model,
    is left out). None when no limit is known (the launcher keeps its default then)."""
    sizes: dict[str, Any] = dict(
        max_len=config.prompt_tokens + config.max_new_tokens, prompt_len=config.prompt_tokens, params=params
    )
    rows = memory.largest_rows(model, limit=limit, **sizes)
    if rows is None:
        return None
    found = [rows]
    for name in config.baselines if "main" in config.studies else ():
        baseline = BASELINES[name]
        if baseline.search is not None:
            width = int(baseline.settings.get("num_beams", baseline.settings.get("top_k", 1)))
            decoder = "beam" if baseline.search == "contrastive_decoding" else baseline.search
            prompts = memory.largest_rows(model, limit=limit, decoder=decoder, width=width, **sizes) or 0
            found.append(SEARCH_ROWS_DIVISOR * prompts + SEARCH_ROWS_DIVISOR - 1)  # rows // 4 <= prompts
    return min(found)


# --- one corpus: the main study's shared inputs -----------------------------------------------------


@dataclasses.dataclass
class DaemonStudy:
    """One corpus, one LM, one metric set: the shared inputs of every point. Build with :func:`prepare`.

    Attributes:
      pipeline: the LM and metrics (``K = len(pipeline.metric_names)``).
      tokenizer: the LM's tokenizer; corpus: the corpus name.
      fit_prompts: the fit split's ``J`` prefixes (token lists).
      fit_target_windows: the fit-split windows whose human continuations define Algorithm 1's target
        (every window, a random subset, or the ``J`` prefixes' own).
      human_split_windows: the eval-split windows the decoders are compared with.
      eval_prompts: the eval split's ``P`` prompts (token lists).
      human_tokens: ``[P, L]`` their human continuations; human_lengths: ``[P]``.
      prefix: ``[P, W]`` the eval prompts right-padded with -1.
      human_features: ``[P, K]`` float64 metrics of the human continuations.
      eval_documents: ``[P]`` the document of each eval prompt: the clusters of every SE over prompts
        (empty: every prompt its own cluster).
      human_store: a folder where the human texts' features (:attr:`fit_target`, :attr:`human_split`) are
        kept once computed, so every later run on the same results folder loads them (None: not kept).
    """

    pipeline: Pipeline
    tokenizer: Any
    corpus: str
    fit_prompts: list[list[int]]
    fit_target_windows: list[corpora.Window]
    human_split_windows: list[corpora.Window]
    eval_prompts: list[list[int]]
    human_tokens: np.ndarray
    human_lengths: np.ndarray
    prefix: np.ndarray
    human_features: np.ndarray
    eval_documents: list = dataclasses.field(default_factory=list)
    human_store: Path | None = None

    @property
    def metric_names(self) -> tuple[str, ...]:
        return self.pipeline.metric_names

    @property
    def log(self) -> Log:
        return self.pipeline.log

    # --- decoding ---------------------------------------------------------------------------------
    def decode(self, name: str, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens [P, L], lengths [P])`` of baseline ``name`` on the eval prompts."""
        return self.pipeline.decode(self.eval_prompts, name, key)

    def fit_samples(
        self, num_samples: int, key: jax.Array, *, proposal_temperature: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(features [J, N, K], log_ratios [J, N])`` of ``num_samples`` proposal samples per fit prefix."""
        return self.pipeline.fit_samples(self.fit_prompts, num_samples, key, proposal_temperature=proposal_temperature)

    def fit(
        self,
        num_samples: int,
        key: jax.Array,
        *,
        proposal_temperature: float = 1.0,
        l2: float = 0.0,
        l2_values: Sequence[float] = (),
        folds: int = 4,
        **fit_options: Any,
    ) -> tuple[np.ndarray, fit_lib.FitReport, fit_lib.RidgeSelection | None]:
        """Algorithm 1 on the fit split: ``num_samples`` proposal samples per prefix, drawn once; returns
        ``(mu [K], report, selection)``. ``l2`` is ``fit_coefficients``' ridge; given ``l2_values``, the ridge
        is chosen among them by ``folds``-fold cross-validation over the prefixes (``cross_validate_l2``,
        returned as ``selection``; None otherwise). ``fit_options``: ``fit_coefficients``' ``normalization``,
        ``objective``, ``steps``, ``learning_rate``, ``tol`` (``DaemonConfig.fit_options``); the
        relative-error objective has no ridge, so ``l2`` is not used with it."""
        feats, rho = self.fit_samples(num_samples, key, proposal_temperature=proposal_temperature)
        if fit_options.get("objective", "dual") != "dual":
            return *fit_coefficients(feats, rho, self.fit_target, **fit_options), None
        selection = None
        if len(l2_values):
            selection = cross_validate_l2(feats, rho, self.fit_target, l2_values, folds=folds, **fit_options)
            l2 = selection.l2
            self.log(
                f"  ridge by {folds}-fold cross-validation: l2 = {l2:g} (scores "
                + ", ".join(f"{v:g}: {c:.3g}" for v, c in zip(selection.l2_values, selection.score))
                + ")"
            )
        mu, report = fit_coefficients(feats, rho, self.fit_target, l2=l2, **fit_options)
        return mu, report, selection

    @functools.cached_property
    def fit_target(self) -> np.ndarray:
        """``[K]`` human mean of every metric over ``fit_target_windows``."""
        start = time.perf_counter()
        target = self._human_window_features(self.fit_target_windows, "human-fit-target")
        self.log(f"  fit target: {len(self.fit_target_windows)} human windows ({time.perf_counter() - start:.0f} s)")
        return target.mean(0)

    @functools.cached_property
    def human_split(self) -> dict[str, dict]:
        """Per metric, the human mean ± SE (clustered by document) over ``human_split_windows``."""
        start = time.perf_counter()
        feats = self._human_window_features(self.human_split_windows, "human-eval-split")
        documents = [w.doc_id for w in self.human_split_windows]
        self.log(f"  human, eval split: {len(documents)} windows ({time.perf_counter() - start:.0f} s)")
        return {n: clustered_mean_se(feats[:, k], documents) for k, n in enumerate(self.metric_names)}

    def _human_window_features(self, windows: list[corpora.Window], label: str) -> np.ndarray:
        """:func:`window_features` of ``windows``, its chunks kept in :attr:`human_store` under ``label``."""
        with _kept_in(self.human_store):
            return window_features(self.pipeline.functions, windows, self.pipeline.max_new_tokens, checkpoint=label)

    def daemon(
        self,
        mu: npt.ArrayLike,
        num_candidates: int,
        key: jax.Array,
        *,
        proposal_temperature: float = 1.0,
        correct_proposal: bool = True,
        prompts: int | None = None,
        drawn: int | None = None,
    ) -> dict[str, np.ndarray]:
        """:meth:`Pipeline.daemon` on the first ``prompts`` eval prompts (all by default)."""
        count = len(self.eval_prompts) if prompts is None else prompts
        return self.pipeline.daemon(
            self.eval_prompts[:count],
            mu,
            num_candidates,
            key,
            proposal_temperature=proposal_temperature,
            correct_proposal=correct_proposal,
            drawn=drawn,
        )

    # --- evaluation -------------------------------------------------------------------------------
    def documents(self, rows: int) -> np.ndarray:
        """``[rows]`` cluster labels of the first ``rows`` eval prompts: their documents (windows of one
        document are not independent), or one cluster per prompt when the documents are not known."""
        return np.asarray(self.eval_documents[:rows]) if self.eval_documents else np.arange(rows)

    def features(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """``[R, K]`` float64 metrics of continuations of the first ``R = len(tokens)`` eval prompts."""
        rows = len(tokens)
        return self.pipeline.metrics(tokens, lengths, self.prefix[:rows]).astype(np.float64)

    def evaluate(
        self, tokens: np.ndarray, lengths: np.ndarray, *, mauve: bool = True, paired: bool = True
    ) -> dict[str, Any]:
        """Every metric (mean ± SE over prompts, clustered by document), pooled diversity, MAUVE against the
        human continuations of the same prompts, and the continuations' perplexity under the model. With
        ``paired``, ``paired_gap``: per metric the mean of (continuation − the same prompt's human
        continuation) with its SE clustered by document (``eval.stats.paired_difference``)."""
        rows = len(tokens)
        feats = self.features(tokens, lengths)
        docs = self.documents(rows)
        result = {
            "metrics": {n: clustered_mean_se(feats[:, k], docs) for k, n in enumerate(self.metric_names)},
            "pooled_diversity": metrics_lib.pooled_diversity(tokens, lengths),
            "perplexity": self.pipeline.perplexity(tokens, lengths, self.prefix[:rows]),
        }
        if paired:
            human = self.human_features[:rows]
            result["paired_gap"] = {
                n: paired_difference(feats[:, k], human[:, k], docs) for k, n in enumerate(self.metric_names)
            }
        if mauve:
            ours = mauve_lib.features(self.pipeline.model, self.pipeline.params, tokens, lengths, self.prefix[:rows])
            result["mauve"] = mauve_lib.mauve_score(self.mauve_human_features[:rows], ours)
        return result

    @functools.cached_property
    def mauve_human_features(self) -> np.ndarray:
        """MAUVE's features of the human continuations of every eval prompt."""
        return mauve_lib.features(
            self.pipeline.model, self.pipeline.params, self.human_tokens, self.human_lengths, self.prefix
        )

    def perplexity_under_q(
        self,
        mu: npt.ArrayLike,
        candidate_features: np.ndarray,
        candidate_log_ratios: np.ndarray | None = None,
        *,
        splits: int = 5,
    ) -> dict[str, Any]:
        """Human-text perplexity under p_θ and under ``q_µ``; ``Ẑ`` from ``candidate_features [P', M, K]``
        (proposal samples for the first ``P'`` eval prompts, e.g. DAEMON's candidates).

        ``ppl_q`` uses all ``M`` samples per prompt; the spread comes from ``splits`` disjoint groups of
        ``M // splits`` candidates, i.e. independent estimates with fewer samples each (``log Ẑ`` is biased
        low for small N, so the groups' perplexities sit below the full estimate)."""
        rows = len(candidate_features)
        logp, mask = self.pipeline.scored(self.human_tokens[:rows], self.human_lengths[:rows], self.prefix[:rows])
        common = dict(num_tokens=mask.sum(1))
        report = perplexity_under_q(
            logp.sum(1),
            self.human_features[:rows],
            candidate_features,
            mu,
            sample_log_ratios=candidate_log_ratios,
            **common,
        )
        result = {
            "ppl_model": report.ppl_p,
            "ppl_q": report.ppl_q,
            "num_samples": report.num_samples,
            "num_texts": rows,
            "num_tokens": report.num_tokens,
        }
        size = candidate_features.shape[1] // splits
        if splits > 1 and size >= 1:
            groups = [candidate_features[:, g * size : (g + 1) * size] for g in range(splits)]
            ratios = (
                None
                if candidate_log_ratios is None
                else [candidate_log_ratios[:, g * size : (g + 1) * size] for g in range(splits)]
            )
            spread, _ = perplexity_over_seeds(
                logp.sum(1), self.human_features[:rows], groups, mu, sample_log_ratios_per_seed=ratios, **common
            )
            result["ppl_q_split"] = {
                "num_samples": size,
                "splits": splits,
                "mean": spread.mean,
                "std": spread.std,
                "min": spread.min,
                "max": spread.max,
            }
        return result

    def _scored_human(self, rows: int) -> tuple[np.ndarray, ...]:
        """The first ``rows`` human continuations' per-token ``log p_θ [rows, L]`` and ``mask``, their token
        counts ``[rows]``, features ``[rows, K]`` and documents: what both perplexity points read."""
        logp, mask = self.pipeline.scored(self.human_tokens[:rows], self.human_lengths[:rows], self.prefix[:rows])
        return logp, mask, mask.sum(1), self.human_features[:rows], self.documents(rows)

    def human_perplexity(
        self,
        mu: npt.ArrayLike,
        num_samples: int,
        key: jax.Array,
        *,
        prompts: int | None = None,
        sizes: Sequence[int] | None = None,
        level: float = 0.95,
    ) -> dict[str, Any]:
        """The human continuations' perplexity under p_θ and ``q_µ`` with ``Ẑ`` from ``num_samples`` fresh
        p_θ samples per prompt (first ``prompts`` eval prompts, all by default): ``ppl_model`` / ``ppl_q``,
        ``paired`` (``tilted_perplexity.paired_log_perplexity_ci``: ``log ppl(q) − log ppl(p_θ)`` over the
        texts, clustered by document, ``level`` t interval) and ``n_sweep`` (``tilted_perplexity.n_sweep``
        over ``sizes``, default ``N, N/2, N/4, N/8``)."""
        rows = len(self.eval_prompts) if prompts is None else prompts
        feats = self.pipeline.perplexity_samples(self.eval_prompts[:rows], num_samples, key)
        logp, mask, tokens, human, docs = self._scored_human(rows)
        report = perplexity_under_q(logp.sum(1), human, feats, mu, num_tokens=tokens)
        sweep = ppl_lib.n_sweep(logp.sum(1), human, feats, mu, sizes=sizes or None, num_tokens=tokens)
        return {
            "num_samples": num_samples,
            "num_texts": rows,
            "num_tokens": report.num_tokens,
            "ppl_model": report.ppl_p,
            "ppl_q": report.ppl_q,
            "paired": ppl_lib.paired_log_perplexity_ci(report.log_p, report.log_q, tokens, docs, level=level),
            "n_sweep": sweep.to_json(),
            "weights": weight_summary(report),
        }

    def epsilon_perplexity(
        self,
        mu: npt.ArrayLike,
        num_samples: int,
        key: jax.Array,
        *,
        prompts: int | None = None,
        epsilon: float = EPSILON,
        rungs: int = 1,
        sizes: Sequence[int] | None = None,
        level: float = 0.95,
    ) -> dict[str, Any]:
        """The human continuations' ε-perplexity (``tilted_perplexity`` module docstring) under p_θ (exact)
        and under ``q_ε ∝ p_ε exp(−µᵀf)`` with ``Ẑ_ε`` from ``num_samples`` samples of p_ε per prompt, or
        with ``rungs > 1`` from as many samples of the ε ladder ``ε, ε/2, ...`` (``epsilon_ladder_log_ratios``;
        recorded as ``ladder``; the sweep's sizes must then be multiples of ``rungs``):
        ``eps_ppl_model`` / ``eps_ppl_q``, their ``paired`` interval and ``n_sweep`` as in
        :meth:`human_perplexity` (p_ε's uniform draws make the weights heavier-tailed than p_θ's, so the 1/N
        bias of ``log Ẑ_ε`` is measured, not assumed), and ``smoothing_mass`` (α, the per-token probability
        of p_ε's uniform part)."""
        rows = len(self.eval_prompts) if prompts is None else prompts
        ladder = ppl_lib.epsilon_ladder(epsilon, rungs)
        # by default N, N/2, N/4, N/8, keeping those the rungs divide (all four for N = 64 and 4 rungs)
        sizes = tuple(sizes or [n for n in ppl_lib.default_sweep_sizes(num_samples) if n % rungs == 0])
        if any(n % rungs for n in sizes) or len(sizes) < 2:
            raise ValueError(
                f"with {rungs} rungs the N sweep needs two or more sizes, each a multiple of {rungs}, got {sizes} "
                f"(num_samples = {num_samples}; a multiple of {2 * rungs} gives the default sweep two)"
            )
        if rungs == 1:  # plain p_ε samples: the first points' chunks, unchanged
            feats = self.pipeline.perplexity_samples(self.eval_prompts[:rows], num_samples, key, epsilon=epsilon)
            ratios = None
        else:
            feats, ratios = self.pipeline.epsilon_ladder_samples(
                self.eval_prompts[:rows], num_samples, key, ladder=ladder
            )
        logp, mask, tokens, human, docs = self._scored_human(rows)
        vocab = int(self.pipeline.model.vocab_size)
        eps_logp = ppl_lib.epsilon_log_probs(logp, mask, epsilon=epsilon, vocab_size=vocab)
        report = perplexity_under_q(eps_logp, human, feats, mu, num_tokens=tokens, sample_log_ratios=ratios)
        sweep = ppl_lib.n_sweep(eps_logp, human, feats, mu, sizes=sizes, num_tokens=tokens, sample_log_ratios=ratios)
        return {
            "num_samples": num_samples,
            "num_texts": rows,
            "num_tokens": report.num_tokens,
            "epsilon": epsilon,
            **({} if rungs == 1 else {"ladder": list(ladder)}),
            "smoothing_mass": ppl_lib.smoothing_mass(epsilon, vocab),
            "eps_ppl_model": report.ppl_p,
            "eps_ppl_q": report.ppl_q,
            "paired": ppl_lib.paired_log_perplexity_ci(report.log_p, report.log_q, tokens, docs, level=level),
            "n_sweep": sweep.to_json(),
            "weights": weight_summary(report, rungs),
        }

    def baseline_epsilon_perplexity(
        self,
        names: Sequence[str],
        *,
        prompts: int | None = None,
        epsilon: float = EPSILON,
        level: float = 0.95,
    ) -> dict[str, Any]:
        """The human continuations' ε-perplexity under each baseline of ``names`` that samples from a policy
        (searches have no per-token law and are skipped): every token's probability under the baseline's π
        given the human tokens before it (``scoring.policy_log_probs``), smoothed as p_θ's is (``π_ε = (π +
        ε) / (1 + ε|V|)``; a token the policy truncates gets ``ε / (1 + ε|V|)``). Exact: no sampling.
        Returns ``eps_ppl_model`` (p_ε's) and per baseline ``eps_ppl`` with the ``paired`` interval of
        ``ppl(π_ε) / ppl(p_ε)`` over the texts, clustered by document."""
        rows = len(self.eval_prompts) if prompts is None else prompts
        logp, mask, tokens, _, docs = self._scored_human(rows)
        vocab = int(self.pipeline.model.vocab_size)
        smoothed = functools.partial(ppl_lib.epsilon_log_probs, epsilon=epsilon, vocab_size=vocab)
        model_side = smoothed(logp, mask)
        decoders = {}
        for name in names:
            baseline = BASELINES[name]
            if baseline.policy is None:
                continue
            policy = named.build(baseline.policy, **baseline.settings)
            start = time.perf_counter()
            pi_logp, pi_mask = self.pipeline.scored(
                self.human_tokens[:rows], self.human_lengths[:rows], self.prefix[:rows], policy=policy
            )
            decoder_side = smoothed(pi_logp, pi_mask)
            decoders[name] = {
                "eps_ppl": float(np.exp(-decoder_side.sum() / tokens.sum())),
                "truncated_tokens": int(((pi_logp < MASK_VALUE / 2) & pi_mask).sum()),
                "paired": ppl_lib.paired_log_perplexity_ci(model_side, decoder_side, tokens, docs, level=level),
                "score_s": time.perf_counter() - start,
            }
            self.log(f"  ε-perplexity under {name}: {decoders[name]['eps_ppl']:.4g}")
        return {
            "num_texts": rows,
            "num_tokens": float(tokens.sum()),
            "epsilon": epsilon,
            "eps_ppl_model": float(np.exp(-model_side.sum() / tokens.sum())),
            "decoders": decoders,
        }

    def gap_to_human(self, features: np.ndarray) -> dict[str, float]:
        """Per metric, ``(mean(features) − mean(human)) / std(human)`` on the same prompts, and the mean
        absolute standardised gap over metrics (one number for sweeps)."""
        human = self.human_features[: len(features)]
        scale = np.where(human.std(0, ddof=1) > 0, human.std(0, ddof=1), 1.0)
        gaps = (features.mean(0) - human.mean(0)) / scale
        return {**{n: float(g) for n, g in zip(self.metric_names, gaps)}, "mean_abs": float(np.abs(gaps).mean())}


def metric_functions(
    model, params, tokenizer, names: Sequence[str], encoder=None, evaluator=None
) -> list[metrics_lib.Metric]:
    """The metric functions of ``names``: ``coh`` with ``encoder`` (``(encoder, params, tokenizer)``, default
    ``infodec.load("minilm-l6")``); ``info`` as the mean NLL of the continuation's text, re-tokenised, under
    the fixed ``evaluator`` (``(model, params, tokenizer)``; ``metrics.evaluator_nll``), or with
    ``evaluator=None`` under the LM itself on its own ids (``metrics.model_nll``: what results folders
    without an ``evaluator`` setting used)."""
    deps: dict[str, Any] = {}
    if "coh" in names:
        enc, enc_params, enc_tokenizer = encoder or load("minilm-l6")
        deps["coh"] = metrics_lib.coherence(enc, enc_params, enc_tokenizer, tokenizer)
    if "info" in names:
        if evaluator is None:
            deps["info"] = metrics_lib.model_nll(model, params)
        else:
            ev_model, ev_params, ev_tokenizer = evaluator
            deps["info"] = metrics_lib.evaluator_nll(ev_model, ev_params, ev_tokenizer, tokenizer)
    return metrics_lib.metric_functions(names, **deps)


def prepare(
    model,
    params,
    tokenizer,
    *,
    corpus: str = "wiki",
    metric_names: Sequence[str] = METRICS,
    num_fit_prefixes: int = 32,
    num_eval_prompts: int = 32,
    prompt_tokens: int = 32,
    max_new_tokens: int = 128,
    max_per_document: int | None = None,
    fit_target: str = "split",
    max_human_windows: int | None = None,
    rows_per_call: int = 100,
    seed: int = 0,
    encoder=None,
    log: Log = print,
    amateur: tuple[Any, Any] | None = None,
    evaluator: tuple[Any, Any, Any] | None = None,
    human_store: Path | None = None,
) -> DaemonStudy:
    """Loads the corpus windows and builds the metric functions of a :class:`DaemonStudy`.

    Prompts are windows picked at random from each split (at most ``max_per_document`` per document,
    all by default). ``fit_target``: ``"split"`` fits µ to the human mean over every fit-split window,
    ``"prefixes"`` to that of the ``J`` fit prefixes. The decoders are compared with the human mean over
    the eval-split windows. ``max_human_windows``: at most this many windows (a random subset) for either
    split's human mean (``coh`` and ``info`` of thousands of windows take minutes on a CPU); None = all.
    ``encoder``, ``evaluator``: as for :func:`metric_functions` (``evaluator=None``: ``info`` under the LM
    itself). ``amateur``: ``(model, params)`` for the baselines that need one (``Pipeline.amateur``).
    ``human_store``: :attr:`DaemonStudy.human_store`; the eval prompts' human features are kept there too.
    """
    if max_human_windows is not None and max_human_windows < 1:
        raise ValueError(f"max_human_windows must be >= 1 or None (every window), got {max_human_windows}")
    check_fit_target(fit_target)
    names = tuple(metric_names)
    functions = tuple(metric_functions(model, params, tokenizer, names, encoder, evaluator))
    pools, fit_windows, eval_windows = prompt_windows(
        corpus,
        tokenizer,
        num_fit_prefixes=num_fit_prefixes,
        num_eval_prompts=num_eval_prompts,
        prompt_tokens=prompt_tokens,
        max_new_tokens=max_new_tokens,
        max_per_document=max_per_document,
        seed=seed,
    )

    def capped(pool: list[corpora.Window], seed_offset: int) -> list[corpora.Window]:
        if max_human_windows is None or len(pool) <= max_human_windows:
            return pool
        where = f"{corpus} at {prompt_tokens}+{max_new_tokens} tokens (max_per_document={max_per_document})"
        return pick_windows(pool, max_human_windows, seed + seed_offset, where)

    eval_prompts = [list(w.prompt) for w in eval_windows]
    human_tokens, human_lengths = fit_lib.pad_rows([list(w.continuation) for w in eval_windows], max_new_tokens)
    prefix, _ = fit_lib.pad_rows(eval_prompts, fill=-1)
    pipeline = Pipeline(model, params, names, functions, max_new_tokens, rows_per_call, log, amateur)
    with _kept_in(human_store):
        human_features = window_features(functions, eval_windows, max_new_tokens, checkpoint="human-eval-prompts")
    return DaemonStudy(
        pipeline=pipeline,
        tokenizer=tokenizer,
        corpus=corpus,
        fit_prompts=[list(w.prompt) for w in fit_windows],
        fit_target_windows=capped(pools["fit"], 2) if fit_target == "split" else fit_windows,
        human_split_windows=capped(pools["eval"], 3),
        eval_prompts=eval_prompts,
        human_tokens=human_tokens,
        human_lengths=human_lengths,
        prefix=prefix,
        human_features=np.asarray(human_features, np.float64),  # chunks kept before this were float32
        eval_documents=[w.doc_id for w in eval_windows],
        human_store=human_store,
    )


def _kept_in(store: Path | None) -> contextlib.AbstractContextManager:
    """``checkpointed_chunks(store)``, or nothing when ``store`` is None."""
    return contextlib.nullcontext() if store is None else checkpointed_chunks(store)


def fit_summary(report: fit_lib.FitReport) -> dict[str, Any]:
    """The JSON-able part of a ``FitReport``."""
    return {
        "mu": report.mu.tolist(),
        "mu_standardized": report.mu_standardized.tolist(),
        "feature_mean": report.feature_mean.tolist(),
        "feature_std": report.feature_std.tolist(),
        "target": report.target.tolist(),
        "fitted_moments": report.fitted_moments.tolist(),
        "residual_norm_standardized": report.residual_norm_standardized,
        "converged": report.converged,
        "steps": report.steps,
        "ess": mean_se(report.ess),
        "ess_min": float(report.ess.min()),
        "normalization": report.normalization,
        "objective": report.objective,
        "relative_error": report.relative_error if np.isfinite(report.relative_error) else None,
    }


# --- the SR-4 study: µ for one metric, several draws per prompt ------------------------------------


def single_metric_study(
    model,
    params,
    tokenizer,
    *,
    metric: str = "sr4",
    corpus: str = "wiki",
    num_fit_prefixes: int = 32,
    num_fit_samples: int = 16,
    num_eval_prompts: int = 32,
    num_candidates: int = 25,
    max_new_tokens: int = 128,
    prompt_tokens: int = 32,
    max_per_document: int | None = None,
    fit_target: str = "split",
    rows_per_call: int = 100,
    draws_per_prompt: int = 1,
    seed: int = 0,
    log: Log = print,
) -> dict[str, Any]:
    """Fits µ for ``metric`` alone and compares human / plain sampling / DAEMON on the eval split.

    Args:
      model, params, tokenizer: the LM (``infodec.load``).
      metric: one jit-able metric name (``sr4``, ``tr32``, ``div``, ...).
      corpus: ``corpora.load_windows`` name; fit prefixes come from the "fit" split, eval prompts from
        the "eval" split (disjoint documents).
      num_fit_prefixes, num_fit_samples: ``J`` and ``N`` of Algorithm 1 (samples from p_θ).
      num_eval_prompts, num_candidates: eval prompts and DAEMON's ``M``.
      max_new_tokens: continuation length (human continuations are cut to the same length).
      max_per_document: windows kept per document (``None``: all; 1: each document's first window).
      fit_target: the human moment µ is fitted to: ``"split"``, the mean over every fit-split window, or
        ``"prefixes"``, the mean over the ``J`` fit prefixes' own human continuations.
      rows_per_call: decode rows per call (:class:`Pipeline`).
      draws_per_prompt: independent plain and DAEMON continuations per eval prompt; a prompt's metric
        is the mean over its draws, which lowers the decoders' Monte Carlo error.
      seed: window choice and every PRNG key derive from it.

    Returns a JSON-able dict: ``human`` (every eval-split window), ``human_prompts`` (the eval prompts'
    own continuations), ``plain``, ``daemon`` (metric mean ± SE over eval prompts, clustered by
    document), ``human_fit_split`` / ``human_fit_prefixes``, ``fit`` (µ on both scales, target, fitted
    moment, residual, ESS, steps, converged), ``daemon_ess`` (per-row SIR ESS mean ± SE),
    ``expected_over_resampling`` (plain's and DAEMON's metric and NLL as expectations over the SIR draw
    given the candidates), ``daemon_chosen_index``, ``perplexity`` (of plain, DAEMON and human
    continuations under the model: token-level ``ppl`` and per-row mean NLL ± SE;
    ``ratio_daemon_vs_plain``), ``criterion`` (DAEMON − human in units of the human SE and of the
    difference's SE, and whether DAEMON's perplexity is within 10% of plain sampling's), ``timing_s``.
    """
    if draws_per_prompt < 1:
        raise ValueError(f"draws_per_prompt must be >= 1, got {draws_per_prompt}")
    check_fit_target(fit_target)
    timing = {}
    key_fit, key_plain, key_daemon = jax.random.split(jax.random.key(seed), 3)

    # --- Algorithm 1 on the fit split -------------------------------------------------------------
    start = time.perf_counter()
    pools, fit_windows, eval_windows = prompt_windows(
        corpus,
        tokenizer,
        num_fit_prefixes=num_fit_prefixes,
        num_eval_prompts=num_eval_prompts,
        prompt_tokens=prompt_tokens,
        max_new_tokens=max_new_tokens,
        max_per_document=max_per_document,
        seed=seed,
    )
    pipeline = Pipeline(
        model, params, (metric,), tuple(metrics_lib.metric_functions((metric,))), max_new_tokens, rows_per_call, log
    )
    human_pool = {
        split: clustered_mean_se(
            window_features(pipeline.functions, pool, max_new_tokens)[:, 0], [w.doc_id for w in pool]
        )
        for split, pool in pools.items()
    }
    human_fit = window_features(pipeline.functions, fit_windows, max_new_tokens)
    target = human_pool["fit"]["mean"] if fit_target == "split" else human_fit[:, 0].mean()
    feats, rho = pipeline.fit_samples([list(w.prompt) for w in fit_windows], num_fit_samples, key_fit)
    mu, report = fit_coefficients(feats, rho, np.array([target]))
    timing["fit"] = time.perf_counter() - start
    log(
        f"fitted mu={mu} (standardised {report.mu_standardized}), target {report.target}, "
        f"fitted {report.fitted_moments}, converged={report.converged}"
    )

    # --- eval split: human, plain sampling, DAEMON; rows are prompt-major: row = prompt * D + draw ---
    documents = [w.doc_id for w in eval_windows]
    eval_prompts = [list(w.prompt) for w in eval_windows]
    rows = [p for p in eval_prompts for _ in range(draws_per_prompt)]
    start = time.perf_counter()
    plain_tokens, plain_lengths = pipeline.decode(rows, "sampling", key_plain)
    timing["plain"] = time.perf_counter() - start
    log(f"plain samples done ({timing['plain']:.0f} s)")
    start = time.perf_counter()
    sir = pipeline.daemon(rows, mu, num_candidates, key_daemon)
    timing["daemon"] = time.perf_counter() - start

    def per_prompt(values: np.ndarray) -> np.ndarray:  # the one metric (or the NLL): mean over a prompt's draws
        return values.reshape(len(eval_prompts), draws_per_prompt, -1).mean(1)[:, 0]

    expected = {k: per_prompt(sir[f"expected_{k}"]) for k in ("daemon", "plain", "nll_daemon", "nll_plain")}
    prefix, _ = fit_lib.pad_rows(eval_prompts, fill=-1)
    row_prefix = np.repeat(prefix, draws_per_prompt, axis=0)
    plain_metric = per_prompt(pipeline.metrics(plain_tokens, plain_lengths, row_prefix))
    daemon_metric = per_prompt(pipeline.metrics(sir["tokens"], sir["lengths"], row_prefix))

    # --- perplexity of the continuations under the model (one cache-free forward pass) --------------
    start = time.perf_counter()
    human_tokens, human_lengths = fit_lib.pad_rows([list(w.continuation) for w in eval_windows], max_new_tokens)
    ppl = {
        "plain": pipeline.perplexity(plain_tokens, plain_lengths, row_prefix),
        "daemon": pipeline.perplexity(sir["tokens"], sir["lengths"], row_prefix),
        "human": pipeline.perplexity(human_tokens, human_lengths, prefix),
    }
    ppl["ratio_daemon_vs_plain"] = ppl["daemon"]["ppl"] / ppl["plain"]["ppl"]
    timing["perplexity"] = time.perf_counter() - start

    human = human_pool["eval"]
    plain, daemon = clustered_mean_se(plain_metric, documents), clustered_mean_se(daemon_metric, documents)
    expected_plain, expected_daemon = (clustered_mean_se(expected[k], documents) for k in ("plain", "daemon"))
    expected_ratio = float(np.exp(expected["nll_daemon"].mean() - expected["nll_plain"].mean()))
    human_prompts = window_features(pipeline.functions, eval_windows, max_new_tokens)[:, 0]
    # the decoders against the same prompts' own human continuations: paired, clustered by document
    paired = {
        k: paired_difference(v, human_prompts, documents)
        for k, v in (("plain", plain_metric), ("daemon", daemon_metric))
    }
    return {
        "metric": metric,
        "corpus": corpus,
        "sizes": {
            "num_fit_prefixes": num_fit_prefixes,
            "num_fit_samples": num_fit_samples,
            "num_eval_prompts": num_eval_prompts,
            "num_candidates": num_candidates,
            "max_new_tokens": max_new_tokens,
            "prompt_tokens": prompt_tokens,
            "max_per_document": max_per_document,
            "fit_target": fit_target,
            "draws_per_prompt": draws_per_prompt,
            "seed": seed,
        },
        "human": human,
        "human_prompts": clustered_mean_se(human_prompts, documents),
        "paired_gap_to_human_prompts": paired,
        "plain": plain,
        "daemon": daemon,
        "human_fit_split": human_pool["fit"],
        "human_fit_prefixes": mean_se(human_fit[:, 0]),
        "fit": {
            "mu": report.mu.tolist(),
            "mu_standardized": report.mu_standardized.tolist(),
            "feature_mean": report.feature_mean.tolist(),
            "feature_std": report.feature_std.tolist(),
            "target": report.target.tolist(),
            "fitted_moments": report.fitted_moments.tolist(),
            "residual_norm": report.residual_norm,
            "converged": report.converged,
            "steps": report.steps,
            "ess": mean_se(report.ess),
            "ess_min": float(report.ess.min()),
            "ess_global": report.ess_global,
        },
        "daemon_ess": {**mean_se(sir["ess"]), "min": float(sir["ess"].min())},
        "expected_over_resampling": {
            "plain": expected_plain,
            "daemon": expected_daemon,
            "nll_per_row": {k: clustered_mean_se(expected[f"nll_{k}"], documents) for k in ("plain", "daemon")},
            "ppl_ratio_daemon_vs_plain": expected_ratio,
        },
        "daemon_chosen_index": sir["index"].tolist(),
        "perplexity": ppl,
        "criterion": _criterion(
            human, plain, daemon, expected_plain, expected_daemon, expected_ratio, ppl["ratio_daemon_vs_plain"]
        ),
        "timing_s": timing,
    }


def _criterion(
    human: dict,
    plain: dict,
    daemon: dict,
    expected_plain: dict,
    expected_daemon: dict,
    expected_ratio: float,
    ppl_ratio: float,
) -> dict[str, Any]:
    """The SR-4 study's checks: the decoders' distance to human in units of the human SE and of the
    difference's SE, and the perplexity ratio DAEMON / plain within 10%. ``expected_*``: the same checks
    on the expectations over the resampling step (M times fewer draws' noise)."""

    def ratio(a: float, b: float) -> float:
        return float(np.divide(a, b)) if b else float("inf") if a else float("nan")

    combined_se = float(np.hypot(human["se"], daemon["se"]))
    return {
        "expected_metric_within_human_se": bool(abs(expected_daemon["mean"] - human["mean"]) <= human["se"]),
        "expected_daemon_minus_human_in_human_se": ratio(expected_daemon["mean"] - human["mean"], human["se"]),
        "expected_plain_minus_human_in_human_se": ratio(expected_plain["mean"] - human["mean"], human["se"]),
        "expected_perplexity_within_10pct": bool(abs(expected_ratio - 1.0) <= 0.10),
        "metric_within_human_se": bool(abs(daemon["mean"] - human["mean"]) <= human["se"]),
        "metric_within_combined_se": bool(abs(daemon["mean"] - human["mean"]) <= combined_se),
        "daemon_minus_human_in_human_se": ratio(daemon["mean"] - human["mean"], human["se"]),
        "daemon_minus_human_in_combined_se": ratio(daemon["mean"] - human["mean"], combined_se),
        "plain_minus_human_in_human_se": ratio(plain["mean"] - human["mean"], human["se"]),
        "plain_minus_human_in_combined_se": ratio(
            plain["mean"] - human["mean"], float(np.hypot(human["se"], plain["se"]))
        ),
        "perplexity_within_10pct": bool(abs(ppl_ratio - 1.0) <= 0.10),
    }


# --- the launcher's studies, as resumable points (experiments.daemon and the notebook) --------------
# Each builder returns ``[(key, compute)]`` for ``ResultsFolder.run``; a point's PRNG key is folded from
# the corpus key with a fixed per-point offset, so adding points to a folder changes no finished one.
Points = list[tuple[str, Callable[[], dict]]]


def _fit_point(study: DaemonStudy, config: DaemonConfig, tau: float, key: jax.Array) -> Points:
    def compute() -> dict:
        _, report, selection = study.fit(
            config.num_fit_samples,
            key,
            proposal_temperature=tau,
            l2=config.l2,
            l2_values=config.l2_values,
            folds=config.l2_folds,
            **config.fit_options(),
        )
        record = {"corpus": study.corpus, "study": "fit", "proposal_temperature": tau, **fit_summary(report)}
        if selection is not None:
            record["l2_cross_validation"] = {
                "l2": selection.l2,
                "l2_values": selection.l2_values.tolist(),
                "score": selection.score.tolist(),
                "held_out_moments": selection.held_out_moments.tolist(),
                "folds": selection.folds,
            }
        return record

    return [(f"{study.corpus}/fit/tau={tau:g}", compute)]


def _main_points(study: DaemonStudy, config: DaemonConfig, mu: np.ndarray, ckey: jax.Array) -> Points:
    """Human, every baseline of ``config.baselines`` (keys follow :data:`BASELINES`' order) and DAEMON."""
    corpus = study.corpus
    points: Points = [
        (
            f"{corpus}/main/human",
            lambda: {
                "corpus": corpus,
                "study": "main",
                "decoder": "human",
                **study.evaluate(study.human_tokens, study.human_lengths, mauve=False, paired=False),
                "human_split": {"windows": len(study.human_split_windows), "metrics": study.human_split},
            },
        )
    ]

    def baseline(name: str, key: jax.Array) -> dict:
        start = time.perf_counter()
        tokens, lengths = study.decode(name, key)
        decode_s = time.perf_counter() - start
        return {
            "corpus": corpus,
            "study": "main",
            "decoder": name,
            "decode_s": decode_s,
            **study.evaluate(tokens, lengths),
        }

    for name in config.baselines:
        key = jax.random.fold_in(ckey, 100 + list(BASELINES).index(name))
        points.append((f"{corpus}/main/{name}", functools.partial(baseline, name, key)))

    def daemon_main() -> dict:
        start = time.perf_counter()
        out = study.daemon(mu, config.num_candidates, jax.random.fold_in(ckey, 200))
        decode_s = time.perf_counter() - start
        nll = {who: out[f"expected_nll_{who}"] for who in ("daemon", "plain")}
        docs = study.documents(len(out["tokens"]))
        return {
            "corpus": corpus,
            "study": "main",
            "decoder": "daemon",
            "decode_s": decode_s,
            "num_candidates": config.num_candidates,
            "ess": mean_se(out["ess"]),
            **study.evaluate(out["tokens"], out["lengths"]),
            "expected_over_resampling": {
                **{
                    who: {
                        n: clustered_mean_se(out[f"expected_{who}"][:, k], docs)
                        for k, n in enumerate(study.metric_names)
                    }
                    for who in ("daemon", "plain")
                },
                "nll_per_row": {who: clustered_mean_se(v, docs) for who, v in nll.items()},
                "ppl_ratio_daemon_vs_plain": float(np.exp(nll["daemon"].mean() - nll["plain"].mean())),
            },
            "human_perplexity": study.perplexity_under_q(mu, out["features"]),
        }

    return points + [(f"{corpus}/main/daemon", daemon_main)]


def _human_perplexity_points(
    study: DaemonStudy,
    mu: np.ndarray,
    num_samples: int,
    ckey: jax.Array,
    prompts: int = 0,
    baseline_names: Sequence[str] = (),
) -> Points:
    """The human texts' ε-perplexity under each sampling baseline of ``baseline_names`` (exact,
    :meth:`DaemonStudy.baseline_epsilon_perplexity`), their perplexity under ``q_µ`` with ``Ẑ`` from
    ``num_samples`` fresh p_θ samples per eval prompt (:meth:`DaemonStudy.human_perplexity`; the first
    ``prompts``, 0 = all: paired CI, N sweep), and their ε-perplexity under q_ε with ``Ẑ_ε`` from as many
    samples of p_ε (:meth:`DaemonStudy.epsilon_perplexity`), and then of the ε ladder (:data:`EPSILON_RUNGS`
    rungs; ``rungs=`` of the same method)."""

    def point(study_name: str, estimate: Callable[..., dict], salt: int) -> Callable[[], dict]:
        def compute() -> dict:
            start = time.perf_counter()
            result = estimate(mu, num_samples, jax.random.fold_in(ckey, salt), prompts=prompts or None)
            return {"corpus": study.corpus, "study": study_name, **result, "decode_s": time.perf_counter() - start}

        return compute

    def baselines() -> dict:
        result = study.baseline_epsilon_perplexity(baseline_names, prompts=prompts or None)
        return {"corpus": study.corpus, "study": "baseline_epsilon_perplexity", **result}

    return [
        (f"{study.corpus}/baseline_epsilon_perplexity/eps={EPSILON:g}", baselines),
        (f"{study.corpus}/human_perplexity/N={num_samples}", point("human_perplexity", study.human_perplexity, 600)),
        (
            f"{study.corpus}/epsilon_perplexity/N={num_samples},eps={EPSILON:g}",
            point("epsilon_perplexity", study.epsilon_perplexity, 700),
        ),
        (
            f"{study.corpus}/epsilon_ladder_perplexity/N={num_samples},eps={EPSILON:g},rungs={EPSILON_RUNGS}",
            point("epsilon_ladder_perplexity", functools.partial(study.epsilon_perplexity, rungs=EPSILON_RUNGS), 800),
        ),
    ]


def _sr4_point(study: DaemonStudy, config: DaemonConfig) -> Points:
    pipeline = study.pipeline
    return [
        (
            f"{study.corpus}/sr4",
            lambda: {
                "corpus": study.corpus,
                "study": "sr4",
                **single_metric_study(
                    pipeline.model,
                    pipeline.params,
                    study.tokenizer,
                    metric="sr4",
                    corpus=study.corpus,
                    num_fit_prefixes=config.num_fit_prefixes,
                    num_fit_samples=config.num_fit_samples,
                    num_eval_prompts=config.num_eval_prompts,
                    num_candidates=config.num_candidates,
                    max_new_tokens=config.max_new_tokens,
                    prompt_tokens=config.prompt_tokens,
                    max_per_document=config.max_per_document or None,
                    fit_target=config.fit_target,
                    rows_per_call=config.rows_per_call,
                    draws_per_prompt=config.sr4_draws,
                    seed=config.seed,
                    log=study.log,
                ),
            },
        )
    ]


def _m_sweep_points(study: DaemonStudy, config: DaemonConfig, mu: np.ndarray, ckey: jax.Array) -> Points:
    """DAEMON at each M of ``config.m_values`` on the first ``config.sweep_prompts`` eval prompts, resampling
    the first M of one set of ``max(m_values)`` candidates per prompt (nested sets: the M values are compared
    on the same texts, and the largest set is decoded once)."""
    key, largest = _m_sweep_draw(config, ckey)

    def sweep_m(m: int) -> dict:
        start = time.perf_counter()
        out = study.daemon(mu, m, key, prompts=config.sweep_prompts, drawn=largest)
        seconds = time.perf_counter() - start
        chosen = study.features(out["tokens"], out["lengths"])
        return {
            "corpus": study.corpus,
            "study": "m_sweep",
            "num_candidates": m,
            "candidates_drawn": largest,
            "decode_s": seconds,
            "ess": mean_se(out["ess"]),
            "gap": study.gap_to_human(chosen),
        }

    return [(f"{study.corpus}/m_sweep/M={m}", functools.partial(sweep_m, m)) for m in config.m_values]


def _m_sweep_draw(config: DaemonConfig, ckey: jax.Array) -> tuple[jax.Array, int]:
    """The key and size of the M sweep's one candidate set per prompt (``max(config.m_values)``)."""
    largest = max(config.m_values)
    return jax.random.fold_in(ckey, 300 + largest), largest


def _temperature_point(
    study: DaemonStudy, config: DaemonConfig, tau: float, records: dict, ckey: jax.Array, form: str = "corrected"
) -> Points:
    """DAEMON with proposal ``Temperature(tau)`` in one of ``config.TEMPERATURE_FORMS``: "corrected" uses µ of
    the point ``<corpus>/fit/tau=<tau>`` and the proposal correction; "uncorrected" (the paper's heuristic
    as reconstructed) uses µ of ``<corpus>/fit/tau=1`` and weights ``−µᵀf`` alone. Both forms draw with the
    same key, so at one τ they resample the same candidates (a paired comparison).

    At τ = 1, when the M sweep's set holds at least ``config.num_candidates`` candidates, the point
    resamples the first ``num_candidates`` of that set (:func:`_m_sweep_draw`) instead of drawing its own:
    it is then the M sweep's point at ``M = num_candidates``, and the set is decoded once."""
    sweep_key, largest = _m_sweep_draw(config, ckey)
    shared = tau == 1.0 and largest >= config.num_candidates
    key = sweep_key if shared else jax.random.fold_in(ckey, 500 + int(1000 * tau))
    drawn = largest if shared else config.num_candidates
    corrected = form == "corrected"
    fit_key = f"{study.corpus}/fit/tau={tau:g}" if corrected else f"{study.corpus}/fit/tau=1"

    def sweep_tau() -> dict:
        mu_t = np.asarray(records[fit_key]["mu"])
        out = study.daemon(
            mu_t,
            config.num_candidates,
            key,
            proposal_temperature=tau,
            correct_proposal=corrected,
            prompts=config.sweep_prompts,
            drawn=drawn,
        )
        return {
            "corpus": study.corpus,
            "study": "temperature",
            "proposal_temperature": tau,
            "form": form,
            "mu_from": fit_key,
            "candidates_drawn": drawn,
            **({"candidates_of": f"{study.corpus}/m_sweep"} if shared else {}),
            "ess": mean_se(out["ess"]),
            **study.evaluate(out["tokens"], out["lengths"], mauve=False),
        }

    suffix = "" if corrected else f"/{form}"
    return [(f"{study.corpus}/temperature/tau={tau:g}{suffix}", sweep_tau)]


def run_studies(
    folder: ResultsFolder,
    model,
    params,
    tokenizer,
    config: DaemonConfig,
    *,
    log: Log = print,
    amateur: tuple[Any, Any] | None = None,
    evaluator: tuple[Any, Any, Any] | None = None,
) -> dict[str, dict]:
    """Runs the studies of ``config`` as points of the results folder ``folder``, skipping finished ones;
    returns ``{key: record}``. Every study but ``sr4`` fits µ first (the point ``<corpus>/fit/tau=1``);
    the SR-4 study fits its own µ. The SR-4 study and the sweeps run on the first corpus only.
    ``amateur``: ``(model, params)`` of ``config.amateur``, loaded here when not given and a baseline of
    the main study needs it. ``evaluator``: ``(model, params, tokenizer)`` of ``config.evaluator``, which
    scores ``info``; loaded here when not given, ``config.evaluator`` is set and ``info`` is a metric
    (``config.evaluator`` None: ``info`` under ``model`` itself)."""
    records: dict[str, dict] = {}
    needed = "main" in config.studies and any(BASELINES[b].needs_amateur for b in config.baselines)
    if amateur is None and needed and config.amateur:
        amateur = load(config.amateur)[:2]
    if evaluator is None and config.evaluator and "info" in config.metrics:
        evaluator = load(config.evaluator)
    log(config.describe_models())

    def run(points: Points) -> None:
        # a point's finished chunks survive an interruption (hours-long decodes resume mid-point)
        resumable = [(k, functools.partial(_checkpointed, folder.scratch(k), compute)) for k, compute in points]
        records.update(zip([k for k, _ in points], folder.run(resumable, log)))

    key = jax.random.key(config.seed)
    for c_index, corpus in enumerate(config.corpora):
        ckey = jax.random.fold_in(key, c_index)
        study = prepare(
            model,
            params,
            tokenizer,
            corpus=corpus,
            metric_names=config.metrics,
            num_fit_prefixes=config.num_fit_prefixes,
            num_eval_prompts=config.num_eval_prompts,
            prompt_tokens=config.prompt_tokens,
            max_new_tokens=config.max_new_tokens,
            max_per_document=config.max_per_document or None,
            fit_target=config.fit_target,
            max_human_windows=config.max_human_windows or None,
            rows_per_call=config.rows_per_call,
            seed=config.seed,
            log=log,
            amateur=amateur,
            evaluator=evaluator,
            # the human texts' features never change: kept for good, so no later run recomputes them
            human_store=folder.scratch(f"{corpus}/human"),
        )
        bank = folder.scratch(f"{corpus}/candidates")  # no point has this key: it outlives the points
        study = dataclasses.replace(study, pipeline=dataclasses.replace(study.pipeline, bank=bank))
        log(
            f"{corpus}: {len(study.fit_prompts)} fit prefixes, {len(study.eval_prompts)} eval prompts, "
            f"{config.max_new_tokens} new tokens, metrics {', '.join(study.metric_names)}"
        )
        first = c_index == 0
        if {"main", "m_sweep", "temperature", "fit", "perplexity"} & set(config.studies):
            run(_fit_point(study, config, 1.0, jax.random.fold_in(ckey, 0)))
            mu = np.asarray(records[f"{corpus}/fit/tau=1"]["mu"])
        points: Points = []
        if "main" in config.studies:
            points += _main_points(study, config, mu, ckey)
        if first and "sr4" in config.studies:
            points += _sr4_point(study, config)
        if first and "m_sweep" in config.studies:
            points += _m_sweep_points(study, config, mu, ckey)
        run(points)
        if first and "temperature" in config.studies:
            for tau in config.proposal_temperatures:
                if "corrected" in config.forms:
                    if f"{corpus}/fit/tau={tau:g}" not in records:
                        run(_fit_point(study, config, tau, jax.random.fold_in(ckey, 400 + int(1000 * tau))))
                    run(_temperature_point(study, config, tau, records, ckey))
                if "uncorrected" in config.forms and tau != 1.0:  # at τ = 1 it is the corrected decode
                    run(_temperature_point(study, config, tau, records, ckey, form="uncorrected"))
        if "perplexity" in config.studies:  # last: the costliest decode per prompt
            run(
                _human_perplexity_points(
                    study, mu, config.perplexity_samples, ckey, config.perplexity_prompts, config.baselines
                )
            )
        shutil.rmtree(bank, ignore_errors=True)  # every point that shares these candidates is stored
    return records


def _checkpointed(scratch, compute: Callable[[], dict]) -> dict:
    """``compute()`` with every finished chunk of its chunked loops kept in ``scratch``, so a rerun after an
    interruption repeats only the chunk that was running (``batching.checkpointed_chunks``; each chunk's
    PRNG key is folded from its number, so a loaded chunk equals a recomputed one)."""
    with checkpointed_chunks(scratch):
        return compute()


__all__ = [
    "Pipeline",
    "DaemonStudy",
    "prepare",
    "metric_functions",
    "fit_summary",
    "run_studies",
    "single_metric_study",
    "split_windows",
    "sequence_start",
    "pick_windows",
    "prompt_windows",
    "window_features",
    "expected_over_resampling",
    "perplexity_summary",
    "EPSILON",
]
