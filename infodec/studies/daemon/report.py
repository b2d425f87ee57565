"""The DAEMON study's tables, plots and ``report.md``, from a results folder's files alone.

:func:`write_report` reads ``points.jsonl`` and ``flags.json`` (no model, no recomputation) and writes

* ``main.csv``: one row per corpus × decoder of the main table (every metric's mean and SE, pooled
  diversity, MAUVE, the text's perplexity under the model; DAEMON's row adds the human text's perplexity
  under the model and under ``q_µ`` and the ESS), with ``human_split`` (the eval-split windows, SE
  clustered by document) after ``human`` and ``daemon_expected`` / ``sampling_expected`` (expectations
  over the resampling step, from DAEMON's candidates) after ``daemon``;
* ``gaps.csv``: per corpus × decoder × metric, the gap to human in standard-error units, two ways (see
  :func:`gap_rows`): paired against the same prompts' human continuations (SE of the per-prompt
  difference, clustered by document), and against the reference human row (``human_split`` when
  measured) in units of the combined SE ``sqrt(se_decoder² + se_human²)``;
* ``human_perplexity.csv``: the human texts' perplexity under p_θ and ``q_µ`` from the
  ``human_perplexity`` point (``Ẑ`` from N fresh samples per prompt): the ratio with its clustered CI,
  the N sweep's 1/N extrapolation, and the ε-perplexities;
* ``sweeps.csv``: the M sweep and the proposal-temperature sweep;
* ``main_gaps.png``, ``m_sweep.png``, ``temperature.png``;
* ``report.md``: the settings, the fit, the main table with the decoder closest to human per metric, the
  sweeps and the SR-4 study, linking the plots.

Rows follow the settings' order (corpora, then human, the baselines as listed, DAEMON; sweep values as
listed), not the order points finished in, so a resumed folder reads like a fresh one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infodec.eval.stats import combined_se, in_se_units
from infodec.results import ResultsFolder, plot_series
from infodec.studies.daemon.config import DaemonConfig

HUMAN_ROWS = ("human", "human_split")
Records = dict[str, dict]


def load(folder: str | Path) -> tuple[ResultsFolder, DaemonConfig, Records]:
    """``(results folder, config, records)`` of a finished (or partial) run, from its files."""
    results = ResultsFolder.reopen(folder)
    return results, DaemonConfig.from_flags(results.settings), results.points()


def write_report(folder: str | Path) -> Path:
    """Regenerates the folder's CSV tables, PNG plots and ``report.md`` from ``points.jsonl`` and
    ``flags.json``; returns the path of ``report.md``."""
    results, config, records = load(folder)
    write_tables_and_plots(results, records, config)
    target = results.path / "report.md"
    target.write_text(markdown(results.path, records, config))
    return target


# --- tables -----------------------------------------------------------------------------------------


def _metric_row(corpus: str, decoder: str, metrics: dict, names: Sequence[str]) -> dict[str, Any]:
    row = {"corpus": corpus, "decoder": decoder, "n": metrics[names[0]]["n"]}
    for name in names:
        row[name] = metrics[name]["mean"]
        row[name + "_se"] = metrics[name]["se"]
    return row


def _in_order(records: Records, config: DaemonConfig, study: str) -> list[dict]:
    """The records of ``study`` in the settings' order (corpora; decoders; sweep values)."""
    decoders = ["human", *config.baselines, "daemon"]
    m_values, taus = list(config.m_values), [f"{t:g}" for t in config.proposal_temperatures]

    def rank(values: list, value: Any) -> int:
        return values.index(value) if value in values else len(values)

    def key(r: dict) -> tuple[int, int]:
        within = {
            "main": lambda: rank(decoders, r.get("decoder")),
            "m_sweep": lambda: rank(m_values, r.get("num_candidates")),
            "temperature": lambda: rank(taus, f"{r.get('proposal_temperature', 0):g}"),
            "fit": lambda: rank(taus, f"{r.get('proposal_temperature', 0):g}"),
        }.get(study, lambda: 0)
        return rank(list(config.corpora), r.get("corpus")), within()

    return sorted((r for r in records.values() if r.get("study") == study), key=key)


def main_rows(records: Records, config: DaemonConfig) -> list[dict[str, Any]]:
    """One ``main.csv`` row per main-table point, plus ``human_split`` after ``human`` and
    ``daemon_expected`` / ``sampling_expected`` after ``daemon`` (module docstring)."""
    rows, names = [], config.metrics
    for r in _in_order(records, config, "main"):
        row = _metric_row(r["corpus"], r["decoder"], r["metrics"], names)
        row["pooled_div"] = r["pooled_diversity"]["diversity"]
        row["mauve"] = r["mauve"]["mauve"] if "mauve" in r else None
        row["mauve_spread"] = r["mauve"]["spread"] if "mauve" in r else None
        row["ppl_of_text"] = r["perplexity"]["ppl"]
        if "human_perplexity" in r:
            row["human_ppl_model"] = r["human_perplexity"]["ppl_model"]
            row["human_ppl_daemon"] = r["human_perplexity"]["ppl_q"]
            row["ess"] = r["ess"]["mean"]
        rows.append(row)
        if "human_split" in r:
            rows.append(_metric_row(r["corpus"], "human_split", r["human_split"]["metrics"], names))
        expected = r.get("expected_over_resampling", {})
        for who in ("daemon", "plain") if expected else ():
            rows.append(
                {
                    **_metric_row(
                        r["corpus"], f"{'sampling' if who == 'plain' else who}_expected", expected[who], names
                    ),
                    "ppl_of_text": float(np.exp(expected["nll_per_row"][who]["mean"])),
                }
            )
    return rows


def sweep_rows(records: Records, config: DaemonConfig) -> list[dict[str, Any]]:
    """One ``sweeps.csv`` row per M-sweep point, then per proposal-temperature point."""
    rows = [
        {
            "study": "m_sweep",
            "corpus": r["corpus"],
            "M": r["num_candidates"],
            "gap_mean_abs": r["gap"]["mean_abs"],
            "ess": r["ess"]["mean"],
            "ess_se": r["ess"]["se"],
            "decode_s": r["decode_s"],
        }
        for r in _in_order(records, config, "m_sweep")
    ]
    for r in _in_order(records, config, "temperature"):
        metrics = r["metrics"]
        rows.append(
            {
                "study": "temperature",
                "corpus": r["corpus"],
                "tau": r["proposal_temperature"],
                "form": r.get("form", "corrected"),  # folders from before the uncorrected form hold only this
                "ess": r["ess"]["mean"],
                **{n: metrics[n]["mean"] for n in metrics},
                **{f"{n}_se": metrics[n]["se"] for n in metrics},
            }
        )
    return rows


def gap_rows(records: Records, config: DaemonConfig) -> list[dict[str, Any]]:
    """One ``gaps.csv`` row per corpus × decoder × metric of the main table.

    Two SEs, because two human references exist. ``paired_*``: the decoder's continuation minus the human
    continuation of the same prompt, averaged over prompts, with the SE of that paired difference
    clustered by document (``eval.stats.paired_difference``; it counts the covariance the shared prompts
    induce, so it is the SE of the gap actually measured); only in points that stored ``paired_gap``.
    ``combined_*``: decoder mean minus the reference human row's mean (the eval-split windows when
    measured, else the prompts' continuations) in units of ``sqrt(se_decoder² + se_reference²)``, which
    treats the two means as independent (conservative when they share windows)."""
    rows, names = [], config.metrics
    table = main_rows(records, config)
    for corpus in dict.fromkeys(r["corpus"] for r in table):
        reference, decoders = _reference_and_decoders([r for r in table if r["corpus"] == corpus])
        by_decoder = {r["decoder"]: r for r in _in_order(records, config, "main") if r["corpus"] == corpus}
        for d in decoders:
            paired = by_decoder.get(d["decoder"], {}).get("paired_gap", {})
            for n in names:
                row: dict[str, Any] = {"corpus": corpus, "decoder": d["decoder"], "metric": n}
                if reference is not None:
                    se = combined_se(d[n + "_se"], reference[n + "_se"])
                    row.update(
                        reference=reference["decoder"],
                        combined_gap=d[n] - reference[n],
                        combined_se=se,
                        gap_in_combined_se=in_se_units(d[n] - reference[n], se),
                    )
                if n in paired:
                    p = paired[n]
                    row.update(
                        paired_gap=p["mean"],
                        paired_se=p["se"],
                        gap_in_paired_se=in_se_units(p["mean"], p["se"]),
                        clusters=p.get("clusters"),
                    )
                rows.append(row)
    return rows


def perplexity_rows(records: Records, config: DaemonConfig) -> list[dict[str, Any]]:
    """One ``human_perplexity.csv`` row per ``human_perplexity`` point (corpora in the settings' order)."""
    rows = []
    for r in _in_order(records, config, "human_perplexity"):
        paired, eps, sweep = r["paired"], r["eps_paired"], r["n_sweep"]
        rows.append(
            {
                "corpus": r["corpus"],
                "N": r["num_samples"],
                "texts": r["num_texts"],
                "clusters": paired["clusters"],
                "ppl_model": r["ppl_model"],
                "ppl_q": r["ppl_q"],
                "ppl_ratio": paired["ppl_ratio"],
                "ppl_ratio_low": paired["ppl_ratio_low"],
                "ppl_ratio_high": paired["ppl_ratio_high"],
                "level": paired["level"],
                "ppl_q_extrapolated": sweep["ppl_q_extrapolated"],
                "slope_1_over_n": sweep["slope"],
                "bias_at_N": sweep["bias_at_largest"],
                "epsilon": r["epsilon"],
                "eps_ppl_model": r["eps_ppl_model"],
                "eps_ppl_q": r["eps_ppl_q"],
                "eps_ppl_ratio": eps["ppl_ratio"],
                "eps_ppl_ratio_low": eps["ppl_ratio_low"],
                "eps_ppl_ratio_high": eps["ppl_ratio_high"],
            }
        )
    return rows


def _reference_and_decoders(group: list[dict]) -> tuple[dict | None, list[dict]]:
    """The human row decoders are compared with (the eval-split windows when measured, else the
    prompts' own continuations) and the decoders' rows."""
    by_name = {r["decoder"]: r for r in group}
    reference = by_name.get("human_split", by_name.get("human"))
    return reference, [r for r in group if r["decoder"] not in HUMAN_ROWS]


# --- plots ------------------------------------------------------------------------------------------


def write_tables_and_plots(folder: ResultsFolder, records: Records, config: DaemonConfig) -> None:
    """``main.csv``, ``sweeps.csv`` and the PNGs: ``main_gaps.png`` (each decoder's standardised gap to
    human per metric), ``m_sweep.png`` (gap and ESS against M), ``temperature.png`` (diversity against
    coherence over the proposal temperature); each only when its points exist."""
    main = main_rows(records, config)
    if main:
        folder.write_csv("main.csv", main)
        plot_gaps(folder.path / "main_gaps.png", main, config.metrics)
        gaps = gap_rows(records, config)
        if gaps:
            folder.write_csv("gaps.csv", gaps)
    ppl = perplexity_rows(records, config)
    if ppl:
        folder.write_csv("human_perplexity.csv", ppl)
    sweeps = sweep_rows(records, config)
    if sweeps:
        folder.write_csv("sweeps.csv", sweeps)
    m_points = [p for p in sweeps if p["study"] == "m_sweep"]
    if m_points:
        plot_series(
            folder.path / "m_sweep.png",
            {
                "mean |gap to human| (human SD)": [{"M": p["M"], "y": p["gap_mean_abs"]} for p in m_points],
                "ESS / M": [
                    {"M": p["M"], "y": p["ess"] / p["M"], "y_err": 1.96 * p["ess_se"] / p["M"]} for p in m_points
                ],
            },
            x="M",
            y="y",
            xlabel="candidates M",
            ylabel="value",
            title="DAEMON: gap to human and ESS against M",
        )
    t_points = [p for p in sweeps if p["study"] == "temperature"]
    if t_points and "div" in config.metrics and "coh" in config.metrics:
        plot_series(
            folder.path / "temperature.png",
            {
                f"DAEMON ({form})": [
                    {
                        "div": p["div"],
                        "coh": p["coh"],
                        "div_err": 1.96 * p["div_se"],
                        "coh_err": 1.96 * p["coh_se"],
                        "tau": p["tau"],
                    }
                    for p in t_points
                    if p["form"] == form
                ]
                for form in dict.fromkeys(p["form"] for p in t_points)
            },
            x="div",
            y="coh",
            annotate="tau",
            xlabel="diversity (div)",
            ylabel="coherence (coh)",
            title="Proposal temperature τ: diversity vs coherence",
        )


def plot_gaps(path: Path, rows: list[dict], metric_names: Sequence[str]) -> None:
    """Grouped bars of ``(decoder − human) / human SD`` per metric, one panel per corpus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora_ = list(dict.fromkeys(r["corpus"] for r in rows))
    fig, axes = plt.subplots(len(corpora_), 1, figsize=(8, 3.2 * len(corpora_)), dpi=110, squeeze=False)
    for ax, corpus in zip(axes[:, 0], corpora_):
        group = [r for r in rows if r["corpus"] == corpus]
        reference, decoders = _reference_and_decoders(group)
        human = next((r for r in group if r["decoder"] == "human"), None)
        if human is None or reference is None:
            continue
        width = 0.8 / max(len(decoders), 1)
        for i, r in enumerate(decoders):
            # the human SD is the prompts' continuations' (one window each); the reference may be the split's mean
            gaps = [(r[n] - reference[n]) / max(human[n + "_se"] * np.sqrt(human["n"]), 1e-12) for n in metric_names]
            ax.bar(np.arange(len(metric_names)) + i * width - 0.4 + width / 2, gaps, width, label=r["decoder"])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(metric_names)), metric_names)
        ax.set_ylabel("(decoder − human) / human SD")
        where = (
            f"{reference['n']} eval-split windows"
            if reference["decoder"] == "human_split"
            else "the prompts' continuations"
        )
        ax.set_title(f"{corpus}: distance to human text per metric (0 = human mean over {where})", fontsize=10)
        ax.legend(fontsize=6, ncol=3)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- Markdown ---------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def summary(records: Records, config: DaemonConfig) -> str:
    """Markdown: per corpus, the main table and which decoder is closest to human per metric."""
    rows, names = main_rows(records, config), list(config.metrics)
    lines: list[str] = []
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        group = [r for r in rows if r["corpus"] == corpus]
        reference, decoders = _reference_and_decoders(group)
        cols = names + ["mauve", "ppl_of_text"]
        lines += [f"### {corpus}", "", "| decoder | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for r in group:
            cells = [
                f"{r[c]:.4g} ± {r[c + '_se']:.2g}" if c in names else ("–" if r.get(c) is None else f"{r[c]:.3g}")
                for c in cols
            ]
            lines.append(f"| {r['decoder']} | " + " | ".join(cells) + " |")
        if reference is not None and decoders:
            ref: dict = reference  # the key lambda below does not see the narrowing of the loop variable
            closest = {n: min(decoders, key=lambda r: abs(r[n] - ref[n]))["decoder"] for n in names}
            lines += ["", f"closest to {reference['decoder']}: " + ", ".join(f"{n}: {d}" for n, d in closest.items())]
        daemon = next((r for r in group if r["decoder"] == "daemon"), None)
        if daemon is not None and "human_ppl_model" in daemon:
            lines.append(
                f"human-text perplexity: {daemon['human_ppl_model']:.2f} under the model, "
                f"{daemon['human_ppl_daemon']:.2f} under DAEMON's q_µ"
            )
        lines.append("")
    return "\n".join(lines)


def _settings_text(config: DaemonConfig) -> str:
    values = ", ".join(f"{v:g}" for v in config.l2_values)
    ridge = f"chosen by {config.l2_folds}-fold cross-validation among {values}" if values else f"{config.l2:g}"
    return (
        f"{config.describe_models()} Corpora {', '.join(config.corpora)}; metrics {', '.join(config.metrics)}. "
        f"Algorithm 1 on J = {config.num_fit_prefixes} fit prefixes × N = {config.num_fit_samples} samples "
        f"(target: the human mean over the {'fit split' if config.fit_target == 'split' else 'fit prefixes'}; "
        f"ridge {ridge}); {config.num_eval_prompts} eval prompts, M = {config.num_candidates} candidates; "
        f"{config.prompt_tokens}-token prompts, {config.max_new_tokens} new tokens (EOS suppressed); "
        f"seed {config.seed}."
    )


def _fit_section(records: Records, config: DaemonConfig) -> list[str]:
    fits = _in_order(records, config, "fit")
    if not fits:
        return []
    rows = [
        [
            r["corpus"],
            f"{r['proposal_temperature']:g}",
            ", ".join(f"{m:.3g}" for m in r["mu"]),
            str(r["converged"]),
            f"{r['residual_norm_standardized']:.3g}",
            f"{r['ess']['mean']:.3g} (min {r['ess_min']:.3g})",
            f"{r['l2_cross_validation']['l2']:g}" if "l2_cross_validation" in r else "–",
        ]
        for r in fits
    ]
    return [
        "## Algorithm 1: the fit",
        "",
        f"µ per metric in the order {', '.join(config.metrics)}.",
        "",
        *_table(["corpus", "τ", "µ", "converged", "‖residual‖ (SD)", "ESS per prefix", "ridge (CV)"], rows),
        "",
    ]


def _sweep_sections(records: Records, config: DaemonConfig, folder: Path) -> list[str]:
    sweeps, lines = sweep_rows(records, config), []
    m_points = [p for p in sweeps if p["study"] == "m_sweep"]
    if m_points:
        rows = [
            [str(p["M"]), f"{p['gap_mean_abs']:.3g}", f"{p['ess']:.3g} ± {p['ess_se']:.2g}", f"{p['decode_s']:.1f}"]
            for p in m_points
        ]
        lines += ["## M sweep", "", *_table(["M", "mean \\|gap to human\\| (human SD)", "ESS", "decode s"], rows), ""]
        lines += ["![gap and ESS against M](m_sweep.png)", ""] if (folder / "m_sweep.png").exists() else []
    t_points = [p for p in sweeps if p["study"] == "temperature"]
    if t_points:
        names = [n for n in config.metrics if n in t_points[0]]
        rows = [
            [f"{p['tau']:g}", p["form"], f"{p['ess']:.3g}", *(f"{p[n]:.4g} ± {p[n + '_se']:.2g}" for n in names)]
            for p in t_points
        ]
        lines += ["## Proposal temperature", "", *_table(["τ", "form", "ESS", *names], rows), ""]
        if (folder / "temperature.png").exists():
            lines += ["![diversity against coherence](temperature.png)", ""]
    return lines


def _gap_section(records: Records, config: DaemonConfig) -> list[str]:
    """Per corpus: each decoder's gap to human per metric in SE units, paired (the SE of the per-prompt
    difference, clustered by document) and, in brackets, against the reference row in combined-SE units."""
    rows, lines = gap_rows(records, config), []
    names = list(config.metrics)
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        group = [r for r in rows if r["corpus"] == corpus]
        reference = next((r["reference"] for r in group if "reference" in r), "human")

        def cell(r: dict) -> str:
            paired = f"{r['gap_in_paired_se']:+.2f}" if "gap_in_paired_se" in r else "–"
            combined = f"{r['gap_in_combined_se']:+.2f}" if "gap_in_combined_se" in r else "–"
            return f"{paired} ({combined})"

        decoders = list(dict.fromkeys(r["decoder"] for r in group))
        table = [
            [d, *(cell(next(r for r in group if r["decoder"] == d and r["metric"] == n)) for n in names)]
            for d in decoders
        ]
        lines += [
            f"### {corpus}: gap to human in standard errors",
            "",
            "Each cell: (decoder − the same prompts' human continuations) / the SE of that paired difference, "
            f"clustered by document; in brackets (decoder − {reference}) / sqrt(se_decoder² + se_{reference}²). "
            "|value| > 2 is a gap the eval prompts resolve. `gaps.csv` holds the gaps and SEs.",
            "",
            *_table(["decoder", *names], table),
            "",
        ]
    return lines


def _perplexity_section(records: Records, config: DaemonConfig) -> list[str]:
    """The ``human_perplexity`` points: ratio ppl(q)/ppl(p_θ) with its CI, the N sweep, the ε-perplexity."""
    lines = []
    for r in _in_order(records, config, "human_perplexity"):
        paired, eps, sweep = r["paired"], r["eps_paired"], r["n_sweep"]
        level = f"{100 * paired['level']:g}%"
        sweep_rows = [
            [str(n), str(g), f"{np.exp(v):.4g}"] for n, g, v in zip(sweep["sizes"], sweep["groups"], sweep["nll_q"])
        ]
        sweep_rows.append(["∞ (a + b/N fit)", "–", f"{sweep['ppl_q_extrapolated']:.4g}"])
        lines += [
            f"## Human-text perplexity under q_µ ({r['corpus']})",
            "",
            f"{r['num_texts']} human continuations ({paired['clusters']} documents, {r['num_tokens']:.0f} tokens); "
            f"Ẑ from N = {r['num_samples']} fresh samples per prompt. Perplexity {r['ppl_model']:.4g} under the "
            f"model, {r['ppl_q']:.4g} under q_µ: ratio {paired['ppl_ratio']:.4f}, {level} CI "
            f"[{paired['ppl_ratio_low']:.4f}, {paired['ppl_ratio_high']:.4f}] (paired over texts, clustered by "
            f"document, t with {paired['dof']} d.o.f.; covers the Monte Carlo noise of Ẑ, not its 1/N bias).",
            "",
            f"1/N bias of log Ẑ: fitted nll_q(N) = a + b/N with b = {sweep['slope']:.3g}, so at N = "
            f"{r['num_samples']} the estimate sits {sweep['bias_at_largest']:+.2g} nats/token from N → ∞ "
            f"(ratio at N → ∞: {np.exp(sweep['intercept'] - sweep['nll_p']):.4f}).",
            "",
            *_table(["N", "groups averaged", "ppl under q"], sweep_rows),
            "",
            f"ε-perplexity (Martins et al. 2020, ε = {r['epsilon']:g}): {r['eps_ppl_model']:.4g} under the model, "
            f"{r['eps_ppl_q']:.4g} under q_µ (ratio {eps['ppl_ratio']:.4f}, {level} CI "
            f"[{eps['ppl_ratio_low']:.4f}, {eps['ppl_ratio_high']:.4f}]).",
            "",
        ]
    return lines


def _sr4_section(records: Records) -> list[str]:
    lines = []
    for r in (r for r in records.values() if r.get("study") == "sr4"):
        cells = {
            "human (eval split)": r["human"],
            "human (prompts)": r.get("human_prompts"),
            "plain": r["plain"],
            "DAEMON": r["daemon"],
        }
        expected = r.get("expected_over_resampling", {})
        cells.update({"plain, expected": expected.get("plain"), "DAEMON, expected": expected.get("daemon")})
        rows = [[who, f"{v['mean']:.4g} ± {v['se']:.2g}", str(v["n"])] for who, v in cells.items() if v]
        lines += [
            f"## SR-4 study ({r['corpus']}): µ fitted on {r['metric']} alone",
            "",
            *_table(["text", r["metric"], "n"], rows),
            "",
            f"µ = {', '.join(f'{m:.3g}' for m in r['fit']['mu'])}"
            f" (target {r['fit']['target'][0]:.4g}, fitted {r['fit']['fitted_moments'][0]:.4g}); "
            f"ESS {r['daemon_ess']['mean']:.3g} of {r['sizes']['num_candidates']}.",
        ]
        for who, gap in r.get("paired_gap_to_human_prompts", {}).items():
            lines.append(
                f"{who} − human (same prompts, paired, SE clustered by document): {gap['mean']:+.4g} ± "
                f"{gap['se']:.2g} ({in_se_units(gap['mean'], gap['se']):+.2f} SE, {gap['clusters']} documents)."
            )
        if "perplexity" in r:
            lines.append(
                f"Perplexity under the model: plain {r['perplexity']['plain']['ppl']:.2f}, DAEMON "
                f"{r['perplexity']['daemon']['ppl']:.2f}, human {r['perplexity']['human']['ppl']:.2f}."
            )
        lines.append("")
    return lines


def markdown(folder: Path, records: Records, config: DaemonConfig) -> str:
    """The text of ``report.md`` (module docstring)."""
    lines = [
        f"# DAEMON: {folder.name}",
        "",
        "Generated by `infodec.studies.daemon.report.write_report` from `points.jsonl` and `flags.json`; "
        "rerun `python -m experiments.report --study=daemon <folder>` instead of editing.",
        "",
        _settings_text(config),
        "",
        *_fit_section(records, config),
    ]
    table = summary(records, config)
    if table:
        lines += [
            "## Main table",
            "",
            "Each metric's mean ± SE over the eval prompts (SE clustered by the prompts' documents in runs "
            "that record clusters); MAUVE against the human "
            "continuations of the same prompts; the text's perplexity under the model.",
            "",
            table,
        ]
        lines += ["![gap to human per metric](main_gaps.png)", ""] if (folder / "main_gaps.png").exists() else []
        lines += _gap_section(records, config)
    lines += _perplexity_section(records, config)
    lines += _sweep_sections(records, config, folder) + _sr4_section(records)
    return "\n".join(lines).rstrip() + "\n"


__all__ = [
    "write_report",
    "load",
    "main_rows",
    "sweep_rows",
    "gap_rows",
    "perplexity_rows",
    "write_tables_and_plots",
    "plot_gaps",
    "summary",
    "markdown",
]
