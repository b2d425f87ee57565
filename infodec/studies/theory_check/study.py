"""The theory check: the exact DP against closed forms, myopic decoders and samples.

``python -m experiments.theory`` is a thin launcher over :func:`run_report`. For several random tiny
models (a 2-layer Llama over ``V ≤ 8`` tokens with random weights, one per seed, a random prompt and a
random evidence span, so every tree has two streams and a PMI) and several value functions
(``β, γ, λ`` settings, a random terminal reward, the PMI between the streams as the score), it checks
(``docs/math.md §1``; ``infodec.theory.dp`` for the mathematics):

``closed-form``
  At horizon 1 the DP's policy equals each one-step closed form: ``Temperature``,
  ``ClassifierFreeGuidance``, ``KLGuidedTemperature`` (with ``T(s)`` recomputed here from ``docs/math.md §2``),
  classifier guidance as a ``ValuePolicy`` over a discriminator table and the real ``ClassifierGuidance``
  head, ``ValuePolicy(β, γ, λ, PMI)`` for each setting and ``Greedy`` (the hard limit). Metric: the
  largest absolute difference of the next-token probabilities, ``max |Δπ|``.
``dp-vs-enumeration``
  ``solve``'s root value and law equal the Gibbs optimum ``τ·logsumexp_y(U(y)/τ)`` found by enumerating
  every sequence (no recursion).
``dp-vs-myopic``
  ``V(root) = max J ≥ J(decoder)`` for every myopic decoder (``sequence_objective``, exact), with the
  gaps; with a terminal reward the matching closed form is strictly worse.
``exact-case``
  The cases where myopic decoding is exactly optimal: no reward with ``γ = 0``, CFG with ``w = 0``,
  reward = change of model, a context-free model, horizon 1, the last step, and classifier guidance
  with the exact prefix discriminator ``P(c | s ⊕ a)`` (computed here by brute-force marginalisation)
  for the terminal reward ``log P(c | y)``.
``chi-square``
  ``infodec.generate`` on the same tiny model (real engine: KV cache, two streams, sampler) against the
  policy's exact sequence law, Pearson's test with pooled cells; and a power check: the same samples
  against the sequence-level optimum of the same objective, a different law, must be rejected.

Every check is one point of a resumable ``ResultsFolder``; the report (``report.write_files``) is
``report.md``, ``checks.csv``, ``gaps.csv`` and ``theory.png`` in the folder. Thresholds are
``config.TOLERANCES`` and ``config.ALPHA``.

    report = run_report(ReportConfig(num_models=3, vocab=6, horizon=3), "results/theory_check")
    report.passed, report.records, report.markdown_path
"""

from __future__ import annotations

import dataclasses
import functools
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from infodec.decoding import generate
from infodec.models import llama
from infodec.policies import (
    PMI,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    FunctionScore,
    Greedy,
    KLGuidedTemperature,
    Temperature,
    TopK,
    TopP,
    ValuePolicy,
    chain,
)
from infodec.policies.base import StepInfo
from infodec.policies.guidance import discriminator_logits, init_discriminator
from infodec.results import ResultsFolder
from infodec.studies.theory_check.config import (
    ALPHA,
    EVIDENCE_TOKENS,
    MIN_POWER,
    PROMPT_TOKENS,
    TERMINAL_SCALE,
    TOLERANCES,
    ReportConfig,
)
from infodec.studies.theory_check.report import Report, write_files
from infodec.theory.dp import myopic, policy_distribution, policy_tables, sequence_objective, sequence_optimum, solve
from infodec.theory.stats import chi_square
from infodec.theory.tree import PrefixTree, log_softmax, logsumexp, prefix_log_probs

# --- value functions and decoders -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    """One value function ``J = E[Σ λ·PMI + R] − β·KL + γ·H``; ``terminal``: with the random ``R``."""

    name: str
    beta: float
    gamma: float
    lam: float = 0.0
    terminal: bool = False

    def kwargs(self, terminal_reward=None) -> dict:
        """Keyword arguments of ``solve`` / ``sequence_objective`` for this setting."""
        return dict(
            beta=self.beta,
            gamma=self.gamma,
            lam=self.lam,
            score="pmi" if self.lam else None,
            terminal_reward=terminal_reward if self.terminal else None,
        )

    def closed_form(self) -> ValuePolicy:
        """The myopic decoder of this setting: ``ValuePolicy(β, γ, λ, PMI)`` (the terminal reward unseen)."""
        return ValuePolicy(self.beta, self.gamma, self.lam, PMI() if self.lam else None)


SETTINGS = (
    Setting("temperature-0.7", 1.0, -0.3),
    Setting("pmi", 1.0, 0.3, 0.8),
    Setting("beta0.6-gamma0.9-lam-0.5", 0.6, 0.9, -0.5),
    Setting("terminal", 1.0, 0.0, 0.0, terminal=True),
    Setting("pmi+terminal", 1.0, 0.3, 0.8, terminal=True),
    Setting("cfg-2+terminal", 1.0, 0.0, 1.0, terminal=True),
)
SMOKE_SETTINGS = ("pmi", "pmi+terminal")


def myopic_decoders(setting: Setting) -> dict[str, Any]:
    """The per-step decoders scored on the sequence objective: none sees ``V(s ⊕ a)`` or ``R``."""
    return {
        "closed-form": setting.closed_form(),
        "greedy": Greedy(),
        **{f"temperature-{t:g}": Temperature(t) for t in (0.7, 1.0, 1.3)},
        "top-k-2": TopK(2),
        "top-p-0.8": TopP(0.8),
        "cfg-1.5": ClassifierFreeGuidance(1.5),
        "kl-guided": KLGuidedTemperature(t0=1.0, half_life=1.0),
    }


def chi_square_policies(smoke: bool) -> dict[str, Any]:
    """Policies whose ``generate`` samples are tested against their exact law (two-stream ones get the
    evidence)."""
    policies = {
        "cfg-1.5": ClassifierFreeGuidance(1.5),
        "temperature-0.8": Temperature(0.8),
        "temperature-0.9+top-k-3": chain(Temperature(0.9), TopK(3)),
        "kl-guided": KLGuidedTemperature(t0=1.0, half_life=1.0),
        "value-pmi": ValuePolicy(1.0, 0.3, 0.8, PMI()),
    }
    return {k: policies[k] for k in ("cfg-1.5", "temperature-0.8")} if smoke else policies


# --- the random tiny models -------------------------------------------------------------------------


def tiny_model(vocab: int, seed: int, scale: float = 2.5):
    """``(model, params)``: a 2-layer Llama over ``vocab`` tokens with random weights (``seed``), its
    embeddings and head scaled by ``scale`` so that next-token distributions are far from uniform and
    depend on the context."""
    cfg = llama.LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        rms_norm_eps=1e-5,
        rope_theta=1e4,
        max_position_embeddings=64,
    )
    model = llama.build(cfg)
    tokens = jnp.zeros((1, 4), jnp.int32)
    params = dict(jax.jit(model.module(cfg).init)(jax.random.key(seed), tokens, jnp.arange(4)[None], None)["params"])
    params["embed_tokens"] = {"embedding": params["embed_tokens"]["embedding"] * scale}
    params["lm_head"] = {"kernel": params["lm_head"]["kernel"] * scale}
    return model, params


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One random tiny model with its prompt, evidence, terminal reward and exact prefix trees."""

    index: int
    seed: int
    model: Any
    params: Any
    prompt: list[int]
    evidence: list[int]
    tree: PrefixTree  # horizon H, two streams (evidence + prompt, prompt alone)
    root: PrefixTree  # horizon 1, the same streams
    terminal: np.ndarray  # (V,)*H, R(y)

    @classmethod
    def build(cls, config: ReportConfig, index: int) -> Case:
        seed = config.seed + index
        rng = np.random.default_rng([seed, 1])
        model, params = tiny_model(config.vocab, seed)
        prompt = rng.integers(0, config.vocab, PROMPT_TOKENS).tolist()
        evidence = rng.integers(0, config.vocab, EVIDENCE_TOKENS).tolist()
        tree = prefix_log_probs(model, params, prompt, config.horizon, evidence_tokens=evidence)
        root = prefix_log_probs(model, params, prompt, 1, evidence_tokens=evidence)
        terminal = TERMINAL_SCALE * rng.standard_normal((config.vocab,) * config.horizon)
        return cls(index, seed, model, params, prompt, evidence, tree, root, terminal)


# --- the checks -------------------------------------------------------------------------------------


def max_prob_diff(log_a, log_b) -> float:
    """``max |exp(a) − exp(b)|`` over all entries (probabilities, so masked ``-inf`` entries compare as 0)."""
    return float(np.max(np.abs(np.exp(np.asarray(log_a, np.float64)) - np.exp(np.asarray(log_b, np.float64)))))


def _max_table_diff(tables_a, tables_b) -> float:
    return max(max_prob_diff(a, b) for a, b in zip(tables_a, tables_b))


def _record(kind: str, model: int, name: str, passed: bool, summary: str, **values) -> dict:
    return {"kind": kind, "model": model, "name": name, "passed": bool(passed), "summary": summary, **values}


def _diff_record(kind: str, case: Case, name: str, diff: float, tol: float, what: str, **extra) -> dict:
    return _record(
        kind,
        case.index,
        name,
        diff <= tol,
        f"max |Δπ| = {diff:.2e} (tol {tol:g}); {what}",
        max_abs_diff=diff,
        tolerance=tol,
        **extra,
    )


def kl_guided_temperature(logits: np.ndarray, t0: float, half_life: float) -> float:
    """``docs/math.md §2``, in float64 (independent of the policy's code): ``T = t0·2^(−KL/h)`` with the KL of the
    clipped, unrenormalised softmaxes of the two streams ``logits[2, V]``."""
    p = np.clip(np.exp(log_softmax(logits[0])), 1e-7, 1.0)
    q = np.clip(np.exp(log_softmax(logits[1])), 1e-7, 1.0)
    kl = max(0.0, float(np.sum(p * (np.log(p) - np.log(q)))))
    return t0 * 2.0 ** (-kl / half_life) if half_life > 0 else t0


def closed_form_checks(smoke: bool) -> list[tuple[str, Callable[[Case], dict]]]:
    """Horizon 1: every one-step closed form against ``solve`` on the root (one point each)."""

    def versus(label, policy, **kw):
        def check(case):
            diff = max_prob_diff(policy_distribution(case.root, policy), solve(case.root, **kw).log_seq_probs)
            return _diff_record("closed-form", case, label, diff, TOLERANCES["policy_float32"], f"vs solve({_kw(kw)})")

        return label, check

    checks = [versus(f"temperature-{t:g}", Temperature(t), gamma=t - 1) for t in (0.5, 1.5)]
    checks += [
        versus(f"cfg-{w:g}", ClassifierFreeGuidance(w), lam=w - 1, score="pmi")
        for w in ((0.0, 2.0) if smoke else (0.0, 0.5, 2.0, 3.0))
    ]
    checks += [("kl-guided", _kl_guided_check), ("classifier-guidance-table", _classifier_table_check)]
    if not smoke:
        checks.append(("classifier-guidance-head", _classifier_head_check))
    checks += [versus(f"value-{s.name}", s.closed_form(), **s.kwargs()) for s in _settings(smoke) if not s.terminal]
    checks.append(versus("greedy", Greedy(), hard=True))
    return [(f"closed-form/{name}", fn) for name, fn in checks]


def _kl_guided_check(case: Case) -> dict:
    """Untruncated ``KLGuidedTemperature(1.2, 0.5)`` vs ``solve(γ = T(s) − 1)``, ``T(s)`` from
    ``docs/math.md §2``."""
    t = kl_guided_temperature(case.root.logits[0].astype(np.float64), 1.2, 0.5)
    diff = max_prob_diff(
        policy_distribution(case.root, KLGuidedTemperature(1.2, 0.5)), solve(case.root, gamma=t - 1).log_seq_probs
    )
    return _diff_record(
        "closed-form",
        case,
        "kl-guided",
        diff,
        TOLERANCES["policy_float32"],
        f"vs solve(gamma=T(s)-1), T(s) = {t:.4f} recomputed in float64",
        temperature=t,
    )


def _kw(kw: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items() if v is not None)


def _classifier_table_check(case: Case) -> dict:
    """Classifier guidance ``π ∝ P_G·P_D^λ`` as ``ValuePolicy(1, 0, λ, g = log P_D(c | s, a))`` with a
    random discriminator table over 3 classes, against ``solve`` with the same table as score."""
    tree, lam, target = case.root, 2.0, 1
    disc = np.random.default_rng([case.seed, 2]).standard_normal((tree.vocab, 3)) * 2.0
    g = log_softmax(disc)[:, target]  # log P_D(target | s, a) for each candidate a
    g32 = jnp.asarray(g, jnp.float32)
    score = FunctionScore(lambda log_probs, step: jnp.broadcast_to(g32, log_probs.shape[:1] + g32.shape))
    diff = max_prob_diff(
        policy_distribution(tree, ValuePolicy(1.0, 0.0, lam, score)), solve(tree, lam=lam, score=[g]).log_seq_probs
    )
    return _diff_record(
        "closed-form",
        case,
        "classifier-guidance-table",
        diff,
        TOLERANCES["policy_float32"],
        "ValuePolicy(1, 0, 2, log P_D table) vs solve(lam=2, score=[log P_D])",
    )


def _classifier_head_check(case: Case) -> dict:
    """The real ``ClassifierGuidance`` policy (a random ``TopicDiscriminator`` head, ``top_k = V`` so no
    token is masked, a random hidden state) against ``solve`` with ``g`` = the head's log P_D(target)."""
    tree, lam, target, topics, hidden_dim = case.root, 1.5, 0, 3, 8
    key_head, key_emb, key_h = jax.random.split(jax.random.key(case.seed), 3)
    width = 16
    head = init_discriminator(key_head, width, topics, hidden_dim)
    embeddings = jax.random.normal(key_emb, (tree.vocab, width))
    hidden = jax.random.normal(key_h, (1, width))
    policy = ClassifierGuidance(
        head, embeddings, target=target, scale=lam, top_k=tree.vocab, num_topics=topics, hidden_dim=hidden_dim
    )
    step = StepInfo(jnp.zeros((1, 1), jnp.int32), jnp.int32(0), hidden=hidden)
    log_pi = np.asarray(policy(jnp.asarray(tree.flat_logits(0)), step)[0][0], np.float64)
    logits = np.asarray(discriminator_logits(head, hidden, embeddings[None], topics, hidden_dim), np.float64)[0]
    g = log_softmax(logits)[:, target]
    diff = max_prob_diff(log_softmax(log_pi), solve(tree, lam=lam, score=[g]).log_seq_probs)
    return _diff_record(
        "closed-form",
        case,
        "classifier-guidance-head",
        diff,
        TOLERANCES["policy_float32"],
        "ClassifierGuidance(head, scale=1.5, top_k=V) vs solve(lam=1.5, score=[log P_D])",
    )


def optimum_checks(smoke: bool) -> list[tuple[str, Callable[[Case], dict]]]:
    """Per setting: the DP against the enumerated Gibbs optimum, and against every myopic decoder."""
    checks = []
    for setting in _settings(smoke):
        checks.append((f"dp-vs-enumeration/{setting.name}", functools.partial(_enumeration_check, setting=setting)))
        checks.append((f"dp-vs-myopic/{setting.name}", functools.partial(_myopic_check, setting=setting)))
    return checks


def _settings(smoke: bool) -> list[Setting]:
    return [s for s in SETTINGS if not smoke or s.name in SMOKE_SETTINGS]


def _enumeration_check(case: Case, setting: Setting) -> dict:
    kw = setting.kwargs(case.terminal)
    sol = solve(case.tree, **kw)
    log_q, value = sequence_optimum(case.tree, **kw)
    diff, value_diff = max_prob_diff(sol.log_seq_probs, log_q), abs(sol.value - value)
    j_star = sequence_objective(case.tree, sol, **kw)
    tol = TOLERANCES["float64"]
    worst = max(diff, value_diff, abs(j_star - sol.value))
    return _record(
        "dp-vs-enumeration",
        case.index,
        setting.name,
        worst <= tol,
        f"V(root) = {sol.value:.6f}, Gibbs optimum {value:.6f}, J(π*) = {j_star:.6f}; "
        f"max |Δq| = {diff:.1e} (tol {tol:g})",
        max_abs_diff=diff,
        value=sol.value,
        enumerated_value=value,
        value_diff=value_diff,
        objective_of_dp=j_star,
        tolerance=tol,
    )


def _myopic_check(case: Case, setting: Setting) -> dict:
    kw = setting.kwargs(case.terminal)
    value = solve(case.tree, **kw).value
    gaps = {
        name: value - sequence_objective(case.tree, policy, **kw) for name, policy in myopic_decoders(setting).items()
    }
    worst = min(gaps, key=gaps.__getitem__)
    passed = gaps[worst] >= -TOLERANCES["float64"]
    note = ""
    if setting.terminal:  # the terminal reward is invisible to the closed form: strictly suboptimal
        passed = passed and gaps["closed-form"] > TOLERANCES["strict_gap"]
        note = f"; strict for the closed form (> {TOLERANCES['strict_gap']:g})"
    return _record(
        "dp-vs-myopic",
        case.index,
        setting.name,
        passed,
        f"V(root) = {value:.4f}; gap to closed form {gaps['closed-form']:.4f}, smallest gap "
        f"{gaps[worst]:.4f} ({worst}); all ≥ 0{note}",
        value=value,
        gaps=gaps,
        min_gap=gaps[worst],
        min_gap_decoder=worst,
        closed_form_gap=gaps["closed-form"],
    )


def context_free_tree(tree: PrefixTree) -> PrefixTree:
    """The tree's first-token path made context-free: at every depth the logits of the all-zeros prefix,
    for every prefix (both streams), so ``P_G(·|s)`` and the PMI depend on the depth only."""
    logits = [np.broadcast_to(x[(0,) * t], x.shape) for t, x in enumerate(tree.logits)]
    return PrefixTree(tuple(logits), context=tree.context)


def exact_fudge_scores(tree: PrefixTree, log_likelihood: np.ndarray) -> list[np.ndarray]:
    """``log P(c | s ⊕ a)`` at every state by brute-force marginalisation over completions:
    ``P(c | z) = Σ_{y ⊇ z} P_G(y) P(c|y) / Σ_{y ⊇ z} P_G(y)`` for every prefix ``z`` of depth ``t + 1``
    (sums over the trailing axes of ``(V,)*H`` tables; no recursion)."""
    joint = tree.sequence_log_model() + log_likelihood
    marginal = tree.sequence_log_model()
    out = []
    for t in range(tree.horizon):
        axes = tuple(range(t + 1, tree.horizon))
        if axes:
            out.append(logsumexp(joint, axis=axes) - logsumexp(marginal, axis=axes))
        else:
            out.append(log_likelihood.copy())
    return out


def _exact(case: Case, name: str, tree: PrefixTree, policy=None, expected_value=None, **kw) -> dict:
    """``solve`` vs ``myopic`` (float64) at every state and their objectives; optionally an infodec policy's
    law, and the expected root value."""
    sol = solve(tree, **kw)
    mine = myopic(tree, **{k: v for k, v in kw.items() if k != "terminal_reward"})
    diff = _max_table_diff(sol.log_policy, mine.log_policy)
    objective_diff = abs(sequence_objective(tree, mine, **kw) - sol.value)
    worst, tol = max(diff, objective_diff), TOLERANCES["float64"]
    parts = [f"max |Δπ| solve vs myopic = {diff:.1e}, |J(myopic) − V| = {objective_diff:.1e} (tol {tol:g})"]
    passed = worst <= tol
    extra = {}
    if expected_value is not None:
        extra["value_diff"] = abs(sol.value - expected_value)
        passed = passed and extra["value_diff"] <= tol
        parts.append(f"V(root) = {sol.value:.2e} (expected {expected_value:g})")
    if policy is not None:
        extra["policy_diff"] = _max_table_diff(policy_tables(tree, policy), sol.log_policy)
        passed = passed and extra["policy_diff"] <= TOLERANCES["policy_float32"]
        parts.append(
            f"{type(policy).__name__} vs π*: {extra['policy_diff']:.1e} (tol {TOLERANCES['policy_float32']:g})"
        )
    return _record(
        "exact-case",
        case.index,
        name,
        passed,
        "; ".join(parts),
        max_abs_diff=diff,
        objective_diff=objective_diff,
        tolerance=tol,
        value=sol.value,
        **extra,
    )


def exact_case_checks(smoke: bool) -> list[tuple[str, Callable[[Case], dict]]]:
    """The documented cases where myopic decoding is exactly optimal (``infodec.theory.dp``)."""
    checks = [
        (
            "no-reward-gamma0",
            lambda case: _exact(
                case, "no-reward-gamma0", case.tree, policy=Temperature(1.0), expected_value=0.0, beta=1.7, gamma=0.0
            ),
        ),
        (
            "cfg-0",
            lambda case: _exact(
                case,
                "cfg-0",
                case.tree,
                policy=ClassifierFreeGuidance(0.0),
                expected_value=0.0,
                beta=1.0,
                gamma=0.0,
                lam=-1.0,
                score="pmi",
            ),
        ),
        ("change-of-model", _change_of_model_check),
        ("classifier-guidance-exact-discriminator", _exact_discriminator_check),
        ("last-step", _last_step_check),
    ]
    for beta, gamma, lam in [(1.0, -0.4, 0.0), (1.0, 0.0, 1.5)] + ([] if smoke else [(0.5, 0.9, -0.6)]):
        name = f"context-free-b{beta:g}-g{gamma:g}-l{lam:g}"
        checks.append(
            (
                name,
                lambda case, name=name, beta=beta, gamma=gamma, lam=lam: _exact(
                    case,
                    name,
                    context_free_tree(case.tree),
                    beta=beta,
                    gamma=gamma,
                    lam=lam,
                    score="pmi" if lam else None,
                ),
            )
        )
    checks.append(
        ("horizon-1", lambda case: _exact(case, "horizon-1", case.root, beta=1.0, gamma=0.7, lam=2.0, score="pmi"))
    )
    return [(f"exact-case/{name}", fn) for name, fn in checks]


def _change_of_model_check(case: Case) -> dict:
    """``r = τ log Q − β log P_G`` with ``Q`` = the evidence-free stream at temperature 1.3 (an
    autoregressive model): ``π* = myopic = Q`` and ``V ≡ 0``."""
    tree, beta, gamma = case.tree, 1.3, 0.4
    q = [log_softmax(tree.logits[t][..., 1, :].astype(np.float64) / 1.3) for t in range(tree.horizon)]
    score = [(beta + gamma) * q[t] - beta * tree.log_model(t) for t in range(tree.horizon)]
    record = _exact(case, "change-of-model", tree, expected_value=0.0, beta=beta, gamma=gamma, lam=1.0, score=score)
    record["q_diff"] = _max_table_diff(solve(tree, beta=beta, gamma=gamma, lam=1.0, score=score).log_policy, q)
    record["passed"] = record["passed"] and record["q_diff"] <= TOLERANCES["float64"]
    record["summary"] += f"; π* vs Q: {record['q_diff']:.1e}"
    return record


def _exact_discriminator_check(case: Case) -> dict:
    """Classifier guidance with the exact discriminator is the DP: for a random attribute classifier
    ``P(c | y)`` (2 classes), ``R(y) = log P(c=1 | y)``, β = 1, γ = 0, the optimum is
    ``π*(a|s) ∝ P_G(a|s)·P(c | s ⊕ a)`` (classifier guidance, λ = 1, with ``P(c | s ⊕ a)`` marginalised
    by brute force), and ``V(root) = log P(c)``."""
    tree = case.tree
    logits = 2.0 * np.random.default_rng([case.seed, 3]).standard_normal((tree.vocab,) * tree.horizon + (2,))
    log_likelihood = log_softmax(logits)[..., 1]
    sol = solve(tree, terminal_reward=log_likelihood)
    guided = myopic(tree, lam=1.0, score=exact_fudge_scores(tree, log_likelihood))
    diff = _max_table_diff(sol.log_policy, guided.log_policy)
    objective_diff = abs(sequence_objective(tree, guided, terminal_reward=log_likelihood) - sol.value)
    expected = float(logsumexp((tree.sequence_log_model() + log_likelihood).reshape(-1)))  # log P(c)
    value_diff = abs(sol.value - expected)
    tol = TOLERANCES["float64"]
    return _record(
        "exact-case",
        case.index,
        "classifier-guidance-exact-discriminator",
        max(diff, objective_diff, value_diff) <= tol,
        f"π*(a|s) ∝ P_G·P(c|s⊕a): max |Δπ| = {diff:.1e}, |J(guided) − V| = {objective_diff:.1e}, "
        f"V(root) = log P(c) = {sol.value:.4f} (|Δ| {value_diff:.1e}; tol {tol:g})",
        max_abs_diff=diff,
        objective_diff=objective_diff,
        value_diff=value_diff,
        tolerance=tol,
        value=sol.value,
    )


def _last_step_check(case: Case) -> dict:
    """``R = 0`` ⇒ ``V(s ⊕ a) = 0`` at depth ``H − 1``: π* there is ``ValuePolicy`` at every prefix."""
    setting = next(s for s in SETTINGS if s.name == "pmi")
    sol = solve(case.tree, **setting.kwargs())
    diff = max_prob_diff(policy_tables(case.tree, setting.closed_form())[-1], sol.log_policy[-1])
    return _diff_record(
        "exact-case",
        case,
        "last-step",
        diff,
        TOLERANCES["policy_float32"],
        "ValuePolicy(1, 0.3, 0.8, PMI) vs π* at depth H−1, every prefix",
    )


def chi_square_checks(config: ReportConfig) -> list[tuple[str, Callable[[Case], dict]]]:
    """``generate``'s samples against each policy's exact law; plus the power check (CFG's samples
    against the sequence-level optimum of the same objective)."""
    checks = [
        (f"chi-square/{name}", functools.partial(_chi_square_check, config=config, name=name))
        for name in chi_square_policies(config.smoke)
    ]
    checks.append(("chi-square/power-cfg-1.5-vs-sequence-level", functools.partial(_power_check, config=config)))
    return checks


@functools.lru_cache(maxsize=16)
def _samples(case: Case, samples: int, smoke: bool, name: str) -> np.ndarray:
    """``[N, H]`` tokens from ``infodec.generate`` with the policy ``name`` on the case's model: two-stream
    policies get the prompt and ``evidence=``, one-stream policies the prompt with the evidence prepended
    (the tree's stream 0). The key depends on the model's seed and the policy name only."""
    policy = chi_square_policies(smoke)[name]
    # The tree's anchor (stream 0) reads evidence + prompt: a one-stream policy gets that as its prompt.
    two = policy.num_streams == 2
    prompt, evidence = (case.prompt, [case.evidence]) if two else (case.evidence + case.prompt, None)
    key = jax.random.fold_in(jax.random.key(case.seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)
    out = generate(
        case.model,
        case.params,
        [prompt],
        policy,
        key,
        max_new_tokens=case.tree.horizon,
        evidence=evidence,
        num_samples=samples,
        stop_tokens=None,
    )
    return np.asarray(out.tokens)[:, : case.tree.horizon]


def expected_power(noncentrality: float, dof: int, alpha: float = ALPHA) -> float:
    """The chi-square test's power against an alternative of noncentrality ``N·Σ(p−q)²/q`` (the noncentral
    chi-square approximation): ``P(χ²_dof(nc) > the level-α critical value)``."""
    if dof < 1:
        return 0.0
    return float(stats.ncx2.sf(stats.chi2.isf(alpha, dof), dof, noncentrality))


def _chi_square_check(case: Case, config: ReportConfig, name: str) -> dict:
    tokens = _samples(case, config.samples, config.smoke, name)
    result = chi_square(tokens, policy_distribution(case.tree, chi_square_policies(config.smoke)[name]))
    return _record(
        "chi-square",
        case.index,
        name,
        result.p_value > ALPHA,
        f"{len(tokens)} samples: χ² = {result.statistic:.1f}, dof {result.dof}, p = {result.p_value:.3g} "
        f"(pass: p > {ALPHA:g})",
        statistic=result.statistic,
        dof=result.dof,
        p_value=result.p_value,
        samples=len(tokens),
    )


def _power_check(case: Case, config: ReportConfig) -> dict:
    """Token-level CFG(1.5) vs the sequence-level optimum of its own objective (β = 1, γ = 0, λ = 0.5, PMI):
    different laws when ``H > 1`` (the state-dependent normalisers), which the test must tell apart
    whenever the test's expected power (``expected_power``) is at least ``MIN_POWER``; otherwise the
    result is reported only."""
    name = "cfg-1.5"
    tokens = _samples(case, config.samples, config.smoke, name)
    law = policy_distribution(case.tree, chi_square_policies(config.smoke)[name])
    other = solve(case.tree, beta=1.0, gamma=0.0, lam=0.5, score="pmi").log_seq_probs
    p, q = np.exp(law).reshape(-1), np.exp(other).reshape(-1)
    tv = 0.5 * float(np.abs(p - q).sum())
    noncentrality = len(tokens) * float(np.sum((p - q) ** 2 / q))
    result = chi_square(tokens, other)
    power = expected_power(noncentrality, result.dof)
    detectable = power >= MIN_POWER
    passed = result.p_value < ALPHA if detectable else True
    verdict = (
        f"pass: p < {ALPHA:g}; power {power:.3f}"
        if detectable
        else f"power {power:.2f} < {MIN_POWER:g} at N = {len(tokens)}: reported only"
    )
    return _record(
        "chi-square",
        case.index,
        "power-cfg-1.5-vs-sequence-level",
        passed,
        f"CFG samples vs the sequence-level CFG law (TV {tv:.3f}): χ² = {result.statistic:.1f}, "
        f"dof {result.dof}, p = {result.p_value:.3g} ({verdict})",
        statistic=result.statistic,
        dof=result.dof,
        p_value=result.p_value,
        samples=len(tokens),
        total_variation=tv,
        noncentrality=noncentrality,
        power=power,
        detectable=detectable,
    )


def checks(config: ReportConfig) -> list[tuple[str, Callable[[], dict]]]:
    """Every check as a ``(key, compute)`` point, keys ``m<model>/<kind>/<name>``. A model (weights and
    exact trees) is built on the first point that needs it, so a resumed run with every point done
    builds nothing."""
    build = functools.lru_cache(maxsize=1)(lambda index: Case.build(config, index))
    kinds = (
        closed_form_checks(config.smoke)
        + optimum_checks(config.smoke)
        + exact_case_checks(config.smoke)
        + chi_square_checks(config)
    )
    return [
        (f"m{index}/{name}", functools.partial(_on_case, build, index, name, fn))
        for index in range(config.num_models)
        for name, fn in kinds
    ]


def _on_case(build: Callable[[int], Case], index: int, name: str, fn: Callable[[Case], dict]) -> dict:
    """Runs one check; an exception becomes a failing record carrying the error (retried by the next run)."""
    try:
        return fn(build(index))
    except Exception as e:  # a crashing check is a failed check, reported with its error
        kind, label = name.split("/", 1)
        message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return _record(kind, index, label, False, f"ERROR {message}", error=message)


def run_report(
    config: ReportConfig,
    out: str | Path | ResultsFolder,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> Report:
    """Runs every check not yet in the results folder, then writes ``report.md``, ``checks.csv``,
    ``gaps.csv`` and ``theory.png`` there (``report.write_files``).

    Args:
      config: the sizes and seeds.
      out: a folder path (bound to ``config.settings()``) or a ``ResultsFolder`` the caller made (a
        launcher binds it to its flags).
      overwrite: discard earlier points (path only).
      log: progress lines.
    Returns:
      a ``Report``; ``report.passed`` is False if any check failed.
    """
    start = time.perf_counter()
    folder = out if isinstance(out, ResultsFolder) else ResultsFolder(out, config.settings(), overwrite=overwrite)
    points = checks(config)
    before = {key for key, record in folder.points().items() if "error" not in record}
    for key, compute in points:  # checks that crashed last time are run again (the newer line wins)
        if key not in before and key in folder.points():
            log(f"{key}: retrying after the earlier error")
            folder.append(key, _timed(compute))
    records = folder.run(points, log=log)
    computed = len([key for key, _ in points if key not in before])
    csv_paths, plot_path, markdown = write_files(config, records, folder)
    return Report(config, records, folder.path, markdown, csv_paths, plot_path, computed, time.perf_counter() - start)


def _timed(compute: Callable[[], dict]) -> dict:
    start = time.perf_counter()
    return {**compute(), "seconds": time.perf_counter() - start}


__all__ = [
    "ReportConfig",
    "Report",
    "Setting",
    "SETTINGS",
    "SMOKE_SETTINGS",
    "run_report",
    "checks",
    "tiny_model",
    "Case",
    "context_free_tree",
    "exact_fudge_scores",
    "kl_guided_temperature",
    "max_prob_diff",
    "expected_power",
    "myopic_decoders",
    "chi_square_policies",
]
