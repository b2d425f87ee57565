"""The decoding engine: ``generate`` and ``stream`` over any ``CausalLM`` and ``Policy``."""

from infodec.decoding.engine import compile_count, generate, stream
from infodec.decoding.search import beam_search, contrastive_search
from infodec.decoding.state import DecodeState, GenerateOutput

__all__ = ["generate", "stream", "compile_count", "beam_search", "contrastive_search", "DecodeState", "GenerateOutput"]
