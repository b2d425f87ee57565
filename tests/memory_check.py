"""Measurements for tests/test_memory.py, run in a child process (one JSON object printed last).

    MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 MALLOC_ARENA_MAX=1 python -m tests.memory_check peak
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.memory_check mesh

``peak``: for each setting of :data:`SETTINGS`, the peak resident memory one ``infodec.generate`` call
adds, on XLA:CPU, where device memory is host memory. The call runs once to compile; then, :data:`REPEATS`
times, the process's high-water mark is reset (``/proc/self/clear_refs``), the resident size read as the
baseline (the parameters are in it) and the call run again: ``VmHWM - baseline`` is what the call
allocated at its peak (cache, decode state, temporaries of prefill and of the loop). glibc is told to
serve allocations above 64 KiB with ``mmap``, to hand freed memory back and to keep one arena, so the
resident size follows XLA's live buffers instead of what the allocator keeps.

Why the median of several calls: the same call's peak is not the same every time. Calls whose peak is in
prefill (large matrix products on the CPU runtime's thread pool) now and then measure ~10 MB more than the
call before and after (seen on a busy 2-core machine: 97.8 MiB once in six calls, 86.1-86.4 MiB the other
five, and once in a CI run). It is not a buffer of the program, which the other calls of the same
executable would hold too; most likely it is the CPU runtime's scratch for a matrix product split over one
more thread. The decode-phase setting varies by under 0.5%. It reports every measurement, their
median and the plan; the test compares the median.

``mesh``: parameter bytes of one device of a (2, 4) mesh, counted by the plan and from the arrays' own
shards, for a model whose heads, KV heads, MLP and vocabulary split 4 ways.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys

import jax

import infodec
from infodec import sharding
from infodec.decoding import memory
from tests.tiny_models import SHARDABLE, tiny_llama

# A small model of real proportions: grouped-query attention (4 heads over 2 KV heads of 64 dimensions),
# a vocabulary much larger than the width, as in real checkpoints; 26 MB of float32 parameters.
SHAPE = dict(
    vocab_size=8192,
    hidden_size=256,
    intermediate_size=512,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    max_position_embeddings=2048,
)
# (prompts, num_samples, prompt length, max_new_tokens, policy): three (rows, max_len) settings whose peaks
# fall in different phases: prefill of 64 and of 48 rows (the second with top-p's temporaries), and the loop
# of 2 prompts x 32 samples over a 416-slot cache. Long prompts rather than many new tokens make the cache
# large: a prompt costs one batched forward, a new token a whole decode step (the old settings, up to 1008
# new tokens, took 9 minutes of the test suite).
SETTINGS = (
    (64, 1, 20, 40, "temperature"),
    (2, 32, 400, 16, "temperature"),
    (48, 1, 40, 24, "top_p"),
)
REPEATS = 5  # measured calls per setting; their median is compared (see the module's docstring)


def _status() -> dict[str, int]:
    with open("/proc/self/status", encoding="ascii") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


def _measure(call) -> int:
    """Bytes of resident memory one ``call()`` adds at its peak."""
    gc.collect()
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM to the current resident size
    base = _status()["VmRSS"]
    call()
    return _status()["VmHWM"] - base


def peak() -> dict:
    model, params = tiny_llama(**SHAPE)
    params = jax.block_until_ready(params)
    policies = {"temperature": infodec.Temperature(1.0), "top_p": infodec.TopP(0.9)}
    results = []
    for prompts, samples, length, new, name in SETTINGS:
        ids = [[1 + (i + j) % 97 for j in range(length)] for i in range(prompts)]

        def call(ids=ids, samples=samples, new=new, name=name):
            out = infodec.generate(
                model,
                params,
                ids,
                policies[name],
                jax.random.key(0),
                max_new_tokens=new,
                num_samples=samples,
                stop_tokens=(),
            )
            return out.tokens.shape

        call()  # compiles
        measurements = [_measure(call) for _ in range(REPEATS)]
        plan = memory.memory_plan(
            model,
            rows=prompts * samples,
            max_len=length + new,
            prompt_len=length,
            num_samples=samples,
            params=params,
            policy=policies[name],
        )
        results.append(
            dict(
                rows=prompts * samples,
                max_len=length + new,
                num_samples=samples,
                policy=name,
                measured=int(statistics.median(measurements)),
                measurements=measurements,
                plan=plan.total - plan.params,
                params=plan.params,
                phase=plan.phase,
            )
        )
    return {"settings": results}


def mesh() -> dict:
    model, params = tiny_llama(**{**SHARDABLE, "num_layers": 2})
    grid = sharding.make_mesh(data=2, model=4)
    placed = sharding.shard_params(model, params, grid)
    device = grid.devices.flat[0]
    shard_bytes = sum(
        s.data.nbytes for leaf in jax.tree.leaves(placed) for s in leaf.addressable_shards if s.device == device
    )
    full = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    plan = memory.memory_plan(model, rows=8, max_len=48, params=placed, mesh=grid)
    unplaced = memory.memory_plan(model, rows=8, max_len=48, params=params, mesh=grid)
    abstract = memory.memory_plan(model, rows=8, max_len=48, mesh=grid)
    single = memory.memory_plan(model, rows=8, max_len=48, params=params)
    return {
        "device_shard_bytes": shard_bytes,
        "full_bytes": full,
        "plan_placed": plan.params,
        "plan_unplaced": unplaced.params,
        "plan_abstract": abstract.params,
        "kv_cache_mesh": plan.kv_cache,
        "kv_cache_single": single.kv_cache,
        "devices": plan.devices,
    }


if __name__ == "__main__":
    print(json.dumps({"peak": peak, "mesh": mesh}[sys.argv[1]]()))
