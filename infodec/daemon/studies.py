"""End-to-end DAEMON studies on a real model and corpus (issue 5).

:func:`single_metric_study` fits µ for one metric (default SR-4) on the corpus's fit split (Algorithm 1),
then decodes the eval split's prompts with plain ancestral sampling and with DAEMON (Algorithm 2,
``M`` candidates per prompt), and reports the metric of human, plain and DAEMON continuations (mean ±
standard error over eval prompts) and the perplexity of the decoded continuations under the model.

Conventions: prompts are ``prompt_tokens`` ids cut from documents (``corpora.load_windows``; at most
``max_per_document`` windows per document, every window by default) and picked at random from a
split's windows; human continuations are the next ``max_new_tokens`` ids; EOS is suppressed in every
decode (``stop_tokens=()``), so human, plain and DAEMON continuations all have exactly
``max_new_tokens`` tokens and the metrics compare like with like. The proposal is ``Temperature(1.0)``
(ρ = 0).

The human value DAEMON fits to (``fit_target="split"``) is the metric's mean over every window of the
fit split, not only over the ``J`` fit prefixes: the target is a corpus statistic, and a few dozen
windows estimate it poorly (on ``wiki`` at 128 tokens, SR-4 is 0 for half the texts). Likewise the
eval split's human value is the mean over all its windows. Windows of one document are not
independent, so standard errors are clustered by document (``eval.stats.clustered_mean_se``).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from infodec.daemon import fitting as fit_lib
from infodec.daemon import metrics as metrics_lib
from infodec.daemon import sampling as sampling_lib
from infodec.eval.stats import clustered_mean_se, mean_se


def split_windows(corpus, tokenizer, split, prompt_tokens, continuation_tokens, max_per_document):
    """Every window of one split of ``corpus`` (``corpora.load_windows``)."""
    from infodec.data import corpora

    return corpora.load_windows(corpus, tokenizer, split=split, prompt_tokens=prompt_tokens,
                                continuation_tokens=continuation_tokens, max_per_document=max_per_document)


def pick_windows(pool, count: int, seed: int, where: str) -> list:
    """``count`` windows of ``pool`` chosen without replacement (in pool order); ``where`` names the
    pool in the error."""
    if len(pool) < count:
        raise ValueError(f"{where} has {len(pool)} windows, asked for {count}")
    picked = np.random.default_rng(seed).choice(len(pool), size=count, replace=False)
    return [pool[i] for i in sorted(picked)]


FIT_TARGETS = ("split", "prefixes")


def check_fit_target(fit_target: str) -> None:
    if fit_target not in FIT_TARGETS:
        raise ValueError(f"fit_target must be one of {', '.join(FIT_TARGETS)}, got {fit_target!r}")


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _padded(prompts: list, part: slice, size: int) -> list:
    """``prompts[part]`` padded to ``size`` with its last prompt, so every call has one shape (one compile);
    callers keep the first ``part.stop - part.start`` rows."""
    chunk = prompts[part]
    return chunk + [chunk[-1]] * (size - len(chunk))


def scored(model, params, tokens, lengths, prefix) -> tuple[np.ndarray, np.ndarray]:
    """``(logp [B, L], mask [B, L])`` of continuations under the model, ``prefix [B, P]`` padded with -1
    (``eval.sensibleness.scored_log_probs`` in fixed-size batches)."""
    from infodec.eval.sensibleness import scored_log_probs

    return scored_log_probs(model, params, tokens, lengths, [[int(t) for t in row if t >= 0] for row in prefix],
                            batch_size=16)


def window_features(functions, pool, max_new_tokens: int, batch_size: int = 64) -> np.ndarray:
    """``[len(pool), K]`` metrics (``metrics.metric_functions``) of the windows' human continuations, cut
    to ``max_new_tokens``, in batches of ``batch_size`` (the last padded, so one shape compiles)."""
    if not pool:
        raise ValueError("window_features needs at least one window, got none")
    rows = []
    for part in _chunks(len(pool), batch_size):
        chunk = _padded(pool, part, batch_size)
        tokens, lengths = fit_lib.pad_rows([list(w.continuation) for w in chunk], max_new_tokens)
        prefix, _ = fit_lib.pad_rows([list(w.prompt) for w in chunk], fill=-1)
        values = np.asarray(metrics_lib.compute_with(functions, tokens, lengths, prefix), np.float64)
        rows.append(values[:part.stop - part.start])
    return np.concatenate(rows)


def _expected_over_resampling(out, keep: int) -> dict[str, np.ndarray]:
    """Per prompt, the expectation over the resampling step given the ``M`` candidates of
    ``sampling.sample``'s output: ``daemon`` ``[keep, K]`` = ``Σ_m w_m f(x_m)`` (the chosen text's expected
    metrics), ``plain`` ``[keep, K]`` = ``mean_m f(x_m)`` (the candidates are plain samples), and likewise
    the mean token NLL (``nll_daemon`` / ``nll_plain``, ``[keep]``) from the candidates' ``logp_model``."""
    weights = fit_lib._softmax(np.asarray(out.log_weights[:keep], np.float64), axis=1)
    metrics = np.asarray(out.features[:keep], np.float64)
    m = weights.shape[1]
    logp = np.asarray(out.candidates.logp_model[:keep * m], np.float64)
    count = np.asarray(out.candidates.lengths[:keep * m])
    nll = (-logp.sum(1) / np.maximum(count, 1)).reshape(keep, m)
    return {"daemon": np.einsum("pm,pmk->pk", weights, metrics), "plain": metrics.mean(1),
            "nll_daemon": (weights * nll).sum(1), "nll_plain": nll.mean(1)}


def _perplexity(logp: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Token-level perplexity over all rows plus the per-row mean NLL's mean ± SE."""
    count = mask.sum(1)
    per_row = -np.where(mask, logp, 0.0).sum(1) / np.maximum(count, 1)
    return {"ppl": float(np.exp(-np.where(mask, logp, 0.0).sum() / mask.sum())),
            "nll_per_row": mean_se(per_row)}


def single_metric_study(model, params, tokenizer, *, metric: str = "sr4", corpus: str = "wiki",
                        num_fit_prefixes: int = 32, num_fit_samples: int = 16, num_eval_prompts: int = 32,
                        num_candidates: int = 25, max_new_tokens: int = 128, prompt_tokens: int = 32,
                        max_per_document: int | None = None, fit_target: str = "split", rows_per_call: int = 100,
                        draws_per_prompt: int = 1, seed: int = 0, log=print) -> dict[str, Any]:
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
      rows_per_call: decode rows per ``generate`` call (prompts are chunked so ``chunk * N`` or
        ``chunk * M`` stays at or below it; bounds the KV-cache memory).
      draws_per_prompt: independent plain and DAEMON continuations per eval prompt; a prompt's metric
        is the mean over its draws, which lowers the decoders' Monte Carlo error.
      seed: window choice and every PRNG key derive from it.

    Returns a JSON-able dict: ``human`` (every eval-split window), ``human_prompts`` (the eval prompts'
    own continuations), ``plain``, ``daemon`` (metric mean ± SE over eval prompts, clustered by
    document), ``human_fit_split`` / ``human_fit_prefixes``, ``fit`` (µ on both scales, target, fitted
    moment, residual, ESS, steps, converged),
    ``daemon_ess`` (per-prompt SIR ESS mean ± SE), ``expected_over_resampling`` (plain's and DAEMON's
    metric and NLL as expectations over the SIR draw given the candidates), ``perplexity`` (of plain and DAEMON continuations
    under the model: token-level ``ppl`` and per-row mean NLL ± SE; ``ratio`` = DAEMON / plain),
    ``criterion`` (issue 5's checks: DAEMON − human in units of the human SE and of the difference's
    SE, and the perplexity ratio), ``timing_s``.
    """
    import infodec  # late: infodec imports this package

    if draws_per_prompt < 1:
        raise ValueError(f"draws_per_prompt must be >= 1, got {draws_per_prompt}")
    check_fit_target(fit_target)
    names = (metric,)
    timing = {}
    key_fit, key_plain, key_daemon = jax.random.split(jax.random.key(seed), 3)

    # --- Algorithm 1 on the fit split -------------------------------------------------------------
    start = time.perf_counter()
    pools = {split: split_windows(corpus, tokenizer, split, prompt_tokens, max_new_tokens, max_per_document)
             for split in ("fit", "eval")}
    functions = metrics_lib.metric_functions(names)
    human_pool = {split: clustered_mean_se(window_features(functions, pool, max_new_tokens)[:, 0],
                                           [w.doc_id for w in pool]) for split, pool in pools.items()}
    where = f"{corpus} at {prompt_tokens}+{max_new_tokens} tokens (max_per_document={max_per_document})"
    fit_windows = pick_windows(pools["fit"], num_fit_prefixes, seed, f"the fit split of {where}")
    fit_prompts = [list(w.prompt) for w in fit_windows]
    human_fit = window_features(functions, fit_windows, max_new_tokens)
    target = human_pool["fit"]["mean"] if fit_target == "split" else human_fit[:, 0].mean()
    per_call = max(1, rows_per_call // num_fit_samples)
    feats = []
    for i, part in enumerate(_chunks(len(fit_prompts), per_call)):
        _, f, _ = fit_lib.draw_candidates(model, params, _padded(fit_prompts, part, per_call), names,
                                          num_samples=num_fit_samples,
                                          max_new_tokens=max_new_tokens, key=jax.random.fold_in(key_fit, i),
                                          stop_tokens=())
        feats.append(f[:part.stop - part.start])
        log(f"fit samples: {part.stop}/{len(fit_prompts)} prefixes ({time.perf_counter() - start:.0f} s)")
    feats = np.concatenate(feats, axis=0)
    mu, report = fit_lib.fit_coefficients(feats, None, np.array([target]))
    timing["fit"] = time.perf_counter() - start
    log(f"fitted mu={mu} (standardised {report.mu_standardized}), target {report.target}, "
        f"fitted {report.fitted_moments}, converged={report.converged}")

    # --- eval split: human, plain sampling, DAEMON --------------------------------------------------
    eval_windows = pick_windows(pools["eval"], num_eval_prompts, seed + 1, f"the eval split of {where}")
    documents = [w.doc_id for w in eval_windows]
    eval_prompts = [list(w.prompt) for w in eval_windows]
    rows = [p for p in eval_prompts for _ in range(draws_per_prompt)]  # prompt-major: row = prompt * D + draw
    human_eval = window_features(functions, eval_windows, max_new_tokens)[:, 0]

    start = time.perf_counter()
    plain_tokens, plain_lengths = [], []
    per_call = min(rows_per_call, len(rows))
    for i, part in enumerate(_chunks(len(rows), per_call)):
        out = infodec.generate(model, params, _padded(rows, part, per_call), infodec.Temperature(1.0),
                               jax.random.fold_in(key_plain, i), max_new_tokens=max_new_tokens, stop_tokens=())
        plain_tokens.append(out.tokens[:part.stop - part.start])
        plain_lengths.append(out.lengths[:part.stop - part.start])
    plain_tokens, plain_lengths = np.concatenate(plain_tokens), np.concatenate(plain_lengths)
    timing["plain"] = time.perf_counter() - start
    log(f"plain samples done ({timing['plain']:.0f} s)")

    start = time.perf_counter()
    per_call = max(1, rows_per_call // num_candidates)
    d_tokens, d_lengths, d_ess, d_index, expected = [], [], [], [], []
    for i, part in enumerate(_chunks(len(rows), per_call)):
        out = sampling_lib.sample(model, params, _padded(rows, part, per_call), mu, names,
                                  num_candidates=num_candidates,
                                  max_new_tokens=max_new_tokens, key=jax.random.fold_in(key_daemon, i),
                                  stop_tokens=())
        keep = part.stop - part.start
        d_tokens.append(out.tokens[:keep])
        d_lengths.append(out.lengths[:keep])
        d_ess.append(out.ess[:keep])
        d_index.append(out.index[:keep])
        expected.append(_expected_over_resampling(out, keep))
        log(f"DAEMON: {part.stop}/{len(rows)} rows ({time.perf_counter() - start:.0f} s)")
    d_tokens, d_lengths = np.concatenate(d_tokens), np.concatenate(d_lengths)
    d_ess = np.concatenate(d_ess)
    expected = {k: np.concatenate([e[k] for e in expected]).reshape(len(eval_prompts), draws_per_prompt, -1)
                .mean(1)[:, 0] for k in expected[0]}  # the one metric (and the NLL), per prompt
    timing["daemon"] = time.perf_counter() - start

    prefix, _ = fit_lib.pad_rows(eval_prompts, fill=-1)
    row_prefix = np.repeat(prefix, draws_per_prompt, axis=0)
    # per prompt: the mean over its draws (draws of one prompt are not independent prompts)
    plain_metric = np.asarray(metrics_lib.compute(names, plain_tokens, plain_lengths, row_prefix))[:, 0]
    plain_metric = plain_metric.reshape(-1, draws_per_prompt).mean(1)
    daemon_metric = np.asarray(metrics_lib.compute(names, d_tokens, d_lengths, row_prefix))[:, 0]
    daemon_metric = daemon_metric.reshape(-1, draws_per_prompt).mean(1)

    # --- perplexity of the decoded continuations under the model (one cache-free forward pass) ------
    start = time.perf_counter()
    ppl = {}
    for name, (tokens, lengths, texts_prefix) in {
            "plain": (plain_tokens, plain_lengths, row_prefix), "daemon": (d_tokens, d_lengths, row_prefix),
            "human": (*fit_lib.pad_rows([list(w.continuation) for w in eval_windows], max_new_tokens), prefix)}.items():
        ppl[name] = _perplexity(*scored(model, params, tokens, lengths, texts_prefix))
    ppl["ratio_daemon_vs_plain"] = ppl["daemon"]["ppl"] / ppl["plain"]["ppl"]
    timing["perplexity"] = time.perf_counter() - start

    human = human_pool["eval"]
    plain, daemon = clustered_mean_se(plain_metric, documents), clustered_mean_se(daemon_metric, documents)
    ratio = lambda a, b: float(np.divide(a, b)) if b else float("inf") if a else float("nan")  # noqa: E731
    combined_se = float(np.hypot(human["se"], daemon["se"]))
    # The decoded metric's expectation over the resampling step, given the candidates (see
    # _expected_over_resampling): the same quantity as ``daemon`` / ``plain`` with M times fewer draws' noise.
    expected_plain, expected_daemon = (clustered_mean_se(expected[k], documents) for k in ("plain", "daemon"))
    expected_ratio = float(np.exp(expected["nll_daemon"].mean() - expected["nll_plain"].mean()))
    criterion = {
        "expected_metric_within_human_se": bool(abs(expected_daemon["mean"] - human["mean"]) <= human["se"]),
        "expected_daemon_minus_human_in_human_se": ratio(expected_daemon["mean"] - human["mean"], human["se"]),
        "expected_plain_minus_human_in_human_se": ratio(expected_plain["mean"] - human["mean"], human["se"]),
        "expected_perplexity_within_10pct": bool(abs(expected_ratio - 1.0) <= 0.10),
        "metric_within_human_se": bool(abs(daemon["mean"] - human["mean"]) <= human["se"]),
        "metric_within_combined_se": bool(abs(daemon["mean"] - human["mean"]) <= combined_se),
        "daemon_minus_human_in_human_se": ratio(daemon["mean"] - human["mean"], human["se"]),
        "daemon_minus_human_in_combined_se": ratio(daemon["mean"] - human["mean"], combined_se),
        "plain_minus_human_in_human_se": ratio(plain["mean"] - human["mean"], human["se"]),
        "plain_minus_human_in_combined_se": ratio(plain["mean"] - human["mean"], float(np.hypot(human["se"], plain["se"]))),
        "perplexity_within_10pct": bool(abs(ppl["ratio_daemon_vs_plain"] - 1.0) <= 0.10),
    }
    return {
        "metric": metric, "corpus": corpus,
        "sizes": {"num_fit_prefixes": num_fit_prefixes, "num_fit_samples": num_fit_samples,
                  "num_eval_prompts": num_eval_prompts, "num_candidates": num_candidates,
                  "max_new_tokens": max_new_tokens, "prompt_tokens": prompt_tokens,
                  "max_per_document": max_per_document, "fit_target": fit_target,
                  "draws_per_prompt": draws_per_prompt, "seed": seed},
        "human": human, "human_prompts": clustered_mean_se(human_eval, documents), "plain": plain, "daemon": daemon,
        "human_fit_split": human_pool["fit"], "human_fit_prefixes": mean_se(human_fit[:, 0]),
        "fit": {"mu": report.mu.tolist(), "mu_standardized": report.mu_standardized.tolist(),
                "feature_mean": report.feature_mean.tolist(), "feature_std": report.feature_std.tolist(),
                "target": report.target.tolist(), "fitted_moments": report.fitted_moments.tolist(),
                "residual_norm": report.residual_norm, "converged": report.converged, "steps": report.steps,
                "ess": mean_se(report.ess), "ess_min": float(report.ess.min()), "ess_global": report.ess_global},
        "daemon_ess": {**mean_se(d_ess), "min": float(d_ess.min())},
        "expected_over_resampling": {"plain": expected_plain, "daemon": expected_daemon,
                                     "nll_per_row": {k: clustered_mean_se(expected[f"nll_{k}"], documents)
                                                     for k in ("plain", "daemon")},
                                     "ppl_ratio_daemon_vs_plain": expected_ratio},
        "daemon_chosen_index": np.concatenate(d_index).tolist(),
        "perplexity": ppl, "criterion": criterion, "timing_s": timing,
    }


__all__ = ["single_metric_study", "split_windows", "pick_windows", "window_features", "FIT_TARGETS"]
