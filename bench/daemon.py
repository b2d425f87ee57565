r"""Cost of DAEMON's conditional SIR (Algorithm 2) against a plain batched decode, measured in one run.

    python -m bench.daemon                          # M=25, 64 tokens, SmolLM2-135M
    python -m bench.daemon --new_tokens=64,256

DAEMON's speed criterion: ``infodec.daemon.sample`` with ``M`` candidates for one prompt should cost at
most 1.15x a plain ``infodec.generate`` on a batch of ``M`` copies of that prompt (same policy
``Temperature(1.0)``, same length, EOS suppressed). Three arms take turns ``--repeats`` times after a
warm-up (medians compared):

* ``plain``: ``generate`` on ``[M, P]`` copies of the prompt (M prefills);
* ``shared``: ``generate(..., num_samples=M)`` on the one prompt (one prefill, broadcast cache): the
  decode DAEMON runs, without metrics or resampling;
* ``daemon``: ``infodec.daemon.sample`` with the jit-able metrics ``sr4, tr32, div`` and a fixed
  nonzero µ (decode + metrics + weights + resampling).

Also reported: the ratio of minima, the metric+resample overhead (``daemon − shared`` medians, and
timed directly on fixed candidates: metrics, log weights, resampling, gathers) and compilations during
the timed calls (should be 0). On a shared machine the per-call times are noisy: use ``--repeats``.
Writes ``bench/results/daemon.json`` and ``bench/results/daemon.md``.
"""

from __future__ import annotations

import functools
import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags

import infodec
from bench.common import TEXT, write_results
from infodec import daemon

METRICS = ("sr4", "tr32", "div")
MU = np.array([2.0, 1.0, -1.0])  # fixed, nonzero; its value does not change the work done

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags (defined only when run as a script, so other benchmarks can import this)."""
    flags.DEFINE_string("model", "smollm2-135m", "Model to benchmark.")
    flags.DEFINE_integer("candidates", 25, "M: DAEMON candidates = plain batch size.")
    flags.DEFINE_list("new_tokens", ["64"], "Continuation lengths (EOS suppressed).")
    flags.DEFINE_integer("prompt_tokens", 32, "Prompt length in tokens.")
    flags.DEFINE_integer("repeats", 3, "Timed repetitions per arm (median reported).")
    flags.DEFINE_string("out", "bench/results", "Output folder.")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def arms(model, params, prompt: np.ndarray, m: int, new_tokens: int) -> dict:
    policy = infodec.Temperature(1.0)
    copies = np.repeat(prompt[None, :], m, axis=0)

    def plain(seed):
        out = infodec.generate(
            model, params, copies, policy, jax.random.key(seed), max_new_tokens=new_tokens, stop_tokens=()
        )
        assert out.lengths.min() == new_tokens

    def shared(seed):
        out = infodec.generate(
            model,
            params,
            [prompt],
            policy,
            jax.random.key(seed),
            max_new_tokens=new_tokens,
            stop_tokens=(),
            num_samples=m,
        )
        assert out.tokens.shape[0] == m and out.lengths.min() == new_tokens

    def sir(seed):
        out = daemon.sample(
            model,
            params,
            [prompt],
            MU,
            METRICS,
            num_candidates=m,
            max_new_tokens=new_tokens,
            key=jax.random.key(seed),
            stop_tokens=(),
        )
        assert out.tokens.shape == (1, new_tokens) and out.features.shape == (1, m, len(METRICS))

    return {"plain": plain, "shared": shared, "daemon": sir}


def post_decode_seconds(model, params, prompt, m: int, new_tokens: int) -> float:
    """Median time of what ``sample`` adds after the decode: metrics on the ``M`` candidates, log weights,
    resampling and the host gathers (timed directly, on candidates generated once)."""
    from infodec.daemon import metrics, sampling

    out = infodec.generate(
        model,
        params,
        [prompt],
        infodec.Temperature(1.0),
        jax.random.key(0),
        max_new_tokens=new_tokens,
        stop_tokens=(),
        num_samples=m,
    )
    functions = metrics.metric_functions(METRICS)

    def post():
        feats = np.asarray(metrics.compute_with(functions, out.tokens, out.lengths, out.prompt_tokens), np.float64)
        out.sequence_logp()
        lw = sampling.log_weights(MU, feats.reshape(1, m, -1), np.zeros((1, m)))
        index, ess = sampling.resample(jax.random.key(1), lw)
        return out.tokens[np.asarray(index)], np.asarray(ess)

    post()
    return statistics.median(_timed(post) for _ in range(20))


def measure(model, params, prompt, m: int, new_tokens: int, repeats: int) -> dict:
    """The three arms (``arms``) taking turns ``repeats`` times after a warm-up each, and the post-decode
    work timed directly; medians, their ratios and the compilations during the timed calls."""
    fns = arms(model, params, prompt, m, new_tokens)
    first = {name: _timed(functools.partial(fn, 0)) for name, fn in fns.items()}  # warm-up (compiles)
    times = {name: [] for name in fns}
    compiles_before = infodec.compile_count()
    for repeat in range(repeats):  # take turns so machine noise hits every arm alike
        for name, fn in fns.items():
            times[name].append(_timed(functools.partial(fn, repeat + 1)))
    compiles = infodec.compile_count() - compiles_before
    med = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    post = post_decode_seconds(model, params, prompt, m, new_tokens)
    return {
        "candidates": m,
        "new_tokens": new_tokens,
        "prompt_tokens": len(prompt),
        "median_s": med,
        "times_s": times,
        "first_call_s": first,
        "ratio_daemon_vs_plain": med["daemon"] / med["plain"],
        "ratio_shared_vs_plain": med["shared"] / med["plain"],
        "ratio_daemon_vs_plain_min": best["daemon"] / best["plain"],
        "metric_resample_overhead_s": med["daemon"] - med["shared"],
        "post_decode_s": post,
        "post_decode_fraction_of_plain": post / med["plain"],
        "plain_tokens_per_s": m * new_tokens / med["plain"],
        "compilations_timed": compiles,
        "criterion_ratio_max": 1.15,
        "passes": med["daemon"] / med["plain"] <= 1.15,
    }


def main(argv):
    del argv
    model, params, tokenizer = infodec.load(FLAGS.model)
    assert tokenizer is not None, f"{FLAGS.model} ships no tokenizer"
    prompt = np.asarray(tokenizer.encode(TEXT)[: FLAGS.prompt_tokens], np.int32)
    rows = []
    for new_tokens in map(int, FLAGS.new_tokens):
        row = measure(model, params, prompt, FLAGS.candidates, new_tokens, FLAGS.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
        print(
            f"M={row['candidates']} tokens={new_tokens}: daemon/plain = {row['ratio_daemon_vs_plain']:.3f}x "
            f"(shared-prefill decode alone {row['ratio_shared_vs_plain']:.3f}x; metrics+resample "
            f"{row['metric_resample_overhead_s'] * 1e3:.0f} ms by difference, "
            f"{row['post_decode_s'] * 1e3:.1f} ms timed "
            f"directly; ratio of minima {row['ratio_daemon_vs_plain_min']:.3f}x)",
            flush=True,
        )
    write(rows)


def write(rows: list[dict]) -> None:
    meta = {
        "model": FLAGS.model,
        "repeats": FLAGS.repeats,
        "metrics": list(METRICS),
        "mu": MU.tolist(),
        "policy": "Temperature(1.0)",
        "stop_tokens": [],
    }
    header = (
        "| M | new tokens | plain s | shared-prefill s | DAEMON s | DAEMON / plain (medians) | "
        "DAEMON / plain (minima) | metrics+resample ms (direct) | plain tok/s | compilations (timed) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['candidates']} | {r['new_tokens']} | {r['median_s']['plain']:.2f} | "
        f"{r['median_s']['shared']:.2f} | {r['median_s']['daemon']:.2f} | "
        f"{r['ratio_daemon_vs_plain']:.3f}x | {r['ratio_daemon_vs_plain_min']:.3f}x | "
        f"{r['post_decode_s'] * 1e3:.1f} | "
        f"{r['plain_tokens_per_s']:.0f} | {r['compilations_timed']} |"
        for r in rows
    ]
    write_results(FLAGS.out, "daemon", meta, rows, header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
