r"""bfloat16 against float32 decode throughput on the same model, measured in one run.

    python -m bench.dtypes                         # SmolLM2-135M, batches 1 and 8, greedy, 64 tokens
    python -m bench.dtypes --batches=1 --repeats=5

Both dtypes are loaded with ``infodec.load(..., dtype=...)``; each configuration is warmed up (compile
time reported), then the two dtypes take turns ``--repeats`` times on the same prompts and medians are
compared, so machine noise hits both alike. Also reported: compilations during the timed calls (should be
0) and whether the greedy tokens agree (the leading tokens identical before the first divergence).
Writes ``bench/results/dtypes.json`` and ``bench/results/dtypes.md``.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from absl import app, flags

import infodec
from bench.common import prompts, write_results

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Model to benchmark.")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row (EOS suppressed).")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 16, "Prompt length in tokens.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per dtype (median reported).", lower_bound=1)
_OUT = flags.DEFINE_string("out", "bench/results", "Output folder.")

DTYPES = ("float32", "bfloat16")


def timed_generate(model, params, tokens) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = infodec.generate(
        model, params, tokens, infodec.Greedy(), jax.random.key(0), max_new_tokens=_NEW_TOKENS.value, stop_tokens=()
    )
    tokens_out = np.asarray(out.tokens)  # fetching the tokens waits for the computation
    return time.perf_counter() - start, tokens_out


def main(argv):
    del argv
    loaded = {dtype: infodec.load(_MODEL.value, dtype=dtype) for dtype in DTYPES}
    tokenizer = loaded["float32"][2]
    rows = []
    for batch in (int(b) for b in _BATCHES.value):
        tokens = prompts(tokenizer, batch, _PROMPT_TOKENS.value)
        compile_s, outputs, times = {}, {}, {dtype: [] for dtype in DTYPES}
        for dtype in DTYPES:
            model, params, _ = loaded[dtype]
            compile_s[dtype], outputs[dtype] = timed_generate(model, params, tokens)
        before = infodec.compile_count()
        for _ in range(_REPEATS.value):
            for dtype in DTYPES:
                model, params, _ = loaded[dtype]
                times[dtype].append(timed_generate(model, params, tokens)[0])
        recompiles = infodec.compile_count() - before
        tps = {dtype: batch * _NEW_TOKENS.value / statistics.median(times[dtype]) for dtype in DTYPES}
        same = [int(np.cumprod(a == b).sum()) for a, b in zip(outputs["float32"], outputs["bfloat16"])]
        rows.append(
            {
                "batch": batch,
                "tok_s": tps,
                "bf16_over_f32": tps["bfloat16"] / tps["float32"],
                "first_call_s": compile_s,
                "recompiles": recompiles,
                "identical_leading_tokens": same,
            }
        )
        print(rows[-1], flush=True)
    lines = [
        f"{_MODEL.value}, greedy, {_NEW_TOKENS.value} new tokens, {_PROMPT_TOKENS.value}-token prompts, backend "
        f"{jax.default_backend()}; medians of {_REPEATS.value} alternating calls.",
        "",
        "| batch | float32 tok/s | bfloat16 tok/s | bf16 / f32 | first call s (f32, bf16) | recompiles | "
        f"greedy tokens identical (of {_NEW_TOKENS.value}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['batch']} | {row['tok_s']['float32']:.1f} | {row['tok_s']['bfloat16']:.1f} | "
            f"{row['bf16_over_f32']:.2f}x | {row['first_call_s']['float32']:.1f}, "
            f"{row['first_call_s']['bfloat16']:.1f} | {row['recompiles']} | "
            f"{min(row['identical_leading_tokens'])}-{max(row['identical_leading_tokens'])} |"
        )
    meta = {"model": _MODEL.value, "param_bytes": {d: _bytes(loaded[d][1]) for d in DTYPES}}
    write_results(_OUT.value, "dtypes", meta, rows, "\n".join(lines) + "\n")


def _bytes(params) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(params))


if __name__ == "__main__":
    app.run(main)
