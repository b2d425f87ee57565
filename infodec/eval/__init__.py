"""Evaluation measures shared by the studies: uncertainty summaries, diversity, attribution, MAUVE."""

from infodec.eval.stats import bootstrap_ci, mean_se

__all__ = ["mean_se", "bootstrap_ci"]
