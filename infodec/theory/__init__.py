"""Exact decoding theory on tiny models: the soft Bellman recursion of docs/math.md §1, solved by
enumeration.

On a model with a tiny vocabulary (V ≤ 8) and horizon (H ≤ 4), every prefix and every sequence can be
enumerated, so the sequence-level optimum of ``J(π) = E_π[Σ λ·g + R] − β·KL(π‖P_G) + γ·H(π)`` and the
exact sequence law of any infodec policy are computable in closed form. Tests compare the per-step
closed forms (``ValuePolicy`` and the named decoders), the DP optimum, and what ``generate`` samples.

    tree = prefix_log_probs(model, params, prompt, horizon=3, evidence_tokens=evidence)  # or random_prefix_tree
    sol = solve(tree, beta=1.0, gamma=0.5, lam=1.0, score="pmi", terminal_reward=R)   # V, Q, π*, law of π*
    log_q = policy_distribution(tree, infodec.Temperature(0.7))                     # any policy, exactly
    sequence_objective(tree, log_q, beta=1.0, gamma=0.5, lam=1.0, score="pmi", terminal_reward=R) <= sol.value
    chi_square(samples, log_q)                                                       # (statistic, dof, p)

See ``infodec.theory.dp`` for the mathematics and the cases where myopic decoding is exactly optimal. The
theory check that runs all of this as a report is the study ``infodec.studies.theory_check``.
"""

from infodec.theory.dp import (
    Solution,
    myopic,
    policy_distribution,
    policy_tables,
    reward_tables,
    score_tables,
    sequence_log_probs,
    sequence_objective,
    sequence_optimum,
    sequence_terms,
    sequence_utility,
    solve,
    step_info,
    terminal_table,
)
from infodec.theory.stats import ChiSquare, chi_square, sample_sequences
from infodec.theory.tree import (
    MAX_SEQUENCES,
    PrefixTree,
    accumulate,
    prefix_log_probs,
    random_prefix_tree,
    sequence_index,
    sequences,
)

__all__ = [
    "PrefixTree",
    "prefix_log_probs",
    "random_prefix_tree",
    "sequences",
    "sequence_index",
    "accumulate",
    "MAX_SEQUENCES",
    "Solution",
    "solve",
    "myopic",
    "sequence_optimum",
    "sequence_utility",
    "policy_tables",
    "policy_distribution",
    "sequence_log_probs",
    "sequence_terms",
    "sequence_objective",
    "score_tables",
    "reward_tables",
    "terminal_table",
    "step_info",
    "ChiSquare",
    "chi_square",
    "sample_sequences",
]
