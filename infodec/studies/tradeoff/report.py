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
from typing import NamedTuple

import numpy as np

from infodec.eval.stats import holm_adjust, mean_se, t_test_p_value
from infodec.models import registry
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


def _values(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Per-input values as float64, ``None`` (undefined for that input) as NaN."""
    return np.asarray([np.nan if x is None else x for x in values], np.float64)


def paired_difference(
    a: Sequence[float | None] | np.ndarray, b: Sequence[float | None] | np.ndarray
) -> dict[str, float]:
    """``{"mean", "ci", "n"}`` of the per-input differences ``a − b`` (inputs where both are defined)."""
    return interval(_values(a) - _values(b))


def paired_p_value(a: Sequence[float | None] | np.ndarray, b: Sequence[float | None] | np.ndarray) -> float:
    """Two-sided p-value of the paired t-test of "mean(a − b) = 0" over the inputs where both are defined
    (:func:`infodec.eval.stats.t_test_p_value`, Student's t with ``n − 1`` dof; NaN for ``n < 2``)."""
    d = _values(a) - _values(b)
    return t_test_p_value(d[np.isfinite(d)])


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


REFERENCE_FAMILIES = ("temperature", "top_k", "top_p")


class Gap(NamedTuple):
    """One matched-diversity comparison: KL-guided point ``setting`` against the ``family`` curve in
    ``measure``. ``diff`` (``{"mean", "ci", "n"}``, KL-guided − curve) and ``between`` (the two curve points
    interpolated) are None when the point's diversity is outside the curve's range; ``p`` is the raw
    two-sided paired t-test p-value (NaN when no test was made)."""

    measure: str
    setting: str
    family: str
    diff: dict[str, float] | None
    between: str | None
    p: float


def kl_guided_verdict(
    records: Sequence[Mapping],
    *,
    attribution_measures: Sequence[str] = ATTRIBUTION,
    diversity_measure: str = "distinct2",
    reference_families: Sequence[str] = REFERENCE_FAMILIES,
    alpha: float = 0.05,
) -> list[str]:
    """Lines of text comparing every KL-guided point with the static decoders, per attribution measure:

    1. paired differences against static temperature at the same ``t0`` and their classification
       (dominates / is dominated / trades off / is indistinguishable, from uncorrected 95% CIs of
       per-input differences, :func:`compare`);
    2. at matched diversity, against the curve of each of ``reference_families`` present in the sweep
       (its points sorted by mean diversity, interpolated per input linearly in mean diversity at the
       KL-guided point's mean diversity): the paired difference with its 95% CI and the two-sided paired
       t-test p-value (scipy's Student's t, :func:`paired_p_value`; the CI is 1.96·SE, so with few inputs it
       may exclude 0 at a raw p just above 0.05). Holm–Bonferroni runs over all ``m``
       such tests (every KL-guided point × measure × family inside the curve's range) at family-wise
       level ``alpha``; a point is "above" / "below" a curve only when its Holm-adjusted p is below
       ``alpha``, else "on" it. Families with fewer than two points get one line saying they are skipped.

    Ends with a summary per measure (1) and per measure and family (2)."""
    kl = [r for r in records if r["family"] == "kl_guided"]
    if not kl:
        return ["no KL-guided points in this sweep: nothing to compare"]
    curves = _curves(records, reference_families, diversity_measure)
    compared = [family for family, curve in curves.items() if len(curve) > 1]
    lines, summary = _same_t0(records, kl, attribution_measures, diversity_measure)
    gaps = [
        _frontier_gap(r, family, curves[family], measure, diversity_measure)
        for measure in attribution_measures
        for r in kl
        for family in compared
    ]
    adjusted = holm_adjust([g.p for g in gaps])
    sides = [_side(g, p, alpha) for g, p in zip(gaps, adjusted)]
    lines.append(_matched_header(compared, int(np.sum(~np.isnan(adjusted))), diversity_measure, alpha))
    lines += [_skip_line(family, curve) for family, curve in curves.items() if len(curve) < 2]
    lines += [_gap_line(g, p, side, diversity_measure) for g, p, side in zip(gaps, adjusted, sides)]
    for measure in attribution_measures:
        for family in compared:
            inside = [
                s for g, s in zip(gaps, sides) if g.measure == measure and g.family == family and g.diff is not None
            ]
            summary.append(_gap_summary(measure, family, inside, len(kl), diversity_measure))
    return lines + ["Verdict:"] + ["  " + s for s in summary]


def _matched_header(families: Sequence[str], m: int, diversity_measure: str, alpha: float) -> str:
    """The header of part (2) of :func:`kl_guided_verdict`: what is compared, the test and the correction."""
    return (
        f"KL-guided vs the static curves ({', '.join(families) or 'none'}) at equal {diversity_measure} (paired "
        f"per-input differences against each curve interpolated linearly in mean {diversity_measure}, 95% CIs; "
        f"two-sided paired t-tests; Holm–Bonferroni over m = {m} comparisons, family-wise α = {alpha:g}):"
    )


def _same_t0(records, kl, attribution_measures, diversity_measure) -> tuple[list[str], list[str]]:
    """Part (1) of :func:`kl_guided_verdict`: its header and one line per measure and KL-guided point,
    and one summary line per measure."""
    by_key = {r["key"]: r for r in records}
    n = kl[0]["measures"][diversity_measure]["n"]
    lines = [
        f"KL-guided vs static temperature at the same t0 (diversity = {diversity_measure}; paired 95% CIs "
        f"over {n} inputs):"
    ]
    summary = []
    for measure in attribution_measures:
        dominates = 0
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
            lines.append(
                f"  {measure}, {r['setting']} vs T={t0}: Δ{measure} {d_attr['mean']:+.4f} ± {d_attr['ci']:.4f}, "
                f"Δ{diversity_measure} {d_div['mean']:+.4f} ± {d_div['ci']:.4f} -> {verdict}"
            )
        summary.append(
            f"{measure}: KL-guided dominates static temperature at matched t0 in {dominates} of {len(kl)} settings"
        )
    return lines, summary


def _curves(records, families, diversity_measure) -> dict[str, list[Mapping]]:
    """Each of ``families``' points, sorted by mean diversity (an empty list for a family not swept)."""
    return {
        family: sorted(
            (r for r in records if r["family"] == family), key=lambda r: r["measures"][diversity_measure]["mean"]
        )
        for family in families
    }


def _frontier_gap(point, family, curve, measure, diversity_measure) -> Gap:
    """``point`` against ``curve`` (sorted by mean diversity) interpolated per input at its mean
    diversity, linearly between the two curve points around it."""
    x = point["measures"][diversity_measure]["mean"]
    xs = [c["measures"][diversity_measure]["mean"] for c in curve]
    for lo, hi, x_lo, x_hi in zip(curve, curve[1:], xs, xs[1:]):
        if x_lo <= x <= x_hi:
            w = 0.0 if x_hi == x_lo else (x - x_lo) / (x_hi - x_lo)
            reference = (1 - w) * _values(lo["per_input"][measure]) + w * _values(hi["per_input"][measure])
            attr = point["per_input"][measure]
            between = f"between {lo['setting']} and {hi['setting']}"
            return Gap(
                measure,
                point["setting"],
                family,
                paired_difference(attr, reference),
                between,
                paired_p_value(attr, reference),
            )
    return Gap(measure, point["setting"], family, None, None, float("nan"))


def _side(gap: Gap, adjusted: float, alpha: float) -> int:
    """+1 / −1 when the Holm-adjusted p is below ``alpha`` (the sign of the difference), 0 otherwise or
    when no test was made."""
    if gap.diff is None or not adjusted < alpha:
        return 0
    return 1 if gap.diff["mean"] > 0 else -1 if gap.diff["mean"] < 0 else 0


def _skip_line(family: str, curve: Sequence[Mapping]) -> str:
    """The line saying why ``family`` has no curve to compare against."""
    if not curve:
        return f"  no {family} points in this sweep: skipped"
    return f"  {family} has a single point ({curve[0]['setting']}), no curve: skipped"


def _gap_line(gap: Gap, adjusted: float, side: int, diversity_measure: str) -> str:
    """One matched-diversity comparison: the difference ± 95% CI, raw and Holm-adjusted p, the side."""
    head = f"  {gap.measure}, {gap.setting} vs the {gap.family} curve"
    if gap.diff is None:
        return f"{head}: its {diversity_measure} is outside the {gap.family} curve's range"
    where = {1: "above", -1: "below", 0: "on"}[side]
    return (
        f"{head} at equal {diversity_measure} ({gap.between}): {gap.diff['mean']:+.4f} ± {gap.diff['ci']:.4f}, "
        f"p = {gap.p:.3g}, Holm-adjusted p = {adjusted:.3g} -> {where} it"
    )


def _gap_summary(measure: str, family: str, sides: Sequence[int], settings: int, diversity_measure: str) -> str:
    """How many of the KL-guided settings inside ``family``'s range lie significantly above / below it, and
    what that says of [P2]'s claim (:func:`claim_status`)."""
    outside = settings - len(sides)
    return (
        f"{measure} vs {family}: KL-guided significantly above the {family} curve at equal {diversity_measure} "
        f"in {sides.count(1)} of {len(sides)} settings (Holm-adjusted), below in {sides.count(-1)}"
        + (f"; {outside} of {settings} outside its {diversity_measure} range" if outside else "")
        + f" -> {claim_status(sides)}"
    )


def claim_status(sides: Sequence[int]) -> str:
    """[P2]'s claim "KL-guided temperature attributes more than a static decoder at equal diversity" for one
    measure and family, from the Holm-corrected sides (+1 above, −1 below, 0 on) of the KL-guided settings
    inside the curve's range. Fixed before any run: "held" when a majority is above and none below,
    "failed" when any is below, "not shown" otherwise, "not tested" when no setting is inside the range."""
    if not sides:
        return "not tested"
    if -1 in sides:
        return "failed"
    return "held" if 2 * sides.count(1) > len(sides) else "not shown"


# --- the report -------------------------------------------------------------------------------------


def render_markdown(
    config: TradeoffConfig, rows: Sequence[Mapping], plots: Sequence[Path], verdict: Sequence[str]
) -> str:
    """``report.md``: the settings, the table (mean ± 1.96·SE over inputs), the plots and the verdict."""
    sizes = (
        f"{config.num_inputs} {config.task} inputs × {config.num_samples} samples × at most "
        f"{config.max_new_tokens} tokens (evidence cut to {config.max_evidence_tokens} tokens), "
        f"chat template {config.chat_template}, seed {config.seed}"
    )
    evaluator = config.evaluator or config.model
    lines = [
        "# Tradeoff sweep: sensibleness, diversity and attribution",
        "",
        sizes + ".",
        "",
        f"Decoding model `{config.model}`: {registry.describe(config.model)}.",
        f"PMI and the NLL are scored by `{evaluator}`"
        + (" (the decoding model)." if evaluator == config.model else f": {registry.describe(evaluator)}."),
        "",
        f"{len(rows)} points; mean ± 1.96·SE over inputs (`{CSV_NAME}` holds every measure).",
        "",
        markdown_table(rows),
        "",
    ]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## KL-guided temperature against static temperature, top-k and top-p", "", "```", *verdict, "```"]
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
