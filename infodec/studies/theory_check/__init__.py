"""The theory check: the exact soft-Bellman DP on random tiny models, against closed forms, myopic
decoders and ``generate``'s samples, as a readable report.

    report = theory_check.run_report(theory_check.ReportConfig(smoke=True, **theory_check.SMOKE), "out")
    report.passed, report.lines()
    theory_check.write_report("out")        # regenerates checks.csv, gaps.csv, theory.png, report.md

``config`` holds the settings and thresholds, ``study`` the checks (the algorithms are
``infodec.theory``), ``report`` the tables, plot and ``report.md``.
"""

from infodec.studies.theory_check.config import (
    ALPHA,
    MAX_HORIZON,
    MAX_MODELS,
    MAX_VOCAB,
    MIN_POWER,
    MIN_SAMPLES,
    SMOKE,
    TOLERANCES,
    ReportConfig,
)
from infodec.studies.theory_check.report import Report, plot_report, render_markdown, write_report
from infodec.studies.theory_check.study import (
    SETTINGS,
    Case,
    Setting,
    checks,
    chi_square_policies,
    context_free_tree,
    exact_fudge_scores,
    expected_power,
    kl_guided_temperature,
    max_prob_diff,
    myopic_decoders,
    run_report,
    tiny_model,
)

__all__ = [
    "ReportConfig",
    "Report",
    "Setting",
    "SETTINGS",
    "SMOKE",
    "TOLERANCES",
    "ALPHA",
    "MIN_POWER",
    "MAX_VOCAB",
    "MAX_HORIZON",
    "MAX_MODELS",
    "MIN_SAMPLES",
    "run_report",
    "checks",
    "tiny_model",
    "Case",
    "context_free_tree",
    "exact_fudge_scores",
    "kl_guided_temperature",
    "max_prob_diff",
    "expected_power",
    "plot_report",
    "render_markdown",
    "myopic_decoders",
    "chi_square_policies",
    "write_report",
]
