r"""[P1]'s tradeoff curves: sensibleness, diversity and attribution of decoder families on one task.

    python -m experiments.tradeoff --smoke                      # < 1 minute after load
    python -m experiments.tradeoff --task=wiki-leads --families=temperature,top_p,cfg,kl_guided \
        --num_inputs=32 --num_samples=4 --max_new_tokens=48
    python -m experiments.tradeoff --task=aclsum --families=temperature,kl_guided,dynamic

Each point (``<family>/<setting>``, e.g. ``temperature/T=0.7``) is appended to
``<out>/points.jsonl`` as it finishes, so an interrupted sweep resumes where it stopped (rerun the same
command; ``--overwrite`` starts afresh). Writes ``tradeoff.csv``, ``frontier_{pmi,content_precision,
similarity}.png`` (attribution against distinct-2, one curve per family), ``sensibleness.png`` and
``sensibleness_kl.png`` (evaluator NLL and KL to the model against distinct-2), ``verdict.txt`` and
``report.md``, and prints the verdict: does KL-guided temperature dominate static temperature at the
same t0 (``infodec.studies.tradeoff``)?

``--chat_template=auto`` (the default) frames each query as the user turn of the model's chat template
when the model is an instruct model with one (SmolLM2-135M-Instruct is); ``on`` / ``off`` force it.

The ``classifier`` family needs a discriminator trained for --model (``python -m
experiments.train_discriminator``, about 2 minutes); without one it is skipped with a message.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, cast

from absl import app, flags

import infodec
from experiments.common import parse_floats, require, results_folder
from infodec import sharding
from infodec.decoding import memory
from infodec.studies import tradeoff

_TASK = flags.DEFINE_string("task", "wiki-leads", f"One of {', '.join(tradeoff.TASKS)}.")
_FAMILIES = flags.DEFINE_list(
    "families", ["temperature", "top_p", "cfg", "kl_guided"], f"Decoder families, from {', '.join(tradeoff.FAMILIES)}."
)
_TEMPERATURES = flags.DEFINE_string("temperatures", "0.5,0.7,1,1.3", "Static temperatures (greedy is added).")
_TOP_KS = flags.DEFINE_string("top_ks", "10,50", "top-k values (T = 1).")
_TOP_PS = flags.DEFINE_string("top_ps", "0.5,0.8,0.95", "top-p values (T = 1).")
_CFG_SCALES = flags.DEFINE_string("cfg_scales", "1,1.5,2,3", "Classifier-free guidance scales w (1 = plain).")
_CLASSIFIER_SCALES = flags.DEFINE_string("classifier_scales", "0,1,2", "Classifier-guidance scales λ.")
_CLASSIFIER_TOP_K = flags.DEFINE_integer("classifier_top_k", 50, "Classifier guidance's candidate set.")
_KL_T0S = flags.DEFINE_string("kl_t0s", "1", "KL-guided base temperatures t0 (static T = t0 is added).")
_HALF_LIVES = flags.DEFINE_string("half_lives", "0.5,1,2", "KL-guided half-lives h (nats).")
_DYNAMIC_SCALES = flags.DEFINE_string("dynamic_scales", "1,2", "Dynamic-λ maxima (sigmoid in the streams' KL).")
_NUM_INPUTS = flags.DEFINE_integer("num_inputs", 32, "Held-out inputs.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 4, "Continuations per input.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 48, "Tokens per continuation (at most).")
_MAX_EVIDENCE = flags.DEFINE_integer("max_evidence_tokens", 224, "Evidence is cut to this many tokens.")
_INPUTS_PER_CALL = flags.DEFINE_integer(
    "inputs_per_call",
    16,
    "Inputs per generate call. Left unset, the default is lowered to the most the device's memory holds "
    "(infodec.decoding.memory).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the input sample and of every decode.")
_MODEL = flags.DEFINE_string("model", "smollm2-135m", "The decoding LM.")
_CHAT_TEMPLATE = flags.DEFINE_enum(
    "chat_template",
    "auto",
    list(tradeoff.CHAT_TEMPLATE_MODES),
    "Frame the query with the model's chat template: auto = when it has one and is an instruct model.",
)
_EVALUATOR = flags.DEFINE_string("evaluator", "", "The LM scoring PMI and perplexity (default: --model).")
_DISC = flags.DEFINE_string("discriminator", "results/discriminator", "Classifier-guidance head folder.")
_MESH = flags.DEFINE_string(
    "mesh", "", "Device mesh 'data:N,model:M' for decoding (infodec.sharding.parse_mesh; empty = one device)."
)
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny settings (2 inputs x 2 samples x 8 tokens, 2 points per family).")
_OUT = flags.DEFINE_string("out", "", "Results folder (default results/tradeoff/<task>, or .../<task>-smoke).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard earlier points in --out.")


def _floats(name: str, text: str) -> tuple[float, ...]:
    return tuple(parse_floats(name, text))


def _ints(name: str, text: str) -> tuple[int, ...]:
    values = parse_floats(name, text)
    require(all(v.is_integer() for v in values), f"--{name} must be integers, got {text!r}")
    return tuple(int(v) for v in values)


def config_from_flags() -> tradeoff.TradeoffConfig:
    """The sweep the flags describe (``--smoke`` keeps only --task, --model, --chat_template, --evaluator,
    --seed and --discriminator); a bad value ends with a usage error naming it."""
    require(_TASK.value in tradeoff.TASKS, f"--task must be one of {', '.join(tradeoff.TASKS)}, got {_TASK.value!r}")
    unknown = [f for f in _FAMILIES.value if f not in tradeoff.FAMILIES]
    require(not unknown, f"--families: unknown {unknown}; known: {', '.join(tradeoff.FAMILIES)}")
    common: dict[str, Any] = dict(
        task=_TASK.value,
        model=_MODEL.value,
        chat_template=_CHAT_TEMPLATE.value,
        evaluator=_EVALUATOR.value,
        seed=_SEED.value,
        discriminator=_DISC.value,
    )
    try:
        if _SMOKE.value:
            return tradeoff.smoke_config(**common)
        return tradeoff.TradeoffConfig(
            families=tuple(_FAMILIES.value),
            temperatures=_floats("temperatures", _TEMPERATURES.value),
            top_ks=_ints("top_ks", _TOP_KS.value),
            top_ps=_floats("top_ps", _TOP_PS.value),
            cfg_scales=_floats("cfg_scales", _CFG_SCALES.value),
            classifier_scales=_floats("classifier_scales", _CLASSIFIER_SCALES.value),
            classifier_top_k=_CLASSIFIER_TOP_K.value,
            kl_t0s=_floats("kl_t0s", _KL_T0S.value),
            half_lives=_floats("half_lives", _HALF_LIVES.value),
            dynamic_scales=_floats("dynamic_scales", _DYNAMIC_SCALES.value),
            num_inputs=_NUM_INPUTS.value,
            num_samples=_NUM_SAMPLES.value,
            max_new_tokens=_MAX_NEW_TOKENS.value,
            max_evidence_tokens=_MAX_EVIDENCE.value,
            inputs_per_call=_INPUTS_PER_CALL.value,
            **common,
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from None


# Tokens of a query after the evidence (separator, query, chat template): a bound for the memory plan.
QUERY_TOKENS = 128


def inputs_per_call_that_fits(config: tradeoff.TradeoffConfig, model, params, mesh) -> int | None:
    """The most inputs per ``generate`` call whose decode fits the device's memory (``decoding.memory``):
    ``num_samples`` rows each, two streams if any family is two-stream, prompts of the cut evidence plus
    :data:`QUERY_TOKENS`. None when no memory limit is known."""
    prompt = config.max_evidence_tokens + QUERY_TOKENS
    rows = memory.largest_rows(
        model,
        max_len=prompt + config.max_new_tokens,
        prompt_len=prompt,
        params=params,
        mesh=mesh,
        num_samples=config.num_samples,
        num_streams=2 if any(f in tradeoff.TWO_STREAM for f in config.families) else 1,
    )
    return None if rows is None else rows // config.num_samples


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    try:
        mesh_spec = sharding.parse_mesh(_MESH.value)
    except ValueError as e:
        raise app.UsageError(f"--mesh: {e}") from None
    out = _OUT.value or f"results/tradeoff/{config.task}" + ("-smoke" if _SMOKE.value else "")
    infodec.enable_compilation_cache()
    # parse_mesh's dict is typed int | None throughout, but it always sets model (default 1)
    mesh = (
        sharding.make_mesh(data=mesh_spec["data"], model=cast(int, mesh_spec["model"]))
        if mesh_spec is not None
        else None
    )
    start = time.perf_counter()
    loaded = infodec.load(config.model)  # before the folder: --inputs_per_call's default may depend on it
    if not flags.FLAGS["inputs_per_call"].present:  # the default (or --smoke's), lowered to what the device holds
        fitted = inputs_per_call_that_fits(config, loaded[0], loaded[1], mesh)
        if fitted is not None and fitted < config.inputs_per_call:
            print(
                f"--inputs_per_call={max(1, fitted)} (of {config.inputs_per_call}): the most the device's memory holds"
            )
            config = dataclasses.replace(config, inputs_per_call=max(1, fitted))
    folder = results_folder(__name__, out, _OVERWRITE.value, config=config.to_dict())
    result = tradeoff.run(config, folder=folder, mesh=mesh, loaded=loaded, log=lambda s: print(s, flush=True))
    print(
        f"\n{len(result.records)} points in {folder.path} ({time.perf_counter() - start:.0f} s): "
        f"{result.csv.name}, " + ", ".join(p.name for p in result.plots) + f", {result.markdown.name}"
    )
    for line in result.verdict:
        print(line)


if __name__ == "__main__":
    app.run(main)
