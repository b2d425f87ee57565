r"""The theory check: the exact soft-Bellman DP on random tiny models, as a readable report.

    python -m experiments.theory                 # 3 models, vocabulary 6, horizon 3, 4000 samples (~1.5 min)
    python -m experiments.theory --smoke         # 1 model, vocabulary 4, horizon 2 (under a minute)
    python -m experiments.theory --num_models=5 --vocab=8 --horizon=4 --seed=7 --out=results/theory_check_big

Verifies, for each model and value function, that the closed-form one-step policies equal the DP at
horizon 1, that the DP's optimum is at least every myopic decoder's exact objective (with the gaps),
the cases where myopic decoding is exactly optimal, and that ``infodec.generate``'s samples follow each
policy's exact sequence law (chi-square); see ``infodec.studies.theory_check``. Writes ``report.md``,
``checks.csv``, ``gaps.csv``, ``theory.png`` and the resumable ``points.jsonl`` to ``--out``, prints
PASS/FAIL per check, and exits with status 1 if any check failed.
"""

import sys

from absl import app, flags

from experiments.common import results_folder
from infodec.studies import theory_check

_NUM_MODELS = flags.DEFINE_integer("num_models", 3, f"Random tiny models (1 to {theory_check.MAX_MODELS}).")
_VOCAB = flags.DEFINE_integer("vocab", 6, f"Their vocabulary (2 to {theory_check.MAX_VOCAB}).")
_HORIZON = flags.DEFINE_integer("horizon", 3, f"Generated tokens enumerated (1 to {theory_check.MAX_HORIZON}).")
_SEED = flags.DEFINE_integer("seed", 0, "First model's seed (models use seed, seed + 1, ...).")
_SAMPLES = flags.DEFINE_integer(
    "samples", 4000, f"infodec.generate samples per chi-square check (at least {theory_check.MIN_SAMPLES})."
)
_SMOKE = flags.DEFINE_bool(
    "smoke", False, f"Quick run: {theory_check.SMOKE} and fewer settings and policies (overrides the size flags)."
)
_OUT = flags.DEFINE_string(
    "out", "results/theory_check", "Output folder (results/theory_check_smoke for --smoke unless set)."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard the points of an earlier run in --out.")


def build_config(
    *, num_models: int, vocab: int, horizon: int, seed: int, samples: int, smoke: bool
) -> theory_check.ReportConfig:
    """The report's configuration from flag values; a bad value raises ``app.UsageError`` naming the flag."""
    if smoke:
        num_models, vocab, horizon, samples = (
            theory_check.SMOKE[k] for k in ("num_models", "vocab", "horizon", "samples")
        )
    try:
        return theory_check.ReportConfig(
            num_models=num_models, vocab=vocab, horizon=horizon, seed=seed, samples=samples, smoke=smoke
        )
    except ValueError as e:  # its messages start with the field, which is the flag's name
        raise app.UsageError(f"--{e}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = build_config(
        num_models=_NUM_MODELS.value,
        vocab=_VOCAB.value,
        horizon=_HORIZON.value,
        seed=_SEED.value,
        samples=_SAMPLES.value,
        smoke=_SMOKE.value,
    )
    out = "results/theory_check_smoke" if _SMOKE.value and not _OUT.present else _OUT.value
    folder = results_folder(__name__, out, _OVERWRITE.value, resolved=config.settings())
    report = theory_check.run_report(config, folder, log=lambda s: print(s, flush=True))
    print("\n".join(report.lines()))
    print(
        f"report: {report.markdown_path}  plot: {report.plot_path}  tables: "
        f"{', '.join(str(p) for p in report.csv_paths)}  ({report.seconds:.1f} s)"
    )
    if not report.passed:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
