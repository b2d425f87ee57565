r"""Does classifier guidance steer SmolLM2 toward a topic, as judged by a separate classifier?

    python -m experiments.guidance_topic_eval --disc=results/discriminator --num_prompts=48

Prompts "Tell me about {title}." for held-out (test split) wiki-leads titles, continued unguided (top-k
of P_G) and with guidance at each --scales value toward the lead's own topic and a random other topic;
an independent judge (logistic regression on MiniLM embeddings, fitted on train-split leads) reports
the share of continuations on the target topic (``infodec.studies.guidance.topic_eval``). ``--out``
saves the numbers as JSON; saved as ``<disc>/topic_eval.json`` they join the report that
``infodec.studies.guidance.write_report(<disc>)`` writes.
"""

import json

from absl import app, flags

from experiments.common import parse_floats
from infodec.compilation import enable_compilation_cache
from infodec.studies import guidance

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "The LM (must match the discriminator's).")
_DISC = flags.DEFINE_string("disc", "results/discriminator", "Directory of the trained discriminator.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 48, "Held-out titles to prompt with.")
_NUM_JUDGE = flags.DEFINE_integer("num_judge_train", 2000, "Training leads for the judge.")
_SCALES = flags.DEFINE_list("scales", ["2", "5"], "Guidance scales λ to compare with λ = 0.")
_TOP_K = flags.DEFINE_integer("top_k", 50, "Candidates per step (the support for every condition).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 40, "Tokens per continuation.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_OUT = flags.DEFINE_string("out", "", "Optional JSON file for the numbers.")


def config_from_flags() -> guidance.TopicEvalConfig:
    """The evaluation the flags describe; a bad value ends with a usage error naming it."""
    scales = parse_floats("scales", ",".join(_SCALES.value))
    try:
        return guidance.TopicEvalConfig(
            model=_MODEL.value,
            discriminator=_DISC.value,
            num_prompts=_NUM_PROMPTS.value,
            num_judge_train=_NUM_JUDGE.value,
            scales=tuple(scales),
            top_k=_TOP_K.value,
            max_new_tokens=_MAX_NEW.value,
            seed=_SEED.value,
        )
    except ValueError as e:
        raise app.UsageError(f"--{e}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    enable_compilation_cache()
    results = guidance.topic_eval(config)
    print(json.dumps(results))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
