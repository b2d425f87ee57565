"""Evaluation measures shared by the studies: uncertainty summaries, diversity, attribution,
sensibleness, a topic judge, MAUVE.

``infodec.eval.mauve`` needs the optional mauve-text library (``pip install "infodec[eval]"``) and is
imported on use, not here.
"""

from infodec.eval.attribution import (
    STOPWORDS,
    content_precision,
    content_words,
    encoder_similarity,
    evidence_pmi,
    text_embedder,
)
from infodec.eval.diversity import (
    distinct_n,
    distinct_per_input,
    self_bleu,
    self_bleu_per_input,
    sentence_bleu,
    token_mean,
)
from infodec.eval.sensibleness import mean_log_prob, row_perplexity
from infodec.eval.stats import bootstrap_ci, mean_se
from infodec.eval.topic_judge import TopicJudge, fit_logistic

__all__ = [
    "mean_se",
    "bootstrap_ci",
    "distinct_n",
    "distinct_per_input",
    "sentence_bleu",
    "self_bleu",
    "self_bleu_per_input",
    "token_mean",
    "STOPWORDS",
    "content_words",
    "content_precision",
    "evidence_pmi",
    "text_embedder",
    "encoder_similarity",
    "mean_log_prob",
    "row_perplexity",
    "TopicJudge",
    "fit_logistic",
]
