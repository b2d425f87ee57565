"""Evaluation measures shared by the studies: uncertainty summaries, diversity, attribution, MAUVE.

``infodec.eval.mauve`` needs the optional mauve-text library (``pip install "infodec[eval]"``) and is
imported on use, not here.
"""

from infodec.eval.stats import bootstrap_ci, mean_se

__all__ = ["mean_se", "bootstrap_ci"]
