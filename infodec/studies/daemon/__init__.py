"""[P3]'s DAEMON study: DAEMON against the standard decoders on human text (docs/math.md §3).

* :mod:`~infodec.studies.daemon.config`: :class:`DaemonConfig`, the study's settings (validated once), and
  :data:`BASELINES`, the main table's decoders.
* :mod:`~infodec.studies.daemon.study`: the computation — one :class:`Pipeline` (Algorithm 1's samples, the
  baselines, Algorithm 2, scoring), :func:`prepare` -> :class:`DaemonStudy`, :func:`run_studies` (the
  launcher's studies as resumable points) and :func:`single_metric_study` (the SR-4 study).
* :mod:`~infodec.studies.daemon.report`: :func:`write_report` — tables, plots and ``report.md`` from a
  results folder's files alone.

Run it with ``python -m experiments.daemon`` or the notebook ``colabs/daemon.ipynb``.
"""

from infodec.studies.daemon.config import BASELINES, METRICS, STUDIES, Baseline, DaemonConfig
from infodec.studies.daemon.report import summary, write_report
from infodec.studies.daemon.study import (
    DaemonStudy,
    Pipeline,
    prepare,
    rows_per_call_that_fits,
    run_studies,
    single_metric_study,
)

__all__ = [
    "DaemonConfig",
    "Baseline",
    "BASELINES",
    "METRICS",
    "STUDIES",
    "Pipeline",
    "DaemonStudy",
    "prepare",
    "run_studies",
    "rows_per_call_that_fits",
    "single_metric_study",
    "write_report",
    "summary",
]
