r"""Cost of two-stream decoding (evidence and evidence-free streams) against one stream, in one run.

    python -m bench.two_stream                 # batch 8, 64 new tokens, SmolLM2-135M float32

The two-stream run (KL-guided temperature: 2B model rows per forward call) and the one-stream run
(temperature sampling on evidence + prompt, B rows) take turns on the same inputs; medians are
compared. Writes ``bench/results/two_stream.json``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import jax
from absl import app, flags

import infodec
from bench.common import TEXT

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Model to benchmark.")
_BATCH = flags.DEFINE_integer("batch", 8, "Prompts per call.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions per side.")
_OUT = flags.DEFINE_string("out", "bench/results", "Output folder.")


def main(argv):
    del argv
    model, params, tokenizer = infodec.load(_MODEL.value)
    assert tokenizer is not None, f"{_MODEL.value} ships no tokenizer"
    ids = tokenizer.encode(TEXT)
    evidence = [ids[8 * row : 8 * row + 48] for row in range(_BATCH.value)]  # 48-token evidence spans
    prompts = [tokenizer.encode(" Tell me about the printing press.")] * _BATCH.value
    one_stream = ([e + p for e, p in zip(evidence, prompts)], infodec.Temperature(0.8), None)
    two_streams = (prompts, infodec.KLGuidedTemperature(0.8, 1.0), evidence)

    def run(case, seed):
        prompts_, policy, evidence_ = case
        start = time.perf_counter()
        infodec.generate(
            model,
            params,
            prompts_,
            policy,
            jax.random.key(seed),
            max_new_tokens=_NEW_TOKENS.value,
            evidence=evidence_,
            stop_tokens=(),
        )
        return time.perf_counter() - start

    run(one_stream, 0)  # compile both
    run(two_streams, 0)
    times = {"one_stream": [], "two_streams": []}
    for repeat in range(_REPEATS.value):
        times["one_stream"].append(run(one_stream, repeat + 1))
        times["two_streams"].append(run(two_streams, repeat + 1))
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "batch": _BATCH.value,
        "new_tokens": _NEW_TOKENS.value,
        "seconds": medians,
        "ratio": medians["two_streams"] / medians["one_stream"],
        "device": str(jax.devices()[0]),
    }
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "two_stream.json").write_text(json.dumps(result, indent=2))
    print(
        f"one stream {medians['one_stream']:.2f} s, two streams {medians['two_streams']:.2f} s, "
        f"ratio {result['ratio']:.2f}x (target <= 2.1x)"
    )


if __name__ == "__main__":
    app.run(main)
