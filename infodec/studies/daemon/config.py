"""The DAEMON study's settings: one frozen dataclass, validated once, in ``__post_init__``.

A :class:`DaemonConfig` holds everything that changes the study's numbers. Its fields are the flags of
``experiments.daemon`` (same names, same defaults), so an error names the flag to fix; list-valued
settings are accepted as the launcher passes them (strings, or one comma-separated string) and stored
as typed tuples. The main table's decoders are :data:`BASELINES`: one table from a baseline's name to
how it decodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from infodec.daemon import fitting as fit_lib
from infodec.daemon import metrics as metrics_lib
from infodec.data import corpora
from infodec.models import registry

METRICS = ("sr2", "sr3", "sr4", "tr32", "div", "coh", "info")
STUDIES = ("main", "sr4", "m_sweep", "temperature", "fit", "perplexity")
# The human moments µ is fitted to: every fit-split window ("split") or the J fit prefixes' own ("prefixes").
FIT_TARGETS = ("split", "prefixes")
# The DAEMON studies decode with a base model ([P3] continues Wikipedia and news text with base LMs).
DEFAULT_MODEL = "gemma3-270m"
# ``evaluator="auto"`` scores ``info`` with the other registry LM: an evaluator that is not the decoder.
AUTO_EVALUATOR = "auto"
# ``evaluator`` values meaning "score ``info`` with the decoding model itself": what every results folder
# written before the field existed did. They are stored as None (JSON null), like a folder without the field.
SELF_EVALUATOR = ("", "model")
# The proposal-temperature sweep's two forms of DAEMON at τ: "corrected" refits µ on Temperature(τ) samples
# and keeps ρ = log p_θ − log r in the SIR weights (targets q_µ); "uncorrected" is the paper's τ < 1 heuristic
# as third-party reconstructions describe it: µ fitted at τ = 1, candidates from Temperature(τ), weights
# −µᵀf only (targets r_τ·exp(−µᵀf), not q_µ).
TEMPERATURE_FORMS = ("corrected", "uncorrected")
# Smoothings ε, ε/2, ε/4, ε/8 behind the ladder estimate of Ẑ_ε (tilted_perplexity.epsilon_ladder): with
# Gemma 3's vocabulary they draw a uniform token with probability 0.21, 0.12, 0.06 and 0.03.
EPSILON_RUNGS = 4
# Flags of the launcher that choose how it runs, not what it computes (stored in flags.json all the same).
LAUNCHER_FLAGS = ("smoke",)


@dataclasses.dataclass(frozen=True)
class Baseline:
    """One decoder of the main table.

    Attributes:
      description: what it is, with its settings.
      source: where each setting comes from. [P3]'s appendix values for its baselines were not available
        to this project (see :data:`BASELINES`), so none is said to be the paper's; each names what it does
        follow (a library default, the method's own paper or code, or a common choice).
      policy: an ``infodec.policies.named`` name, sampled with ``generate``; None for a search.
      search: ``"beam"``, ``"contrastive"`` or ``"contrastive_decoding"`` (``beam_search`` /
        ``contrastive_search`` / ``contrastive_decoding``); None for a policy.
      settings: keyword arguments of ``named.build(policy, ...)`` or of the search.
      needs_amateur: decodes with a second, smaller model (``--amateur``); runs only when one is given.
    """

    description: str
    policy: str | None = None
    search: str | None = None
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    needs_amateur: bool = False
    source: str = ""


# The baselines of [P3]'s main table. The order is part of the results: a baseline's PRNG key is folded
# from its position here, so new baselines go at the end. Settings: [P3]'s own values for its baselines (its
# appendix) could not be read here, so they are NOT claimed to be the paper's; each ``source`` says what the
# value follows.
BASELINES = {
    "greedy": Baseline("greedy", policy="greedy", source="no setting"),
    "top_k": Baseline(
        "top-k, k = 50",
        policy="top_k",
        settings={"top_k": 50},
        source="k = 50: HF transformers' default top_k (GenerationConfig), a common choice",
    ),
    "top_p": Baseline(
        "top-p (nucleus), p = 0.95",
        policy="top_p",
        settings={"top_p": 0.95},
        source="p = 0.95: a common choice for open-ended generation (not checked against [P3])",
    ),
    "typical": Baseline(
        "typical, τ = 0.95",
        policy="typical",
        settings={"typical_p": 0.95},
        source="τ = 0.95: a common choice (not checked against [P3] or Meister et al.'s recommendations)",
    ),
    "eta": Baseline(
        "η-sampling, η = 0.0009",
        policy="eta",
        settings={"eta": 0.0009},
        source="η = 0.0009: inside the range Hewitt et al. 2022 suggest (3e-4 to 2e-3 by model size, as HF's "
        "eta_cutoff documentation states)",
    ),
    "contrastive": Baseline(
        "contrastive search, k = 4, α = 0.6",
        search="contrastive",
        settings={"top_k": 4, "penalty_alpha": 0.6},
        source="k = 4, α = 0.6: the example setting of HF's generation guide for contrastive search, a common choice",
    ),
    "beam": Baseline(
        "beam search, 4 beams", search="beam", settings={"num_beams": 4}, source="4 beams: a common choice"
    ),
    "sampling": Baseline(
        "ancestral sampling (T = 1): DAEMON's proposal",
        policy="temperature",
        settings={"temperature": 1.0},
        source="T = 1: the proposal of DAEMON's Algorithms 1 and 2 (docs/math.md §3)",
    ),
    "contrastive_decoding": Baseline(
        "contrastive decoding (expert vs --amateur), 5 beams, α = 0.1, β = 1, τ = 0.5, amateur context 1",
        search="contrastive_decoding",
        settings={"num_beams": 5, "alpha": 0.1, "beta": 1.0, "amateur_temperature": 0.5, "amateur_context": 1},
        needs_amateur=True,
        source="Li et al. 2023's main runs (their submit_decoding.py): 5 beams, α = 0.1, β = 1, amateur τ = 0.5, "
        "the amateur reading only the prompt's last token (--ignore_prefix yes)",
    ),
}
# What runs by default: every baseline that needs no second model.
DEFAULT_BASELINES = tuple(name for name, b in BASELINES.items() if not b.needs_amateur)

# Settings added after results folders were first written, with the value that reproduces what those folders
# computed (``ResultsFolder(added=...)``): an older folder resumes when a rerun keeps these values.
ADDED_SETTINGS = {"amateur": None, "evaluator": None, "perplexity_samples": 0, "perplexity_prompts": 0}


def check_fit_target(fit_target: str) -> None:
    """Raises ValueError unless ``fit_target`` is one of :data:`FIT_TARGETS`."""
    if fit_target not in FIT_TARGETS:
        raise ValueError(f"fit_target must be one of {', '.join(FIT_TARGETS)}, got {fit_target!r}")


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    """Settings of the DAEMON studies (``experiments.daemon``'s flags; see that module for the studies).

    Attributes:
      model: registry name, HF directory or .gguf of the LM that decodes (default :data:`DEFAULT_MODEL`, a
        base model; folders written before hold their own model in ``flags.json``).
      evaluator: the fixed LM that scores ``info`` (mean NLL of the continuation's text, re-tokenised,
        given the prompt's: ``metrics.evaluator_nll``), a registry name, HF directory or .gguf. "auto"
        (the default) resolves to :func:`default_evaluator` of ``model``; None (or "" / "model" / the
        model's own name) scores ``info`` with the decoding model itself, which is what a results folder
        without this field used. Unused (and "auto" left unresolved) when ``metrics`` has no ``info``.
      corpora: ``infodec.data.corpora`` names; fit and eval prompts come from disjoint documents.
      studies: which of :data:`STUDIES` to run.
      metrics: the metrics µ is fitted on and reported (``infodec.daemon.metrics`` names).
      baselines: the main table's decoders (:data:`BASELINES` names; by default those needing no amateur).
      amateur: registry name, HF directory or .gguf of the amateur LM of ``contrastive_decoding`` (it must
        share ``model``'s tokenizer); None for none (the default keeps older results folders resumable).
      num_fit_prefixes, num_fit_samples: ``J`` prefixes and ``N`` proposal samples each (Algorithm 1).
      num_eval_prompts, num_candidates: eval-split prompts and DAEMON's ``M`` (Algorithm 2).
      max_new_tokens, prompt_tokens: continuation and prompt lengths in tokens.
      l2: ridge on the standardised µ; l2_values: if given, the ridge is chosen among these by
        ``l2_folds``-fold cross-validation over the fit prefixes instead.
      max_human_windows: at most this many windows for either split's human mean (0 = every window).
      sr4_draws: SR-4 study: plain and DAEMON continuations per eval prompt (averaged per prompt).
      max_per_document: windows per document prompts are drawn from (0 = every window).
      fit_target: one of :data:`FIT_TARGETS`.
      m_values: the M sweep; proposal_temperatures: the proposal-τ sweep; sweep_prompts: eval prompts
        per sweep point.
      temperature_forms: which of :data:`TEMPERATURE_FORMS` the τ sweep runs (None: "corrected" only; the
        uncorrected form is not run at τ = 1, where it is the corrected decode: ρ = 0, the same µ).
      fit_normalization: Algorithm 1's ``fitting.fit_coefficients(normalization=)``: "prefix" or "global"
        (one pooled sample bank, the paper's form as reconstructed); None: "prefix".
      fit_objective: "dual" or "relative_error" (the paper's RMS relative moment error with Adam, as
        reconstructed; it has no ridge, so ``l2`` is not used with it); None: "dual".
      fit_learning_rate, fit_steps, fit_tol: ``fit_coefficients``' ``learning_rate`` / ``steps`` / ``tol``;
        None: the objective's defaults (the dual's L-BFGS line search, 200 steps, 1e-6; the relative
        error's Adam at 0.005, 5000 steps, 1e-3). The variants apply to every Algorithm 1 fit of the
        main study and the sweeps; the SR-4 study fits its one metric with the dual.
      rows_per_call: decode rows per call (bounds the KV-cache memory).
      perplexity_samples: ``N`` fresh p_θ samples per eval prompt behind ``Ẑ`` for the ``perplexity`` study (the
        human texts' perplexity under q_µ: paired CI, N sweep, ε-perplexity from p_ε's samples and from the
        ε ladder's, whose :data:`EPSILON_RUNGS` rungs make it a multiple of 8; each corpus's last points).
      perplexity_prompts: that study's eval prompts, the first ones (0 = every eval prompt).
      seed: window choice and every PRNG key derive from it.
    """

    model: str = DEFAULT_MODEL
    corpora: tuple[str, ...] = ("wiki", "news")
    studies: tuple[str, ...] = ("main", "sr4", "m_sweep", "temperature")
    metrics: tuple[str, ...] = METRICS
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    num_fit_prefixes: int = 24
    num_fit_samples: int = 16
    num_eval_prompts: int = 24
    num_candidates: int = 20
    max_new_tokens: int = 64
    prompt_tokens: int = 32
    l2: float = 1e-3
    l2_values: tuple[float, ...] = ()
    l2_folds: int = 4
    max_human_windows: int = 0
    sr4_draws: int = 1
    max_per_document: int = 0
    fit_target: str = "split"
    m_values: tuple[int, ...] = (5, 10, 20, 40, 80)
    proposal_temperatures: tuple[float, ...] = (0.8, 0.9, 1.0)
    sweep_prompts: int = 4
    rows_per_call: int = 100
    seed: int = 0
    amateur: str | None = None
    evaluator: str | None = AUTO_EVALUATOR
    perplexity_samples: int = 0
    perplexity_prompts: int = 0
    # Fields added after results folders were written: None or their ADDED_SETTINGS value means the behaviour
    # from before them, so a rerun on such a folder finds its settings unchanged and resumes.
    temperature_forms: tuple[str, ...] | None = None
    fit_normalization: str | None = None
    fit_objective: str | None = None
    fit_learning_rate: float | None = None
    fit_steps: int | None = None
    fit_tol: float | None = None

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> DaemonConfig:
        """The config of a flag dict (the launcher's flags, or a results folder's ``flags.json``); flags
        missing from it keep their defaults and :data:`LAUNCHER_FLAGS` are ignored, except
        :data:`ADDED_SETTINGS`: a folder written before one existed computed what its old value means (a
        missing ``evaluator`` reads as None, the decoding model, never as "auto")."""
        return cls(**{**ADDED_SETTINGS, **{k: v for k, v in flags.items() if k not in LAUNCHER_FLAGS}})

    def __post_init__(self) -> None:
        _require(bool(self.model), "--model must name a model (registry name, HF directory or .gguf)")
        for name in ("corpora", "studies", "metrics", "baselines"):
            self._set(name, tuple(getattr(self, name)))
        self._set("evaluator", self._resolved_evaluator())
        self._set("l2_values", _numbers("l2_values", self.l2_values, allow_empty=True))
        self._set("proposal_temperatures", _numbers("proposal_temperatures", self.proposal_temperatures))
        ms = _numbers("m_values", self.m_values)
        _require(all(m >= 1 and m == int(m) for m in ms), f"--m_values must be positive integers, got {list(ms)}")
        self._set("m_values", tuple(int(m) for m in ms))
        if self.temperature_forms is not None:
            forms = self.temperature_forms
            self._set("temperature_forms", tuple(forms.split(",") if isinstance(forms, str) else forms))
        self._validate()
        self._validate_fit()

    @property
    def forms(self) -> tuple[str, ...]:
        """The τ sweep's forms (:data:`TEMPERATURE_FORMS`), resolved: ``("corrected",)`` when unset."""
        return self.temperature_forms or ("corrected",)

    def fit_options(self) -> dict[str, Any]:
        """Keyword arguments of ``fitting.fit_coefficients`` for Algorithm 1's fit (None fields left to its
        defaults); the ridge is the caller's (``l2`` / ``l2_values``, dual only)."""
        return {
            "normalization": self.fit_normalization or "prefix",
            "objective": self.fit_objective or "dual",
            "learning_rate": self.fit_learning_rate,
            "steps": self.fit_steps,
            "tol": self.fit_tol,
        }

    def _validate_fit(self) -> None:
        forms = self.forms
        bad = set(forms) - set(TEMPERATURE_FORMS)
        _require(
            bool(forms) and not bad,
            f"--temperature_forms must list some of {', '.join(TEMPERATURE_FORMS)}, got {list(forms)}",
        )
        norms, objectives = fit_lib.NORMALIZATIONS, fit_lib.OBJECTIVES
        _require(
            self.fit_normalization in (None, *norms),
            f"--fit_normalization must be one of {', '.join(norms)}, got {self.fit_normalization!r}",
        )
        _require(
            self.fit_objective in (None, *objectives),
            f"--fit_objective must be one of {', '.join(objectives)}, got {self.fit_objective!r}",
        )
        for name in ("fit_learning_rate", "fit_tol"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"--{name} must be > 0, got {value}")
        _require(self.fit_steps is None or self.fit_steps >= 1, f"--fit_steps must be >= 1, got {self.fit_steps}")
        _require(
            not (self.l2_values and self.fit_objective == "relative_error"),
            "--l2_values cross-validates the dual's ridge; --fit_objective=relative_error has none",
        )
        _require(
            not (self.l2_values and self.fit_normalization == "global"),
            "--l2_values cross-validates per-prefix moments; it needs --fit_normalization=prefix",
        )

    def _resolved_evaluator(self) -> str | None:
        """``evaluator`` as stored: a model name, None for the decoding model, or "auto" while ``metrics``
        has no ``info`` (so ``dataclasses.replace`` adding ``info`` later still resolves it)."""
        if self.evaluator is None or self.evaluator in SELF_EVALUATOR or self.evaluator == self.model:
            return None
        if self.evaluator == AUTO_EVALUATOR and "info" in self.metrics:
            return default_evaluator(self.model)
        return self.evaluator  # "auto" stays unresolved while no metric needs an evaluator

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen dataclass's own field, once

    def _validate(self) -> None:
        unknown = set(self.studies) - set(STUDIES)
        _require(not unknown, f"--studies: unknown {sorted(unknown)}; choose from {', '.join(STUDIES)}")
        bad = set(self.baselines) - set(BASELINES)
        _require(not bad, f"--baselines: unknown {sorted(bad)}; choose from {', '.join(BASELINES)}")
        needing = [name for name in self.baselines if BASELINES[name].needs_amateur]
        _require(
            not needing or bool(self.amateur),
            f"--baselines: {', '.join(needing)} contrasts the model with a smaller one: pass --amateur=NAME",
        )
        _require(
            not self.amateur or bool(needing),
            "--amateur is only used by the contrastive_decoding baseline: add it to --baselines",
        )
        _reraise("metrics", self.metrics, lambda n: metrics_lib.get_metric(n, coh=_unused, info=_unused))
        _reraise("corpora", self.corpora, corpora.check_name)
        for name in (
            "num_fit_prefixes",
            "num_fit_samples",
            "num_eval_prompts",
            "num_candidates",
            "max_new_tokens",
            "prompt_tokens",
            "sweep_prompts",
            "rows_per_call",
            "sr4_draws",
        ):
            _require(getattr(self, name) >= 1, f"--{name} must be >= 1, got {getattr(self, name)}")
        _require(self.l2 >= 0, f"--l2 must be >= 0, got {self.l2}")
        _require(all(v >= 0 for v in self.l2_values), f"--l2_values must be >= 0, got {list(self.l2_values)}")
        _require(
            not self.l2_values or 2 <= self.l2_folds <= self.num_fit_prefixes,
            f"--l2_folds must be between 2 and --num_fit_prefixes ({self.num_fit_prefixes}), got {self.l2_folds}",
        )
        _require(self.perplexity_samples >= 0, f"--perplexity_samples must be >= 0, got {self.perplexity_samples}")
        _require(
            "perplexity" not in self.studies or self.perplexity_samples >= 1,
            "--studies=perplexity draws Ẑ from --perplexity_samples samples per prompt: pass --perplexity_samples >= 1",
        )
        _require(
            "perplexity" not in self.studies or self.perplexity_samples % (2 * EPSILON_RUNGS) == 0,
            f"--studies=perplexity's ε-ladder point draws N / {EPSILON_RUNGS} samples from each of {EPSILON_RUNGS} "
            f"smoothings and sweeps N over sizes {EPSILON_RUNGS} divides: --perplexity_samples must be a multiple "
            f"of {2 * EPSILON_RUNGS}, got {self.perplexity_samples}",
        )
        _require(
            0 <= self.perplexity_prompts <= self.num_eval_prompts,
            f"--perplexity_prompts must be between 0 (every eval prompt) and --num_eval_prompts "
            f"({self.num_eval_prompts}), got {self.perplexity_prompts}",
        )
        for name in ("max_human_windows", "max_per_document"):
            _require(getattr(self, name) >= 0, f"--{name} must be >= 0 (0 = every window), got {getattr(self, name)}")
        _reraise("", [self.fit_target], check_fit_target)
        _require(self.sweep_prompts <= self.num_eval_prompts, "--sweep_prompts must be <= --num_eval_prompts")
        _require(
            all(t > 0 for t in self.proposal_temperatures),
            f"--proposal_temperatures must be > 0, got {list(self.proposal_temperatures)}",
        )

    def describe_models(self) -> str:
        """One sentence naming the decoding model and the evaluator of ``info`` exactly
        (``registry.describe``), for reports, results pages and launchers' headers."""
        line = f"Decoding model `{self.model}`: {registry.describe(self.model)}."
        if "info" not in self.metrics:
            return line
        if self.evaluator is None:
            return f"{line} `info` is scored by the decoding model itself (its own NLL), not a fixed evaluator."
        return (
            f"{line} `info` is scored by the fixed evaluator `{self.evaluator}`: {registry.describe(self.evaluator)}."
        )

    def flags(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (a ``ResultsFolder``'s settings; ``from_flags`` reads it back)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def default_evaluator(model: str) -> str:
    """The evaluator ``evaluator="auto"`` picks for ``model``: a registry LM that is not ``model`` --
    ``smollm2-135m`` (SmolLM2-135M-Instruct) for any model but itself, ``gemma3-270m`` (base) for it."""
    return "gemma3-270m" if model == "smollm2-135m" else "smollm2-135m"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _reraise(flag: str, values: Iterable[str], check: Callable[[str], object]) -> None:
    """Runs ``check`` on each value, prefixing a ValueError with the flag (``--metrics: ...``)."""
    for value in values:
        try:
            check(value)
        except ValueError as e:
            raise ValueError(f"--{flag}: {e}" if flag else f"--{e}") from None


def _unused(*args: Any) -> None:
    """Stands in for ``coh``/``info``'s model-dependent functions: validation only checks the names."""


def _numbers(name: str, values: str | Iterable[Any], *, allow_empty: bool = False) -> tuple[float, ...]:
    """``"0.8,0.9"`` or ``["0.8", "0.9"]`` or ``(0.8, 0.9)`` -> ``(0.8, 0.9)``, the error naming the flag."""
    items = values.split(",") if isinstance(values, str) else list(values)
    try:
        parsed = tuple(float(v) for v in items if str(v).strip())
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {values!r}") from None
    _require(allow_empty or bool(parsed), f"--{name} must list at least one number")
    return parsed


__all__ = [
    "DaemonConfig",
    "Baseline",
    "BASELINES",
    "DEFAULT_BASELINES",
    "METRICS",
    "STUDIES",
    "FIT_TARGETS",
    "TEMPERATURE_FORMS",
    "check_fit_target",
    "default_evaluator",
    "DEFAULT_MODEL",
    "AUTO_EVALUATOR",
]
