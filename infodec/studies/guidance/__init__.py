"""Classifier guidance on wiki-leads ([P1]): a FUDGE-style topic discriminator, and whether it steers.

    head, metadata, table = guidance.train_on_wiki_leads(guidance.TrainingConfig())
    results = guidance.topic_eval(guidance.TopicEvalConfig(discriminator="results/discriminator"))
    guidance.write_report("results/discriminator")

``config`` holds the two stages' settings, ``study`` the wiki-leads pipeline (the generic feature
extraction, training and persistence are ``infodec.policies.guidance_training``), ``report`` the tables.
"""

from infodec.studies.guidance.config import (
    PROMPT,
    UNCATEGORIZED,
    TopicEvalConfig,
    TrainingConfig,
    smoke_training_config,
)
from infodec.studies.guidance.report import format_table, table_rows, topic_eval_rows, write_report
from infodec.studies.guidance.study import fit_judge, sample_leads, topic_eval, train_on_wiki_leads

__all__ = [
    "TrainingConfig",
    "TopicEvalConfig",
    "smoke_training_config",
    "PROMPT",
    "UNCATEGORIZED",
    "sample_leads",
    "train_on_wiki_leads",
    "fit_judge",
    "topic_eval",
    "format_table",
    "table_rows",
    "topic_eval_rows",
    "write_report",
]
