"""Perplexity of human text under p_θ and under ``q_µ`` (``docs/math.md`` §3).

    log q_µ(x_h|c) = log p_θ(x_h|c) − µᵀ f(x_h, c) − log Ẑ(c, µ),
    log Ẑ(c, µ)   = logsumexp_i(ρ_i − µᵀ f(x_i, c)) − log N,     x_i ~ r(·|c)   (ρ = 0 for r = p_θ)

Token-level normalisation: ``ppl = exp(−Σ_j log q(x_j|c_j) / Σ_j T_j)`` with ``T_j`` the number of tokens
of human continuation ``j`` (pass ``num_tokens``; without it every continuation counts as one unit, i.e.
a per-sequence perplexity). Since ``E[log Ẑ] ≤ log Z`` (Jensen), a small ``N`` makes q's perplexity look
optimistic: report ``N`` and the spread over seeds (:func:`spread`, :func:`perplexity_over_seeds`).

Uncertainty and bias (issue 19):

* :func:`paired_log_perplexity_ci`: the log-perplexity difference ``log ppl(q) − log ppl(p_θ)`` over the
  same human texts, with a cluster-robust (by document) t interval. Each text's ``log Ẑ`` is a Monte
  Carlo estimate from its own ``N`` samples, so that noise is inside the per-text spread and the
  interval covers it; the ``O(1/N)`` bias it does not, which :func:`n_sweep` measures.
* :func:`n_sweep`: the estimate at several ``N`` (the mean over disjoint groups of ``N`` of the samples)
  and the least-squares fit ``nll_q(N) = a + b / N`` (``E[log Ẑ_N] = log Z − Var(w) / (2 N Z²) + O(N⁻²)``
  by the delta method), so ``a`` is the ``N → ∞`` extrapolation and ``b / N`` the remaining bias at ``N``.
  :func:`doubling_check` tests that form: a ``b / N`` bias halves the rise of ``nll_q`` per doubling of
  ``N``; heavy-tailed weights (``Var(w)`` infinite or huge) do not, and then the fit understates the bias.
* :func:`epsilon_perplexity` / :func:`epsilon_log_probs`: the ε-perplexity of Martins, Marinho & Martins,
  "Sparse Text Generation" (EMNLP 2020, §4), which truncation-sampling comparisons (and the DAEMON
  paper's perplexity column, per issue 19) report so that a distribution giving a human token probability
  zero does not have infinite perplexity: every token's probability is smoothed as
  ``p_ε(x_t) = (p(x_t) + ε) / (1 + ε |V|)`` and ``ε-ppl = exp(−Σ_t log p_ε(x_t) / T)``. (The DAEMON
  paper's own text could not be retrieved offline here; its exact ε is not known to us, so ε is a
  parameter.) For q, which is defined per sequence, the smoothing is applied to the tokens of the base LM
  inside the tilt: ``q_ε(x) ∝ p_ε(x) exp(−µᵀf(x))`` with ``p_ε(x) = Π_t p_ε(x_t|x_<t)``, so
  ``Ẑ_ε = mean_i exp(−µᵀf(x_i))`` over samples ``x_i`` of p_ε itself (``infodec.EpsilonSmoothing``).
  With ``µ = 0`` this is the ε-perplexity of p_θ.

  Why not reweight p_θ samples: p_ε is, token by token, the mixture ``(1 − α) p + α · uniform`` with
  ``α = ε|V| / (1 + ε|V|)`` (:func:`smoothing_mass`). A p_θ sample almost never contains a token the
  uniform part would draw, so the importance estimate ``mean_i (p_ε/p_θ)(x_i) exp(−µᵀf(x_i))`` (unbiased,
  but its mass sits on samples it never sees) comes out ≈ ``(1 − α)^T Ẑ``, q's ε-perplexity ≈ its plain
  perplexity, and the ratio to p_θ's ε-perplexity ≈ the plain ratio / ``(1 + ε|V|)`` whatever µ is. With a
  262k vocabulary and ε = 1e-6, α = 0.21: the "ratio 0.79" the first wiki run printed was this artefact.
  :func:`epsilon_log_ratios` (the importance route) therefore refuses unless the expected number of
  uniform-drawn tokens per continuation, ``α T``, is below :data:`MAX_SMOOTHED_TOKENS`; below it the
  unseen mass moves ``log Ẑ_ε`` by about ``α T`` nats per continuation (if the tilt weighs such texts
  like the others), about ``α`` nats per token.

  Why an ε ladder: sampling p_ε itself is unbiased but can still be hopeless. The tilt ``exp(−µᵀf)``
  falls with every uniform-drawn token (such a token makes the text less fluent and less informative),
  so q_ε's mass sits on samples with far fewer of them than p_ε's ``α T`` on average, out in the lower
  tail of their binomial count: a few samples carry all the weight (on wiki, ε = 1e-6, N = 64: per-prompt
  effective sample size 1.27). :func:`epsilon_ladder_log_ratios` draws instead ``N / R`` samples from each
  of ``R`` smoothings ``p_{ε_r}``, ``ε_r = ε / 2^r`` (:func:`epsilon_ladder`), and weighs every sample by
  ``p_ε(x) / p_mix(x)`` with ``p_mix = mean_r p_{ε_r}`` (the deterministic-mixture, or balance-heuristic,
  estimator of Veach & Guibas 1995 and Owen & Zhou 2000): ``Ẑ_ε = mean_i (p_ε/p_mix)(x_i) exp(−µᵀf(x_i))``
  is unbiased whatever µ is, as long as every rung gets the same share of each group of samples, and
  because p_ε is a rung, ``p_ε / p_mix ≤ R``: no sample's weight can explode. The premise (q_ε's mass
  on samples with fewer uniform tokens) is an empirical claim: the share of the weight each rung holds
  (``studies.daemon.study.weight_summary``'s ``rung_shares``) tests it. On gemma3-270m news it failed
  (the two lowest of four rungs held 1%); on wiki it held in part (ε/2 and ε/4 held 57%), but one sample
  per prompt still carried most of the weight (docs/results/daemon.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy.special import logsumexp

from infodec.daemon import fitting as fit_lib
from infodec.daemon import metrics as metrics_lib
from infodec.daemon import sampling as sampling_lib
from infodec.decoding.engine import StopTokens
from infodec.decoding.scoring import continuation_log_probs
from infodec.eval.stats import clustered_ratio, confidence_interval, kish_ess

# Expected uniform-drawn tokens per continuation above which p_θ samples cannot estimate Ẑ_ε (docstring).
MAX_SMOOTHED_TOKENS = 0.05


@dataclasses.dataclass(frozen=True)
class PerplexityReport:
    """Attributes:
    num_samples: ``N`` samples per prefix behind ``Ẑ``.
    num_tokens: total human tokens ``Σ_j T_j`` (or ``J`` for per-sequence normalisation).
    log_z: ``[J]`` ``log Ẑ(c_j, µ)``; log_q ``[J]`` ``log q_µ(x_j|c_j)``; log_p ``[J]`` ``log p_θ(x_j|c_j)``.
    nll_p, nll_q: mean negative log-likelihood per token under p_θ and q.
    ppl_p, ppl_q: ``exp`` of those.
    weights: ``[J, N]`` each prefix's self-normalised weights ``w_i`` (summing to 1 over its ``N``
      samples): which samples ``Ẑ`` rests on (:attr:`ess` and :attr:`top_weight` summarise them).
    """

    num_samples: int
    num_tokens: float
    log_z: np.ndarray
    log_q: np.ndarray
    log_p: np.ndarray
    nll_p: float
    nll_q: float
    ppl_p: float
    ppl_q: float
    weights: np.ndarray

    @property
    def ess(self) -> np.ndarray:
        """``[J]`` effective sample size ``1 / Σ_i w_i²`` of each prefix's weights, in ``[1, N]``; near 1
        means one sample is ``Ẑ``."""
        return kish_ess(self.weights, axis=1)

    @property
    def top_weight(self) -> np.ndarray:
        """``[J]`` each prefix's largest ``w_i``."""
        return self.weights.max(axis=1)


def perplexity_under_q(
    human_logp_model,
    human_features,
    sample_features,
    mu,
    *,
    num_tokens=None,
    sample_log_ratios=None,
    standardization=None,
) -> PerplexityReport:
    """Human-text perplexity under p_θ and under ``q_µ`` with the ``Ẑ`` estimator (module docstring).

    Args:
      human_logp_model: ``[J]`` ``log p_θ(x_j^human | c_j)`` (summed over tokens).
      human_features: ``[J, K]`` the human continuations' metrics.
      sample_features: ``[J, N, K]`` metrics of ``N`` samples per prefix (from p_θ, or from ``r`` with
        ``sample_log_ratios`` ``[J, N]`` = ``log p_θ − log r``).
      mu: ``[K]`` (raw scale, or standardised with ``standardization``).
      num_tokens: ``[J]`` tokens per human continuation (or a total); None -> per-sequence.
    """
    log_p = np.asarray(human_logp_model, np.float64).reshape(-1)
    hf = np.asarray(human_features, np.float64)
    sf = np.asarray(sample_features, np.float64)
    if hf.ndim != 2 or hf.shape[0] != log_p.shape[0]:
        raise ValueError(f"human_features must be [J={log_p.shape[0]}, K], got {hf.shape}")
    if sf.ndim != 3 or sf.shape[0] != hf.shape[0] or sf.shape[2] != hf.shape[1]:
        raise ValueError(f"sample_features must be [J, N, K] = [{hf.shape[0]}, N, {hf.shape[1]}], got {sf.shape}")
    num = sf.shape[1]
    lw = sampling_lib.log_weights(mu, sf, sample_log_ratios, standardization=standardization)  # [J, N]
    log_z = logsumexp(lw, axis=1) - np.log(num)
    human_lw = sampling_lib.log_weights(mu, hf[:, None, :], standardization=standardization)[:, 0]
    log_q = log_p + human_lw - log_z
    total = float(len(log_p)) if num_tokens is None else float(np.sum(num_tokens))
    nll_p = float(-log_p.sum() / total)
    nll_q = float(-log_q.sum() / total)
    weights = np.exp(lw - (log_z + np.log(num))[:, None])  # self-normalised: log Σ_i w_i = log Ẑ + log N
    return PerplexityReport(
        num_samples=num,
        num_tokens=total,
        log_z=log_z,
        log_q=log_q,
        log_p=log_p,
        nll_p=nll_p,
        nll_q=nll_q,
        ppl_p=float(np.exp(nll_p)),
        ppl_q=float(np.exp(nll_q)),
        weights=weights,
    )


@dataclasses.dataclass(frozen=True)
class Spread:
    """Summary of one number over seeds: mean, std (ddof=1; 0 for one seed), min, max, the values."""

    mean: float
    std: float
    min: float
    max: float
    values: np.ndarray


def spread(values) -> Spread:
    v = np.asarray(values, np.float64).reshape(-1)
    return Spread(
        mean=float(v.mean()),
        std=float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        min=float(v.min()),
        max=float(v.max()),
        values=v,
    )


def perplexity_over_seeds(
    human_logp_model,
    human_features,
    sample_features_per_seed,
    mu,
    *,
    num_tokens=None,
    sample_log_ratios_per_seed=None,
    standardization=None,
) -> tuple[Spread, list[PerplexityReport]]:
    """``ppl_q`` spread over ``S`` independent sample sets ``[S, J, N, K]`` (one per seed)."""
    reports = []
    for s, feats in enumerate(sample_features_per_seed):
        ratios = None if sample_log_ratios_per_seed is None else sample_log_ratios_per_seed[s]
        reports.append(
            perplexity_under_q(
                human_logp_model,
                human_features,
                feats,
                mu,
                num_tokens=num_tokens,
                sample_log_ratios=ratios,
                standardization=standardization,
            )
        )
    return spread([r.ppl_q for r in reports]), reports


def perplexity(
    model,
    params,
    prefixes,
    human_continuations,
    mu,
    metric_names: Sequence[str],
    *,
    num_samples: int,
    max_new_tokens: int,
    key,
    tokenizer=None,
    stop_tokens: StopTokens = ...,
    standardization=None,
    **metric_deps,
) -> PerplexityReport:
    """Human-text perplexity under p_θ and ``q_µ`` with a model: ``log p_θ`` of the human continuations
    (truncated to ``max_new_tokens``) from one full-sequence apply, their metrics, and ``N = num_samples``
    samples per prefix from p_θ (``Temperature(1)``, one shared prefill) for ``Ẑ``. Token-level."""
    names, _, functions, prefix_ids, cont_ids = fit_lib.encode_study_inputs(
        prefixes, human_continuations, metric_names, tokenizer, metric_deps
    )
    tokens, lengths = fit_lib.pad_rows(cont_ids, max_new_tokens)
    prefix, _ = fit_lib.pad_rows(prefix_ids, fill=-1)
    logp, mask = continuation_log_probs(model, params, tokens, lengths, prefix)
    human = np.asarray(metrics_lib.compute_with(functions, tokens, lengths, prefix), np.float64)
    _, feats, _ = fit_lib.draw_candidates(
        model,
        params,
        prefix_ids,
        names,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        key=key,
        tokenizer=tokenizer,
        stop_tokens=stop_tokens,
        functions=functions,
    )
    return perplexity_under_q(logp.sum(1), human, feats, mu, num_tokens=mask.sum(1), standardization=standardization)


# --- uncertainty over human texts, the 1/N bias of log Ẑ, the ε-perplexity ----------------------------


def paired_log_perplexity_ci(log_p, log_q, num_tokens, clusters=None, *, level: float = 0.95) -> dict[str, float]:
    """The token-level log-perplexity difference ``Δ = log ppl(q) − log ppl(p_θ) = Σ_j (log p_j − log q_j)
    / Σ_j T_j`` over the same ``J`` human texts, with its cluster-robust SE (``eval.stats.clustered_ratio``:
    texts of one document share a cluster) and a ``level`` t interval on ``G − 1`` degrees of freedom.

    Args:
      log_p, log_q: ``[J]`` summed log-probabilities of each human text under p_θ and q (e.g.
        ``PerplexityReport.log_p`` / ``.log_q``).
      num_tokens: ``[J]`` tokens per text.
      clusters: ``[J]`` document labels (None: every text its own cluster).

    Returns ``{"log_ppl_difference", "se", "low", "high", "ppl_ratio", "ppl_ratio_low", "ppl_ratio_high",
    "level", "dof", "n", "clusters"}``; ``ppl_ratio = ppl(q) / ppl(p_θ) = exp(Δ)`` and its bounds are the
    exponentiated bounds of ``Δ`` (below 1: q gives the human texts higher likelihood).
    """
    lp = np.asarray(log_p, np.float64).reshape(-1)
    lq = np.asarray(log_q, np.float64).reshape(-1)
    tokens = np.asarray(num_tokens, np.float64).reshape(-1)
    if not (lp.shape == lq.shape == tokens.shape):
        raise ValueError(f"log_p, log_q and num_tokens must all be [J], got {lp.shape}, {lq.shape}, {tokens.shape}")
    est = clustered_ratio(lp - lq, tokens, clusters)
    ci = confidence_interval(est["ratio"], est["se"], int(est["clusters"]), level=level)
    return {
        "log_ppl_difference": est["ratio"],
        "se": est["se"],
        "low": ci["low"],
        "high": ci["high"],
        "ppl_ratio": float(np.exp(est["ratio"])),
        "ppl_ratio_low": float(np.exp(ci["low"])),
        "ppl_ratio_high": float(np.exp(ci["high"])),
        "level": level,
        "dof": ci["dof"],
        "n": est["n"],
        "clusters": est["clusters"],
    }


def fit_inverse_n(sizes, values) -> tuple[float, float]:
    """Least-squares ``(a, b)`` of ``values ≈ a + b / sizes`` (``a``: the ``N → ∞`` extrapolation, ``b``:
    the leading bias coefficient). Needs at least two distinct sizes."""
    n = np.asarray(sizes, np.float64).reshape(-1)
    v = np.asarray(values, np.float64).reshape(-1)
    if n.shape != v.shape or len(np.unique(n)) < 2 or np.any(n <= 0):
        raise ValueError(f"fit_inverse_n needs matching values at >= 2 distinct positive sizes, got {n} and {v}")
    design = np.stack([np.ones_like(n), 1.0 / n], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, v, rcond=None)
    return float(a), float(b)


@dataclasses.dataclass(frozen=True)
class NSweep:
    """``nll_q`` (per-token NLL of the human texts under q) against the number ``N`` of samples behind ``Ẑ``.

    Attributes:
      sizes: ``[S]`` the ``N`` values, ascending; groups: ``[S]`` disjoint groups of that size averaged.
      nll_q: ``[S]`` the mean over the groups of each group's ``nll_q``; nll_p: under p_θ (no ``Ẑ``).
      intercept, slope: :func:`fit_inverse_n` of ``nll_q`` on ``sizes``: ``nll_q(∞) ≈ intercept``.
      bias_at_largest: ``slope / max(sizes)``, the estimated ``E[nll_q(N_max)] − nll_q(∞)`` (negative:
        a finite ``N`` makes q look better).
      ppl_q_extrapolated: ``exp(intercept)``.
    """

    sizes: np.ndarray
    groups: np.ndarray
    nll_q: np.ndarray
    nll_p: float
    intercept: float
    slope: float
    bias_at_largest: float
    ppl_q_extrapolated: float

    def to_json(self) -> dict:
        return {
            "sizes": self.sizes.tolist(),
            "groups": self.groups.tolist(),
            "nll_q": self.nll_q.tolist(),
            "nll_p": self.nll_p,
            "intercept": self.intercept,
            "slope": self.slope,
            "bias_at_largest": self.bias_at_largest,
            "ppl_q_extrapolated": self.ppl_q_extrapolated,
        }


def default_sweep_sizes(num_samples: int, steps: int = 4) -> tuple[int, ...]:
    """``N, N/2, N/4, ...`` (``steps`` values at least 1, ascending, distinct): ``200 -> (25, 50, 100, 200)``."""
    if num_samples < 2:
        raise ValueError(f"an N sweep needs num_samples >= 2, got {num_samples}")
    return tuple(sorted({max(1, num_samples >> i) for i in range(steps)}))


def n_sweep(
    human_logp_model,
    human_features,
    sample_features,
    mu,
    *,
    sizes: Sequence[int] | None = None,
    num_tokens=None,
    sample_log_ratios=None,
    standardization=None,
) -> NSweep:
    """:func:`perplexity_under_q`'s ``nll_q`` at each ``N`` in ``sizes`` (default
    :func:`default_sweep_sizes`), each the mean over the ``N_max // N`` disjoint groups of ``N`` of the
    ``N_max`` samples per prefix in ``sample_features [J, N_max, K]`` (``sample_log_ratios [J, N_max]``), and
    the ``a + b / N`` fit. Arguments otherwise as :func:`perplexity_under_q`."""
    sf = np.asarray(sample_features, np.float64)
    if sf.ndim != 3:
        raise ValueError(f"sample_features must be [J, N, K], got {sf.shape}")
    total = sf.shape[1]
    sizes = tuple(sorted(int(n) for n in (default_sweep_sizes(total) if sizes is None else sizes)))
    if not sizes or sizes[0] < 1 or sizes[-1] > total:
        raise ValueError(f"sizes must lie in [1, {total}] (the samples per prefix), got {list(sizes)}")
    rho = None if sample_log_ratios is None else np.asarray(sample_log_ratios, np.float64)
    nll_q, groups, nll_p = [], [], float("nan")
    for size in sizes:
        count = total // size
        values = []
        for g in range(count):
            part = slice(g * size, (g + 1) * size)
            report = perplexity_under_q(
                human_logp_model,
                human_features,
                sf[:, part],
                mu,
                num_tokens=num_tokens,
                sample_log_ratios=None if rho is None else rho[:, part],
                standardization=standardization,
            )
            values.append(report.nll_q)
            nll_p = report.nll_p
        nll_q.append(float(np.mean(values)))
        groups.append(count)
    intercept, slope = fit_inverse_n(sizes, nll_q)
    return NSweep(
        sizes=np.asarray(sizes),
        groups=np.asarray(groups),
        nll_q=np.asarray(nll_q),
        nll_p=nll_p,
        intercept=intercept,
        slope=slope,
        bias_at_largest=slope / sizes[-1],
        ppl_q_extrapolated=float(np.exp(intercept)),
    )


@dataclasses.dataclass(frozen=True)
class DoublingCheck:
    """Whether an N sweep behaves as the ``a + b / N`` fit assumes (:func:`doubling_check`).

    Attributes:
      increments: ``[S - 1]`` ``nll_q(2N) − nll_q(N)`` along the sweep, nats/token.
      decay: the increments' mean factor per doubling (geometric mean of successive ratios): 1/2 when
        the bias is ``b / N``, 1 when ``nll_q`` grows like ``log N`` (heavy-tailed weights: Ẑ not converged).
      tail: ``increments[-1] · decay / (1 − decay)``, the further rise of ``nll_q`` if the increments keep
        shrinking by ``decay`` per doubling (``inf`` when ``decay >= 1``); for an exact ``b / N`` bias it
        is ``−b / N_max``, the fit's own bias.
    """

    increments: np.ndarray
    decay: float
    tail: float


def doubling_check(sizes, nll_q) -> DoublingCheck | None:
    """Test the ``1/N`` form of an N sweep (``sizes`` doubling, :func:`default_sweep_sizes`) from its
    increments: :class:`DoublingCheck`, or None with fewer than three sizes or an increment that is not
    positive (``E[log Ẑ_N]`` rises with ``N``; a fall means Monte Carlo noise dominates the sweep).

    Why: the ``a + b / N`` fit always returns an intercept, even when ``log Ẑ_N`` is far from converged; a
    sweep whose increments do not halve per doubling is outside the fit's regime, and the intercept then
    understates the bias."""
    n = np.asarray(sizes, np.float64).reshape(-1)
    v = np.asarray(nll_q, np.float64).reshape(-1)
    if n.shape != v.shape or np.any(n[1:] != 2 * n[:-1]):
        raise ValueError(f"doubling_check needs sizes that double and one nll_q per size, got {n} and {v}")
    increments = np.diff(v)
    if len(increments) < 2 or np.any(increments <= 0):
        return None
    decay = float((increments[-1] / increments[0]) ** (1.0 / (len(increments) - 1)))
    tail = float(increments[-1] * decay / (1.0 - decay)) if decay < 1 else float("inf")
    return DoublingCheck(increments=increments, decay=decay, tail=tail)


def epsilon_log_probs(token_log_probs, mask, *, epsilon: float, vocab_size: int) -> np.ndarray:
    """``[..., ]`` per-row ``Σ_t log p_ε(x_t)`` with ``p_ε = (p + ε) / (1 + ε |V|)`` (module docstring) over the
    real tokens (``mask``) of ``token_log_probs [..., L]``."""
    _check_smoothing(epsilon, vocab_size)
    logp = np.asarray(token_log_probs, np.float64)
    m = np.asarray(mask, bool)
    if logp.shape != m.shape:
        raise ValueError(f"token_log_probs and mask must have one shape, got {logp.shape} and {m.shape}")
    # log(p + ε) as logaddexp(log p, log ε): exact for p = 0 (log p = -inf) and for tiny ε
    smoothed = np.logaddexp(logp, np.log(epsilon)) if epsilon > 0 else logp
    return np.where(m, smoothed - np.log1p(epsilon * vocab_size), 0.0).sum(-1)


def epsilon_perplexity(token_log_probs, mask, *, epsilon: float, vocab_size: int) -> float:
    """Martins et al. (2020)'s ε-perplexity ``exp(−Σ_t log p_ε(x_t) / T)`` over every real token of
    ``token_log_probs [B, L]`` (``mask [B, L]``); ``ε = 0`` is the plain token-level perplexity."""
    total = float(np.asarray(mask, bool).sum())
    if total == 0:
        raise ValueError("epsilon_perplexity needs at least one token")
    return float(
        np.exp(-epsilon_log_probs(token_log_probs, mask, epsilon=epsilon, vocab_size=vocab_size).sum() / total)
    )


def smoothing_mass(epsilon: float, vocab_size: int) -> float:
    """``α = ε|V| / (1 + ε|V|)``: the per-token probability with which p_ε draws from its uniform part."""
    _check_smoothing(epsilon, vocab_size)
    return epsilon * vocab_size / (1.0 + epsilon * vocab_size)


def _check_smoothing(epsilon: float, vocab_size: int) -> None:
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")


def epsilon_log_ratios(token_log_probs, mask, *, epsilon: float, vocab_size: int) -> np.ndarray:
    """Per row ``log p_ε(x) − log p_θ(x)`` of samples from p_θ (``token_log_probs [..., L]`` their per-token
    ``log p_θ``): the importance ratios that turn p_θ samples into an estimate of ``Ẑ_ε`` for ``q_ε``.
    Pass as ``perplexity_under_q``'s ``sample_log_ratios`` (added to any proposal's). Raises when
    ``α T`` (:func:`smoothing_mass` times the longest row's tokens) exceeds :data:`MAX_SMOOTHED_TOKENS`,
    where the estimate misses p_ε's uniform part (module docstring): sample p_ε instead."""
    tokens = int(np.asarray(mask, bool).sum(-1).max(initial=0))
    expected = smoothing_mass(epsilon, vocab_size) * tokens
    if expected > MAX_SMOOTHED_TOKENS:
        raise ValueError(
            f"epsilon = {epsilon:g} with {vocab_size} tokens and {tokens}-token rows expects {expected:.3g} "
            f"uniform-drawn tokens per row (allowed: <= {MAX_SMOOTHED_TOKENS}); p_θ samples cannot estimate "
            "Ẑ_ε then: draw the samples from infodec.EpsilonSmoothing(epsilon) and pass no ratios"
        )
    raw = np.where(np.asarray(mask, bool), np.asarray(token_log_probs, np.float64), 0.0).sum(-1)
    return epsilon_log_probs(token_log_probs, mask, epsilon=epsilon, vocab_size=vocab_size) - raw


def epsilon_ladder(epsilon: float, rungs: int) -> tuple[float, ...]:
    """``(ε, ε/2, ..., ε/2^(rungs−1))``: the smoothings :func:`epsilon_ladder_log_ratios` mixes (module
    docstring). Halving ε roughly halves the expected uniform-drawn tokens ``α T``, so the rungs span q_ε's
    count of them from p_ε's down to ``2^(1−rungs)`` of it."""
    if rungs < 1:
        raise ValueError(f"an ε ladder needs rungs >= 1, got {rungs}")
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    return tuple(epsilon / 2**r for r in range(rungs))


def epsilon_ladder_log_ratios(token_log_probs, mask, *, ladder: Sequence[float], vocab_size: int) -> np.ndarray:
    """Per row ``log p_ε(x) − log p_mix(x)``, ``ε = ladder[0]`` and ``p_mix = mean_r p_{ladder[r]}``, of
    samples drawn in equal numbers from each ``p_{ladder[r]}`` (``infodec.EpsilonSmoothing``; module
    docstring); ``token_log_probs [..., L]`` their per-token ``log p_θ`` and ``mask`` their real tokens. Pass
    as ``perplexity_under_q``'s ``sample_log_ratios``: every group of samples averaged (``n_sweep``'s too)
    must hold each rung equally often. Each value is at most ``log len(ladder)``."""
    ladder = tuple(float(e) for e in ladder)
    if not ladder or any(not 0 < e < 1 for e in ladder):
        raise ValueError(f"ladder must be a non-empty sequence of smoothings in (0, 1), got {ladder}")
    per_rung = np.stack(
        [epsilon_log_probs(token_log_probs, mask, epsilon=e, vocab_size=vocab_size) for e in ladder]
    )  # [R, ...]
    return per_rung[0] - (logsumexp(per_rung, axis=0) - np.log(len(ladder)))
