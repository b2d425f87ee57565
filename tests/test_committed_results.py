"""Every committed results folder's report is what its own files regenerate.

A results page quotes the generated ``report.md`` and CSVs of its folders, and those must follow from the
folder's committed records (``points.jsonl``, ``flags.json``, a guidance head's ``metadata.json``) by
``python -m experiments.report``. Each folder is copied, regenerated, and every Markdown and CSV file
compared byte for byte with the committed one, so a report layout change that is not re-run over the
committed results, or a hand edit to a generated file, fails here.
"""

import importlib
import shutil
from pathlib import Path

import pytest

from experiments.report import STUDIES

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _study(folder: Path) -> str:
    top = folder.relative_to(RESULTS).parts[0]
    return next(s for s in STUDIES if top.startswith(s))


FOLDERS = sorted(p.parent for p in RESULTS.rglob("report.md") if ".partial" not in p.parts)


def test_every_results_folder_with_a_report_is_covered():
    assert len(FOLDERS) >= 10  # the daemon, tradeoff, theory-check and guidance folders
    assert {_study(f) for f in FOLDERS} == set(STUDIES)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: str(f.relative_to(RESULTS)))
def test_committed_report_is_regenerated_exactly(folder, tmp_path):
    copy = tmp_path / folder.name  # the same name: reports print it
    copy.mkdir()
    for f in folder.iterdir():
        if f.is_file():
            shutil.copy2(f, copy / f.name)
    importlib.import_module(f"infodec.studies.{_study(folder)}.report").write_report(copy)
    generated = sorted(p.name for p in copy.iterdir() if p.suffix in (".md", ".csv"))
    stale = [name for name in generated if (copy / name).read_bytes() != (folder / name).read_bytes()]
    assert not stale, f"{folder.relative_to(RESULTS)}: regenerate with python -m experiments.report: {stale}"
