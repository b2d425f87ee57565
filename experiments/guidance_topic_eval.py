r"""Does classifier guidance steer SmolLM2 toward a topic, as judged by a separate classifier?

    python -m experiments.guidance_topic_eval --disc=results/discriminator --num_prompts=48

Prompts "Tell me about {title}." for held-out (test split) wiki-leads titles. Each prompt is continued
with unguided top-k sampling (ClassifierGuidance with scale 0, i.e. top-k of P_G) and with guidance at
each --scales value toward a target topic: the lead's own topic (``own``) and a random other topic
(``other``). The judge, independent of the discriminator, is a multinomial logistic regression on
MiniLM (all-MiniLM-L6-v2) sentence embeddings fitted on train-split leads; the script reports its
held-out accuracy on test leads and the share of continuations it assigns to the target topic.
"""

import json
import time

import jax
import numpy as np
from absl import app, flags

import infodec
from infodec import guidance_training
from infodec.data import load_wiki_leads, split
from infodec.eval.attribution import text_embedder
from infodec.eval.topic_judge import TopicJudge
from infodec.policies.guidance import ClassifierGuidance

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "The LM (must match the discriminator's).")
_DISC = flags.DEFINE_string("disc", "results/discriminator", "Directory of the trained discriminator.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 48, "Held-out titles to prompt with.")
_NUM_JUDGE = flags.DEFINE_integer("num_judge_train", 2000, "Training leads for the judge.")
_SCALES = flags.DEFINE_list("scales", ["2", "5"], "Guidance scales λ to compare with λ = 0.")
_TOP_K = flags.DEFINE_integer("top_k", 50, "Candidates per step (the support for every condition).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 40, "Tokens per continuation.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_OUT = flags.DEFINE_string("out", "", "Optional JSON file for the numbers.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    infodec.enable_compilation_cache()
    head, meta = guidance_training.load_discriminator(_DISC.value)
    topics = meta["topics"]
    index = {t: i for i, t in enumerate(topics)}
    leads = [r for r in load_wiki_leads() if r.topic in index]
    rng = np.random.default_rng(_SEED.value)

    start = time.time()
    embed = text_embedder(*infodec.load("minilm-l6"), max_length=128)
    judge_train = guidance_training.sample_leads(split(leads, "train"), _NUM_JUDGE.value, _SEED.value + 7)
    judge = TopicJudge.fit(embed, [r.lead for r in judge_train], [index[r.topic] for r in judge_train], topics)
    test = guidance_training.sample_leads(split(leads, "test"), 0, _SEED.value + 3)
    judge_test = test[:400]
    judge_acc = judge.accuracy([r.lead for r in judge_test], [index[r.topic] for r in judge_test])
    print(f"judge: logistic regression on MiniLM, {len(judge_train)} train leads, "
          f"held-out accuracy {judge_acc:.3f} on {len(judge_test)} test leads ({time.time() - start:.0f}s)")

    model, params, tokenizer = infodec.load(_MODEL.value)
    prompts_leads = test[-_NUM_PROMPTS.value:]  # disjoint from the judge's test leads when the split is big
    prompts = [f"Tell me about {r.title}." for r in prompts_leads]
    own = np.array([index[r.topic] for r in prompts_leads])
    other = (own + rng.integers(1, len(topics), len(own))) % len(topics)
    results = {"judge_accuracy": judge_acc, "num_prompts": len(prompts), "top_k": _TOP_K.value}
    for target_name, target in (("own", own), ("other", other)):
        for scale in [0.0] + [float(s) for s in _SCALES.value]:
            policy = ClassifierGuidance.from_model(model, params, head, num_topics=len(topics),
                                                   hidden_dim=meta["hidden_dim"], target=target, scale=scale,
                                                   top_k=_TOP_K.value)
            t0 = time.time()
            out = infodec.generate(model, params, prompts, policy, jax.random.key(_SEED.value),
                                   max_new_tokens=_MAX_NEW.value, tokenizer=tokenizer)
            texts = [f"{p} {c}" for p, c in zip(prompts, out.text)]
            verdict = judge.predict(texts)
            share = float(np.mean(verdict == target))
            mask = out.mask()
            p_target = float((out.diagnostics["p_target"] * mask).sum() / mask.sum())
            results[f"{target_name}/scale={scale:g}"] = {"judge_share": share, "disc_p_target": p_target}
            print(f"target={target_name:5s} λ={scale:<4g} judge share on target {share:.3f}  "
                  f"mean P_D(target) under π {p_target:.3f}  ({time.time() - t0:.0f}s)")
            if scale == float(_SCALES.value[-1]) and target_name == "other":
                for i in range(3):
                    print(f"   [{topics[target[i]]}] {prompts[i]} -> {out.text[i]!r}")
    print(json.dumps(results))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
