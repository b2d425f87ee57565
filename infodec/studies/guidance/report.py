"""Tables, a plot and ``report.md`` of the guidance study, from the files its two stages write.

A trained head's folder holds ``metadata.json`` (``save_discriminator``: topics, sizes and the held-out
table under ``"valid"``); the topic evaluation's numbers, saved there as ``topic_eval.json``
(``experiments.guidance_topic_eval --out=<folder>/topic_eval.json``), join the report when present::

    write_report("results/discriminator")   # valid.csv, accuracy.png, [topic_eval.csv,] report.md
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path

from infodec.policies.guidance_training import METADATA_FILE
from infodec.results import plot_series

TOPIC_EVAL_FILE = "topic_eval.json"


def table_rows(table: Mapping) -> list[dict]:
    """``evaluate``'s held-out table as flat rows: one per prefix length, then ``final`` and ``all``."""
    named = [
        *((f"t={t}", r) for t, r in table["by_position"].items()),
        ("final", table["final"]),
        ("all", table["all"]),
    ]
    return [
        {"prefix": name, "n": row["n"], "accuracy": row["accuracy"], "majority": row["majority"]} for name, row in named
    ]


def format_table(table: Mapping) -> str:
    """The ``evaluate`` result as a small text table."""
    lines = [f"{'prefix':>10} {'n':>7} {'accuracy':>9} {'majority':>9}"]
    lines += [f"{r['prefix']:>10} {r['n']:>7} {r['accuracy']:>9.3f} {r['majority']:>9.3f}" for r in table_rows(table)]
    return "\n".join(lines)


def topic_eval_rows(results: Mapping) -> list[dict]:
    """The topic evaluation's conditions as flat rows: target (own / other), scale, judge share, P_D(target)."""
    rows = []
    for key, value in results.items():
        if "/scale=" in key:
            target, scale = key.split("/scale=")
            rows.append({"target": target, "scale": float(scale), **value})
    return rows


def share_ci(share: float, n: int) -> float:
    """Half-width of the 95% normal-approximation interval of a binomial share ``share`` over ``n`` trials."""
    return 1.96 * math.sqrt(share * (1.0 - share) / n) if n > 0 else float("nan")


def plot_accuracy(path: Path, table: Mapping) -> Path:
    """Held-out accuracy against prefix length, with the majority-class baseline."""
    by_position = table["by_position"]
    series = {
        name: [{"prefix": float(t), "accuracy": row[field]} for t, row in by_position.items()]
        for name, field in (("discriminator", "accuracy"), ("majority class", "majority"))
    }
    return plot_series(
        path,
        series,
        x="prefix",
        y="accuracy",
        xlabel="prefix length t (tokens)",
        ylabel="held-out accuracy",
        title="P_D(topic | prefix, next token) on valid-split leads",
    )


def render_markdown(metadata: Mapping, results: Mapping | None) -> str:
    """``report.md``: the head's settings and held-out table, then the topic evaluation when given."""
    m = metadata
    lines = [
        "# Classifier guidance on wiki-leads",
        "",
        f"Topic discriminator on {m.get('model')}'s final hidden states: {len(m['topics'])} topics "
        f"({', '.join(m['topics'])}), {m.get('num_train')} train leads × {m.get('max_tokens')} prefixes "
        f"({m.get('train_examples')} examples), {m.get('steps')} AdamW steps, MLP width {m.get('hidden_dim')}, "
        f"seed {m.get('seed')}.",
        "",
        f"## Held-out accuracy ({m.get('num_valid')} valid-split leads; majority class {m.get('majority_topic')})",
        "",
        "| prefix | n | accuracy | majority |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['prefix']} | {r['n']} | {r['accuracy']:.3f} | {r['majority']:.3f} |" for r in table_rows(m["valid"])
    ]
    lines += ["", "![held-out accuracy](accuracy.png)"]
    if results is not None:
        lines += [
            "",
            f"## Does guidance steer? ({results['num_prompts']} test-split prompts, top-{results['top_k']})",
            "",
            f"Judge (logistic regression on MiniLM) held-out accuracy {results['judge_accuracy']:.3f}.",
            "",
            "| target | λ | judge share on target (± 95% CI) | mean P_D(target) under π |",
            "|---|---|---|---|",
        ]
        n = results["num_prompts"]
        lines += [
            f"| {r['target']} | {r['scale']:g} | {r['judge_share']:.3f} ± {share_ci(r['judge_share'], n):.3f} "
            f"| {r['disc_p_target']:.3f} |"
            for r in topic_eval_rows(results)
        ]
        lines += [
            "",
            "The interval is the normal approximation to a binomial share over the prompts (one continuation "
            "each), 1.96·√(s(1 − s)/n); conditions share prompts, so differences between them are paired and "
            "these intervals are conservative for them.",
        ]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def write_report(folder: str | Path) -> Path:
    """Regenerates ``valid.csv``, ``accuracy.png``, ``topic_eval.csv`` (when ``topic_eval.json`` is there)
    and ``report.md`` from a trained head's folder alone; returns ``report.md``'s path."""
    path = Path(folder)
    metadata = json.loads((path / METADATA_FILE).read_text())
    topic_file = path / TOPIC_EVAL_FILE
    results = json.loads(topic_file.read_text()) if topic_file.exists() else None
    _write_csv(path / "valid.csv", table_rows(metadata["valid"]))
    if results is not None:
        _write_csv(path / "topic_eval.csv", topic_eval_rows(results))
    plot_accuracy(path / "accuracy.png", metadata["valid"])
    markdown = path / "report.md"
    markdown.write_text(render_markdown(metadata, results))
    return markdown
