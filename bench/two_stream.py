r"""Cost of two-stream decoding (evidence and evidence-free streams) against one stream, in one run.

    python -m bench.two_stream                 # batch 8, 64 new tokens, SmolLM2-135M float32
    python -m bench.two_stream --policy=cfg    # classifier-free guidance as the two-stream policy

The two-stream run (KL-guided temperature or classifier-free guidance: 2B model rows per forward call)
and the one-stream run (temperature sampling on evidence + prompt, B rows) take turns on the same
inputs; medians are compared. Writes ``bench/results/two_stream.json``. ``measure`` is what
``bench.decode --random_model`` reuses.
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

FLAGS = flags.FLAGS

TWO_STREAM_POLICIES = {
    "kl_guided": lambda: infodec.KLGuidedTemperature(0.8, 1.0),
    "cfg": lambda: infodec.ClassifierFreeGuidance(1.5),
}


def define_flags() -> None:
    """The command line's flags (defined only when run as a script, so other benchmarks can import this)."""
    flags.DEFINE_string("model", "smollm2-135m", "Model to benchmark.")
    flags.DEFINE_integer("batch", 8, "Prompts per call.")
    flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
    flags.DEFINE_integer("repeats", 3, "Timed repetitions per side.")
    flags.DEFINE_enum("policy", "kl_guided", list(TWO_STREAM_POLICIES), "The two-stream policy.")
    flags.DEFINE_string("out", "bench/results", "Output folder.")


def text_inputs(tokenizer, batch: int) -> tuple[list[list[int]], list[list[int]]]:
    """``(evidence, prompts)``: ``batch`` 48-token evidence spans of the benchmark text and one question."""
    ids = tokenizer.encode(TEXT)
    evidence = [ids[8 * row : 8 * row + 48] for row in range(batch)]
    return evidence, [tokenizer.encode(" Tell me about the printing press.")] * batch


def measure(
    model, params, evidence: list[list[int]], prompts: list[list[int]], *, policy: str, new_tokens: int, repeats: int
) -> dict:
    """Median seconds of a two-stream decode (``policy`` of ``TWO_STREAM_POLICIES`` on ``prompts`` with
    ``evidence``) and of a one-stream decode (``Temperature(0.8)`` on evidence + prompt), taking turns
    ``repeats`` times after one warm-up each; EOS suppressed. Returns the medians, their ratio and the
    compilations during the timed calls (should be 0)."""
    one_stream = ([e + p for e, p in zip(evidence, prompts)], infodec.Temperature(0.8), None)
    two_streams = (prompts, TWO_STREAM_POLICIES[policy](), evidence)

    def run(case, seed):
        prompts_, policy_, evidence_ = case
        start = time.perf_counter()
        out = infodec.generate(
            model,
            params,
            prompts_,
            policy_,
            jax.random.key(seed),
            max_new_tokens=new_tokens,
            evidence=evidence_,
            stop_tokens=(),
        )
        assert out.lengths.min() == new_tokens
        return time.perf_counter() - start

    run(one_stream, 0)  # compile both
    run(two_streams, 0)
    times = {"one_stream": [], "two_streams": []}
    compiles_before = infodec.compile_count()
    for repeat in range(repeats):
        times["one_stream"].append(run(one_stream, repeat + 1))
        times["two_streams"].append(run(two_streams, repeat + 1))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "batch": len(prompts),
        "new_tokens": new_tokens,
        "two_stream_policy": policy,
        "seconds": medians,
        "ratio": medians["two_streams"] / medians["one_stream"],
        "compilations_timed": infodec.compile_count() - compiles_before,
        "device": str(jax.devices()[0]),
    }


def main(argv):
    del argv
    model, params, tokenizer = infodec.load(FLAGS.model)
    assert tokenizer is not None, f"{FLAGS.model} ships no tokenizer"
    evidence, prompts = text_inputs(tokenizer, FLAGS.batch)
    result = measure(
        model, params, evidence, prompts, policy=FLAGS.policy, new_tokens=FLAGS.new_tokens, repeats=FLAGS.repeats
    )
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "two_stream.json").write_text(json.dumps(result, indent=2))
    medians = result["seconds"]
    print(
        f"one stream {medians['one_stream']:.2f} s, two streams {medians['two_streams']:.2f} s, "
        f"ratio {result['ratio']:.2f}x (target <= 2.1x)"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
