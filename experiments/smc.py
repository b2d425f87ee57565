r"""SMC with DAEMON's fitted µ on the default model, beside DAEMON's SIR at the same M.

    python -m experiments.smc                                   # 8 prompts, M=8, 64 new tokens
    python -m experiments.smc --num_particles=16 --ess_threshold=0.5 --resampling=residual

µ is read from a DAEMON study's ``points.jsonl`` (``--mu_file``, the point ``--mu_key``; default the wiki
SR-4 fit at 64 new tokens in ``docs/results/daemon``). Three decoders draw one continuation per prompt:
``smc`` (``infodec.smc.smc`` with ``DaemonPotential``, resampling when ESS < ``--ess_threshold`` · M),
``sir`` (the same loop, never resampling) and ``daemon.sample`` (DAEMON's SIR on ``generate``). Each is
run once to compile and once timed. Reported per decoder: wall time, the ESS of the final weights and
its minimum over the checks, resampling events, mean ``log Ẑ``, and the mean metrics of the drawn
continuations (µ's metrics and sr2/sr4/tr32/div). Rows go to ``--out`` (a CSV) and stdout.
"""

import csv
import json
import os
import time

import jax
import numpy as np
from absl import app, flags

import infodec
from infodec import smc as smc_lib
from infodec.studies.daemon import study as daemon_study

PROMPTS = (
    "The history of the city begins in the",
    "In mathematics, a group is a set with",
    "The river flows through a narrow valley",
    "She opened the letter and read the first",
    "The company announced on Monday that its",
    "During the winter months, the birds of",
    "The novel was first published in 1923 and",
    "Scientists have long debated whether the",
)

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Registry name of the LM.")
_MU_FILE = flags.DEFINE_string("mu_file", "docs/results/daemon/points.jsonl", "DAEMON study points with a fit.")
_MU_KEY = flags.DEFINE_string("mu_key", "wiki/sr4", "The point whose fit gives µ (a 'fit' field or 'mu').")
_METRICS = flags.DEFINE_list("metrics", ["sr4"], "The metrics µ was fitted on, in µ's order.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 8, "Prompts (cycled from the built-in list).")
_M = flags.DEFINE_integer("num_particles", 8, "M: particles (SMC) / candidates (SIR) per prompt.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "New tokens per particle.")
_THRESHOLD = flags.DEFINE_float("ess_threshold", 0.5, "SMC resamples a prompt when ESS < threshold · M.")
_EVERY = flags.DEFINE_integer("resample_every", 1, "Steps between ESS checks.")
_RESAMPLING = flags.DEFINE_enum("resampling", "systematic", list(smc_lib.RESAMPLING), "Resampling scheme.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_SMOKE = flags.DEFINE_bool("smoke", False, "A tiny setting (2 prompts, M=2, 8 tokens) that checks the pipeline.")
_OUT = flags.DEFINE_string("out", "results/smc/smc.csv", "CSV written with one row per decoder.")

REPORTED = ("sr2", "sr4", "tr32", "div")


def read_mu(path: str, key: str) -> np.ndarray:
    with open(path, encoding="utf-8") as f:
        for line in f:
            point = json.loads(line)
            if point.get("key") == key:
                fit = point.get("fit", point)
                return np.asarray(fit["mu"], np.float64)
    raise app.UsageError(f"no point {key!r} with a fitted mu in {path}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    mu = read_mu(_MU_FILE.value, _MU_KEY.value)
    if len(mu) != len(_METRICS.value):
        raise app.UsageError(f"µ has {len(mu)} coefficients, --metrics names {len(_METRICS.value)}")
    infodec.enable_compilation_cache()
    model, params, tokenizer = infodec.load(_MODEL.value)
    num_prompts, m, new = (2, 2, 8) if _SMOKE.value else (_NUM_PROMPTS.value, _M.value, _MAX_NEW.value)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(num_prompts)]
    deps = metric_deps(model, params, tokenizer)
    potential = smc_lib.DaemonPotential(mu, _METRICS.value, **deps)
    proposal = infodec.Temperature(1.0)
    key = jax.random.key(_SEED.value)

    def run_smc(threshold):
        return smc_lib.smc(
            model,
            params,
            prompts,
            proposal,
            potential,
            key,
            num_particles=m,
            max_new_tokens=new,
            ess_threshold=threshold,
            resample_every=_EVERY.value,
            resampling=_RESAMPLING.value,
            tokenizer=tokenizer,
        )

    def run_daemon():
        return infodec.daemon.sample(
            model,
            params,
            prompts,
            mu,
            _METRICS.value,
            num_candidates=m,
            max_new_tokens=new,
            key=key,
            tokenizer=tokenizer,
            **deps,
        )

    decoders = {"smc": lambda: run_smc(_THRESHOLD.value), "sir": lambda: run_smc(0.0), "daemon.sample": run_daemon}
    rows = []
    for name, fn in decoders.items():
        fn()  # compile
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        feats = np.asarray(infodec.daemon.compute(list(REPORTED), out_tokens(out), out_lengths(out)))
        row = {"decoder": name, "prompts": len(prompts), "M": m, "max_new_tokens": new, "wall_s": round(seconds, 3)}
        lw = out.log_weights
        row["ess_final"] = float(np.mean(smc_lib.effective_sample_size(lw)))
        if isinstance(out, smc_lib.SMCOutput):
            row["ess_min_over_checks"] = float(np.mean(out.ess.min(0)))
            row["resample_events"] = int(out.resampled.sum())
            row["log_z"] = float(np.mean(out.log_z))
        else:
            row["ess_min_over_checks"] = row["ess_final"]
            row["resample_events"] = 0
            row["log_z"] = float(np.mean(smc_lib.log_mean_exp(lw, axis=1)))
        row.update({metric: float(np.mean(feats[:, k])) for k, metric in enumerate(REPORTED)})
        rows.append(row)
        print(row, flush=True)
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"µ = {mu.tolist()} on {_METRICS.value}; wrote {_OUT.value}")


def metric_deps(model, params, tokenizer) -> dict:
    """``coh`` and ``info`` need models (the sentence encoder, the evaluator): built as the DAEMON study builds
    them."""
    names = [n for n in _METRICS.value if n in ("coh", "info")]
    if not names:
        return {}
    functions = daemon_study.metric_functions(model, params, tokenizer, names)
    return dict(zip(names, functions))


def out_tokens(out):
    return out.sample_tokens if isinstance(out, smc_lib.SMCOutput) else out.tokens


def out_lengths(out):
    return out.sample_lengths if isinstance(out, smc_lib.SMCOutput) else out.lengths


if __name__ == "__main__":
    jax.config.parse_flags_with_absl()
    app.run(main)
