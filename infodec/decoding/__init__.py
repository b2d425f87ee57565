"""The decoding engine: the functional primitives ``prefill``, ``step``, ``select``, ``finish`` and ``score``;
``generate`` and ``stream`` built on them over any ``CausalLM`` and ``Policy``; beam and contrastive
search, contrastive decoding (an expert and an amateur model), DoLa, teacher-forced scoring of given
continuations, and the memory plan they check before allocating."""

from infodec.decoding.contrastive_decoding import contrastive_decoding
from infodec.decoding.dola import dola
from infodec.decoding.engine import compile_count, finish, generate, prefill, select, step, stream, teacher_force
from infodec.decoding.memory import MemoryPlan, MemoryPlanError, memory_plan
from infodec.decoding.scoring import continuation_log_probs, policy_log_probs, score, scored_log_probs
from infodec.decoding.search import beam_search, contrastive_search
from infodec.decoding.state import DecodeState, GenerateOutput

__all__ = [
    "prefill",
    "step",
    "select",
    "finish",
    "score",
    "teacher_force",
    "generate",
    "stream",
    "compile_count",
    "beam_search",
    "contrastive_search",
    "contrastive_decoding",
    "dola",
    "DecodeState",
    "GenerateOutput",
    "memory_plan",
    "MemoryPlan",
    "MemoryPlanError",
    "continuation_log_probs",
    "scored_log_probs",
    "policy_log_probs",
]
