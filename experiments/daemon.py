r"""The DAEMON paper's studies on the default model (``gemma3-270m``, a base model; ``info`` scored by the
fixed evaluator ``smollm2-135m``): main table, SR-4 study, M sweep, proposal-τ sweep.

    python -m experiments.daemon --smoke                  # < 1 min: wiki, greedy vs DAEMON, tiny sizes
    python -m experiments.daemon                          # the README's run (wiki + news, every study)
    python -m experiments.daemon --corpora=news --studies=main --max_new_tokens=128

Per corpus (``--corpora``; fit and eval prompts from disjoint documents):

* ``main``: human continuations, the baselines (greedy, top-k, top-p, typical, η, contrastive, beam,
  ancestral sampling, DAEMON's proposal, and with ``--baselines=...,contrastive_decoding --amateur=NAME``
  contrastive decoding against that smaller model) and DAEMON (µ fitted on every ``--metrics`` metric, SIR
  over ``--num_candidates``), each with every metric (mean ± SE over prompts), pooled diversity, MAUVE
  against human text, perplexity of the continuations under the model, and the human text's
  perplexity under the model and under DAEMON. A rerun may add baselines, studies or M values to a
  results folder; the finished points stay.
* ``sr4``: µ fitted on SR-4 alone (``infodec.studies.daemon.single_metric_study``).
* ``m_sweep``: DAEMON's standardised gap to human and ESS against M (``--m_values``), and time.
* ``fit``: only Algorithm 1 (µ, its report and, with ``--l2_values``, the cross-validation), which
  every study but ``sr4`` runs first anyway.
* ``perplexity``: the human continuations' perplexity under p_θ and under q_µ, with ``Ẑ`` from
  ``--perplexity_samples`` fresh samples per prompt (first ``--perplexity_prompts`` eval prompts): the ratio
  with a paired CI clustered by document, the N sweep with its 1/N extrapolation, and the ε-perplexity
  with Ẑ_ε from samples of p_ε and, as a second point, of the ε ladder (``infodec.daemon.epsilon_ladder``).
  It runs last on each corpus (the costliest decode per prompt).
* ``temperature``: proposal temperature τ (``--proposal_temperatures``): µ refitted with samples from
  ``Temperature(τ)`` (with the proposal correction), then diversity against coherence; with
  ``--temperature_forms=corrected,uncorrected`` also the paper's uncorrected heuristic (µ fitted at τ = 1,
  weights −µᵀf on the same candidates). At τ = 1, when ``--m_values`` reaches ``--num_candidates``, the point
  resamples the M sweep's set (its texts are the M sweep's at M = ``--num_candidates``), decoded once.

Algorithm 1's fit is the per-prefix dual by default; ``--fit_normalization=global --fit_objective=relative_error``
is the paper's pooled, relative-error Adam fit as third-party reconstructions describe it.

The SR-4 study and the sweeps run on the first corpus only. Results go to ``--out`` (default ``results/daemon``):
``flags.json``, ``points.jsonl`` (one line per finished point; a rerun resumes), ``main.csv``,
``sweeps.csv``, ``main_gaps.png``, ``m_sweep.png``, ``temperature.png`` and ``report.md``
(``python -m experiments.report --study=daemon FOLDER`` regenerates the last five from the first two).
The settings are ``infodec.studies.daemon.DaemonConfig`` (the flags' defaults are its defaults), the logic
is ``infodec.studies.daemon`` (importable from notebooks).
"""

import dataclasses
import importlib.util
import time

import jax
from absl import app, flags

import infodec
from experiments import common
from infodec.studies.daemon import BASELINES, DaemonConfig, report, rows_per_call_that_fits, run_studies
from infodec.studies.daemon.config import ADDED_SETTINGS, AUTO_EVALUATOR

_D = DaemonConfig()  # the flags' defaults

_MODEL = flags.DEFINE_string(
    "model", _D.model, "Registry name, HF directory or .gguf of the LM that decodes (default: a base model)."
)
_EVALUATOR = flags.DEFINE_string(
    "evaluator",
    AUTO_EVALUATOR,  # not _D.evaluator, which DaemonConfig() already resolved for the default --model
    "Registry name, HF directory or .gguf of the fixed LM that scores the info metric (the continuation's "
    "text re-tokenised). auto: smollm2-135m, or gemma3-270m when --model is smollm2-135m; model: --model "
    "itself (what results folders written before this flag used).",
)
_CORPORA = flags.DEFINE_list("corpora", list(_D.corpora), "Corpora (infodec.data.corpora names).")
_STUDIES = flags.DEFINE_list("studies", list(_D.studies), "Which studies to run.")
_METRICS = flags.DEFINE_list("metrics", list(_D.metrics), "Metrics µ is fitted on and reported.")
_BASELINES = flags.DEFINE_list(
    "baselines",
    list(_D.baselines),
    "Baseline decoders of the main table: " + ", ".join(BASELINES) + " (contrastive_decoding needs --amateur).",
)
_AMATEUR = flags.DEFINE_string(
    "amateur",
    _D.amateur,
    "Registry name, HF directory or .gguf of the smaller LM (same tokenizer as --model) that the "
    "contrastive_decoding baseline contrasts --model with.",
)
_FIT_PREFIXES = flags.DEFINE_integer("num_fit_prefixes", _D.num_fit_prefixes, "J: fit-split prefixes.")
_FIT_SAMPLES = flags.DEFINE_integer("num_fit_samples", _D.num_fit_samples, "N: proposal samples per fit prefix.")
_EVAL_PROMPTS = flags.DEFINE_integer(
    "num_eval_prompts", _D.num_eval_prompts, "Eval-split prompts (one continuation each)."
)
_CANDIDATES = flags.DEFINE_integer("num_candidates", _D.num_candidates, "M: DAEMON candidates per prompt.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", _D.max_new_tokens, "Continuation length (paper: 256).")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", _D.prompt_tokens, "Prompt length in tokens.")
_L2 = flags.DEFINE_float(
    "l2",
    _D.l2,
    "Ridge on the standardised µ of the full-metric fit (keeps µ finite when a "
    "human mean lies outside the samples' hull; 0 = exact moment matching).",
)
_L2_VALUES = flags.DEFINE_list(
    "l2_values",
    [repr(v) for v in _D.l2_values],
    "If given, the ridge is chosen among "
    "these by cross-validation over the fit prefixes (infodec.daemon.cross_validate_l2) "
    "instead of --l2.",
)
_L2_FOLDS = flags.DEFINE_integer("l2_folds", _D.l2_folds, "Folds of the --l2_values cross-validation.")
_MAX_HUMAN_WINDOWS = flags.DEFINE_integer(
    "max_human_windows",
    _D.max_human_windows,
    "At most this many windows (a "
    "random subset) for the fit target and the eval split's human means "
    "(0 = every window).",
)
_SR4_DRAWS = flags.DEFINE_integer(
    "sr4_draws",
    _D.sr4_draws,
    "SR-4 study: plain and DAEMON continuations per eval "
    "prompt (averaged per prompt; lowers the decoders' Monte Carlo error).",
)
_MAX_PER_DOCUMENT = flags.DEFINE_integer(
    "max_per_document",
    _D.max_per_document,
    "Windows per document that prompts are drawn from (0 = every window; 1 = each document's first window only).",
)
_FIT_TARGET = flags.DEFINE_enum(
    "fit_target",
    _D.fit_target,
    ["split", "prefixes"],
    "The human moments µ is fitted to: the mean over every fit-split window, or over the J fit prefixes only.",
)
_M_VALUES = flags.DEFINE_list("m_values", [str(m) for m in _D.m_values], "M sweep values.")
_TAUS = flags.DEFINE_string(
    "proposal_temperatures", ",".join(repr(t) for t in _D.proposal_temperatures), "Proposal temperature sweep."
)
_TEMPERATURE_FORMS = flags.DEFINE_list(
    "temperature_forms",
    None,
    "Forms of DAEMON the τ sweep runs: corrected (µ refitted on Temperature(τ) samples, proposal "
    "correction in the weights) and/or uncorrected (the paper's heuristic as reconstructed: µ fitted at "
    "τ = 1, weights −µᵀf only). Unset: corrected.",
)
_FIT_NORMALIZATION = flags.DEFINE_enum(
    "fit_normalization",
    None,
    ["prefix", "global"],
    "Algorithm 1's normaliser: per prefix, or global (one pooled sample bank, the paper's form as "
    "reconstructed). Unset: prefix.",
)
_FIT_OBJECTIVE = flags.DEFINE_enum(
    "fit_objective",
    None,
    ["dual", "relative_error"],
    "Algorithm 1's objective: the convex dual (L-BFGS), or the RMS relative moment error with Adam (the "
    "paper's as reconstructed; no ridge, --l2 unused). Unset: dual.",
)
_FIT_LEARNING_RATE = flags.DEFINE_float(
    "fit_learning_rate", None, "Algorithm 1's learning rate (unset: L-BFGS line search; Adam 0.005)."
)
_FIT_STEPS = flags.DEFINE_integer("fit_steps", None, "Algorithm 1's maximum steps (unset: dual 200, Adam 5000).")
_FIT_TOL = flags.DEFINE_float(
    "fit_tol", None, "Algorithm 1's tolerance (unset: dual gradient 1e-6, RMS relative error 1e-3)."
)
_SWEEP_PROMPTS = flags.DEFINE_integer("sweep_prompts", _D.sweep_prompts, "Eval prompts per sweep point.")
_ROWS_PER_CALL = flags.DEFINE_integer(
    "rows_per_call",
    _D.rows_per_call,
    "Decode rows per call (bounds cache memory). Left unset, the default is lowered to the most the "
    "device's memory holds (infodec.decoding.memory).",
)
_PERPLEXITY_SAMPLES = flags.DEFINE_integer(
    "perplexity_samples",
    _D.perplexity_samples,
    "N fresh p_θ samples per eval prompt behind Ẑ in the perplexity study (paired CI, N sweep, "
    "ε-perplexity, ε ladder: a multiple of 8); needed by --studies=perplexity.",
)
_PERPLEXITY_PROMPTS = flags.DEFINE_integer(
    "perplexity_prompts",
    _D.perplexity_prompts,
    "Eval prompts (the first ones) of the perplexity study; 0 = every eval prompt.",
)
_SEED = flags.DEFINE_integer("seed", _D.seed, "Seed of window choice and every PRNG key.")
_SMOKE = flags.DEFINE_boolean(
    "smoke", False, "Tiny settings that finish in about a minute (for the flags not given on the command line)."
)
_OUT = flags.DEFINE_string("out", "results/daemon", "Results folder.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Discard finished points in --out and start afresh.")

SMOKE = dict(
    corpora=["wiki"],
    studies=["main", "m_sweep"],
    metrics=["sr4", "div"],
    baselines=["greedy"],
    num_fit_prefixes=4,
    num_fit_samples=4,
    num_eval_prompts=4,
    num_candidates=4,
    max_new_tokens=16,
    m_values=["4"],
    sweep_prompts=4,
    rows_per_call=16,
)


def _settings() -> dict:
    values = common.settings(__name__)
    if values.pop("smoke"):  # flags given on the command line win over the smoke sizes
        values.update({name: value for name, value in SMOKE.items() if not flags.FLAGS[name].present})
    return values


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    s = _settings()
    try:
        config = DaemonConfig.from_flags(s)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if "main" in config.studies:
        # fail now, not after the first decoder's decode
        common.require(
            importlib.util.find_spec("mauve") is not None,
            'the main table reports MAUVE, which needs: pip install -e ".[eval]"',
        )
    infodec.enable_compilation_cache()
    start = time.perf_counter()
    log = lambda text: print(text, flush=True)
    # the folder records the model that scores info ("auto" resolved), or null -- as folders written before
    # --evaluator, which stay resumable -- when info is not computed or the decoding model scores it
    s["evaluator"] = config.evaluator if "info" in config.metrics else None
    model, params, tokenizer = infodec.load(config.model)  # before the folder: --rows_per_call may depend on it
    amateur = infodec.load(config.amateur)[:2] if config.amateur else None
    evaluator = infodec.load(config.evaluator) if config.evaluator and "info" in config.metrics else None
    if not flags.FLAGS["rows_per_call"].present:  # the default (or --smoke's), lowered to what the device holds
        fitted = rows_per_call_that_fits(model, params, config)
        if fitted is not None and fitted < config.rows_per_call:
            log(f"--rows_per_call={max(1, fitted)} (of {config.rows_per_call}): the most the device's memory holds")
            config = dataclasses.replace(config, rows_per_call=max(1, fitted))
            s["rows_per_call"] = config.rows_per_call
    folder = common.results_folder(
        __name__,
        _OUT.value,
        _OVERWRITE.value,
        growable=("baselines", "studies", "m_values"),
        added=ADDED_SETTINGS,
        **s,
    )
    records = run_studies(folder, model, params, tokenizer, config, log=log, amateur=amateur, evaluator=evaluator)
    path = report.write_report(folder.path)
    log(report.summary(records, config))
    log(f"done in {time.perf_counter() - start:.0f} s; results in {folder.path} (summary: {path})")


if __name__ == "__main__":
    jax.config.parse_flags_with_absl()
    app.run(main)
