"""infodec: language-model decoding as optimisation, in JAX/Flax.

The curated public API::

    model, params, tokenizer = infodec.load("smollm2-135m")
    out = infodec.generate(model, params, ["The capital of France is"], infodec.TopP(0.9),
                           jax.random.key(0), max_new_tokens=32, tokenizer=tokenizer)
"""

from infodec import daemon, sharding, smc, theory
from infodec.compilation import enable_compilation_cache
from infodec.decoding import (
    GenerateOutput,
    MemoryPlan,
    MemoryPlanError,
    beam_search,
    compile_count,
    contrastive_search,
    dola,
    generate,
    memory_plan,
    stream,
)
from infodec.models.checkpoints import load
from infodec.policies import (
    PMI,
    Chain,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    DynamicValuePolicy,
    Epsilon,
    Eta,
    FunctionScore,
    Greedy,
    HalfLifeSchedule,
    KLGuidedTemperature,
    MinP,
    Policy,
    RepetitionPenalty,
    SigmoidSchedule,
    StepInfo,
    Temperature,
    TopK,
    TopP,
    Transform,
    Typical,
    ValuePolicy,
    chain,
)

__all__ = [
    "load",
    "enable_compilation_cache",
    "generate",
    "stream",
    "beam_search",
    "contrastive_search",
    "dola",
    "compile_count",
    "GenerateOutput",
    "memory_plan",
    "MemoryPlan",
    "MemoryPlanError",
    "Policy",
    "Transform",
    "StepInfo",
    "Greedy",
    "Temperature",
    "TopK",
    "TopP",
    "MinP",
    "Typical",
    "Epsilon",
    "Eta",
    "RepetitionPenalty",
    "Chain",
    "chain",
    "ValuePolicy",
    "PMI",
    "FunctionScore",
    "ClassifierFreeGuidance",
    "KLGuidedTemperature",
    "DynamicValuePolicy",
    "HalfLifeSchedule",
    "SigmoidSchedule",
    "ClassifierGuidance",
    "daemon",
    "sharding",
    "smc",
    "theory",
]
