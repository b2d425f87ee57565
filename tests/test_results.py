"""Resumable results folders (infodec.results) and summary statistics (infodec.eval.stats)."""

import json

import numpy as np
import pytest

from infodec.eval.stats import bootstrap_ci, clustered_mean_se, mean_se
from infodec.results import ResultsFolder, plot_series


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    calls = []

    def point(v):
        def compute():
            calls.append(v)
            if v == 3 and calls.count(3) == 1:
                raise KeyboardInterrupt  # the first run is interrupted at the third point
            return {"value": v * v}

        return compute

    points = [(f"p{v}", point(v)) for v in range(1, 5)]
    with pytest.raises(KeyboardInterrupt):
        ResultsFolder(tmp_path, {"a": 1}).run(points, log=lambda s: None)
    assert calls == [1, 2, 3]
    records = ResultsFolder(tmp_path, {"a": 1}).run(points, log=lambda s: None)
    assert calls == [1, 2, 3, 3, 4]  # finished points 1 and 2 were not recomputed
    assert [r["value"] for r in records] == [1, 4, 9, 16]
    assert len((tmp_path / "points.jsonl").read_text().splitlines()) == 4


def test_a_points_scratch_folder_lives_until_the_point_is_stored(tmp_path):
    folder = ResultsFolder(tmp_path, {})
    scratch = folder.scratch("wiki/main/daemon")
    assert scratch.parent == tmp_path / ".partial" and "/" not in scratch.name

    def compute():
        scratch.mkdir(parents=True)
        (scratch / "chunk").write_text("partial work")
        return {"value": 1}

    folder.run([("wiki/main/daemon", compute)], log=lambda s: None)
    assert not scratch.exists() and folder.points()["wiki/main/daemon"]["value"] == 1
    assert folder.scratch("a/b") != folder.scratch("a_b")  # distinct keys, distinct folders


def test_partial_last_line_is_recomputed(tmp_path):
    folder = ResultsFolder(tmp_path, {})
    folder.append("done", {"x": 1})
    with (tmp_path / "points.jsonl").open("a") as f:
        f.write('{"key": "cut", "x"')  # killed mid-write
    assert set(folder.points()) == {"done"}
    folder.append("cut", {"x": 2})
    assert folder.points()["cut"]["x"] == 2


def test_other_settings_are_refused_unless_overwritten(tmp_path):
    ResultsFolder(tmp_path, {"temperature": [0.5, 1.0]}).append("k", {"x": 1})
    with pytest.raises(ValueError, match="differing: \\['temperature'\\]"):
        ResultsFolder(tmp_path, {"temperature": [0.7]})
    folder = ResultsFolder(tmp_path, {"temperature": [0.7]}, overwrite=True)
    assert folder.points() == {}
    assert json.loads((tmp_path / "flags.json").read_text()) == {"temperature": [0.7]}


def test_growable_settings_may_gain_entries_but_not_lose_them(tmp_path):
    ResultsFolder(tmp_path, {"decoders": ["greedy", "top_p"], "n": 4}, growable=["decoders"]).append("k", {})
    folder = ResultsFolder(tmp_path, {"decoders": ["greedy", "top_p", "beam"], "n": 4}, growable=["decoders"])
    assert set(folder.points()) == {"k"}
    with pytest.raises(ValueError, match="differing: \\['decoders'\\]"):
        ResultsFolder(tmp_path, {"decoders": ["greedy"], "n": 4}, growable=["decoders"])
    with pytest.raises(ValueError, match="differing: \\['n'\\]"):
        ResultsFolder(tmp_path, {"decoders": ["greedy", "top_p", "beam"], "n": 5}, growable=["decoders"])


def test_a_setting_added_later_reads_as_its_old_meaning_in_older_folders(tmp_path):
    ResultsFolder(tmp_path, {"n": 4}).append("k", {"x": 1})  # written before "evaluator" existed
    with pytest.raises(ValueError, match="differing: \\['evaluator'\\]"):
        ResultsFolder(tmp_path, {"n": 4, "evaluator": "other-lm"}, added={"evaluator": None})
    folder = ResultsFolder(tmp_path, {"n": 4, "evaluator": None}, added={"evaluator": None})
    assert set(folder.points()) == {"k"}
    ResultsFolder(tmp_path / "old", {"n": 4}).append("k", {})
    with pytest.raises(ValueError, match="differing: \\['samples'\\]"):  # undeclared: a new key differs
        ResultsFolder(tmp_path / "old", {"n": 4, "samples": 0})
    assert set(ResultsFolder(tmp_path / "old", {"n": 4, "samples": 0}, added={"samples": 0}).points()) == {"k"}


def test_csv_and_plot(tmp_path):
    folder = ResultsFolder(tmp_path, {})
    path = folder.write_csv("t.csv", [{"a": 1, "b": 0.123456789}, {"a": 2, "c": "x"}])
    assert path.read_text().splitlines() == ["a,b,c", "1,0.123457,", "2,,x"]
    png = plot_series(
        tmp_path / "p.png",
        {"s": [{"x": 1.0, "y": 2.0, "y_err": 0.1, "t": 0.5}, {"x": 0.0, "y": 1.0, "t": 1.0}]},
        x="x",
        y="y",
        annotate="t",
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_se_and_bootstrap():
    assert mean_se([1.0, 3.0]) == {"mean": 2.0, "se": 1.0, "n": 2}
    values = np.random.default_rng(0).normal(size=400)
    ci = bootstrap_ci(values)
    se = mean_se(values)
    # the percentile bootstrap of the mean agrees with the normal interval to within a few percent
    assert ci["low"] < se["mean"] < ci["high"]
    assert abs((ci["high"] - ci["low"]) / (2 * 1.96 * se["se"]) - 1) < 0.1
    with pytest.raises(ValueError, match="at least one"):
        mean_se([])


def test_clustered_se():
    values = np.random.default_rng(1).normal(size=30)
    # one value per cluster: the ordinary standard error
    single = clustered_mean_se(values, np.arange(30))
    assert single["se"] == pytest.approx(mean_se(values)["se"], rel=1e-12) and single["clusters"] == 30
    # each value copied 4 times into its own cluster: copies add no information, so the SE is unchanged
    copied = clustered_mean_se(np.repeat(values, 4), np.repeat(np.arange(30), 4))
    assert copied["se"] == pytest.approx(single["se"], rel=1e-12) and copied["n"] == 120
    assert mean_se(np.repeat(values, 4))["se"] < 0.6 * single["se"]  # the naive SE would be half as large
    # a hand-worked case: clusters {1, 2} and {6}, mean 3, cluster sums of deviations -3 and 3
    assert clustered_mean_se([1.0, 2.0, 6.0], ["a", "a", "b"])["se"] == pytest.approx(np.sqrt(2 * 18) / 3)
    with pytest.raises(ValueError, match="cluster labels"):
        clustered_mean_se([1.0, 2.0], ["a"])


def test_atomic_file_leaves_the_whole_file_or_none(tmp_path):
    from infodec.cache import atomic_file, path_part

    target = tmp_path / "deep" / "chunk.pkl"
    with atomic_file(target, "wb") as f:
        f.write(b"done")
    assert target.read_bytes() == b"done" and (target.stat().st_mode & 0o777) == 0o644
    with pytest.raises(KeyboardInterrupt), atomic_file(target, "wb") as f:
        f.write(b"half")
        raise KeyboardInterrupt  # interrupted mid-write: the old file stays, no temporary is left
    assert target.read_bytes() == b"done" and sorted(p.name for p in target.parent.iterdir()) == ["chunk.pkl"]
    assert path_part("wiki/fit/tau=0.8 M,5") == "wiki_fit_tau=0.8_M,5"
    with pytest.raises(ValueError, match='mode must be "w" or "wb"'), atomic_file(target, "a"):
        pass
