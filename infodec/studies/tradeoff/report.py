"""Tables, plots and the KL-guided verdict of a tradeoff sweep, from its point records alone.

Every function here reads the JSON records a sweep appends to ``points.jsonl`` (one per decoder
setting, holding ``family``, ``setting``, ``measures[name] = {"mean", "ci", "n"}``, ``per_input[name]``
and ``corpus_distinct2``), so :func:`write_report` regenerates every file of a finished sweep without a
model::

    write_report("docs/results/tradeoff")   # tradeoff.csv, frontier_*.png, sensibleness*.png, verdict.txt,
                                            # report.md
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from infodec.eval.stats import mean_se
from infodec.results import ResultsFolder, plot_series
from infodec.studies.tradeoff.config import ATTRIBUTION, MEASURES, TradeoffConfig

LABELS = {
    "distinct1": "distinct-1 (within input)",
    "distinct2": "distinct-2 across an input's samples",
    "self_bleu": "self-BLEU (lower = more diverse)",
    "entropy": "mean per-token entropy of π (nats)",
    "pmi": "PMI with the evidence (nats / token)",
    "content_precision": "content-word precision vs evidence",
    "content_precision2": "content-bigram precision vs evidence",
    "similarity": "MiniLM cosine to the evidence",
    "perplexity": "perplexity under the evaluator",
    "nll": "NLL under the evaluator (nats / token)",
    "kl_to_model": "KL(π ‖ P_G) per token",
    "length": "tokens per output",
}
TABLE_MEASURES = (
    "distinct2",
    "self_bleu",
    "entropy",
    "pmi",
    "content_precision",
    "similarity",
    "perplexity",
    "kl_to_model",
)
CSV_NAME, VERDICT_NAME, MARKDOWN_NAME = "tradeoff.csv", "verdict.txt", "report.md"


def interval(values) -> dict[str, float]:
    """``{"mean", "ci" (1.96·SE), "n"}`` over the finite entries of ``values`` (NaN when none; ci NaN for n < 2)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"mean": float("nan"), "ci": float("nan"), "n": 0}
    s = mean_se(v)
    return {"mean": s["mean"], "ci": 1.96 * s["se"], "n": s["n"]}


# --- tables -----------------------------------------------------------------------------------------


def table_rows(records: Sequence[Mapping]) -> list[dict]:
    """One flat row per point: key, family, setting, then ``<measure>`` and ``<measure>_ci`` columns."""
    rows = []
    for r in records:
        row = {"key": r["key"], "family": r["family"], "setting": r["setting"]}
        for name in MEASURES:
            row[name], row[name + "_ci"] = r["measures"][name]["mean"], r["measures"][name]["ci"]
        c = r["corpus_distinct2"]
        row.update(
            corpus_distinct2=c["value"],
            corpus_distinct2_low=c["low"],
            corpus_distinct2_high=c["high"],
            seconds=r.get("seconds", float("nan")),
        )
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping], measures: Sequence[str] = TABLE_MEASURES) -> str:
    """A markdown table of :func:`table_rows` output: one line per point, ``mean ± ci`` per measure."""

    def cell(row, name):
        mean, ci = row[name], row[name + "_ci"]
        if not math.isfinite(mean):
            return "—"
        digits = 1 if name == "perplexity" else 3
        return f"{mean:.{digits}f} ± {ci:.{digits}f}" if math.isfinite(ci) else f"{mean:.{digits}f}"

    lines = ["| point | " + " | ".join(measures) + " |", "|---" * (len(measures) + 1) + "|"]
    lines += [f"| {row['key']} | " + " | ".join(cell(row, m) for m in measures) + " |" for row in rows]
    return "\n".join(lines)


# --- plots ------------------------------------------------------------------------------------------


def _series(records, x: str, y: str) -> dict[str, list[dict]]:
    series: dict[str, list[dict]] = {}
    for r in records:
        mx, my = r["measures"][x], r["measures"][y]
        if not (math.isfinite(mx["mean"]) and math.isfinite(my["mean"])):
            continue
        series.setdefault(r["family"], []).append(
            {
                x: mx["mean"],
                y: my["mean"],
                x + "_err": _finite(mx["ci"]),
                y + "_err": _finite(my["ci"]),
                "setting": r["setting"],
            }
        )
    return series


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def write_plots(records: Sequence[Mapping], folder: str | Path, *, diversity_measure: str = "distinct2") -> list[Path]:
    """``frontier_<a>.png`` for each attribution measure, ``sensibleness.png`` (evaluator NLL) and
    ``sensibleness_kl.png`` (``KL(π ‖ P_G)``, [P1]'s sensibleness), each against ``diversity_measure``, one
    curve per family, error bars 1.96·SE, points labelled by their setting."""
    folder = Path(folder)
    paths = []
    for name in ATTRIBUTION:
        paths.append(
            plot_series(
                folder / f"frontier_{name}.png",
                _series(records, diversity_measure, name),
                x=diversity_measure,
                y=name,
                xlabel=LABELS[diversity_measure],
                ylabel=LABELS[name],
                title=f"attribution ({name}) vs diversity",
                annotate="setting",
            )
        )
    for name, y, title in (
        ("sensibleness", "nll", "sensibleness (evaluator NLL) vs diversity"),
        ("sensibleness_kl", "kl_to_model", "sensibleness (KL to the model, [P1]) vs diversity"),
    ):
        paths.append(
            plot_series(
                folder / f"{name}.png",
                _series(records, diversity_measure, y),
                x=diversity_measure,
                y=y,
                xlabel=LABELS[diversity_measure],
                ylabel=LABELS[y],
                title=title,
                annotate="setting",
            )
        )
    return paths


# --- the verdict ------------------------------------------------------------------------------------


def paired_difference(
    a: Sequence[float | None] | np.ndarray, b: Sequence[float | None] | np.ndarray
) -> dict[str, float]:
    """``{"mean", "ci", "n"}`` of the per-input differences ``a − b`` (inputs where both are defined)."""
    a_values = np.asarray([np.nan if x is None else x for x in a], np.float64)
    b_values = np.asarray([np.nan if x is None else x for x in b], np.float64)
    return interval(a_values - b_values)


def _sign(diff: Mapping[str, float]) -> int:
    """+1 / −1 when the 95% CI excludes 0 on that side, else 0."""
    if diff["n"] < 2 or not math.isfinite(diff["ci"]):
        return 0
    return 1 if diff["mean"] - diff["ci"] > 0 else -1 if diff["mean"] + diff["ci"] < 0 else 0


def compare(attr: Mapping[str, float], div: Mapping[str, float]) -> str:
    """Classifies paired differences (candidate − reference) in attribution and diversity from their 95%
    CIs: "dominates" (neither significantly worse, at least one significantly better), "is dominated"
    (the reverse), "trades off" (one significantly better, the other significantly worse) or "is
    indistinguishable"; the reason follows in brackets."""
    sa, sd = _sign(attr), _sign(div)
    words = {1: "more", -1: "less", 0: "same"}
    reason = f"({words[sa]} attribution, {words[sd]} diversity{' within CIs' if 0 in (sa, sd) else ''})"
    if sa >= 0 and sd >= 0 and (sa or sd):
        return "dominates " + reason
    if sa <= 0 and sd <= 0 and (sa or sd):
        return "is dominated " + reason
    if sa and sd:
        return "trades off " + reason
    return "is indistinguishable " + reason


def kl_guided_verdict(
    records: Sequence[Mapping],
    *,
    attribution_measures: Sequence[str] = ATTRIBUTION,
    diversity_measure: str = "distinct2",
) -> list[str]:
    """Lines of text: for each KL-guided point and attribution measure, (1) paired differences against
    static temperature at the same ``t0`` and their classification (dominates / is dominated / trades off
    / is indistinguishable, from 95% CIs of per-input differences), (2) the attribution gap to the
    static-temperature curve interpolated (per input, linearly in mean diversity) at the KL-guided
    point's diversity. Ends with a one-line summary per measure."""
    by_key = {r["key"]: r for r in records}
    kl = [r for r in records if r["family"] == "kl_guided"]
    temps = sorted(
        (r for r in records if r["family"] == "temperature"), key=lambda r: r["measures"][diversity_measure]["mean"]
    )
    if not kl:
        return ["no KL-guided points in this sweep: nothing to compare"]
    n = kl[0]["measures"][diversity_measure]["n"]
    lines = [
        f"KL-guided vs static temperature at the same t0 (diversity = {diversity_measure}; paired 95% CIs "
        f"over {n} inputs):"
    ]
    summary = []
    for measure in attribution_measures:
        dominates = above = 0
        for r in kl:
            t0 = r["setting"].split(",")[0].split("=")[1]
            static = by_key.get(f"temperature/T={t0}")
            if static is None:
                lines.append(f"  {r['setting']}: no static temperature point T={t0}")
                continue
            d_attr = paired_difference(r["per_input"][measure], static["per_input"][measure])
            d_div = paired_difference(r["per_input"][diversity_measure], static["per_input"][diversity_measure])
            verdict = compare(d_attr, d_div)
            dominates += verdict.startswith("dominates")
            text = (
                f"  {measure}, {r['setting']} vs T={t0}: Δ{measure} {d_attr['mean']:+.4f} ± {d_attr['ci']:.4f}, "
                f"Δ{diversity_measure} {d_div['mean']:+.4f} ± {d_div['ci']:.4f} -> {verdict}"
            )
            gap = _frontier_gap(r, temps, measure, diversity_measure)
            if gap is None:
                text += f"; its {diversity_measure} is outside the static-temperature curve's range"
            else:
                diff, between = gap
                side = _sign(diff)
                above += side > 0
                text += (
                    f"; vs the temperature curve at equal {diversity_measure} ({between}): "
                    f"{diff['mean']:+.4f} ± {diff['ci']:.4f} -> "
                    + ("above" if side > 0 else "below" if side < 0 else "on")
                    + " it"
                )
            lines.append(text)
        summary.append(
            f"{measure}: KL-guided dominates static temperature at matched t0 in {dominates} of "
            f"{len(kl)} settings and lies significantly above the temperature frontier in {above} of "
            f"{len(kl)}"
        )
    return lines + ["Verdict:"] + ["  " + s for s in summary]


def _frontier_gap(point, temps, measure, diversity_measure):
    """Paired difference between ``point`` and the temperature curve interpolated at its diversity, or None."""
    x = point["measures"][diversity_measure]["mean"]
    xs = [t["measures"][diversity_measure]["mean"] for t in temps]
    for lo, hi, x_lo, x_hi in zip(temps, temps[1:], xs, xs[1:]):
        if x_lo <= x <= x_hi:
            w = 0.0 if x_hi == x_lo else (x - x_lo) / (x_hi - x_lo)
            a_lo = np.asarray([np.nan if v is None else v for v in lo["per_input"][measure]], np.float64)
            a_hi = np.asarray([np.nan if v is None else v for v in hi["per_input"][measure]], np.float64)
            return (
                paired_difference(point["per_input"][measure], (1 - w) * a_lo + w * a_hi),
                f"between {lo['setting']} and {hi['setting']}",
            )
    return None


# --- the report -------------------------------------------------------------------------------------


def render_markdown(
    config: TradeoffConfig, rows: Sequence[Mapping], plots: Sequence[Path], verdict: Sequence[str]
) -> str:
    """``report.md``: the settings, the table (mean ± 1.96·SE over inputs), the plots and the verdict."""
    sizes = (
        f"{config.num_inputs} {config.task} inputs × {config.num_samples} samples × at most "
        f"{config.max_new_tokens} tokens (evidence cut to {config.max_evidence_tokens} tokens), "
        f"model {config.model}, evaluator {config.evaluator or config.model}, seed {config.seed}"
    )
    lines = [
        "# Tradeoff sweep: sensibleness, diversity and attribution",
        "",
        sizes + ".",
        "",
        f"{len(rows)} points; mean ± 1.96·SE over inputs (`{CSV_NAME}` holds every measure).",
        "",
        markdown_table(rows),
        "",
    ]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## KL-guided temperature against static temperature", "", "```", *verdict, "```"]
    return "\n".join(lines) + "\n"


def write_files(
    config: TradeoffConfig, records: Sequence[Mapping], folder: ResultsFolder
) -> tuple[list[dict], Path, list[Path], list[str], Path]:
    """Writes ``tradeoff.csv``, the plots, ``verdict.txt`` and ``report.md`` into ``folder``; returns
    ``(rows, csv, plots, verdict, markdown)``."""
    rows = table_rows(records)
    csv = folder.write_csv(CSV_NAME, rows)
    plots = write_plots(records, folder.path)
    verdict = kl_guided_verdict(records)
    (folder.path / VERDICT_NAME).write_text("\n".join(verdict) + "\n")
    markdown = folder.path / MARKDOWN_NAME
    markdown.write_text(render_markdown(config, rows, plots, verdict))
    return rows, csv, plots, verdict, markdown


def write_report(folder: str | Path) -> Path:
    """Regenerates the tables, plots, verdict and ``report.md`` of a finished sweep from its
    ``points.jsonl`` and ``flags.json`` alone (no model, no recomputation); returns ``report.md``'s path."""
    results = ResultsFolder.reopen(folder)
    return write_files(TradeoffConfig.from_settings(results.settings), list(results.points().values()), results)[-1]
