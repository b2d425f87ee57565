r"""``generate`` on the public primitives against ``generate`` before them, and a user's own loop, in one run.

    python -m bench.primitives                          # SmolLM2-135M float32, batches 1 and 8, 64 tokens
    python -m bench.primitives --baseline=f083c5c --repeats=5

The baseline is the library at git revision ``--baseline`` (``git archive`` into a temporary folder),
timed in child processes that alternate with children timing this checkout, so both see the same machine
state; each child loads the model, warms up (compiles), then times ``--repeats`` calls and reports the
median. The ratio is baseline time / current time (>= 1: the current code is no slower). The current
children also time two hand-written loops over ``prefill``/``step``/``finish``: one jitted ``lax.scan``
over all steps (``user_scan``) and a Python loop of a jitted, donated ``step`` (``user_steps``). Writes
``bench/results/primitives.json`` and ``.md``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import app, flags

from bench.common import write_results

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Model (name or path for infodec.load).")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens per row (EOS suppressed).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per child (median reported).")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating (baseline, current) child pairs per batch size.")
_BASELINE = flags.DEFINE_string("baseline", "f083c5c", "Git revision of the baseline library.")
_OUT = flags.DEFINE_string("out", "bench/results", "Output folder.")

# What a child runs: load, warm up, time. ``USER_LOOPS`` adds the hand-written loops (current code only).
CHILD = r"""
import json, statistics, sys, time
import jax, numpy as np
import infodec
from bench.common import prompts

model_name, batch, new_tokens, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
user_loops = sys.argv[5] == "1"
model, params, tokenizer = infodec.load(model_name)
ids = prompts(tokenizer, batch, 16)
policy = infodec.chain(infodec.Temperature(0.8), infodec.TopP(0.9))

def timed(run):
    run(0)  # compiles
    times = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        run(seed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)

def generate(seed):
    out = infodec.generate(model, params, ids, policy, jax.random.key(seed), max_new_tokens=new_tokens, stop_tokens=())
    assert out.tokens.shape == (batch, new_tokens)

result = {"generate": timed(generate)}
if user_loops:
    from infodec.decoding import finish, prefill, step

    def start(seed):
        key = jax.random.key(seed)
        return prefill(model, params, ids, key, max_new_tokens=new_tokens, stop_tokens=(), policy=policy)

    @jax.jit
    def scan_loop(params, policy, state):
        return jax.lax.scan(lambda s, _: (step(model, params, policy, s), None), state, None, length=new_tokens)[0]

    def user_scan(seed):
        finish(scan_loop(params, policy, start(seed)))

    one_step = jax.jit(step, static_argnums=0, donate_argnums=3)

    def user_steps(seed):
        state = start(seed)
        for _ in range(new_tokens):
            state = one_step(model, params, policy, state)
        finish(state)

    result["user_scan"] = timed(user_scan)
    result["user_steps"] = timed(user_steps)
print("RESULT " + json.dumps(result))
"""


def run_child(root: Path, batch: int, user_loops: bool) -> dict:
    args = [_MODEL.value, str(batch), str(_NEW_TOKENS.value), str(_REPEATS.value), "1" if user_loops else "0"]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=root, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"child in {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def baseline_checkout(revision: str, folder: Path) -> Path:
    """The library at ``revision`` (its ``infodec`` and ``bench`` folders) unpacked under ``folder``."""
    archive = subprocess.run(["git", "archive", revision, "infodec", "bench"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def main(argv):
    del argv
    here = Path.cwd()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = baseline_checkout(_BASELINE.value, Path(tmp))
        for batch in map(int, _BATCHES.value):
            baseline, current = [], []
            for round_ in range(_ROUNDS.value):
                print(f"batch {batch}: round {round_ + 1}/{_ROUNDS.value}", flush=True)
                baseline.append(run_child(base, batch, user_loops=False)["generate"])
                current.append(run_child(here, batch, user_loops=True))
            now = statistics.median(c["generate"] for c in current)
            then = statistics.median(baseline)
            rows.append(
                {
                    "batch": batch,
                    "baseline_s": then,
                    "generate_s": now,
                    "ratio": then / now,
                    "user_scan_s": statistics.median(c["user_scan"] for c in current),
                    "user_steps_s": statistics.median(c["user_steps"] for c in current),
                }
            )
    table = [
        f"{_MODEL.value}, {_NEW_TOKENS.value} new tokens, top-p sampling; baseline = {_BASELINE.value}",
        "",
        "| batch | baseline generate (s) | generate (s) | ratio (baseline / now) | user scan loop (s) "
        "| user step loop (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['batch']} | {r['baseline_s']:.3f} | {r['generate_s']:.3f} | {r['ratio']:.3f} | "
            f"{r['user_scan_s']:.3f} | {r['user_steps_s']:.3f} |"
        )
    meta = {"model": _MODEL.value, "new_tokens": _NEW_TOKENS.value, "baseline": _BASELINE.value}
    write_results(_OUT.value, "primitives", meta, rows, "\n".join(table) + "\n")


if __name__ == "__main__":
    app.run(main)
