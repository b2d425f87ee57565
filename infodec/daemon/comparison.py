"""DAEMON against the standard decoders on human text: the second paper's studies (issue 6).

A :class:`Study` holds what every point of a study shares — the LM, the metric functions, the fit
split's prefixes and the eval split's prompts with their human continuations — and each method
decodes or evaluates one point:

* :meth:`Study.decode` — one baseline decoder (greedy, top-k, top-p, typical, η, contrastive, beam);
* :meth:`Study.fit` — Algorithm 1 on the fit split (proposal ``Temperature(τ)``), returning µ;
* :meth:`Study.daemon` — Algorithm 2 on the eval prompts (``M`` candidates each), with the ESS and the
  candidates' metrics, which also give ``Ẑ`` for the human-text perplexity under ``q_µ``;
* :meth:`Study.evaluate` — every metric (mean ± SE over prompts), the pooled diversity, MAUVE against
  the human continuations, and the perplexity of the continuations under the model;
* :meth:`Study.perplexity_under_q` — human-text perplexity under p_θ and under q_µ.

Conventions as in :mod:`infodec.daemon.studies`: prompts are ``prompt_tokens`` ids from documents of
one split; EOS is suppressed (``stop_tokens=()``), so every continuation — human or decoded — has
exactly ``max_new_tokens`` tokens; decodes are chunked to ``rows_per_call`` rows with the last chunk
padded, so every call of a decoder has one shape.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from infodec.daemon import fitting as fit_lib
from infodec.daemon import metrics as metrics_lib
from infodec.daemon import perplexity_q
from infodec.daemon import sampling as sampling_lib
from infodec.daemon.studies import (_chunks, _expected_over_resampling, _padded, _perplexity, check_fit_target,
                                    pick_windows, scored, split_windows, window_features)
from infodec.eval.stats import clustered_mean_se, mean_se

METRICS = ("sr2", "sr3", "sr4", "tr32", "div", "coh", "info")

# The baselines of [P3]'s main table, with their settings (paper's where it states them).
BASELINES = {
    "greedy": "greedy",
    "top_k": "top-k, k = 50",
    "top_p": "top-p (nucleus), p = 0.95",
    "typical": "typical, τ = 0.95",
    "eta": "η-sampling, η = 0.0009",
    "contrastive": "contrastive search, k = 4, α = 0.6",
    "beam": "beam search, 4 beams",
    "sampling": "ancestral sampling (T = 1): DAEMON's proposal",
}


def _baseline_policy(name: str):
    import infodec

    return {"greedy": infodec.Greedy(), "top_k": infodec.chain(infodec.Temperature(1.0), infodec.TopK(50)),
            "top_p": infodec.chain(infodec.Temperature(1.0), infodec.TopP(0.95)),
            "typical": infodec.chain(infodec.Temperature(1.0), infodec.Typical(0.95)),
            "eta": infodec.chain(infodec.Temperature(1.0), infodec.Eta(0.0009)),
            "sampling": infodec.Temperature(1.0)}[name]


@dataclasses.dataclass
class Study:
    """One corpus, one LM, one metric set: the shared inputs of every point.

    Build with :func:`prepare`. Attributes: ``fit_prompts`` (token lists of the fit split's ``J``
    prefixes), ``fit_target_windows`` (the fit-split windows whose human continuations define the
    target of Algorithm 1: every window, a random subset, or the ``J`` prefixes' own),
    ``human_split_windows`` (the eval-split windows the decoders are compared with), ``eval_prompts`` /
    ``human_tokens [P, L]`` / ``human_lengths [P]`` / ``prefix [P, W]`` (eval split, prompts right-padded
    with -1), ``human_features [P, K]``, ``functions`` (one per metric name).
    """

    model: Any
    params: Any
    tokenizer: Any
    corpus: str
    metric_names: tuple[str, ...]
    functions: list
    max_new_tokens: int
    rows_per_call: int
    fit_prompts: list
    fit_target_windows: list
    human_split_windows: list
    eval_prompts: list
    human_tokens: np.ndarray
    human_lengths: np.ndarray
    prefix: np.ndarray
    human_features: np.ndarray
    log: Callable[[str], None] = print
    _mauve_human: np.ndarray | None = None
    _fit_target: np.ndarray | None = None
    _human_split: dict | None = None

    # --- decoding ---------------------------------------------------------------------------------
    def decode(self, name: str, key) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens [P, L], lengths [P])`` of baseline ``name`` (a :data:`BASELINES` key) on the eval
        prompts."""
        import infodec

        if name not in BASELINES:
            raise ValueError(f"unknown decoder {name!r}; choose from {', '.join(BASELINES)}")
        per_call = min(self.rows_per_call // (4 if name in ("beam", "contrastive") else 1), len(self.eval_prompts))
        tokens, lengths = [], []
        for i, part in enumerate(_chunks(len(self.eval_prompts), per_call)):
            prompts, call_key = _padded(self.eval_prompts, part, per_call), jax.random.fold_in(key, i)
            common = dict(max_new_tokens=self.max_new_tokens, stop_tokens=())
            if name == "beam":
                out = infodec.beam_search(self.model, self.params, prompts, num_beams=4, **common)
            elif name == "contrastive":
                out = infodec.contrastive_search(self.model, self.params, prompts, top_k=4, penalty_alpha=0.6,
                                                 **common)
            else:
                out = infodec.generate(self.model, self.params, prompts, _baseline_policy(name), call_key, **common)
            keep = part.stop - part.start
            tokens.append(np.asarray(out.tokens)[:keep])
            lengths.append(np.asarray(out.lengths)[:keep])
        return np.concatenate(tokens), np.concatenate(lengths)

    def fit_samples(self, num_samples: int, key, *, proposal_temperature: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray]:
        """``(features [J, N, K], log_ratios [J, N])`` of ``num_samples`` proposal samples per fit prefix."""
        per_call = max(1, self.rows_per_call // num_samples)
        feats, rho = [], []
        start = time.perf_counter()
        for i, part in enumerate(_chunks(len(self.fit_prompts), per_call)):
            _, f, r = fit_lib.draw_candidates(self.model, self.params, _padded(self.fit_prompts, part, per_call),
                                              self.metric_names, num_samples=num_samples,
                                              max_new_tokens=self.max_new_tokens, key=jax.random.fold_in(key, i),
                                              proposal_temperature=proposal_temperature, stop_tokens=(),
                                              functions=self.functions)
            keep = part.stop - part.start
            feats.append(f[:keep])
            rho.append(r[:keep])
            self.log(f"  fit samples: {part.stop}/{len(self.fit_prompts)} prefixes ({time.perf_counter() - start:.0f} s)")
        return np.concatenate(feats), np.concatenate(rho)

    def fit(self, num_samples: int, key, *, proposal_temperature: float = 1.0, l2: float = 0.0,
            l2_values: Sequence[float] = (), folds: int = 4
            ) -> tuple[np.ndarray, fit_lib.FitReport, fit_lib.RidgeSelection | None]:
        """Algorithm 1 on the fit split: ``num_samples`` proposal samples per prefix, drawn once.
        ``l2`` is ``fit_coefficients``' ridge; given ``l2_values``, the ridge is chosen among them by
        ``folds``-fold cross-validation over the prefixes (``fit_lib.cross_validate_l2``, returned third)."""
        feats, rho = self.fit_samples(num_samples, key, proposal_temperature=proposal_temperature)
        selection = None
        if len(l2_values):
            selection = fit_lib.cross_validate_l2(feats, rho, self.fit_target(), l2_values, folds=folds)
            l2 = selection.l2
            self.log(f"  ridge by {folds}-fold cross-validation: l2 = {l2:g} (scores "
                     + ", ".join(f"{v:g}: {c:.3g}" for v, c in zip(selection.l2_values, selection.score)) + ")")
        mu, report = fit_lib.fit_coefficients(feats, rho, self.fit_target(), l2=l2)
        return mu, report, selection

    def fit_target(self) -> np.ndarray:
        """``[K]`` human mean of every metric over ``fit_target_windows`` (computed once)."""
        if self._fit_target is None:
            start = time.perf_counter()
            self._fit_target = window_features(self.functions, self.fit_target_windows, self.max_new_tokens).mean(0)
            self.log(f"  fit target: {len(self.fit_target_windows)} human windows ({time.perf_counter() - start:.0f} s)")
        return self._fit_target

    def human_split(self) -> dict[str, dict]:
        """Per metric, the human mean ± SE (clustered by document) over ``human_split_windows``."""
        if self._human_split is None:
            start = time.perf_counter()
            feats = window_features(self.functions, self.human_split_windows, self.max_new_tokens)
            documents = [w.doc_id for w in self.human_split_windows]
            self._human_split = {n: clustered_mean_se(feats[:, k], documents) for k, n in enumerate(self.metric_names)}
            self.log(f"  human, eval split: {len(documents)} windows ({time.perf_counter() - start:.0f} s)")
        return self._human_split

    def daemon(self, mu, num_candidates: int, key, *, proposal_temperature: float = 1.0,
               prompts: int | None = None) -> dict[str, np.ndarray]:
        """Algorithm 2 on the first ``prompts`` eval prompts (all by default): ``tokens``, ``lengths``,
        ``ess [P]``, ``index [P]``, the candidates' ``features [P, M, K]`` / ``log_ratios [P, M]``, and
        the expectations over the resampling step (``studies._expected_over_resampling``):
        ``expected_daemon`` / ``expected_plain`` ``[P, K]``, ``expected_nll_daemon`` / ``expected_nll_plain`` ``[P]``."""
        count = len(self.eval_prompts) if prompts is None else prompts
        per_call = max(1, min(self.rows_per_call // num_candidates, count))
        fields = ("tokens", "lengths", "ess", "index", "features", "log_ratios")
        parts = {k: [] for k in fields + tuple(f"expected_{e}" for e in ("daemon", "plain", "nll_daemon", "nll_plain"))}
        start = time.perf_counter()
        for i, part in enumerate(_chunks(count, per_call)):
            out = sampling_lib.sample(self.model, self.params, _padded(self.eval_prompts, part, per_call), mu,
                                      self.metric_names, num_candidates=num_candidates,
                                      max_new_tokens=self.max_new_tokens, key=jax.random.fold_in(key, i),
                                      proposal_temperature=proposal_temperature, stop_tokens=(),
                                      **{n: f for n, f in zip(self.metric_names, self.functions)
                                         if n in ("coh", "info")})
            keep = part.stop - part.start
            for k in fields:
                parts[k].append(np.asarray(getattr(out, k))[:keep])
            for k, v in _expected_over_resampling(out, keep).items():
                parts[f"expected_{k}"].append(v)
            self.log(f"  DAEMON (M={num_candidates}): {part.stop}/{count} prompts ({time.perf_counter() - start:.0f} s)")
        return {k: np.concatenate(v) for k, v in parts.items()}

    # --- evaluation -------------------------------------------------------------------------------
    def features(self, tokens, lengths, rows: int | None = None) -> np.ndarray:
        """``[P, K]`` metrics of continuations of the first ``rows`` eval prompts."""
        rows = len(tokens) if rows is None else rows
        return np.asarray(metrics_lib.compute_with(self.functions, tokens[:rows], lengths[:rows], self.prefix[:rows]),
                          np.float64)

    def evaluate(self, tokens, lengths, *, mauve: bool = True) -> dict[str, Any]:
        """Every metric (mean ± SE over prompts), pooled diversity, MAUVE against the human
        continuations (same prompts) and the continuations' perplexity under the model."""
        rows = len(tokens)
        feats = self.features(tokens, lengths)
        result = {"metrics": {n: mean_se(feats[:, k]) for k, n in enumerate(self.metric_names)},
                  "pooled_diversity": metrics_lib.pooled_diversity(tokens, lengths),
                  "perplexity": self._perplexity(tokens, lengths)}
        if mauve:
            from infodec.eval import mauve as mauve_lib

            human = self.mauve_human_features()[:rows]
            ours = mauve_lib.features(self.model, self.params, tokens, lengths, self.prefix[:rows])
            result["mauve"] = mauve_lib.mauve_score(human, ours)
        return result

    def mauve_human_features(self) -> np.ndarray:
        from infodec.eval import mauve as mauve_lib

        if self._mauve_human is None:
            self._mauve_human = mauve_lib.features(self.model, self.params, self.human_tokens, self.human_lengths,
                                                   self.prefix)
        return self._mauve_human

    def _perplexity(self, tokens, lengths) -> dict[str, Any]:
        return _perplexity(*scored(self.model, self.params, tokens, lengths, self.prefix[:len(tokens)]))

    def perplexity_under_q(self, mu, candidate_features, candidate_log_ratios=None, *,
                           splits: int = 5) -> dict[str, Any]:
        """Human-text perplexity under p_θ and under ``q_µ``; ``Ẑ`` from ``candidate_features [P', M, K]``
        (proposal samples for the first ``P'`` eval prompts, e.g. DAEMON's candidates).

        ``ppl_q`` uses all ``M`` samples per prompt; the spread comes from ``splits`` disjoint groups of
        ``M // splits`` candidates, i.e. independent estimates with fewer samples each (``log Ẑ`` is biased
        low for small N, so the groups' perplexities sit below the full estimate)."""
        rows = len(candidate_features)
        logp, mask = scored(self.model, self.params, self.human_tokens[:rows], self.human_lengths[:rows],
                            self.prefix[:rows])
        common = dict(num_tokens=mask.sum(1))
        report = perplexity_q.perplexity_under_q(logp.sum(1), self.human_features[:rows], candidate_features, mu,
                                                 sample_log_ratios=candidate_log_ratios, **common)
        result = {"ppl_model": report.ppl_p, "ppl_q": report.ppl_q, "num_samples": report.num_samples,
                  "num_texts": rows, "num_tokens": report.num_tokens}
        size = candidate_features.shape[1] // splits
        if splits > 1 and size >= 1:
            groups = [candidate_features[:, g * size:(g + 1) * size] for g in range(splits)]
            ratios = None if candidate_log_ratios is None else [
                candidate_log_ratios[:, g * size:(g + 1) * size] for g in range(splits)]
            spread, _ = perplexity_q.perplexity_over_seeds(logp.sum(1), self.human_features[:rows], groups, mu,
                                                           sample_log_ratios_per_seed=ratios, **common)
            result["ppl_q_split"] = {"num_samples": size, "splits": splits, "mean": spread.mean, "std": spread.std,
                                     "min": spread.min, "max": spread.max}
        return result

    def gap_to_human(self, features) -> dict[str, float]:
        """Per metric, ``(mean(features) − mean(human)) / std(human)`` on the same prompts, and the mean
        absolute standardised gap over metrics (one number for sweeps)."""
        rows = len(features)
        human = self.human_features[:rows]
        scale = np.where(human.std(0, ddof=1) > 0, human.std(0, ddof=1), 1.0)
        gaps = (features.mean(0) - human.mean(0)) / scale
        return {**{n: float(g) for n, g in zip(self.metric_names, gaps)}, "mean_abs": float(np.abs(gaps).mean())}


def prepare(model, params, tokenizer, *, corpus: str = "wiki", metric_names: Sequence[str] = METRICS,
            num_fit_prefixes: int = 32, num_eval_prompts: int = 32, prompt_tokens: int = 32,
            max_new_tokens: int = 128, max_per_document: int | None = None, fit_target: str = "split",
            max_human_windows: int | None = None, rows_per_call: int = 100, seed: int = 0, encoder=None,
            log: Callable[[str], None] = print) -> Study:
    """Loads the corpus windows and builds the metric functions.

    Prompts are windows picked at random from each split (at most ``max_per_document`` per document,
    all by default). ``fit_target``: as in ``studies.single_metric_study`` — ``"split"`` fits µ to the
    human mean over every fit-split window, ``"prefixes"`` to that of the ``J`` fit prefixes. The
    decoders are compared with the human mean over the eval-split windows. ``max_human_windows``: at
    most this many windows (a random subset) for either split's human mean (``coh`` and ``info`` of
    thousands of windows take minutes on a CPU); None = all.

    ``encoder``: ``(encoder, encoder_params, encoder_tokenizer)`` for ``coh`` (default
    ``infodec.load("minilm-l6")`` when ``coh`` is asked for). ``info`` is the NLL under the LM itself.
    """
    import infodec

    if max_human_windows is not None and max_human_windows < 1:
        raise ValueError(f"max_human_windows must be >= 1 or None (every window), got {max_human_windows}")
    check_fit_target(fit_target)
    names = tuple(metric_names)
    deps: dict[str, Any] = {}
    if "coh" in names:
        enc, enc_params, enc_tokenizer = encoder or infodec.load("minilm-l6")
        deps["coh"] = metrics_lib.coherence(enc, enc_params, enc_tokenizer, tokenizer)
    if "info" in names:
        deps["info"] = metrics_lib.information(model, params)
    functions = metrics_lib.metric_functions(names, **deps)

    where = f"{corpus} at {prompt_tokens}+{max_new_tokens} tokens (max_per_document={max_per_document})"
    fit_pool = split_windows(corpus, tokenizer, "fit", prompt_tokens, max_new_tokens, max_per_document)
    eval_pool = split_windows(corpus, tokenizer, "eval", prompt_tokens, max_new_tokens, max_per_document)
    fit_windows = pick_windows(fit_pool, num_fit_prefixes, seed, f"the fit split of {where}")
    eval_windows = pick_windows(eval_pool, num_eval_prompts, seed + 1, f"the eval split of {where}")

    def capped(pool, seed_offset):
        if max_human_windows is None or len(pool) <= max_human_windows:
            return pool
        return pick_windows(pool, max_human_windows, seed + seed_offset, where)

    eval_prompts = [list(w.prompt) for w in eval_windows]
    human_tokens, human_lengths = fit_lib.pad_rows([list(w.continuation) for w in eval_windows], max_new_tokens)
    prefix, _ = fit_lib.pad_rows(eval_prompts, fill=-1)
    human = np.asarray(metrics_lib.compute_with(functions, human_tokens, human_lengths, prefix), np.float64)
    return Study(model=model, params=params, tokenizer=tokenizer, corpus=corpus, metric_names=names,
                 functions=functions, max_new_tokens=max_new_tokens, rows_per_call=rows_per_call,
                 fit_prompts=[list(w.prompt) for w in fit_windows],
                 fit_target_windows=capped(fit_pool, 2) if fit_target == "split" else fit_windows,
                 human_split_windows=capped(eval_pool, 3), eval_prompts=eval_prompts,
                 human_tokens=human_tokens, human_lengths=human_lengths, prefix=prefix, human_features=human,
                 log=log)


def fit_summary(report: fit_lib.FitReport) -> dict[str, Any]:
    """The JSON-able part of a ``FitReport``."""
    return {"mu": report.mu.tolist(), "mu_standardized": report.mu_standardized.tolist(),
            "feature_mean": report.feature_mean.tolist(), "feature_std": report.feature_std.tolist(),
            "target": report.target.tolist(), "fitted_moments": report.fitted_moments.tolist(),
            "residual_norm_standardized": report.residual_norm_standardized, "converged": report.converged,
            "steps": report.steps, "ess": mean_se(report.ess), "ess_min": float(report.ess.min())}


STUDIES = ("main", "sr4", "m_sweep", "temperature", "fit")


def validate_settings(s: dict) -> None:
    """Raises ValueError naming the setting (``experiments.daemon``'s flag) that is out of range."""
    from infodec.data import corpora

    def require(condition: bool, message: str) -> None:
        if not condition:
            raise ValueError(message)

    def numbers(name: str, values) -> list[float]:
        try:
            parsed = [float(v) for v in values if str(v).strip()]
        except ValueError:
            raise ValueError(f"--{name} must be comma-separated numbers, got {values!r}") from None
        require(bool(parsed), f"--{name} must list at least one number")
        return parsed

    unknown = set(s["studies"]) - set(STUDIES)
    require(not unknown, f"--studies: unknown {sorted(unknown)}; choose from {', '.join(STUDIES)}")
    bad = set(s["baselines"]) - set(BASELINES)
    require(not bad, f"--baselines: unknown {sorted(bad)}; choose from {', '.join(BASELINES)}")
    for name in s["metrics"]:
        try:
            metrics_lib.get_metric(name, coh=lambda *a: None, info=lambda *a: None)
        except ValueError as e:
            raise ValueError(f"--metrics: {e}") from None
    for corpus in s["corpora"]:
        try:
            corpora.check_name(corpus)
        except ValueError as e:
            raise ValueError(f"--corpora: {e}") from None
    for flag in ("num_fit_prefixes", "num_fit_samples", "num_eval_prompts", "num_candidates", "max_new_tokens",
                 "prompt_tokens", "sweep_prompts", "rows_per_call"):
        require(s[flag] >= 1, f"--{flag} must be >= 1, got {s[flag]}")
    require(s["l2"] >= 0, f"--l2 must be >= 0, got {s['l2']}")
    if s["l2_values"]:
        ridges = numbers("l2_values", s["l2_values"])
        require(all(v >= 0 for v in ridges), f"--l2_values must be >= 0, got {ridges}")
        require(2 <= s["l2_folds"] <= s["num_fit_prefixes"],
                f"--l2_folds must be between 2 and --num_fit_prefixes ({s['num_fit_prefixes']}), got {s['l2_folds']}")
    require(s["max_human_windows"] >= 0, f"--max_human_windows must be >= 0 (0 = every window), got {s['max_human_windows']}")
    require(s["sr4_draws"] >= 1, f"--sr4_draws must be >= 1, got {s['sr4_draws']}")
    require(s["max_per_document"] >= 0, f"--max_per_document must be >= 0 (0 = every window), got {s['max_per_document']}")
    try:
        check_fit_target(s["fit_target"])
    except ValueError as e:
        raise ValueError(f"--{e}") from None
    require(s["sweep_prompts"] <= s["num_eval_prompts"], "--sweep_prompts must be <= --num_eval_prompts")
    ms = numbers("m_values", s["m_values"])
    require(all(m >= 1 and m == int(m) for m in ms), f"--m_values must be positive integers, got {ms}")
    taus = numbers("proposal_temperatures", s["proposal_temperatures"].split(","))
    require(all(t > 0 for t in taus), f"--proposal_temperatures must be > 0, got {taus}")


# --- the launcher's studies, as resumable points (experiments.daemon and the notebook) --------------
# Each builder returns ``[(key, compute)]`` for ``ResultsFolder.run``; a point's PRNG key is folded from
# the corpus key with a fixed per-point offset, so adding points to a folder changes no finished one.
Points = list[tuple[str, Callable[[], dict]]]


def _fit_point(study: Study, s: dict, tau: float, key) -> Points:
    def compute():
        _, report, selection = study.fit(s["num_fit_samples"], key, proposal_temperature=tau, l2=s["l2"],
                                         l2_values=[float(v) for v in s["l2_values"]], folds=s["l2_folds"])
        record = {"corpus": study.corpus, "study": "fit", "proposal_temperature": tau, **fit_summary(report)}
        if selection is not None:
            record["l2_cross_validation"] = {
                "l2": selection.l2, "l2_values": selection.l2_values.tolist(), "score": selection.score.tolist(),
                "held_out_moments": selection.held_out_moments.tolist(), "folds": selection.folds}
        return record
    return [(f"{study.corpus}/fit/tau={tau:g}", compute)]


def _main_points(study: Study, s: dict, mu, ckey) -> Points:
    """Human, every baseline of ``s["baselines"]`` (keys follow :data:`BASELINES`' order) and DAEMON."""
    corpus = study.corpus
    points: Points = [(f"{corpus}/main/human", lambda: {
        "corpus": corpus, "study": "main", "decoder": "human",
        **study.evaluate(study.human_tokens, study.human_lengths, mauve=False),
        "human_split": {"windows": len(study.human_split_windows), "metrics": study.human_split()}})]
    for name in s["baselines"]:
        def baseline(name=name, k=jax.random.fold_in(ckey, 100 + list(BASELINES).index(name))):
            start = time.perf_counter()
            tokens, lengths = study.decode(name, k)
            decode_s = time.perf_counter() - start
            return {"corpus": corpus, "study": "main", "decoder": name, "decode_s": decode_s,
                    **study.evaluate(tokens, lengths)}
        points.append((f"{corpus}/main/{name}", baseline))

    def daemon_main(k=jax.random.fold_in(ckey, 200)):
        start = time.perf_counter()
        out = study.daemon(mu, s["num_candidates"], k)
        decode_s = time.perf_counter() - start
        nll = {k: out[f"expected_nll_{k}"] for k in ("daemon", "plain")}
        return {"corpus": corpus, "study": "main", "decoder": "daemon", "decode_s": decode_s,
                "num_candidates": s["num_candidates"], "ess": mean_se(out["ess"]),
                **study.evaluate(out["tokens"], out["lengths"]),
                "expected_over_resampling": {
                    **{who: {n: mean_se(out[f"expected_{who}"][:, k]) for k, n in enumerate(study.metric_names)}
                       for who in ("daemon", "plain")},
                    "nll_per_row": {k: mean_se(v) for k, v in nll.items()},
                    "ppl_ratio_daemon_vs_plain": float(np.exp(nll["daemon"].mean() - nll["plain"].mean()))},
                "human_perplexity": study.perplexity_under_q(mu, out["features"])}
    return points + [(f"{corpus}/main/daemon", daemon_main)]


def _sr4_point(study: Study, s: dict) -> Points:
    from infodec.daemon import studies

    return [(f"{study.corpus}/sr4", lambda: {"corpus": study.corpus, "study": "sr4", **studies.single_metric_study(
        study.model, study.params, study.tokenizer, metric="sr4", corpus=study.corpus,
        num_fit_prefixes=s["num_fit_prefixes"], num_fit_samples=s["num_fit_samples"],
        num_eval_prompts=s["num_eval_prompts"], num_candidates=s["num_candidates"],
        max_new_tokens=s["max_new_tokens"], prompt_tokens=s["prompt_tokens"],
        max_per_document=s["max_per_document"] or None, fit_target=s["fit_target"], rows_per_call=s["rows_per_call"],
        draws_per_prompt=s["sr4_draws"], seed=s["seed"], log=study.log)})]


def _m_sweep_points(study: Study, s: dict, mu, ckey) -> Points:
    points: Points = []
    for m in (int(float(v)) for v in s["m_values"]):
        def sweep_m(m=m, k=jax.random.fold_in(ckey, 300 + m)):
            start = time.perf_counter()
            out = study.daemon(mu, m, k, prompts=s["sweep_prompts"])
            seconds = time.perf_counter() - start
            chosen = study.features(out["tokens"], out["lengths"])
            return {"corpus": study.corpus, "study": "m_sweep", "num_candidates": m, "decode_s": seconds,
                    "ess": mean_se(out["ess"]), "gap": study.gap_to_human(chosen)}
        points.append((f"{study.corpus}/m_sweep/M={m}", sweep_m))
    return points


def _temperature_point(study: Study, s: dict, tau: float, records: dict, ckey) -> Points:
    """DAEMON with proposal ``Temperature(tau)``, using µ of the point ``<corpus>/fit/tau=<tau>``."""
    def sweep_tau(k=jax.random.fold_in(ckey, 500 + int(1000 * tau))):
        mu_t = np.asarray(records[f"{study.corpus}/fit/tau={tau:g}"]["mu"])
        out = study.daemon(mu_t, s["num_candidates"], k, proposal_temperature=tau, prompts=s["sweep_prompts"])
        return {"corpus": study.corpus, "study": "temperature", "proposal_temperature": tau,
                "ess": mean_se(out["ess"]), **study.evaluate(out["tokens"], out["lengths"], mauve=False)}
    return [(f"{study.corpus}/temperature/tau={tau:g}", sweep_tau)]


def run_studies(folder, model, params, tokenizer, s: dict, *, log: Callable[[str], None] = print) -> dict:
    """Runs the studies of settings ``s`` (``experiments.daemon``'s flags) as points of the
    ``ResultsFolder`` ``folder``, skipping finished ones; returns ``{key: record}``. The SR-4 study and
    the sweeps run on the first corpus only; the SR-4 study fits its own µ."""
    records: dict[str, dict] = {}

    def run(points: Points) -> None:
        records.update(zip([k for k, _ in points], folder.run(points, log)))

    key = jax.random.key(s["seed"])
    for c_index, corpus in enumerate(s["corpora"]):
        ckey = jax.random.fold_in(key, c_index)
        study = prepare(model, params, tokenizer, corpus=corpus, metric_names=s["metrics"],
                        num_fit_prefixes=s["num_fit_prefixes"], num_eval_prompts=s["num_eval_prompts"],
                        prompt_tokens=s["prompt_tokens"], max_new_tokens=s["max_new_tokens"],
                        max_per_document=s["max_per_document"] or None, fit_target=s["fit_target"],
                        max_human_windows=s["max_human_windows"] or None, rows_per_call=s["rows_per_call"],
                        seed=s["seed"], log=log)
        log(f"{corpus}: {len(study.fit_prompts)} fit prefixes, {len(study.eval_prompts)} eval prompts, "
            f"{s['max_new_tokens']} new tokens, metrics {', '.join(study.metric_names)}")
        first = c_index == 0
        if {"main", "m_sweep", "temperature", "fit"} & set(s["studies"]):
            run(_fit_point(study, s, 1.0, jax.random.fold_in(ckey, 0)))
            mu = np.asarray(records[f"{corpus}/fit/tau=1"]["mu"])
        points: Points = []
        if "main" in s["studies"]:
            points += _main_points(study, s, mu, ckey)
        if first and "sr4" in s["studies"]:
            points += _sr4_point(study, s)
        if first and "m_sweep" in s["studies"]:
            points += _m_sweep_points(study, s, mu, ckey)
        run(points)
        if first and "temperature" in s["studies"]:
            for tau in (float(v) for v in s["proposal_temperatures"].split(",")):
                if f"{corpus}/fit/tau={tau:g}" not in records:
                    run(_fit_point(study, s, tau, jax.random.fold_in(ckey, 400 + int(1000 * tau))))
                run(_temperature_point(study, s, tau, records, ckey))
    return records


HUMAN_ROWS = ("human", "human_split")


def _metric_row(corpus: str, decoder: str, metrics: dict, names) -> dict:
    row = {"corpus": corpus, "decoder": decoder, "n": metrics[names[0]]["n"]}
    for name in names:
        row[name] = metrics[name]["mean"]
        row[name + "_se"] = metrics[name]["se"]
    return row


def _main_rows(records: dict, s: dict) -> list[dict]:
    """One row per main-table point, plus ``human_split`` (the eval-split windows, SE clustered by
    document) after ``human``, and ``daemon_expected`` / ``sampling_expected`` (the expectation over the
    resampling step of DAEMON's pick and of a plain sample, from DAEMON's candidates) after ``daemon``."""
    rows = []
    for r in records.values():
        if r.get("study") != "main":
            continue
        row = _metric_row(r["corpus"], r["decoder"], r["metrics"], s["metrics"])
        row["pooled_div"] = r["pooled_diversity"]["diversity"]
        row["mauve"] = r["mauve"]["mauve"] if "mauve" in r else None
        row["mauve_spread"] = r["mauve"]["spread"] if "mauve" in r else None
        row["ppl_of_text"] = r["perplexity"]["ppl"]
        if "human_perplexity" in r:
            row["human_ppl_model"] = r["human_perplexity"]["ppl_model"]
            row["human_ppl_daemon"] = r["human_perplexity"]["ppl_q"]
            row["ess"] = r["ess"]["mean"]
        rows.append(row)
        if "human_split" in r:
            rows.append(_metric_row(r["corpus"], "human_split", r["human_split"]["metrics"], s["metrics"]))
        expected = r.get("expected_over_resampling", {})
        for who in ("daemon", "plain") if expected else ():
            rows.append({**_metric_row(r["corpus"], f"{'sampling' if who == 'plain' else who}_expected",
                                       expected[who], s["metrics"]),
                         "ppl_of_text": float(np.exp(expected["nll_per_row"][who]["mean"]))})
    return rows


def _reference_and_decoders(group: list[dict]) -> tuple[dict | None, list[dict]]:
    """The human row decoders are compared with (the eval-split windows when measured, else the
    prompts' own continuations) and the decoders' rows."""
    by_name = {r["decoder"]: r for r in group}
    reference = by_name.get("human_split", by_name.get("human"))
    return reference, [r for r in group if r["decoder"] not in HUMAN_ROWS]


def write_tables_and_plots(folder, records: dict, s: dict) -> None:
    """``main.csv`` (one row per corpus × decoder), ``sweeps.csv``, and the PNGs: ``main_gaps.png``
    (each decoder's standardised gap to human per metric), ``m_sweep.png`` (gap and ESS against M),
    ``temperature.png`` (diversity against coherence over the proposal temperature)."""
    from infodec.results import plot_series

    main = _main_rows(records, s)
    if main:
        folder.write_csv("main.csv", main)
        _plot_gaps(folder.path / "main_gaps.png", main, s["metrics"])
    sweeps = []
    for r in records.values():
        if r.get("study") == "m_sweep":
            sweeps.append({"study": "m_sweep", "corpus": r["corpus"], "M": r["num_candidates"],
                           "gap_mean_abs": r["gap"]["mean_abs"], "ess": r["ess"]["mean"], "ess_se": r["ess"]["se"],
                           "decode_s": r["decode_s"]})
        elif r.get("study") == "temperature":
            sweeps.append({"study": "temperature", "corpus": r["corpus"], "tau": r["proposal_temperature"],
                           "ess": r["ess"]["mean"], **{f"{n}": r["metrics"][n]["mean"] for n in r["metrics"]},
                           **{f"{n}_se": r["metrics"][n]["se"] for n in r["metrics"]}})
    if sweeps:
        folder.write_csv("sweeps.csv", sweeps)
    m_points = [p for p in sweeps if p["study"] == "m_sweep"]
    if m_points:
        plot_series(folder.path / "m_sweep.png", {
            "mean |gap to human| (human SD)": [{"M": p["M"], "y": p["gap_mean_abs"]} for p in m_points],
            "ESS / M": [{"M": p["M"], "y": p["ess"] / p["M"], "y_err": 1.96 * p["ess_se"] / p["M"]} for p in m_points],
        }, x="M", y="y", xlabel="candidates M", ylabel="value", title="DAEMON: gap to human and ESS against M")
    t_points = [p for p in sweeps if p["study"] == "temperature"]
    if t_points and "div" in s["metrics"] and "coh" in s["metrics"]:
        plot_series(folder.path / "temperature.png", {"DAEMON": [
            {"div": p["div"], "coh": p["coh"], "div_err": 1.96 * p["div_se"], "coh_err": 1.96 * p["coh_se"],
             "tau": p["tau"]} for p in t_points]}, x="div", y="coh", annotate="tau",
            xlabel="diversity (div)", ylabel="coherence (coh)", title="Proposal temperature τ: diversity vs coherence")


def _plot_gaps(path, rows: list[dict], metric_names) -> None:
    """Grouped bars of ``(decoder − human) / human SD`` per metric, one panel per corpus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora_ = list(dict.fromkeys(r["corpus"] for r in rows))
    fig, axes = plt.subplots(len(corpora_), 1, figsize=(8, 3.2 * len(corpora_)), dpi=110, squeeze=False)
    for ax, corpus in zip(axes[:, 0], corpora_):
        group = [r for r in rows if r["corpus"] == corpus]
        reference, decoders = _reference_and_decoders(group)
        human = next((r for r in group if r["decoder"] == "human"), None)
        if human is None:
            continue
        width = 0.8 / max(len(decoders), 1)
        for i, r in enumerate(decoders):
            # the human SD is the prompts' continuations' (one window each); the reference may be the split's mean
            gaps = [(r[n] - reference[n]) / max(human[n + "_se"] * np.sqrt(human["n"]), 1e-12) for n in metric_names]
            ax.bar(np.arange(len(metric_names)) + i * width - 0.4 + width / 2, gaps, width, label=r["decoder"])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(metric_names)), metric_names)
        ax.set_ylabel("(decoder − human) / human SD")
        where = (f"{reference['n']} eval-split windows" if reference["decoder"] == "human_split"
                 else "the prompts' continuations")
        ax.set_title(f"{corpus}: distance to human text per metric (0 = human mean over {where})", fontsize=10)
        ax.legend(fontsize=6, ncol=3)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary(records: dict, s: dict) -> str:
    """A Markdown summary: per corpus, the main table and which decoder is closest to human per metric."""
    rows = _main_rows(records, s)
    lines = []
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        group = [r for r in rows if r["corpus"] == corpus]
        reference, decoders = _reference_and_decoders(group)
        cols = list(s["metrics"]) + ["mauve", "ppl_of_text"]
        lines += [f"### {corpus}", "", "| decoder | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for r in group:
            cells = [f"{r[c]:.4g} ± {r[c + '_se']:.2g}" if c in s["metrics"] else
                     ("–" if r.get(c) is None else f"{r[c]:.3g}") for c in cols]
            lines.append(f"| {r['decoder']} | " + " | ".join(cells) + " |")
        if reference is not None and decoders:
            closest = {n: min(decoders, key=lambda r: abs(r[n] - reference[n]))["decoder"] for n in s["metrics"]}
            lines += ["", f"closest to {reference['decoder']}: " + ", ".join(f"{n}: {d}" for n, d in closest.items())]
        daemon = next((r for r in group if r["decoder"] == "daemon"), None)
        if daemon is not None and "human_ppl_model" in daemon:
            lines.append(f"human-text perplexity: {daemon['human_ppl_model']:.2f} under the model, "
                         f"{daemon['human_ppl_daemon']:.2f} under DAEMON's q_µ")
        lines.append("")
    return "\n".join(lines)


__all__ = ["Study", "prepare", "fit_summary", "validate_settings", "STUDIES", "run_studies", "write_tables_and_plots", "summary", "METRICS",
           "BASELINES"]
