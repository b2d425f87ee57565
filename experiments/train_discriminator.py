r"""Train the FUDGE-style topic discriminator for ClassifierGuidance on wiki-leads.

    python -m experiments.train_discriminator                  # ~1000 leads x 64 tokens, a few minutes on CPU
    python -m experiments.train_discriminator --smoke          # < 1 minute

Writes ``<out>/params.msgpack`` and ``<out>/metadata.json`` (topics, model, widths, held-out accuracy)
and prints the held-out (valid split) accuracy per prefix length against the majority-class baseline
(``infodec.studies.guidance``).
"""

import json
from typing import Any

from absl import app, flags

from infodec.compilation import enable_compilation_cache
from infodec.policies.guidance_training import save_discriminator
from infodec.studies import guidance

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "The frozen LM whose hidden states the head reads.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 1000, "Training leads (<= 0: all).")
_NUM_VALID = flags.DEFINE_integer("num_valid", 400, "Held-out (valid split) leads (<= 0: all).")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 64, "Prefix positions per lead.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 1500, "AdamW steps.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 512, "Examples per step.", lower_bound=1)
_HIDDEN_DIM = flags.DEFINE_integer("hidden_dim", 256, "Width of the head's MLP.", lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Peak AdamW learning rate.")
_EXCLUDE = flags.DEFINE_list("exclude", [guidance.UNCATEGORIZED], "Topics left out of training and evaluation.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the lead sample, the init and the minibatches.")
_OUT = flags.DEFINE_string("out", "results/discriminator", "Output directory.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny run (48 leads x 16 tokens, 40 steps) to check the pipeline.")


def config_from_flags() -> guidance.TrainingConfig:
    """The training settings the flags describe (``--smoke`` replaces the sizes); a bad value ends with a
    usage error naming it."""
    settings: dict[str, Any] = dict(
        model=_MODEL.value,
        batch_size=_BATCH_SIZE.value,
        hidden_dim=_HIDDEN_DIM.value,
        learning_rate=_LEARNING_RATE.value,
        exclude=_EXCLUDE.value,
        seed=_SEED.value,
    )
    try:
        if _SMOKE.value:
            return guidance.smoke_training_config(**settings)
        return guidance.TrainingConfig(
            num_train=_NUM_TRAIN.value,
            num_valid=_NUM_VALID.value,
            max_tokens=_MAX_TOKENS.value,
            steps=_STEPS.value,
            **settings,
        )
    except ValueError as e:
        raise app.UsageError(f"--{e}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    enable_compilation_cache()
    head, metadata, table = guidance.train_on_wiki_leads(config)
    out = save_discriminator(_OUT.value, head, metadata)
    print(
        f"\ntopics ({len(metadata['topics'])}): {', '.join(metadata['topics'])}; majority: {metadata['majority_topic']}"
    )
    print(f"held-out accuracy ({metadata['num_valid']} valid leads) vs the majority class:")
    print(guidance.format_table(table))
    print(f"\nfeatures {metadata['feature_seconds']}s, training {metadata['train_seconds']}s; saved to {out}")
    print(json.dumps({"final_accuracy": table["final"]["accuracy"], "final_majority": table["final"]["majority"]}))


if __name__ == "__main__":
    app.run(main)
