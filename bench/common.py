"""What the benchmarks share."""

import platform

import numpy as np

# Ordinary prose: prompts and evidence are windows of it.
TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type with an oil-based ink and a screw press adapted from those used to make wine. "
    "Within a few decades, print shops had spread to most of the major cities of Europe, and the price of "
    "books fell sharply. Scholars could now compare identical copies of a text, which changed the way "
    "knowledge was checked, shared and argued about. "
) * 4


def prompts(tokenizer, batch: int, length: int) -> np.ndarray:
    """``[batch, length]`` distinct prompts of equal length (windows of one text; no padding needed)."""
    ids = tokenizer.encode(TEXT)
    return np.stack([ids[3 * row : 3 * row + length] for row in range(batch)]).astype(np.int32)


def random_tokens(vocab_size: int, batch: int, length: int, seed: int = 0) -> np.ndarray:
    """``[batch, length]`` int32 token ids drawn uniformly from ``[0, vocab_size)`` (prompts for random models)."""
    return np.random.default_rng(seed).integers(0, vocab_size, (batch, length), dtype=np.int32)


def write_results(out: str, name: str, meta: dict, rows: list[dict], table: str, quiet: bool = False) -> None:
    """Writes ``{out}/{name}.json`` (meta + rows) and ``{out}/{name}.md`` (the table), and prints the table
    unless ``quiet``."""
    import json
    import os
    from pathlib import Path

    import jax

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"backend": jax.default_backend(), "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), **meta}
    (folder / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (folder / f"{name}.md").write_text(table)
    if not quiet:
        print(table)


def cpu_description() -> str:
    """The CPU's model name and its widest vector extensions (``/proc/cpuinfo``), e.g. ``AMD EPYC (avx2)``:
    CPU results are only comparable between machines with the same vector units."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    vector = [f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "avx2", "neon") if f in flags]
    return f"{name} ({', '.join(vector) or 'no AVX2'})"
