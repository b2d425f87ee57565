"""The guidance study on wiki-leads: train the topic discriminator, then check that guidance steers.

Stage 1 (:func:`train_on_wiki_leads`): features of train-split leads from the frozen LM, the head
trained on them, held-out accuracy on valid-split leads per prefix length against the majority class
(the generic pieces are ``infodec.policies.guidance_training``).

Stage 2 (:func:`topic_eval`): prompts "Tell me about {title}." for held-out (test-split) titles, each
continued with unguided top-k sampling (``ClassifierGuidance`` with scale 0, i.e. top-k of ``P_G``) and
with guidance at each scale toward a target topic: the lead's own topic (``own``) and a random other
topic (``other``). The judge, independent of the discriminator, is a multinomial logistic regression on
MiniLM sentence embeddings fitted on train-split leads; the result holds its held-out accuracy and the
share of continuations it assigns to the target topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from infodec.data import load_wiki_leads, split
from infodec.data import topics as topic_names
from infodec.data.wiki_leads import sample_leads
from infodec.decoding import generate
from infodec.eval.attribution import text_embedder
from infodec.eval.topic_judge import TopicJudge
from infodec.models.checkpoints import load
from infodec.policies.guidance import ClassifierGuidance, input_embeddings
from infodec.policies.guidance_training import evaluate, extract_features, load_discriminator, train_discriminator
from infodec.studies.guidance.config import PROMPT, TopicEvalConfig, TrainingConfig

# Prefix lengths of the held-out accuracy table (those up to max_tokens).
POSITIONS = (1, 2, 4, 8, 16, 32, 48, 64)
# Seed offsets: the judge's leads, its test leads and the valid split are drawn apart from the train sample.
VALID_SEED, JUDGE_TEST_SEED, JUDGE_TRAIN_SEED = 1, 3, 7
EXAMPLES_SHOWN = 3


# --- stage 1: the discriminator ---------------------------------------------------------------------


def train_on_wiki_leads(
    config: TrainingConfig, *, loaded=None, progress: Callable[[str], None] | None = print
) -> tuple[Any, dict, dict]:
    """Loads the LM and wiki-leads, extracts features of ``config.num_train`` train-split and
    ``config.num_valid`` valid-split leads, trains the head and evaluates it.

    Args:
      config: the settings.
      loaded: an already loaded ``(model, params, tokenizer)`` (default: ``config.model``).
      progress: progress lines, or None.
    Returns:
      ``(params, metadata, table)``: the head, its metadata (topics, model, widths, sizes, timings and the
      held-out ``table`` under ``"valid"``) and ``evaluate``'s table.
    """
    c = config
    model, lm_params, tokenizer = loaded if loaded is not None else load(c.model)
    if tokenizer is None:
        raise ValueError(f"{c.model} has no tokenizer: the discriminator's features need tokenized leads")
    leads = load_wiki_leads()
    names = [t for t in topic_names(leads) if t not in set(c.exclude)]
    index = {t: i for i, t in enumerate(names)}
    train = sample_leads(split(leads, "train"), c.num_train, c.seed, c.exclude)
    valid = sample_leads(split(leads, "valid"), c.num_valid, c.seed + VALID_SEED, c.exclude)

    def features(records, name):
        if progress:
            progress(f"{name}: {len(records)} leads, first {c.max_tokens + 1} tokens each")
        return extract_features(
            model,
            lm_params,
            [tokenizer.encode(r.lead) for r in records],
            [index[r.topic] for r in records],
            max_tokens=c.max_tokens,
            progress=progress,
        )

    start = time.time()
    train_features, valid_features = features(train, "train"), features(valid, "valid")
    feature_seconds = time.time() - start
    embeddings = input_embeddings(model, lm_params)
    majority = int(np.bincount([index[r.topic] for r in train], minlength=len(names)).argmax())
    start = time.time()
    head = train_discriminator(
        train_features,
        embeddings,
        len(names),
        steps=c.steps,
        batch_size=c.batch_size,
        learning_rate=c.learning_rate,
        hidden_dim=c.hidden_dim,
        seed=c.seed,
        progress=progress,
    )
    train_seconds = time.time() - start
    table = evaluate(
        head,
        valid_features,
        embeddings,
        len(names),
        majority=majority,
        hidden_dim=c.hidden_dim,
        positions=[t for t in POSITIONS if t <= c.max_tokens],
    )
    metadata = {
        "topics": names,
        "model": c.model,
        "hidden_size": int(model.config.hidden_size),
        "hidden_dim": c.hidden_dim,
        "max_tokens": c.max_tokens,
        "num_train": len(train),
        "num_valid": len(valid),
        "train_examples": len(train_features),
        "steps": c.steps,
        "majority_topic": names[majority],
        "excluded_topics": list(c.exclude),
        "seed": c.seed,
        "feature_seconds": round(feature_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "valid": table,
    }
    return head, metadata, table


# --- stage 2: does guidance steer? ------------------------------------------------------------------


def fit_judge(
    config: TopicEvalConfig, leads, topics: Sequence[str], embed, log: Callable[[str], None] = print
) -> tuple[TopicJudge, float, list]:
    """The judge fitted on ``config.num_judge_train`` train-split ``leads``; returns ``(judge, its
    accuracy on config.num_judge_test test-split leads, every test-split lead in a seeded order)``."""
    start = time.time()
    index = {t: i for i, t in enumerate(topics)}
    judge_train = sample_leads(split(leads, "train"), config.num_judge_train, config.seed + JUDGE_TRAIN_SEED)
    judge = TopicJudge.fit(embed, [r.lead for r in judge_train], [index[r.topic] for r in judge_train], topics)
    test = sample_leads(split(leads, "test"), 0, config.seed + JUDGE_TEST_SEED)
    judge_test = test[: config.num_judge_test]
    accuracy = judge.accuracy([r.lead for r in judge_test], [index[r.topic] for r in judge_test])
    log(
        f"judge: logistic regression on MiniLM, {len(judge_train)} train leads, "
        f"held-out accuracy {accuracy:.3f} on {len(judge_test)} test leads ({time.time() - start:.0f}s)"
    )
    return judge, accuracy, test


def topic_eval(
    config: TopicEvalConfig,
    *,
    discriminator: tuple[Any, dict] | None = None,
    loaded=None,
    embed=None,
    log: Callable[[str], None] = print,
) -> dict:
    """Decodes the prompts unguided and guided toward their own and another topic; judges every output.

    Args:
      config: the settings.
      discriminator: ``(head params, metadata)`` (default: loaded from ``config.discriminator``).
      loaded: ``(model, params, tokenizer)`` (default: ``config.model``).
      embed: ``texts -> [N, D]`` sentence embedder of the judge (default: MiniLM, 128 tokens).
      log: progress lines and a few example outputs.
    Returns:
      ``{"judge_accuracy", "num_prompts", "top_k", "<own|other>/scale=<λ>": {"judge_share",
      "disc_p_target"}}``: the judge's held-out accuracy, and per condition the share of outputs it assigns
      to the target topic and the mean ``P_D(target)`` under the decoding policy.
    """
    head, meta = discriminator if discriminator is not None else load_discriminator(config.discriminator)
    topics = meta["topics"]
    index = {t: i for i, t in enumerate(topics)}
    leads = [r for r in load_wiki_leads() if r.topic in index]
    rng = np.random.default_rng(config.seed)

    embed = embed if embed is not None else text_embedder(*load("minilm-l6"), max_length=128)
    judge, judge_acc, test = fit_judge(config, leads, topics, embed, log)

    model, params, tokenizer = loaded if loaded is not None else load(config.model)
    prompt_leads = test[-config.num_prompts :]  # disjoint from the judge's test leads when the split is big
    prompts = [PROMPT.format(title=r.title) for r in prompt_leads]
    own = np.array([index[r.topic] for r in prompt_leads])
    other = (own + rng.integers(1, len(topics), len(own))) % len(topics)
    results: dict[str, Any] = {"judge_accuracy": judge_acc, "num_prompts": len(prompts), "top_k": config.top_k}
    for target_name, target in (("own", own), ("other", other)):
        for scale in (0.0, *config.scales):
            policy = ClassifierGuidance.from_model(
                model,
                params,
                head,
                num_topics=len(topics),
                hidden_dim=meta["hidden_dim"],
                target=target,
                scale=scale,
                top_k=config.top_k,
            )
            t0 = time.time()
            out = generate(
                model,
                params,
                prompts,
                policy,
                jax.random.key(config.seed),
                max_new_tokens=config.max_new_tokens,
                tokenizer=tokenizer,
            )
            assert out.text is not None  # string prompts: generate had the tokenizer, so it decoded the text
            share = float(np.mean(judge.predict([f"{p} {c}" for p, c in zip(prompts, out.text)]) == target))
            mask = out.mask()
            p_target = float((out.diagnostics["p_target"] * mask).sum() / mask.sum())
            results[f"{target_name}/scale={scale:g}"] = {"judge_share": share, "disc_p_target": p_target}
            log(
                f"target={target_name:5s} λ={scale:<4g} judge share on target {share:.3f}  "
                f"mean P_D(target) under π {p_target:.3f}  ({time.time() - t0:.0f}s)"
            )
            if scale == config.scales[-1] and target_name == "other":
                for i in range(min(EXAMPLES_SHOWN, len(prompts))):
                    log(f"   [{topics[target[i]]}] {prompts[i]} -> {out.text[i]!r}")
    return results
