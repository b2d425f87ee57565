r"""Greedy decode throughput on device meshes, with 8 forced host (CPU) devices.

    python -m bench.sharding                      # meshes 1x1, 8x1, 4x2, 2x4 on smollm2-135m, batch 8
    python -m bench.sharding --meshes=1x1,4x2 --new_tokens=16

Sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before jax is imported. For each mesh
(``data x model``): parameters placed with ``sharding.shard_params``, one warm-up call (its time, the
compile included, is reported), then ``--repeats`` timed calls (median reported; compilations during
them are counted and should be 0) and a check that the tokens equal the 1x1 tokens.

On a CPU the forced devices are threads sharing the same cores: splitting the work 8 ways cannot make
it faster, and the collectives, padding and per-device dispatch only add time. The numbers measure
that overhead honestly; a speed-up needs real accelerators (TPU slices, several GPUs).
Writes ``bench/results/sharding.json`` and ``bench/results/sharding.md``.
"""

from __future__ import annotations

import os

_FORCE = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FORCE}".strip()

# Imported after XLA_FLAGS is set: jax reads it when it initialises (E402 is allowed for this file).
import statistics
import time

import jax
import numpy as np
from absl import app, flags

import infodec
from bench.common import prompts, write_results
from infodec import sharding
from infodec.decoding import engine

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Model to benchmark.")
_MESHES = flags.DEFINE_list("meshes", ["1x1", "8x1", "4x2", "2x4"], "Meshes as DATAxMODEL.")
_BATCH = flags.DEFINE_integer("batch", 8, "Prompts per call (rows).", lower_bound=1)
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "Tokens generated per row (EOS suppressed).", lower_bound=1)
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 16, "Prompt length in tokens.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per mesh (median reported).", lower_bound=1)
_SCAN_LAYERS = flags.DEFINE_boolean("scan_layers", False, "Scanned layers (faster compiles, slower steps on CPU).")
_OUT = flags.DEFINE_string("out", "bench/results", "Output folder.")

NOTE = (
    "The 8 devices are forced host devices sharing this machine's {cores} CPU cores: sharding cannot speed "
    "anything up here, and the partitioned runs pay for collectives, padding and per-device dispatch. "
    "These numbers show that every mesh runs and what the partitioning costs on CPU, not scaling."
)


def parse(name: str) -> tuple[int, int]:
    data, _, model = name.partition("x")
    if not (data.isdigit() and model.isdigit()):
        raise app.UsageError(f"--meshes entries are DATAxMODEL, e.g. 4x2; got {name!r}")
    return int(data), int(model)


def run(model, params, tokens, mesh) -> tuple[float, list[float], int, np.ndarray]:
    """``(warm-up seconds, timed seconds, compilations while timed, tokens)`` for one mesh."""

    def call(seed):
        start = time.perf_counter()
        out = infodec.generate(
            model,
            params,
            tokens,
            infodec.Greedy(),
            jax.random.key(seed),
            max_new_tokens=_NEW_TOKENS.value,
            stop_tokens=(),
            mesh=mesh,
        )
        seconds = time.perf_counter() - start
        assert out.lengths.min() == _NEW_TOKENS.value
        return seconds, out.tokens

    warm, _ = call(0)
    before = engine.compile_count()
    timed, outputs = zip(*(call(seed) for seed in range(1, _REPEATS.value + 1)))
    return warm, list(timed), engine.compile_count() - before, outputs[-1]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    meshes = [parse(name) for name in _MESHES.value]
    model, params, tokenizer = infodec.load(_MODEL.value, scan_layers=_SCAN_LAYERS.value)
    tokens = prompts(tokenizer, _BATCH.value, _PROMPT_TOKENS.value)
    devices = jax.devices()
    rows, reference = [], None
    for data, width in meshes:
        mesh = sharding.make_mesh(data, width, devices=devices[: data * width])
        placed = sharding.shard_params(model, params, mesh)
        warm, timed, compiles, out = run(model, placed, tokens, mesh)
        if reference is None:
            reference = out
        median = statistics.median(timed)
        rows.append(
            {
                "mesh": f"{data}x{width}",
                "data": data,
                "model": width,
                "devices": data * width,
                "warmup_s": round(warm, 3),
                "median_s": round(median, 4),
                "timed_s": [round(t, 4) for t in timed],
                "tokens_per_s": round(_BATCH.value * _NEW_TOKENS.value / median, 1),
                "compiles_while_timed": compiles,
                "same_tokens_as_first": bool(np.array_equal(out, reference)),
            }
        )
        print(rows[-1], flush=True)
    note = NOTE.format(cores=os.cpu_count())
    base = rows[0]["tokens_per_s"]
    table = "\n".join(
        [
            f"Greedy decode, {_MODEL.value} ({'scanned' if _SCAN_LAYERS.value else 'unrolled'} layers), batch "
            f"{_BATCH.value}, {_PROMPT_TOKENS.value}-token prompts, {_NEW_TOKENS.value} new tokens, median of "
            f"{_REPEATS.value}, {len(devices)} forced host devices ({jax.default_backend()}).",
            "",
            f"| mesh (data x model) | devices | tokens/s | vs {rows[0]['mesh']} | first call (s, compile incl.) | "
            f"compiles while timed | tokens = {rows[0]['mesh']} |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {r['mesh']} | {r['devices']} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base:.2f}x | "
                f"{r['warmup_s']:.1f} | {r['compiles_while_timed']} | {'yes' if r['same_tokens_as_first'] else 'NO'} |"
                for r in rows
            ),
            "",
            note,
            "",
        ]
    )
    meta = {
        "model": _MODEL.value,
        "batch": _BATCH.value,
        "new_tokens": _NEW_TOKENS.value,
        "prompt_tokens": _PROMPT_TOKENS.value,
        "repeats": _REPEATS.value,
        "scan_layers": _SCAN_LAYERS.value,
        "forced_devices": len(devices),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "note": note,
    }
    write_results(_OUT.value, "sharding", meta, rows, table)


if __name__ == "__main__":
    app.run(main)
