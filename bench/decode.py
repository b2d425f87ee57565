r"""Decode throughput of infodec against HF transformers' generate, measured in one run.

    python -m bench.decode --vs-hf                # the README table (SmolLM2-135M, float32, 64 tokens)
    python -m bench.decode --batches=1 --repeats=5

For each configuration (batch x policy) infodec and HF take turns on the same prompts, ``--repeats``
times each after a warm-up; medians are compared. Also reported: compile time of infodec's first call,
compilations during the timed calls (should be 0), peak resident memory of an infodec-only child
process, and the fraction of this machine's limit: memory bandwidth at batch 1 (every step reads all
weights), float32 matmul throughput at larger batches. Both limits are measured here, in the same run.
Writes ``bench/results/decode.json`` and ``bench/results/decode.md``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags

import infodec
from bench.common import prompts, write_results
from infodec.models import checkpoints

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Model to benchmark.")
_BATCHES = flags.DEFINE_list("batches", ["1", "25"], "Batch sizes.")
_POLICIES = flags.DEFINE_list("policies", ["greedy", "top_p"], "greedy and/or top_p (T=0.8, p=0.9).")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row (EOS suppressed).")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 16, "Prompt length in tokens (no padding).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions per side (median reported).")
_VS_HF = flags.DEFINE_boolean("vs_hf", False, "Also time HF transformers generate on the same weights.")
_THREADS = flags.DEFINE_integer("threads", 2, "torch threads for the HF reference.")
_OUT = flags.DEFINE_string("out", "bench/results", "Output folder.")
_MEMORY_CHILD = flags.DEFINE_string("memory_child", None, "Internal: batch,policy for the peak-memory child.")


def infodec_policy(name: str):
    return infodec.Greedy() if name == "greedy" else infodec.chain(infodec.Temperature(0.8), infodec.TopP(0.9))


def time_infodec(model, params, tokens, policy, seed: int) -> float:
    start = time.perf_counter()
    out = infodec.generate(
        model, params, tokens, policy, jax.random.key(seed), max_new_tokens=_NEW_TOKENS.value, stop_tokens=()
    )
    assert out.lengths.min() == _NEW_TOKENS.value
    return time.perf_counter() - start


def time_hf(hf_model, tokens, policy: str, seed: int) -> float:
    import torch

    torch.manual_seed(seed)
    sampling = dict(do_sample=True, temperature=0.8, top_p=0.9, top_k=0) if policy == "top_p" else dict(do_sample=False)
    ids = torch.tensor(tokens, dtype=torch.long)
    start = time.perf_counter()
    with torch.no_grad():
        out = hf_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=_NEW_TOKENS.value,
            min_new_tokens=_NEW_TOKENS.value,
            use_cache=True,
            pad_token_id=0,
            **sampling,
        )
    assert out.shape[1] == tokens.shape[1] + _NEW_TOKENS.value
    return time.perf_counter() - start


def machine_limits() -> dict:
    """Measured memory read bandwidth (GB/s) and float32 matmul throughput (GFLOP/s).

    Bandwidth is the best of two 200 MB probes, a reduction and a matrix-vector product: XLA runs
    the latter on every core, the former not always, and the limit is the best rate reachable here.
    """
    data = jnp.ones((50_000_000,), jnp.float32)
    matrix = data.reshape(50_000, 1_000)
    vector = jnp.ones((1_000,), jnp.float32)
    probes = [lambda: total(data).block_until_ready(), lambda: matvec(matrix, vector).block_until_ready()]
    total, matvec = jax.jit(jnp.sum), jax.jit(jnp.matmul)
    for probe in probes:
        probe()
    seconds = min(_timed(probe) for probe in probes for _ in range(10))
    a = jnp.ones((2048, 2048), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    matmul_seconds = min(_timed(lambda: matmul(a, a).block_until_ready()) for _ in range(5))
    return {"bandwidth_gb_s": data.nbytes / seconds / 1e9, "matmul_gflop_s": 2 * 2048**3 / matmul_seconds / 1e9}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_memory_mb(batch: int, policy: str) -> float:
    """Peak RSS of a fresh process that loads the model and runs one generate (infodec only)."""
    command = [
        sys.executable,
        "-m",
        "bench.decode",
        f"--memory_child={batch},{policy}",
        f"--model={_MODEL.value}",
        f"--new_tokens={_NEW_TOKENS.value}",
        f"--prompt_tokens={_PROMPT_TOKENS.value}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def memory_child(spec: str) -> None:
    batch, policy = spec.split(",")
    model, params, tokenizer = infodec.load(_MODEL.value)
    time_infodec(model, params, prompts(tokenizer, int(batch), _PROMPT_TOKENS.value), infodec_policy(policy), 0)
    # VmHWM is this process's own high-water mark; ru_maxrss would inherit the parent's across fork+exec.
    status = Path("/proc/self/status").read_text()
    print(next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024)


def main(argv):
    del argv
    if _MEMORY_CHILD.value:
        return memory_child(_MEMORY_CHILD.value)
    model, params, tokenizer = infodec.load(_MODEL.value)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    flops_per_token = 2 * sum(x.size for x in jax.tree.leaves(params))
    hf_model = None
    if _VS_HF.value:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(_THREADS.value)
        directory = checkpoints.hf_directory(_MODEL.value)  # the same float32 weights infodec loaded
        hf_model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    limits = machine_limits()
    print(
        f"machine: {limits['bandwidth_gb_s']:.1f} GB/s read, {limits['matmul_gflop_s']:.0f} GFLOP/s float32", flush=True
    )
    rows = []
    for batch in map(int, _BATCHES.value):
        for policy in _POLICIES.value:
            tokens = prompts(tokenizer, batch, _PROMPT_TOKENS.value)
            pol = infodec_policy(policy)
            compiles_before = infodec.compile_count()
            first = time_infodec(model, params, tokens, pol, seed=0)
            compiles_first = infodec.compile_count() - compiles_before
            if hf_model is not None:
                time_hf(hf_model, tokens, policy, seed=0)  # warm-up
            ours, theirs = [], []
            compiles_before = infodec.compile_count()
            for repeat in range(_REPEATS.value):  # take turns so machine noise hits both sides alike
                ours.append(time_infodec(model, params, tokens, pol, seed=repeat + 1))
                if hf_model is not None:
                    theirs.append(time_hf(hf_model, tokens, policy, seed=repeat + 1))
            new_tokens = batch * _NEW_TOKENS.value
            tps = new_tokens / statistics.median(ours)
            # Batch 1 is bound by reading the weights every step; larger batches by arithmetic.
            limit = (
                limits["bandwidth_gb_s"] * 1e9 / param_bytes
                if batch == 1
                else limits["matmul_gflop_s"] * 1e9 / flops_per_token
            )
            row = {
                "batch": batch,
                "policy": policy,
                "new_tokens": _NEW_TOKENS.value,
                "infodec_tokens_per_s": tps,
                "first_call_s": first,
                "compile_s": first - statistics.median(ours),
                "compilations_first_call": compiles_first,
                "compilations_timed": infodec.compile_count() - compiles_before,
                "limit_tokens_per_s": limit,
                "limit_kind": "bandwidth" if batch == 1 else "matmul",
                "fraction_of_limit": tps / limit,
                "peak_rss_mb": peak_memory_mb(batch, policy),
            }
            if theirs:
                row["hf_tokens_per_s"] = new_tokens / statistics.median(theirs)
                row["speedup_vs_hf"] = row["infodec_tokens_per_s"] / row["hf_tokens_per_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    write(rows, limits)


def write(rows: list[dict], limits: dict) -> None:
    meta = {"model": _MODEL.value, "limits": limits, "repeats": _REPEATS.value, "prompt_tokens": _PROMPT_TOKENS.value}
    header = (
        "| batch | policy | infodec tok/s | HF tok/s | speed-up | limit tok/s | fraction of limit | "
        "compile s | compilations (timed) | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['batch']} | {r['policy']} | {r['infodec_tokens_per_s']:.1f} | "
        f"{r.get('hf_tokens_per_s', float('nan')):.1f} | {r.get('speedup_vs_hf', float('nan')):.2f}x | "
        f"{r['limit_tokens_per_s']:.0f} ({r['limit_kind']}) | {r['fraction_of_limit']:.0%} | "
        f"{r['compile_s']:.1f} | {r['compilations_timed']} | {r['peak_rss_mb']:.0f} |"
        for r in rows
    ]
    write_results(_OUT.value, "decode", meta, rows, header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
