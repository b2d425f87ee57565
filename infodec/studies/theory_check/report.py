"""The theory check's tables, plot and ``report.md``, from its point records alone.

Each check is one JSON record in ``points.jsonl`` (``kind``, ``model``, ``name``, ``passed``, ``summary``
and the numbers behind the verdict); :func:`write_report` regenerates ``checks.csv``, ``gaps.csv``,
``theory.png`` and ``report.md`` of a finished folder without building a model::

    write_report("docs/results/theory_check")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from infodec.results import ResultsFolder
from infodec.studies.theory_check.config import ALPHA, EVIDENCE_TOKENS, PROMPT_TOKENS, TOLERANCES, ReportConfig

PLOT_NAME, MARKDOWN_NAME = "theory.png", "report.md"


@dataclasses.dataclass
class Report:
    """What ``study.run_report`` returns: the records (one per check, in order), the files, the verdict,
    and what this call did (``computed`` points in ``seconds``)."""

    config: ReportConfig
    records: list[dict]
    folder: Path
    markdown_path: Path
    csv_paths: list[Path]
    plot_path: Path
    computed: int
    seconds: float

    @property
    def passed(self) -> bool:
        return all(r["passed"] for r in self.records)

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.records if not r["passed"]]

    def lines(self) -> list[str]:
        """One ``PASS``/``FAIL`` line per check, then the verdict."""
        out = [f"{'PASS' if r['passed'] else 'FAIL'}  {r['key']}: {r['summary']}" for r in self.records]
        out.append(
            f"{len(self.records) - len(self.failures)}/{len(self.records)} checks passed"
            + ("" if self.passed else f"; FAILED: {', '.join(r['key'] for r in self.failures)}")
        )
        return out


def _flat(record: dict) -> dict:
    keep = (
        "key",
        "kind",
        "model",
        "name",
        "passed",
        "max_abs_diff",
        "tolerance",
        "value",
        "min_gap",
        "min_gap_decoder",
        "closed_form_gap",
        "statistic",
        "dof",
        "p_value",
        "samples",
        "seconds",
        "summary",
    )
    return {k: record.get(k, "") for k in keep}


def _measured(records: list[dict], kind: str) -> list[dict]:
    """The records of one kind that hold numbers (not the error records of crashed checks)."""
    return [r for r in records if r["kind"] == kind and "error" not in r]


def _gap_rows(records: list[dict]) -> list[dict]:
    return [
        {
            "model": r["model"],
            "setting": r["name"],
            "value": r["value"],
            **{f"gap[{k}]": v for k, v in r["gaps"].items()},
        }
        for r in _measured(records, "dp-vs-myopic")
    ]


FLOOR = 1e-17  # where exact zeros are drawn on the log-scale panels
P_FLOOR = 1e-30  # where tiny p-values are drawn


def _legend(ax, fontsize: int) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def plot_report(path: Path, records: list[dict]) -> Path:
    """Three panels: the gap ``V(root) − J(closed form)`` per model and setting; ``max |Δπ|`` of every
    closed-form and exact-case check (log scale, with tolerances); chi-square p-values (log scale, α)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), dpi=110)
    gaps = _measured(records, "dp-vs-myopic")
    settings = list(dict.fromkeys(r["name"] for r in gaps))
    models = sorted({r["model"] for r in gaps})
    width = 0.8 / max(len(models), 1)
    ax = axes[0]
    for k, m in enumerate(models):
        by = {r["name"]: r for r in gaps if r["model"] == m}
        x = np.arange(len(settings)) + (k - (len(models) - 1) / 2) * width
        ax.bar(
            x,
            [max(by[s]["closed_form_gap"], FLOOR) if s in by else np.nan for s in settings],
            width,
            label=f"model {m}: its closed form ValuePolicy(β, γ, λ, PMI)",
        )
        ax.scatter(
            x,
            [max(by[s]["min_gap"], FLOOR) if s in by else np.nan for s in settings],
            marker="_",
            color="k",
            s=60,
            zorder=3,
            label="best myopic decoder (smallest gap)" if k == 0 else None,
        )
    ax.set_xticks(np.arange(len(settings)))
    ax.set_xticklabels(settings, rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("V(root) − J(myopic decoder)  (nats)")
    ax.set_title("DP optimum minus myopic decoders (all must be ≥ 0)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    _legend(ax, 6)

    ax = axes[1]
    diffs = [r for r in records if r["kind"] in ("closed-form", "exact-case") and "error" not in r]
    for kind, marker in (("closed-form", "o"), ("exact-case", "s")):
        rows = [(i, r) for i, r in enumerate(diffs) if r["kind"] == kind]
        ax.scatter(
            [i for i, _ in rows],
            [max(r["max_abs_diff"], FLOOR) for _, r in rows],
            marker=marker,
            s=14,
            label=kind,
            c=["tab:green" if r["passed"] else "tab:red" for _, r in rows],
        )
    for name, tol in (("float32 tol", TOLERANCES["policy_float32"]), ("float64 tol", TOLERANCES["float64"])):
        ax.axhline(tol, ls="--", lw=0.8, color="gray")
        ax.annotate(name, (0, tol), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("check (closed forms, then exact cases, model by model)")
    ax.set_ylabel(f"max |Δπ|  (exact 0 drawn at {FLOOR:g})")
    ax.set_title("Closed forms and exact cases vs the DP", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, 7)

    ax = axes[2]
    chi = _measured(records, "chi-square")
    labels = [f"m{r['model']} {r['name'].replace('-vs-sequence-level', '')}" for r in chi]
    for power, marker, label in (
        (False, "o", "policy's own law (p > α)"),
        (True, "x", "power: sequence-level law (p < α)"),
    ):
        rows = [(i, r) for i, r in enumerate(chi) if r["name"].startswith("power") == power]
        ax.scatter(
            [i for i, _ in rows],
            [max(r["p_value"], P_FLOOR) for _, r in rows],
            s=18,
            marker=marker,
            c=["tab:green" if r["passed"] else "tab:red" for _, r in rows],
            label=label,
        )
    ax.axhline(ALPHA, ls="--", lw=0.8, color="gray")
    ax.set_yscale("log")
    ax.set_xticks(range(len(chi)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=6)
    ax.set_ylabel(f"chi-square p-value (below {P_FLOOR:g} drawn at {P_FLOOR:g})")
    ax.set_title(f"infodec.generate samples vs exact laws (α = {ALPHA:g})", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, 6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


KIND_TITLES = {
    "closed-form": "Closed-form one-step policies vs the DP at horizon 1",
    "dp-vs-enumeration": "The DP vs the enumerated Gibbs optimum",
    "dp-vs-myopic": "The DP optimum vs myopic decoders (exact sequence objectives)",
    "exact-case": "Cases where myopic decoding is exactly optimal",
    "chi-square": "Chi-square: infodec.generate samples vs exact sequence laws",
}


def _largest(rows: list[dict], *fields: str) -> float:
    """The largest of ``fields`` over ``rows`` (fields a row lacks are skipped; NaN when none has one)."""
    return max((r[f] for r in rows for f in fields if f in r), default=float("nan"))


def _worst_result(kind: str, rows: list[dict]) -> str:
    """The number a reader checks first for one kind of check, in words: the largest error against the
    exact answer, the smallest margin, or the p-values' range."""
    if kind == "closed-form":
        return f"max |Δπ| = {_largest(rows, 'max_abs_diff'):.1e} (tolerance {TOLERANCES['policy_float32']:g})"
    if kind == "dp-vs-enumeration":
        return (
            f"max |ΔV|, |Δq| = {_largest(rows, 'max_abs_diff', 'value_diff'):.1e} (tolerance {TOLERANCES['float64']:g})"
        )
    if kind == "dp-vs-myopic":
        r = min(rows, key=lambda r: r["min_gap"])
        return f"smallest gap {r['min_gap']:.2g} nats ({r['min_gap_decoder']}, model {r['model']})"
    if kind == "exact-case":
        exact = [r for r in rows if r["tolerance"] == TOLERANCES["float64"]]
        float64 = _largest(exact, "max_abs_diff", "objective_diff", "value_diff")
        # float32 policy objects: those compared beside a float64 case, and the cases checked in float32 alone
        policies = max(
            [r["policy_diff"] for r in rows if "policy_diff" in r]
            + [r["max_abs_diff"] for r in rows if r["tolerance"] == TOLERANCES["policy_float32"]],
            default=float("nan"),
        )
        return f"{float64:.1e} in float64, {policies:.1e} for float32 policy objects"
    own = [r["p_value"] for r in rows if not r["name"].startswith("power")]
    power = [r["p_value"] for r in rows if r["name"].startswith("power")]
    return (
        f"own laws ({len(own)}): p from {min(own, default=float('nan')):.2g} to {max(own, default=float('nan')):.2g}; "
        f"power checks ({len(power)}): p ≤ {max(power, default=float('nan')):.2g}"
    )


def summary_rows(records: list[dict], num_models: int) -> list[dict]:
    """One row per kind of check: how many per model, how many passed, and :func:`_worst_result` over the
    records that hold numbers."""
    rows = []
    for kind, title in KIND_TITLES.items():
        records_of_kind = [r for r in records if r["kind"] == kind]
        if not records_of_kind:
            continue
        measured = _measured(records, kind)
        rows.append(
            {
                "check": title,
                "per model": len(records_of_kind) // max(num_models, 1),
                "passed": f"{sum(r['passed'] for r in records_of_kind)}/{len(records_of_kind)}",
                "worst result": _worst_result(kind, measured) if measured else "no numbers (every check crashed)",
            }
        )
    return rows


def _seeds(c: ReportConfig) -> str:
    return f"{c.seed}..{c.seed + c.num_models - 1}" if c.num_models > 1 else str(c.seed)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(config: ReportConfig, records: list[dict]) -> str:
    """The report as Markdown: settings, the verdict, one table per kind of check, the plot. A function
    of the folder's settings and points only, so ``write_report`` regenerates it exactly."""
    c = config
    failures = [r for r in records if not r["passed"]]
    compute = sum(r.get("seconds", 0.0) for r in records)
    lines = [
        "# infodec theory check",
        "",
        f"{c.num_models} random tiny Llama model(s) (vocabulary {c.vocab}, horizon {c.horizon}: "
        f"{c.vocab**c.horizon} sequences, seed{'s' if c.num_models > 1 else ''} {_seeds(c)}; "
        f"{PROMPT_TOKENS}-token prompt, {EVIDENCE_TOKENS}-token evidence, two streams), "
        f"{c.samples} generate samples per chi-square check{', smoke mode' if c.smoke else ''}.",
        "",
        f"**{'FAIL' if failures else 'PASS'}: {len(records) - len(failures)}/{len(records)} checks "
        f"passed.** Compute time {compute:.1f} s (sum over points).",
        "",
        f"Tolerances: {', '.join(f'{k} {v:g}' for k, v in TOLERANCES.items())}; chi-square α = {ALPHA:g}.",
        "",
        "| check | per model | passed | worst result |",
        "|---|---|---|---|",
        *(
            f"| {r['check']} | {r['per model']} | {r['passed']} | {_cell(r['worst result'])} |"
            for r in summary_rows(records, c.num_models)
        ),
        "",
        "![theory check](theory.png)",
    ]
    for kind, title in KIND_TITLES.items():
        rows = [r for r in records if r["kind"] == kind]
        if not rows:
            continue
        lines += ["", f"## {title}", "", "| model | check | result | detail |", "|---|---|---|---|"]
        lines += [
            f"| {r['model']} | {r['name']} | {'PASS' if r['passed'] else '**FAIL**'} | {_cell(r['summary'])} |"
            for r in rows
        ]
        rows = _measured(records, kind)
        if kind == "dp-vs-myopic" and rows:
            decoders = list(rows[0]["gaps"])
            lines += [
                "",
                "Gap `V(root) − J(decoder)` per decoder (nats):",
                "",
                "| model | setting | V(root) | " + " | ".join(decoders) + " |",
                "|---|---|---|" + "---|" * len(decoders),
            ]
            lines += [
                f"| {r['model']} | {r['name']} | {r['value']:.4f} | "
                + " | ".join(f"{r['gaps'][d]:.4f}" for d in decoders)
                + " |"
                for r in rows
            ]
    return "\n".join(lines) + "\n"


def write_files(config: ReportConfig, records: list[dict], folder: ResultsFolder) -> tuple[list[Path], Path, Path]:
    """Writes ``checks.csv``, ``gaps.csv``, ``theory.png`` and ``report.md``; returns ``(csv paths, plot,
    report.md)``."""
    csv_paths = [
        folder.write_csv("checks.csv", [_flat(r) for r in records]),
        folder.write_csv("gaps.csv", _gap_rows(records)),
    ]
    plot_path = plot_report(folder.path / PLOT_NAME, records)
    markdown = folder.path / MARKDOWN_NAME
    markdown.write_text(render_markdown(config, records))
    return csv_paths, plot_path, markdown


def write_report(folder: str | Path) -> Path:
    """Regenerates the tables, the plot and ``report.md`` of a theory-check folder from its
    ``points.jsonl`` and ``flags.json`` alone (no model, no recomputation); returns ``report.md``'s path."""
    results = ResultsFolder.reopen(folder)
    return write_files(ReportConfig.from_settings(results.settings), list(results.points().values()), results)[-1]
