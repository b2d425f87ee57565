"""``infodec.studies.theory_check`` and ``python -m experiments.theory``: the theory check as a report.

The smoke configuration runs once per module (about 20 s on a 2-core CPU): every check must pass,
the files must be written, and a second call must compute nothing (resume). Crashed checks are
failures and are retried; the launcher rejects bad flags with a message naming the flag.
"""

import csv
import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from absl import app

from experiments import theory as launcher
from infodec.studies import theory_check
from infodec.studies.theory_check import report as report_module
from infodec.studies.theory_check import study as theory_report

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"closed-form", "dp-vs-enumeration", "dp-vs-myopic", "exact-case", "chi-square"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    folder = tmp_path_factory.mktemp("theory")
    config = theory_report.ReportConfig(smoke=True, **theory_check.SMOKE)
    return config, folder, theory_report.run_report(config, folder, log=lambda s: None)


@pytest.mark.slow
def test_smoke_report_passes_every_check(smoke):
    config, _, report = smoke
    assert report.passed, "\n".join(report.lines())
    records = report.records
    assert {r["kind"] for r in records} == KINDS
    assert report.computed == len(records) == len(theory_report.checks(config))
    assert len({r["key"] for r in records}) == len(records)
    # The numbers behind the verdicts, checked against the thresholds here rather than trusted.
    for r in records:
        if r["kind"] == "closed-form":
            assert 0 <= r["max_abs_diff"] <= theory_report.TOLERANCES["policy_float32"], r
        if r["kind"] == "dp-vs-enumeration":
            assert r["value"] == pytest.approx(r["enumerated_value"], abs=1e-9)
        if r["kind"] == "dp-vs-myopic":
            assert all(gap >= -1e-9 for gap in r["gaps"].values()), r
            assert r["min_gap"] == min(r["gaps"].values())
        if r["kind"] == "chi-square" and not r["name"].startswith("power"):
            assert r["p_value"] > theory_report.ALPHA and r["samples"] == config.samples, r
    terminal = [r for r in records if r["kind"] == "dp-vs-myopic" and "terminal" in r["name"]]
    assert terminal and all(r["closed_form_gap"] > 1e-3 for r in terminal)  # R is invisible to myopic decoders


@pytest.mark.slow
def test_report_files(smoke):
    _, folder, report = smoke
    assert report.markdown_path == folder / "report.md"
    text = report.markdown_path.read_text()
    assert text.count("| PASS |") == len(report.records) and "FAIL" not in text
    assert "![theory check](theory.png)" in text
    with (folder / "checks.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == [r["key"] for r in report.records]
    with (folder / "gaps.csv").open() as f:
        gaps = list(csv.DictReader(f))
    assert len(gaps) == sum(r["kind"] == "dp-vs-myopic" for r in report.records)
    assert report.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.lines()[-1] == f"{len(report.records)}/{len(report.records)} checks passed"


@pytest.mark.slow
def test_second_call_computes_nothing(smoke, monkeypatch):
    config, folder, first = smoke

    def no_model(*args, **kwargs):
        raise AssertionError("a resumed run built a model")

    monkeypatch.setattr(theory_report.Case, "build", classmethod(no_model))
    again = theory_report.run_report(config, folder, log=lambda s: None)
    assert again.computed == 0 and again.passed
    assert [r["key"] for r in again.records] == [r["key"] for r in first.records]
    assert len((folder / "points.jsonl").read_text().splitlines()) == len(first.records)


def test_a_crashing_check_fails_and_is_retried(tmp_path, monkeypatch):
    """An exception inside a check is a FAIL carrying the error; the next run computes it again."""
    calls = []

    def check(case, crash):
        calls.append(crash)
        if crash:
            raise RuntimeError("engine broke")
        return theory_report._record("closed-form", 0, "flaky", True, "fine", max_abs_diff=0.0)

    def fake_checks(crash, config):
        return [
            (
                "m0/closed-form/flaky",
                functools.partial(
                    theory_report._on_case,
                    lambda i: None,  # pyright: ignore[reportArgumentType] (a stand-in builder)
                    0,
                    "closed-form/flaky",
                    functools.partial(check, crash=crash),
                ),
            )
        ]

    config = theory_report.ReportConfig(num_models=1, vocab=2, horizon=1, samples=100)
    monkeypatch.setattr(theory_report, "checks", functools.partial(fake_checks, True))
    first = theory_report.run_report(config, tmp_path, log=lambda s: None)
    assert not first.passed
    assert first.records[0]["error"] == "RuntimeError: engine broke"
    assert "**FAIL**" in first.markdown_path.read_text() and first.lines()[-1].endswith("m0/closed-form/flaky")
    monkeypatch.setattr(theory_report, "checks", functools.partial(fake_checks, False))
    second = theory_report.run_report(config, tmp_path, log=lambda s: None)
    assert second.passed and second.computed == 1 and calls == [True, False]


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("vocab", 9, r"--vocab must be in \[2, 8\], got 9"),
        ("vocab", 1, r"--vocab must be in \[2, 8\], got 1"),
        ("horizon", 5, r"--horizon must be in \[1, 4\], got 5"),
        ("horizon", 0, r"--horizon must be in \[1, 4\], got 0"),
        ("num_models", 0, r"--num_models must be in \[1, 20\], got 0"),
        ("samples", 10, r"--samples must be >= 100, got 10"),
        ("seed", -1, r"--seed must be >= 0, got -1"),
    ],
)
def test_launcher_rejects_bad_flags(flag, value, message):
    values: dict[str, Any] = dict(num_models=2, vocab=5, horizon=3, seed=0, samples=500, smoke=False)
    assert launcher.build_config(**values) == theory_report.ReportConfig(**{**values})
    with pytest.raises(app.UsageError, match=message):
        launcher.build_config(**{**values, flag: value})


def test_smoke_flag_uses_the_smoke_sizes():
    config = launcher.build_config(num_models=5, vocab=8, horizon=4, seed=3, samples=9000, smoke=True)
    assert {k: getattr(config, k) for k in theory_check.SMOKE} == theory_check.SMOKE
    assert config.seed == 3 and config.smoke


@pytest.mark.subprocess
def test_launcher_exits_with_the_message():
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "experiments.theory", "--vocab=12", "--out=/nonexistent/x"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "--vocab must be in [2, 8], got 12" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_summary_rows_give_each_kinds_worst_number():
    tol32, tol64 = theory_report.TOLERANCES["policy_float32"], theory_report.TOLERANCES["float64"]
    records = [
        {"kind": "closed-form", "model": 0, "name": "a", "passed": True, "max_abs_diff": 2e-8, "tolerance": tol32},
        {"kind": "closed-form", "model": 1, "name": "a", "passed": False, "max_abs_diff": 3e-5, "tolerance": tol32},
        {"kind": "dp-vs-myopic", "model": 0, "name": "t", "passed": True, "min_gap": 0.5, "min_gap_decoder": "x"},
        {"kind": "dp-vs-myopic", "model": 1, "name": "t", "passed": True, "min_gap": 0.25, "min_gap_decoder": "y"},
        # float64 cases: the worst is an objective difference; the float32 ones: a policy object, then last-step.
        {
            "kind": "exact-case",
            "model": 0,
            "name": "e",
            "passed": True,
            "max_abs_diff": 1e-16,
            "objective_diff": 4e-15,
            "value_diff": 0.0,
            "policy_diff": 6e-8,
            "tolerance": tol64,
        },
        {"kind": "exact-case", "model": 1, "name": "last", "passed": True, "max_abs_diff": 9e-8, "tolerance": tol32},
        {"kind": "chi-square", "model": 0, "name": "own", "passed": True, "p_value": 0.2},
        {"kind": "chi-square", "model": 1, "name": "own", "passed": True, "p_value": 0.04},
        {"kind": "chi-square", "model": 0, "name": "power-x", "passed": True, "p_value": 1e-9},
        {"kind": "chi-square", "model": 1, "name": "power-x", "passed": True, "error": "boom"},
    ]
    titles = {title: kind for kind, title in report_module.KIND_TITLES.items()}
    rows = {titles[r["check"]]: r for r in report_module.summary_rows(records, num_models=2)}
    assert rows["closed-form"] == {
        "check": report_module.KIND_TITLES["closed-form"],
        "per model": 1,
        "passed": "1/2",
        "worst result": "max |Δπ| = 3.0e-05 (tolerance 1e-05)",
    }
    assert rows["dp-vs-myopic"]["worst result"] == "smallest gap 0.25 nats (y, model 1)"
    assert rows["exact-case"]["worst result"] == "4.0e-15 in float64, 9.0e-08 for float32 policy objects"
    assert rows["chi-square"]["worst result"] == "own laws (2): p from 0.04 to 0.2; power checks (1): p ≤ 1e-09"
    assert rows["chi-square"]["passed"] == "4/4" and rows["chi-square"]["per model"] == 2
