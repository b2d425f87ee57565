"""experiments.daemon: flag validation, and the smoke run end to end on the default model (with resume)."""

import csv
import json
import subprocess
import sys

import pytest

from infodec.studies.daemon import DaemonConfig, study


def _settings(**changes):
    s = {
        "model": "smollm2-135m",
        "corpora": ["wiki"],
        "studies": ["main"],
        "metrics": ["sr4", "div"],
        "baselines": ["greedy"],
        "num_fit_prefixes": 4,
        "num_fit_samples": 4,
        "num_eval_prompts": 4,
        "num_candidates": 4,
        "max_new_tokens": 16,
        "prompt_tokens": 32,
        "l2": 1e-3,
        "m_values": ["4"],
        "proposal_temperatures": "1.0",
        "sweep_prompts": 4,
        "rows_per_call": 16,
        "seed": 0,
        "sr4_draws": 1,
        "max_per_document": 0,
        "fit_target": "split",
        "l2_values": [],
        "l2_folds": 4,
        "max_human_windows": 0,
    }
    return {**s, **changes}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"studies": ["main", "tables"]}, "unknown \\['tables'\\]"),
        ({"baselines": ["greedy", "nucleus"]}, "unknown \\['nucleus'\\]"),
        ({"metrics": ["sr4", "bleu"]}, "--metrics"),
        ({"corpora": ["wikipedia"]}, "unknown corpus 'wikipedia'"),
        ({"num_candidates": 0}, "--num_candidates must be >= 1"),
        ({"sweep_prompts": 8}, "--sweep_prompts must be <= --num_eval_prompts"),
        ({"m_values": ["2.5"]}, "positive integers"),
        ({"proposal_temperatures": "0.9,-1"}, "must be > 0"),
        ({"proposal_temperatures": "warm"}, "comma-separated numbers"),
        ({"l2": -1.0}, "--l2 must be >= 0"),
        ({"sr4_draws": 0}, "--sr4_draws must be >= 1"),
        ({"max_per_document": -1}, "--max_per_document must be >= 0"),
        ({"fit_target": "eval"}, "--fit_target must be one of split, prefixes"),
        ({"l2_values": ["0", "-1"]}, "--l2_values must be >= 0"),
        ({"l2_values": ["ridge"]}, "--l2_values must be comma-separated numbers"),
        ({"l2_values": ["0", "1"], "l2_folds": 5}, "--l2_folds must be between 2 and --num_fit_prefixes \\(4\\)"),
        ({"max_human_windows": -1}, "--max_human_windows must be >= 0"),
        ({"baselines": ["greedy", "contrastive_decoding"]}, "contrastive_decoding .* pass --amateur=NAME"),
        ({"amateur": "smollm2-135m"}, "--amateur is only used by the contrastive_decoding baseline"),
    ],
)
def test_bad_settings_are_named(changes, message):
    DaemonConfig(**_settings())  # the baseline settings are valid
    DaemonConfig(**_settings(baselines=["greedy", "contrastive_decoding"], amateur="smollm2-135m"))
    assert "contrastive_decoding" not in DaemonConfig().baselines  # by default only what needs no amateur
    with pytest.raises(ValueError, match=message):
        DaemonConfig(**_settings(**changes))


@pytest.mark.subprocess
def test_the_launcher_turns_a_bad_flag_into_a_usage_error(tmp_path):
    """(Launchers are run as subprocesses: importing two in one process would define their flags twice.)"""
    bad = subprocess.run(
        [sys.executable, "-m", "experiments.daemon", "--num_candidates=0", f"--out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "--num_candidates must be >= 1, got 0" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "points.jsonl").exists()


@pytest.mark.slow
@pytest.mark.download
@pytest.mark.subprocess
def test_smoke_run_writes_tables_and_plots_and_a_rerun_resumes(tmp_path):
    # a flag given with --smoke overrides the smoke value (M = 3 in the sweep instead of 4)
    command = [
        sys.executable,
        "-m",
        "experiments.daemon",
        "--smoke",
        "--m_values=3",
        "--l2_values=0,0.01,10",
        "--l2_folds=2",
        "--max_human_windows=50",
        "--studies=main,m_sweep,perplexity",
        "--perplexity_samples=8",  # the ε ladder's 4 rungs: sweep sizes 4 and 8
        "--perplexity_prompts=2",
        f"--out={tmp_path}",
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    points = [json.loads(line) for line in (tmp_path / "points.jsonl").read_text().splitlines()]
    assert [p["key"] for p in points] == [
        "wiki/fit/tau=1",
        "wiki/main/human",
        "wiki/main/greedy",
        "wiki/main/daemon",
        "wiki/m_sweep/M=3",
        "wiki/baseline_epsilon_perplexity/eps=1e-06",
        "wiki/human_perplexity/N=8",  # last: the costliest decodes per prompt
        "wiki/epsilon_perplexity/N=8,eps=1e-06",
        "wiki/epsilon_ladder_perplexity/N=8,eps=1e-06,rungs=4",
    ]
    assert all(p["num_texts"] == 2 and p["num_samples"] == 8 for p in points[-3:])
    assert points[-1]["ladder"] == [1e-6, 5e-7, 2.5e-7, 1.25e-7] and points[-1]["n_sweep"]["sizes"] == [4, 8]
    assert len(points[-1]["weights"]["rung_shares"]) == 4 and "rung_shares" not in points[-2]["weights"]
    # greedy's π is one-hot: each human token that is not the argmax gets only ε's share
    greedy = points[-4]["decoders"]["greedy"]
    assert list(points[-4]["decoders"]) == ["greedy"] and greedy["truncated_tokens"] > 0
    assert greedy["eps_ppl"] > points[-4]["eps_ppl_model"] and greedy["paired"]["ppl_ratio"] > 1
    # every point's finished chunks are deleted once it is stored; the human texts' features are kept for good
    assert [p.name for p in (tmp_path / ".partial").iterdir()] == ["wiki__human"]
    human = {p.name: p.stat().st_mtime_ns for p in (tmp_path / ".partial" / "wiki__human").iterdir()}
    assert {name.split("-n")[0] for name in human} == {"human-fit-target", "human-eval-split", "human-eval-prompts"}
    with (tmp_path / "main.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["decoder"] for r in rows] == [
        "human",
        "human_split",
        "greedy",
        "daemon",
        "daemon_expected",
        "sampling_expected",
    ]
    daemon = rows[3]
    assert 1.0 <= float(daemon["ess"]) <= 4.0 + 1e-6 and float(daemon["human_ppl_daemon"]) > 1.0
    assert rows[1]["n"] == "50"  # --max_human_windows caps the eval split's human windows
    ridge = points[0]["l2_cross_validation"]
    assert ridge["l2_values"] == [0.0, 0.01, 10.0] and ridge["l2"] in ridge["l2_values"] and ridge["folds"] == 2
    for name in ("main_gaps.png", "m_sweep.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming, 4 of 4 points already done" in second.stdout + second.stderr
    assert len((tmp_path / "points.jsonl").read_text().splitlines()) == 9  # nothing recomputed
    # the eval prompts' human features were loaded, not recomputed (a recomputed chunk is rewritten)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / ".partial" / "wiki__human").iterdir()} == human


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_human_windows": 0}, "max_human_windows must be >= 1 or None"),
        ({"fit_target": "eval"}, "fit_target must be one of"),
    ],
)
def test_prepare_names_bad_arguments_before_loading_anything(kwargs, message):
    with pytest.raises(ValueError, match=message):
        study.prepare(None, None, None, **kwargs)


@pytest.mark.slow
@pytest.mark.download
@pytest.mark.subprocess
def test_the_fit_study_runs_algorithm_1_alone(tmp_path):
    command = [
        sys.executable,
        "-m",
        "experiments.daemon",
        "--smoke",
        "--model=smollm2-135m",  # Algorithm 1 alone needs no particular model; the default's 262k vocabulary is slower
        "--studies=fit",
        "--l2_values=0,1",
        "--l2_folds=2",
        f"--out={tmp_path}",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    points = [json.loads(line) for line in (tmp_path / "points.jsonl").read_text().splitlines()]
    assert [p["key"] for p in points] == ["wiki/fit/tau=1"]
    assert len(points[0]["mu"]) == 2 and points[0]["l2_cross_validation"]["l2"] in (0.0, 1.0)
    assert not (tmp_path / "main.csv").exists()
