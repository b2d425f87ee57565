r"""Issue 5: DAEMON fitted on SR-4 alone, on the default model and wiki.

    python -m experiments.daemon_sr4                      # 32 fit prefixes x 16 samples, 32 eval prompts, M=25
    python -m experiments.daemon_sr4 --max_new_tokens=256 --num_eval_prompts=48

Fits µ for one metric on the wiki "fit" split, decodes the "eval" split's prompts with plain sampling
(Temperature 1) and with DAEMON (SIR over M candidates), and prints the metric (mean ± standard error
over eval prompts) of human, plain and DAEMON continuations, the fitted µ, the ESS, and the perplexity
of plain and DAEMON continuations under the model (``infodec.daemon.studies.single_metric_study``).
EOS is suppressed, so every continuation has exactly ``--max_new_tokens`` tokens.
Writes ``results/daemon_sr4/{flags.json, result.json}``.
"""

import json
import time
from pathlib import Path

from absl import app, flags

import infodec
from infodec.daemon import studies

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Registry name of the LM.")
_CORPUS = flags.DEFINE_string("corpus", "wiki", "corpora.load_windows name.")
_METRIC = flags.DEFINE_string("metric", "sr4", "The one metric µ is fitted for.")
_FIT_PREFIXES = flags.DEFINE_integer("num_fit_prefixes", 32, "J: fit-split prefixes.")
_FIT_SAMPLES = flags.DEFINE_integer("num_fit_samples", 16, "N: samples per fit prefix.")
_EVAL_PROMPTS = flags.DEFINE_integer("num_eval_prompts", 32, "Eval-split prompts.")
_CANDIDATES = flags.DEFINE_integer("num_candidates", 25, "M: DAEMON candidates per prompt.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "Continuation length (paper: 256).")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 32, "Prompt length.")
_ROWS_PER_CALL = flags.DEFINE_integer("rows_per_call", 100, "Decode rows per generate call.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_OUT = flags.DEFINE_string("out", "results/daemon_sr4", "Output folder.")


def table(r: dict) -> str:
    m = r["metric"].upper()
    pm = lambda d: f"{d['mean']:.4f} ± {d['se']:.4f}"  # noqa: E731
    ppl = r["perplexity"]
    fit = r["fit"]
    rows = [
        ("", f"{m} (mean ± SE, n={r['human']['n']})", "perplexity under model (token-level)"),
        ("human", pm(r["human"]), f"{ppl['human']['ppl']:.2f}"),
        ("plain sampling (T=1)", pm(r["plain"]), f"{ppl['plain']['ppl']:.2f}"),
        (f"DAEMON (M={r['sizes']['num_candidates']})", pm(r["daemon"]), f"{ppl['daemon']['ppl']:.2f}"),
    ]
    lines = [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.insert(1, "|---|---|---|")
    c = r["criterion"]
    lines += [
        "",
        f"fitted µ = {fit['mu'][0]:.3f} (standardised {fit['mu_standardized'][0]:.3f}); fit target "
        f"{fit['target'][0]:.4f}, fitted moment {fit['fitted_moments'][0]:.4f}, converged={fit['converged']}",
        f"fit ESS (N={r['sizes']['num_fit_samples']}): mean {fit['ess']['mean']:.2f}, min {fit['ess_min']:.2f}; "
        f"DAEMON SIR ESS (M={r['sizes']['num_candidates']}): mean {r['daemon_ess']['mean']:.2f} ± "
        f"{r['daemon_ess']['se']:.2f}, min {r['daemon_ess']['min']:.2f}",
        f"DAEMON − human = {c['daemon_minus_human_in_human_se']:+.2f} human SE "
        f"({c['daemon_minus_human_in_combined_se']:+.2f} combined SE); plain − human = "
        f"{c['plain_minus_human_in_human_se']:+.2f} human SE -> within human SE: {c['metric_within_human_se']}",
        f"perplexity DAEMON / plain = {ppl['ratio_daemon_vs_plain']:.3f} -> within 10%: "
        f"{c['perplexity_within_10pct']}",
    ]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flags.json").write_text(json.dumps(
        {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(__name__)}, indent=2))
    infodec.enable_compilation_cache()
    model, params, tokenizer = infodec.load(_MODEL.value)
    start = time.perf_counter()
    result = studies.single_metric_study(
        model, params, tokenizer, metric=_METRIC.value, corpus=_CORPUS.value,
        num_fit_prefixes=_FIT_PREFIXES.value, num_fit_samples=_FIT_SAMPLES.value,
        num_eval_prompts=_EVAL_PROMPTS.value, num_candidates=_CANDIDATES.value,
        max_new_tokens=_MAX_NEW_TOKENS.value, prompt_tokens=_PROMPT_TOKENS.value,
        rows_per_call=_ROWS_PER_CALL.value, seed=_SEED.value, log=lambda s: print(s, flush=True))
    result["model"] = _MODEL.value
    result["wall_s"] = time.perf_counter() - start
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    app.run(main)
