r"""Regenerates a study's tables, plots and ``report.md`` from a finished results folder, without a model.

    python -m experiments.report --study=daemon docs/results/daemon/full_wiki_fit128
    python -m experiments.report --study=tradeoff results/tradeoff/wiki-leads
    python -m experiments.report --study=theory_check docs/results/theory_check

Each folder needs the files its launcher wrote (``points.jsonl`` and ``flags.json``; a guidance head's
``metadata.json``); nothing is recomputed, so a results page can be rebuilt after a change to a report's
layout (``infodec.studies.<study>.report``).
"""

import importlib
from pathlib import Path

from absl import app, flags

STUDIES = ("tradeoff", "daemon", "theory_check", "guidance")

_STUDY = flags.DEFINE_enum("study", None, STUDIES, "Which study's report to regenerate.")
flags.mark_flag_as_required("study")


def main(argv):
    folders = [Path(a) for a in argv[1:]]
    if not folders:
        raise app.UsageError("name at least one results folder after the flags")
    report = importlib.import_module(f"infodec.studies.{_STUDY.value}.report")
    for folder in folders:
        try:
            print(f"{folder}: {report.write_report(folder)}")
        except FileNotFoundError as e:  # not a finished folder of this study: say which file is missing
            raise app.UsageError(str(e)) from None


if __name__ == "__main__":
    app.run(main)
