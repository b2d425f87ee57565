"""Resumable results folders for long sweeps: flags, per-point JSON lines, CSV tables, PNG plots.

Every launcher and notebook writes the same layout::

    <out>/flags.json      the settings that determine the results (a rerun must match them)
    <out>/points.jsonl    one JSON object per finished point, appended (and flushed) as it finishes
    <out>/*.csv           summary tables
    <out>/*.png           plots

A sweep is a list of ``(key, compute)`` pairs; :meth:`ResultsFolder.run` skips the keys already in
``points.jsonl``, so an interrupted run resumes where it stopped and never recomputes a finished point.
A partially written last line (the process killed mid-write) is ignored and recomputed. A point that takes
hours can keep its own partial work in :meth:`ResultsFolder.scratch` (``<out>/.partial/<point>/``), which
:meth:`ResultsFolder.run` deletes once the point is stored.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infodec.cache import path_part


class ResultsFolder:
    """A results folder bound to one set of settings.

    Args:
      path: the folder (created if missing).
      settings: JSON-able dict of everything that changes the numbers (model, sizes, seeds, sweep
        values). Stored as ``flags.json``; reopening a folder with different settings raises, because
        mixing points from two configurations in one table would be silently wrong.
      overwrite: start afresh, deleting previous points, tables and plots.
      growable: settings that list which points to run (decoders, sweep values) rather than how each
        is computed: a rerun may add entries to them (the finished points stay valid), not drop any.
      added: settings introduced after folders were first written, each with the value that reproduces
        the behaviour from before it existed: a stored ``flags.json`` without the key reads as holding that
        value, so old folders resume under the new defaults where those mean the same computation.
    """

    def __init__(
        self,
        path: str | Path,
        settings: Mapping[str, Any],
        *,
        overwrite: bool = False,
        growable: Sequence[str] = (),
        added: Mapping[str, Any] | None = None,
    ):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.settings = json.loads(json.dumps(dict(settings)))  # normalise tuples etc. as JSON would
        flags_file, self.points_file = self.path / "flags.json", self.path / "points.jsonl"
        if overwrite:
            for pattern in ("points.jsonl", "*.csv", "*.png"):
                for old in self.path.glob(pattern):
                    old.unlink()
        elif flags_file.exists() and self.points_file.exists():
            previous = {**json.loads(json.dumps(dict(added or {}))), **json.loads(flags_file.read_text())}
            changed = sorted(
                k
                for k in set(previous) | set(self.settings)
                if previous.get(k) != self.settings.get(k)
                and not (k in growable and _extends(self.settings.get(k), previous.get(k)))
            )
            if changed:
                raise ValueError(
                    f"{self.path} holds results for other settings (differing: {changed}); "
                    "pass a new output folder, or overwrite to discard the old points"
                )
        flags_file.write_text(json.dumps(self.settings, indent=2, sort_keys=True) + "\n")

    @classmethod
    def reopen(cls, path: str | Path) -> ResultsFolder:
        """A finished (or partial) folder, bound to the settings in its own ``flags.json``: what a report
        reads to regenerate its tables and plots without recomputing anything. FileNotFoundError when the
        folder has no settings or no finished point."""
        flags_file, points_file = Path(path) / "flags.json", Path(path) / "points.jsonl"
        if not flags_file.exists() or not points_file.exists() or not points_file.read_text().strip():
            raise FileNotFoundError(
                f"{path} has no flags.json or no finished point in points.jsonl: pass a folder a launcher wrote"
            )
        return cls(path, json.loads(flags_file.read_text()))

    def points(self) -> dict[str, dict]:
        """The finished points, ``{key: record}``, in the order they finished."""
        return read_points(self.points_file) if self.points_file.exists() else {}

    def scratch(self, key: str) -> Path:
        """``<out>/.partial/<key as a folder name>``: where point ``key`` may keep partial work (finished
        chunks, ``infodec.batching.checkpointed_chunks``) while it runs. :meth:`run` deletes it once the point
        is stored. It is not a result: git ignores ``.partial`` except in ``docs/results/*/``, whose long studies
        commit their finished chunks between sittings so that a fresh clone resumes them."""
        return self.path / ".partial" / path_part(key.replace("/", "__"))

    def append(self, key: str, record: Mapping[str, Any]) -> dict:
        """Appends one finished point (``record`` plus its ``key``) and flushes it to disk."""
        line = {"key": key, **record}
        text = json.dumps(line, default=_json_default)
        with self.points_file.open("a") as f:
            if f.tell() and not self.points_file.read_text().endswith("\n"):
                f.write("\n")  # end a partial line left by an interrupted write
            f.write(text + "\n")
            f.flush()
        return json.loads(text)

    def run(
        self, points: Sequence[tuple[str, Callable[[], Mapping[str, Any]]]], log: Callable[[str], None] = print
    ) -> list[dict]:
        """Computes every point not yet finished, appending each as it finishes; returns all records
        in the order of ``points``. Logs progress (finished / total, elapsed, estimated remaining)."""
        keys = [key for key, _ in points]
        if len(set(keys)) != len(keys):
            raise ValueError(f"point keys must be unique, got duplicates in {keys}")
        done = self.points()
        todo = [(key, compute) for key, compute in points if key not in done]
        if len(todo) < len(points):
            log(f"{self.path}: resuming, {len(points) - len(todo)} of {len(points)} points already done")
        start = time.perf_counter()
        for i, (key, compute) in enumerate(todo):
            point_start = time.perf_counter()
            done[key] = self.append(key, {**compute(), "seconds": time.perf_counter() - point_start})
            shutil.rmtree(self.scratch(key), ignore_errors=True)
            elapsed = time.perf_counter() - start
            remaining = elapsed / (i + 1) * (len(todo) - i - 1)
            log(
                f"[{len(points) - len(todo) + i + 1}/{len(points)}] {key} "
                f"({done[key]['seconds']:.0f} s; elapsed {elapsed:.0f} s, ~{remaining:.0f} s left)"
            )
        return [done[key] for key in keys]

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Writes ``rows`` (flat dicts) as ``<name>`` with the union of their keys as columns."""
        rows = [dict(r) for r in rows]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        target = self.path / name
        with target.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _cell(v) for k, v in r.items()})
        return target


def read_points(path: str | Path) -> dict[str, dict]:
    """``{key: record}`` of a JSON-lines file of points (``points.jsonl``), in file order. A line cut short by
    an interruption is skipped (its point is recomputed by a rerun)."""
    done = {}
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[record["key"]] = record
    return done


def _extends(new, old) -> bool:
    """Whether list ``new`` holds every entry of list ``old``."""
    return isinstance(new, list) and isinstance(old, list) and all(x in new for x in old)


def _cell(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def plot_series(
    path: str | Path,
    series: Mapping[str, Sequence[Mapping[str, float]]],
    *,
    x: str,
    y: str,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str = "",
    annotate: str | None = None,
) -> Path:
    """One PNG of labelled curves with error bars.

    ``series[label]`` is a list of points, each a dict holding ``x`` and ``y`` (means) and, optionally,
    ``x + "_err"`` / ``y + "_err"`` (half-widths, e.g. 1.96·SE). ``annotate`` names a point field
    printed beside each marker (e.g. the swept temperature).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110)
    for label, pts in series.items():
        pts = sorted(pts, key=lambda p: p[x])
        ax.errorbar(
            [p[x] for p in pts],
            [p[y] for p in pts],
            xerr=[p.get(x + "_err", 0.0) for p in pts],
            yerr=[p.get(y + "_err", 0.0) for p in pts],
            marker="o",
            ms=4,
            capsize=2,
            label=label,
        )
        if annotate:
            for p in pts:
                ax.annotate(
                    f"{p[annotate]:g}" if isinstance(p[annotate], float) else str(p[annotate]),
                    (p[x], p[y]),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["ResultsFolder", "plot_series", "read_points"]
