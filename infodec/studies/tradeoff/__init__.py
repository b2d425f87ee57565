"""[P1]'s tradeoff curves: sensibleness, diversity and attribution of decoder families on one task.

    config = tradeoff.smoke_config(task="wiki-leads")        # or tradeoff.TradeoffConfig(...)
    result = tradeoff.run(config, "results/tradeoff/wiki-leads")   # resumable; writes tables, plots, report.md
    tradeoff.write_report("results/tradeoff/wiki-leads")     # regenerates them from points.jsonl alone

``config`` holds the settings, ``study`` the computation (tasks, sweep points, decoding and measures),
``report`` the tables, plots and the KL-guided verdict.
"""

from infodec.studies.tradeoff.config import (
    ATTRIBUTION,
    CHAT_TEMPLATE_MODES,
    FAMILIES,
    MEASURES,
    TASKS,
    TWO_STREAM,
    TradeoffConfig,
    smoke_config,
)
from infodec.studies.tradeoff.report import (
    claim_status,
    compare,
    interval,
    kl_guided_verdict,
    markdown_table,
    paired_difference,
    table_rows,
    write_plots,
    write_report,
)
from infodec.studies.tradeoff.study import (
    EVIDENCE_SEPARATOR,
    QUERY_SUFFIX,
    SweepPoint,
    TaskInput,
    TradeoffResult,
    TradeoffStudy,
    check_discriminator,
    encode_inputs,
    is_instruct,
    load_study,
    run,
    sweep_points,
    task_inputs,
    use_chat_template,
)

__all__ = [
    "TASKS",
    "FAMILIES",
    "TWO_STREAM",
    "MEASURES",
    "ATTRIBUTION",
    "CHAT_TEMPLATE_MODES",
    "TradeoffConfig",
    "smoke_config",
    "TaskInput",
    "task_inputs",
    "SweepPoint",
    "sweep_points",
    "TradeoffStudy",
    "encode_inputs",
    "is_instruct",
    "use_chat_template",
    "load_study",
    "check_discriminator",
    "run",
    "TradeoffResult",
    "EVIDENCE_SEPARATOR",
    "QUERY_SUFFIX",
    "interval",
    "table_rows",
    "markdown_table",
    "write_plots",
    "paired_difference",
    "claim_status",
    "compare",
    "kl_guided_verdict",
    "write_report",
]
