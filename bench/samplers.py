r"""Per-step cost of llama.cpp's samplers against top-p: the policy and the sampling of one token, jitted,
and the whole decode step with the default model.

    python -m bench.samplers                           # batch 25, vocabulary 49152 (SmolLM2's), 200 repeats
    python -m bench.samplers --batch=25 --context=272
    python -m bench.samplers --decode                  # generate() on SmolLM2-135M, batch 25, 32 tokens

Each policy runs on the same random ``[batch, vocab]`` logits (a fresh copy per call is not needed: the
function is pure) with a context of ``--context`` tokens that repeats itself (so DRY finds repeats) and one
key per row; the time is the median of ``--repeats`` calls of ``jit(policy + sample_tokens)``, and the
ratio is that time over ``TopP(0.9)``'s. It is a policy-only microbenchmark: the model call, which
dominates a decode step, is not in it. Writes ``bench/results/samplers.json`` and ``.md``.

``--decode`` times whole ``generate`` calls instead (``--model``, float32 on CPU, stop tokens off so every
row makes ``--new_tokens`` tokens; prompts from ``bench.common``), each sampler chained after
``Temperature(0.8)`` as top-p is in ``bench.decode``; all policies take turns, ``--decode_repeats`` times
each after a warm-up call, and the per-step time is the median call over ``--new_tokens``. Writes
``samplers_decode.*``.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import infodec
from bench.common import cpu_description, prompts, write_results
from infodec.decoding.engine import sample_tokens
from infodec.policies import DRY, XTC, DynamicTemperature, MirostatV2, StepInfo, Temperature, TopNSigma, TopP, chain

_BATCH = flags.DEFINE_integer("batch", 25, "Rows.")
_VOCAB = flags.DEFINE_integer("vocab", 49152, "Vocabulary size (SmolLM2-135M's by default).")
_CONTEXT = flags.DEFINE_integer("context", 80, "Context slots (a 16-token prompt bucket + 64 new tokens).")
_REPEATS = flags.DEFINE_integer("repeats", 200, "Timed calls (median reported).")
_OUT = flags.DEFINE_string("out", "bench/results", "Output folder.")
_DECODE = flags.DEFINE_boolean("decode", False, "Time whole generate() calls on --model instead of the policy alone.")
_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Model of --decode.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "Tokens per row of --decode.")
_DECODE_REPEATS = flags.DEFINE_integer("decode_repeats", 3, "Timed generate calls per policy of --decode.")


def policies() -> dict:
    return {
        "top_p(0.9)": TopP(0.9),
        "top_n_sigma(1.0)": TopNSigma(1.0),
        "xtc(0.1, 0.5)": XTC(0.1, 0.5),
        "dry(0.8, 1.75, 2)": DRY(0.8, 1.75, 2),
        "dry(..., last_n=64)": DRY(0.8, 1.75, 2, 64),
        "dynatemp(1.0, 0.5, 1.0)": DynamicTemperature(1.0, 0.5, 1.0),
        "mirostat_v2(5, 0.1)": MirostatV2(5.0, 0.1),
        "temp + mirostat_v2": chain(DynamicTemperature(0.8), MirostatV2(5.0, 0.1)),
    }


def time_policy(policy, logits, context, keys, repeats: int) -> float:
    run = jax.jit(lambda x, c, k: sample_tokens(k, policy(x, StepInfo(c, jnp.int32(0), key=k))[0]))
    run(logits, context, keys).block_until_ready()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(logits, context, keys).block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_policies() -> dict:
    """The samplers as a user chains them: after a temperature, as top-p in ``bench.decode``."""
    t = Temperature(0.8)
    return {name: chain(t, policy) for name, policy in policies().items()}


def decode_main() -> None:
    model, params, tokenizer = infodec.load(_MODEL.value)
    tokens = prompts(tokenizer, _BATCH.value, 16)
    runs = {name: [] for name in decode_policies()}

    def run(policy, seed):
        start = time.perf_counter()
        out = infodec.generate(
            model, params, tokens, policy, jax.random.key(seed), max_new_tokens=_NEW_TOKENS.value, stop_tokens=()
        )
        assert out.lengths.min() == _NEW_TOKENS.value
        return time.perf_counter() - start

    for policy in decode_policies().values():
        run(policy, 0)  # compile
    for repeat in range(_DECODE_REPEATS.value):  # taking turns: load drifts hit every policy alike
        for name, policy in decode_policies().items():
            runs[name].append(run(policy, repeat + 1))
    rows = [{"policy": name, "ms": 1e3 * statistics.median(t) / _NEW_TOKENS.value} for name, t in runs.items()]
    base = rows[0]["ms"]
    for row in rows:
        row["vs_top_p"] = row["ms"] / base
    table = "| policy (after Temperature(0.8)) | ms / decode step | vs top-p |\n|---|---|---|\n" + "".join(
        f"| {r['policy']} | {r['ms']:.1f} | {r['vs_top_p']:.2f}x |\n" for r in rows
    )
    meta = {"model": _MODEL.value, "batch": _BATCH.value, "new_tokens": _NEW_TOKENS.value, "cpu": cpu_description()}
    write_results(_OUT.value, "samplers_decode", meta, rows, table)


def main(argv):
    del argv
    if _DECODE.value:
        decode_main()
        return
    batch, vocab, slots = _BATCH.value, _VOCAB.value, _CONTEXT.value
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(batch, vocab)) * 3, jnp.float32)
    motif = rng.integers(0, vocab, size=(batch, 7))
    context = jnp.asarray(np.tile(motif, slots // 7 + 1)[:, :slots], jnp.int32)
    keys = jax.random.split(jax.random.key(0), batch)
    rows = []
    for name, policy in policies().items():
        rows.append({"policy": name, "ms": 1e3 * time_policy(policy, logits, context, keys, _REPEATS.value)})
    base = rows[0]["ms"]
    for row in rows:
        row["vs_top_p"] = row["ms"] / base
    table = "| policy | ms / step (policy + sample) | vs top-p |\n|---|---|---|\n" + "".join(
        f"| {r['policy']} | {r['ms']:.3f} | {r['vs_top_p']:.2f}x |\n" for r in rows
    )
    meta = {"batch": batch, "vocab": vocab, "context": slots, "repeats": _REPEATS.value}
    write_results(_OUT.value, "samplers", meta, rows, table)


if __name__ == "__main__":
    app.run(main)
