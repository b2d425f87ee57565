r"""Decode throughput of infodec (against HF transformers' generate, or at real models' shapes), in one run.

    python -m bench.decode --vs_hf                # the README table (SmolLM2-135M, float32, 64 tokens)
    python -m bench.decode --batches=1 --repeats=5
    python -m bench.decode --random_model=llama-3.2-1b              # random weights, bf16 off CPU
    python -m bench.decode --random_model=llama-3.1-8b --dry_run    # sizes and memory plan only
    bash bench/gpu_check.sh                       # the accelerator run: 1B and 8B shapes, bf16

For each configuration (batch x policy) infodec (and HF with ``--vs_hf``, in a child process of its own
so the two libraries' thread pools never share the cores) take turns on the same prompts, ``--repeats``
times each after a warm-up; medians are compared. Also reported: the CPU's model and vector extensions,
the compile time of infodec's first call, compilations during the timed calls (should be 0), peak memory (device
memory where the backend reports it, else the peak RSS of an infodec-only child process), and the
fraction of this machine's limit: ``min(bandwidth roofline, matmul limit)``. The bandwidth roofline
is ``batch x bandwidth / bytes read per step``, the bytes being the parameters (less an untied input
embedding, of which only the batch's rows are read) plus the whole KV cache (every slot is read under
the mask); batch-1 decoding is bound by it. Both limits are measured here, in the same run
(``machine_limits``); the nominal HBM bandwidth of known accelerators is reported beside them.

``--random_model=<shape>`` (``bench/shapes.py``; tabled in ``bench/README.md``) builds a real model's
architecture with random weights made directly in ``--dtype`` (no download, no float32 copy), prompts
of random token ids, and adds the two-stream ratio (classifier-free guidance against one stream,
``bench.two_stream``) and DAEMON's M=25 ratio (``bench.daemon``). Writes
``bench/results/decode.json`` and ``decode.md`` (``decode_<shape>_<dtype>.*`` for a random model).
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
import numpy as np
from absl import app, flags

import infodec
from bench import daemon as daemon_bench
from bench import shapes
from bench import two_stream as two_stream_bench
from bench.common import cpu_description, prompts, random_tokens, write_results
from infodec.decoding import memory
from infodec.decoding.engine import DEFAULT_CHUNK, prompt_bucket
from infodec.models import checkpoints

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Model to benchmark (ignored with --random_model).")
_RANDOM_MODEL = flags.DEFINE_enum(
    "random_model", None, list(shapes.SHAPES), "Benchmark a real model's shape with random weights instead."
)
_DTYPE = flags.DEFINE_enum(
    "dtype", "auto", ["auto", "float32", "bfloat16"], "Parameter dtype; auto: float32 on CPU, bfloat16 elsewhere."
)
_BATCHES = flags.DEFINE_list("batches", None, "Batch sizes (default 1,25; 1,8,64 with --random_model).")
_POLICIES = flags.DEFINE_list("policies", ["greedy", "top_p"], "greedy and/or top_p (T=0.8, p=0.9).")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row (EOS suppressed).")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 16, "Prompt length in tokens (no padding).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions per side (median reported).")
_VS_HF = flags.DEFINE_boolean("vs_hf", False, "Also time HF transformers generate on the same weights.")
_THREADS = flags.DEFINE_integer("threads", 2, "torch threads for the HF reference.")
_RATIOS = flags.DEFINE_boolean(
    "ratios", None, "Also the two-stream and DAEMON ratios (default: on with --random_model, else off)."
)
_TWO_STREAM_BATCH = flags.DEFINE_integer("two_stream_batch", 8, "Prompts per call of the two-stream ratio.")
_CANDIDATES = flags.DEFINE_integer("candidates", 25, "M of the DAEMON ratio.")
_DRY_RUN = flags.DEFINE_boolean(
    "dry_run", False, "With --random_model: print parameter bytes and the memory plan per batch; allocate nothing."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights and prompts.")
_OUT = flags.DEFINE_string("out", "bench/results", "Output folder.")
_MEMORY_CHILD = flags.DEFINE_string("memory_child", None, "Internal: batch,policy for the peak-memory child.")
_HF_WORKER = flags.DEFINE_boolean("hf_worker", False, "Internal: serve HF generate timings over stdin/stdout.")

# Nominal memory bandwidth (GB/s) by a substring of ``device.device_kind`` (vendors' data sheets), the first
# match in this order. The measured probe is the limit used; this is printed beside it.
NOMINAL_BANDWIDTH_GB_S = {
    "H200": 4800.0,
    "H100 PCIe": 2000.0,
    "H100": 3350.0,
    "A100-SXM4-80GB": 2039.0,
    "A100-SXM4-40GB": 1555.0,
    "A100-PCIE-40GB": 1555.0,
    "A100 80GB PCIe": 1935.0,
    "L40": 864.0,  # L40 and L40S (before "L4", which their names contain)
    "L4": 300.0,
    "A10G": 600.0,
    "T4": 320.0,
    "TPU v5 lite": 819.0,
    "TPU v5e": 819.0,
    "TPU v6 lite": 1640.0,
    "TPU v5p": 2765.0,
    "TPU v5": 2765.0,
    "TPU v4": 1228.0,
    "TPU v3": 900.0,
    "TPU v2": 700.0,
}


def resolved_dtype() -> jnp.dtype:
    if _DTYPE.value != "auto":
        return jnp.dtype(_DTYPE.value)
    return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)


def batches() -> list[int]:
    default = ["1", "8", "64"] if _RANDOM_MODEL.value else ["1", "25"]
    return [int(b) for b in (_BATCHES.value or default)]


def ratios_enabled() -> bool:
    return bool(_RANDOM_MODEL.value) if _RATIOS.value is None else _RATIOS.value


def model_label() -> str:
    return _RANDOM_MODEL.value or _MODEL.value


def results_name() -> str:
    return f"decode_{_RANDOM_MODEL.value}_{resolved_dtype().name}" if _RANDOM_MODEL.value else "decode"


def build_model():
    """``(model, params, tokenizer, seconds)``: the registry model via ``infodec.load``, or a random
    model of ``--random_model``'s shape (tokenizer None), its parameters on the device."""
    start = time.perf_counter()
    if _RANDOM_MODEL.value:
        model = shapes.build(_RANDOM_MODEL.value, dtype=resolved_dtype())
        params = shapes.random_params(model, jax.random.key(_SEED.value), resolved_dtype())
        tokenizer = None
    else:
        model, params, tokenizer = infodec.load(_MODEL.value, dtype=resolved_dtype())
    jax.block_until_ready(params)
    return model, params, tokenizer, time.perf_counter() - start


def prompt_tokens(model, tokenizer, batch: int, length: int, seed: int = 0) -> np.ndarray:
    """``[batch, length]`` distinct prompts: windows of the benchmark text, or random ids without a tokenizer."""
    if tokenizer is None:
        return random_tokens(model.vocab_size, batch, length, seed)
    return prompts(tokenizer, batch, length)


def infodec_policy(name: str):
    return infodec.Greedy() if name == "greedy" else infodec.chain(infodec.Temperature(0.8), infodec.TopP(0.9))


def time_infodec(model, params, tokens, policy, seed: int) -> float:
    start = time.perf_counter()
    out = infodec.generate(
        model, params, tokens, policy, jax.random.key(seed), max_new_tokens=_NEW_TOKENS.value, stop_tokens=()
    )
    assert out.lengths.min() == _NEW_TOKENS.value
    return time.perf_counter() - start


class HFWorker:
    """HF transformers' ``generate`` in a child process (``--hf_worker``), timed there on request.

    The two libraries take turns (the parent waits while the child runs, the child waits for the next
    request), but each keeps its own process: in one process torch's and XLA's thread pools share the
    cores, and whichever ran last can leave the other's workers spinning or starved.
    """

    def __init__(self):
        command = [
            sys.executable,
            "-m",
            "bench.decode",
            "--hf_worker",
            f"--model={_MODEL.value}",
            f"--dtype={_DTYPE.value}",
            f"--new_tokens={_NEW_TOKENS.value}",
            f"--threads={_THREADS.value}",
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def time(self, tokens: np.ndarray, policy: str, seed: int) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"tokens": np.asarray(tokens).tolist(), "policy": policy, "seed": seed}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError(f"the HF worker exited (code {self.process.wait()})")
        return float(json.loads(reply)["seconds"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait()


def hf_worker() -> None:
    """The child side of :class:`HFWorker`: loads the same weights once, then answers requests."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(_THREADS.value)
    directory = checkpoints.hf_directory(_MODEL.value)  # the same weights infodec loads
    torch_dtype = torch.bfloat16 if resolved_dtype() == jnp.bfloat16 else torch.float32
    hf_model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype).eval()
    for line in sys.stdin:
        request = json.loads(line)
        tokens = np.asarray(request["tokens"], np.int64)
        seconds = time_hf(hf_model, tokens, request["policy"], request["seed"])
        print(json.dumps({"seconds": seconds}), flush=True)


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


def machine_limits(dtype) -> dict:
    """Measured memory read bandwidth (GB/s) and matmul throughput in ``dtype`` (GFLOP/s), on the device.

    Bandwidth is the best of two probes, a reduction and a matrix-vector product over one array (200 MB
    on CPU, 1 GiB on an accelerator): XLA runs the latter on every core, the former not always, and the
    limit is the best rate reachable here. On an accelerator each timing enqueues 20 calls and waits
    for the last, so the device's time, not the host's dispatch, is measured. Also the nominal HBM
    bandwidth of a known accelerator (None when unknown) and the device's memory limit.
    """
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    queue = 1 if on_cpu else 20
    columns = 1_000 if on_cpu else 1_024
    data = jnp.ones((50_000_000 if on_cpu else 262_144 * columns,), jnp.float32)
    matrix = data.reshape(-1, columns)
    vector = jnp.ones((columns,), jnp.float32)
    total, matvec = jax.jit(jnp.sum), jax.jit(jnp.matmul)
    probes = [lambda: total(data), lambda: matvec(matrix, vector)]
    for probe in probes:
        probe().block_until_ready()
    seconds = min(_queued_seconds(probe, queue) for probe in probes for _ in range(10))
    size = 2048 if on_cpu else 8192
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    matmul_seconds = min(_queued_seconds(lambda: matmul(a, a), queue) for _ in range(5))
    stats = device.memory_stats() or {}
    return {
        "bandwidth_gb_s": data.nbytes / seconds / 1e9,
        "matmul_gflop_s": 2 * size**3 / matmul_seconds / 1e9,
        "matmul_dtype": jnp.dtype(dtype).name,
        "device_kind": device.device_kind,
        "cpu": cpu_description(),
        "nominal_bandwidth_gb_s": nominal_bandwidth(device),
        "device_memory_limit_mb": stats["bytes_limit"] / 2**20 if "bytes_limit" in stats else None,
        "probe_peak_device_mb": _device_peak_mb(),
    }


def nominal_bandwidth(device) -> float | None:
    """The data-sheet HBM bandwidth (GB/s) of ``device``, None for a CPU or an accelerator not in the table."""
    if device.platform == "cpu":
        return None
    kind = device.device_kind.lower()
    return next((gb for name, gb in NOMINAL_BANDWIDTH_GB_S.items() if name.lower() in kind), None)


def _queued_seconds(fn, queue: int) -> float:
    """Seconds per call of ``fn`` with ``queue`` calls in flight (1: a plain timed call)."""
    start = time.perf_counter()
    result = fn()
    for _ in range(queue - 1):  # dispatch is asynchronous: the device runs them back to back
        result = fn()
    result.block_until_ready()
    return (time.perf_counter() - start) / queue


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _device_peak_mb() -> float | None:
    """The process's peak device memory so far (``peak_bytes_in_use``), None where not reported (CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


def params_read(params):
    """The parameters one decode step reads (and multiplies by): all of them, less an untied input
    embedding, of which only the batch's rows are gathered (a tied one is read whole as the LM head)."""
    if "lm_head" in params and "embed_tokens" in params:
        return {name: tree for name, tree in params.items() if name != "embed_tokens"}
    return params


def cache_slots(prompt_length: int, new_tokens: int) -> int:
    """KV-cache slots ``generate`` allocates: the prompt's bucket plus whole chunks of output."""
    return prompt_bucket(prompt_length) + -(-new_tokens // DEFAULT_CHUNK) * DEFAULT_CHUNK


def cache_bytes(model, rows: int, slots: int) -> int:
    """Bytes of the KV cache of ``rows`` x ``slots`` in the model's cache dtype (traced, not allocated)."""
    return shapes.tree_bytes(jax.eval_shape(lambda: model.init_cache(rows, slots)))


def peak_memory_mb(batch: int, policy: str) -> float:
    """Peak RSS of a fresh process that builds the model and runs one generate (infodec only)."""
    command = [
        sys.executable,
        "-m",
        "bench.decode",
        f"--memory_child={batch},{policy}",
        f"--model={_MODEL.value}",
        f"--dtype={_DTYPE.value}",
        f"--new_tokens={_NEW_TOKENS.value}",
        f"--prompt_tokens={_PROMPT_TOKENS.value}",
        f"--seed={_SEED.value}",
    ]
    if _RANDOM_MODEL.value:
        command.append(f"--random_model={_RANDOM_MODEL.value}")
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def memory_child(spec: str) -> None:
    batch, policy = spec.split(",")
    model, params, tokenizer, _ = build_model()
    tokens = prompt_tokens(model, tokenizer, int(batch), _PROMPT_TOKENS.value)
    time_infodec(model, params, tokens, infodec_policy(policy), 0)
    # VmHWM is this process's own high-water mark; ru_maxrss would inherit the parent's across fork+exec.
    status = Path("/proc/self/status").read_text()
    print(next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024)


def planned(model, batch: int, policy: str, params=None) -> dict:
    """``infodec``'s memory plan of this decode (bytes per part, the peak phase and the total)."""
    plan = memory.memory_plan(
        model,
        rows=batch,
        max_len=_PROMPT_TOKENS.value + _NEW_TOKENS.value,
        prompt_len=_PROMPT_TOKENS.value,
        policy=infodec_policy(policy),
        params=params,
    )
    parts = ("params", "kv_cache", "buffers", "logits", "working")
    return {**{part: getattr(plan, part) for part in parts}, "phase": plan.phase, "total": plan.total}


def dry_run() -> None:
    """Sizes of ``--random_model`` in ``--dtype`` and ``infodec``'s memory plan of every configuration,
    from shapes alone (``jax.eval_shape``): nothing is allocated, so an 8B shape can be checked anywhere."""
    if not _RANDOM_MODEL.value:
        raise app.UsageError("--dry_run needs --random_model (a registry model would be downloaded and loaded)")
    dtype = resolved_dtype()
    model = shapes.build(_RANDOM_MODEL.value, dtype=dtype)
    abstract = shapes.abstract_params(model, dtype)
    param_bytes = shapes.tree_bytes(abstract)
    read_bytes = shapes.tree_bytes(params_read(abstract))
    device = jax.devices()[0]
    limit = memory.memory_limit()  # the device's memory (GPU/TPU) or the host RAM available (CPU)
    nominal = nominal_bandwidth(device)
    slots = cache_slots(_PROMPT_TOKENS.value, _NEW_TOKENS.value)
    source = shapes.SHAPES[_RANDOM_MODEL.value]
    print(
        f"{_RANDOM_MODEL.value} (shape of {source.source}; {source.note or 'same architecture'}): "
        f"{shapes.tree_size(abstract) / 1e9:.3f}B parameters, {param_bytes / 1e9:.3f} GB in {dtype.name}, "
        f"KV cache in {jnp.dtype(model.cache_dtype).name}; device {device.device_kind}, limit "
        + (f"{limit.bytes / 2**30:.1f} GiB: {limit.source}" if limit else "unknown")
    )
    rows = []
    for batch in batches():
        kv = cache_bytes(model, batch, slots)
        for policy in _POLICIES.value:
            plan = planned(model, batch, policy)
            row = {
                "batch": batch,
                "policy": policy,
                "cache_slots": slots,
                "param_bytes": param_bytes,
                "kv_cache_bytes": kv,
                "bytes_read_per_step": read_bytes + kv,
                "memory_plan": plan,
                "fits_device": None if limit is None else plan["total"] <= limit.bytes,
            }
            if nominal:
                row["nominal_roofline_tokens_per_s"] = batch * nominal * 1e9 / (read_bytes + kv)
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = (
        "| batch | policy | cache slots | parameters GB | KV cache MB | plan total GB (peak phase) | MB read / step | "
        "fits the limit |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['batch']} | {r['policy']} | {r['cache_slots']} | {r['param_bytes'] / 1e9:.3f} | "
        f"{r['kv_cache_bytes'] / 2**20:.1f} | {r['memory_plan']['total'] / 1e9:.3f} ({r['memory_plan']['phase']}) | "
        f"{r['bytes_read_per_step'] / 1e6:.0f} | "
        f"{'?' if r['fits_device'] is None else 'yes' if r['fits_device'] else 'NO'} |"
        for r in rows
    ]
    meta = {
        "model": _RANDOM_MODEL.value,
        "source": source.source,
        "note": source.note,
        "dtype": dtype.name,
        "device_kind": device.device_kind,
        "memory_limit_bytes": None if limit is None else limit.bytes,
        "memory_limit_source": None if limit is None else limit.source,
        "nominal_bandwidth_gb_s": nominal,
        "new_tokens": _NEW_TOKENS.value,
        "prompt_tokens": _PROMPT_TOKENS.value,
    }
    write_results(_OUT.value, f"{results_name()}_plan", meta, rows, header + "\n".join(lines) + "\n")


def main(argv):
    del argv
    if _MEMORY_CHILD.value:
        return memory_child(_MEMORY_CHILD.value)
    if _HF_WORKER.value:
        return hf_worker()
    if _DRY_RUN.value:
        return dry_run()
    if _VS_HF.value and _RANDOM_MODEL.value:
        raise app.UsageError("--vs_hf needs real weights; it cannot be combined with --random_model")
    dtype = resolved_dtype()
    limits = machine_limits(dtype)  # first: its probe arrays are freed before the model is built
    nominal = limits["nominal_bandwidth_gb_s"]
    print(
        f"machine: {limits['device_kind']}"
        + (f" [{limits['cpu']}]" if limits.get("cpu") else "")
        + f", {limits['bandwidth_gb_s']:.1f} GB/s read (measured"
        + (f"; nominal {nominal:.0f} GB/s" if nominal else "")
        + f"), {limits['matmul_gflop_s']:.0f} GFLOP/s {limits['matmul_dtype']}",
        flush=True,
    )
    model, params, tokenizer, build_seconds = build_model()
    param_bytes = shapes.tree_bytes(params)
    read_bytes = shapes.tree_bytes(params_read(params))
    flops_per_token = 2 * shapes.tree_size(params_read(params))  # a multiply-add per weight read
    print(f"{model_label()}: {param_bytes / 1e9:.3f} GB of {dtype.name} parameters, built in {build_seconds:.1f} s")
    hf = HFWorker() if _VS_HF.value else None
    slots = cache_slots(_PROMPT_TOKENS.value, _NEW_TOKENS.value)
    on_cpu = jax.default_backend() == "cpu"
    rows = []
    for batch in batches():
        kv_bytes = cache_bytes(model, batch, slots)
        bytes_per_step = read_bytes + kv_bytes  # every step reads the weights and every cache slot
        bandwidth_limit = batch * limits["bandwidth_gb_s"] * 1e9 / bytes_per_step
        matmul_limit = limits["matmul_gflop_s"] * 1e9 / flops_per_token
        for policy in _POLICIES.value:
            tokens = prompt_tokens(model, tokenizer, batch, _PROMPT_TOKENS.value, seed=_SEED.value)
            pol = infodec_policy(policy)
            compiles_before = infodec.compile_count()
            first = time_infodec(model, params, tokens, pol, seed=0)
            compiles_first = infodec.compile_count() - compiles_before
            if hf is not None:
                hf.time(tokens, policy, seed=0)  # warm-up
            ours, theirs = [], []
            compiles_before = infodec.compile_count()
            for repeat in range(_REPEATS.value):  # take turns so machine noise hits both sides alike
                ours.append(time_infodec(model, params, tokens, pol, seed=repeat + 1))
                if hf is not None:
                    theirs.append(hf.time(tokens, policy, seed=repeat + 1))
            new_tokens = batch * _NEW_TOKENS.value
            tps = new_tokens / statistics.median(ours)
            # Small batches are bound by reading the weights (and cache) every step; large ones by arithmetic.
            limit = min(bandwidth_limit, matmul_limit)
            row = {
                "batch": batch,
                "policy": policy,
                "new_tokens": _NEW_TOKENS.value,
                "infodec_tokens_per_s": tps,
                "first_call_s": first,
                "compile_s": first - statistics.median(ours),
                "compilations_first_call": compiles_first,
                "compilations_timed": infodec.compile_count() - compiles_before,
                "bytes_read_per_step": bytes_per_step,
                "kv_cache_bytes": kv_bytes,
                "bandwidth_roofline_tokens_per_s": bandwidth_limit,
                "fraction_of_bandwidth_roofline": tps / bandwidth_limit,
                "limit_tokens_per_s": limit,
                "limit_kind": "bandwidth" if bandwidth_limit <= matmul_limit else "matmul",
                "fraction_of_limit": tps / limit,
            }
            if nominal:
                row["fraction_of_nominal_roofline"] = tps / (batch * nominal * 1e9 / bytes_per_step)
            row["memory_plan_mb"] = planned(model, batch, policy, params)["total"] / 2**20
            if on_cpu:
                row["peak_rss_mb"] = peak_memory_mb(batch, policy)
            else:  # the process's running peak: configurations run in the order given (ascending batch)
                row["peak_device_mb"] = _device_peak_mb()
            if theirs:
                row["hf_tokens_per_s"] = new_tokens / statistics.median(theirs)
                row["speedup_vs_hf"] = row["infodec_tokens_per_s"] / row["hf_tokens_per_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(rows, limits, dtype, build_seconds, {}, quiet=True)  # what is done survives a timeout
    if hf is not None:
        hf.close()
    extra = ratios(model, params, tokenizer) if ratios_enabled() else {}
    write(rows, limits, dtype, build_seconds, extra)


def ratios(model, params, tokenizer) -> dict:
    """The two-stream ratio (``bench.two_stream.measure``: classifier-free guidance 1.5 against one
    stream) and DAEMON's ratio (``bench.daemon.measure``: SIR over ``--candidates`` against a plain
    decode of as many rows), on this model, at ``--new_tokens``."""
    batch = _TWO_STREAM_BATCH.value
    if tokenizer is None:  # random ids of the lengths bench.two_stream's text gives (48 + 9 tokens)
        evidence = random_tokens(model.vocab_size, batch, 48, _SEED.value + 1).tolist()
        questions = random_tokens(model.vocab_size, 1, 9, _SEED.value + 2).tolist() * batch
    else:
        evidence, questions = two_stream_bench.text_inputs(tokenizer, batch)
    two = two_stream_bench.measure(
        model, params, evidence, questions, policy="cfg", new_tokens=_NEW_TOKENS.value, repeats=_REPEATS.value
    )
    print(
        f"two streams (CFG 1.5, batch {batch}) / one stream: {two['ratio']:.2f}x "
        f"({two['compilations_timed']} compilations timed)",
        flush=True,
    )
    prompt = prompt_tokens(model, tokenizer, 1, 32, seed=_SEED.value + 3)[0]
    sir = daemon_bench.measure(model, params, prompt, _CANDIDATES.value, _NEW_TOKENS.value, _REPEATS.value)
    print(
        f"DAEMON M={sir['candidates']} / plain: {sir['ratio_daemon_vs_plain']:.3f}x "
        f"(criterion <= {sir['criterion_ratio_max']}x; {sir['compilations_timed']} compilations timed)",
        flush=True,
    )
    return {"two_stream": two, "daemon": sir}


def write(rows: list[dict], limits: dict, dtype, build_seconds: float, extra: dict, quiet: bool = False) -> None:
    meta = {
        "model": model_label(),
        "random_weights": bool(_RANDOM_MODEL.value),
        "dtype": jnp.dtype(dtype).name,
        "jax": jax.__version__,
        "limits": limits,
        "build_s": build_seconds,
        "repeats": _REPEATS.value,
        "prompt_tokens": _PROMPT_TOKENS.value,
        **extra,
    }
    if _RANDOM_MODEL.value:
        meta["source"] = shapes.SHAPES[_RANDOM_MODEL.value].source
        meta["note"] = shapes.SHAPES[_RANDOM_MODEL.value].note
    memory = "peak RSS MB" if rows and "peak_rss_mb" in rows[0] else "peak device MB"
    hf = bool(rows) and "hf_tokens_per_s" in rows[0]
    header = (
        "| batch | policy | infodec tok/s | "
        + ("HF tok/s | speed-up | " if hf else "")
        + "MB read / step | limit tok/s | fraction of limit | fraction of bandwidth roofline | compile s | "
        + f"compilations (timed) | {memory} | memory plan MB |\n|"
        + "---|" * (13 if hf else 11)
        + "\n"
    )
    lines = [
        f"| {r['batch']} | {r['policy']} | {r['infodec_tokens_per_s']:.1f} | "
        + (f"{r['hf_tokens_per_s']:.1f} | {r['speedup_vs_hf']:.2f}x | " if hf else "")
        + f"{r['bytes_read_per_step'] / 1e6:.0f} | {r['limit_tokens_per_s']:.0f} ({r['limit_kind']}) | "
        f"{r['fraction_of_limit']:.0%} | {r['fraction_of_bandwidth_roofline']:.0%}"
        + (f" ({r['fraction_of_nominal_roofline']:.0%} of nominal)" if "fraction_of_nominal_roofline" in r else "")
        + f" | {r['compile_s']:.1f} | {r['compilations_timed']} | "
        f"{r.get('peak_rss_mb', r.get('peak_device_mb')) or float('nan'):.0f} | {r['memory_plan_mb']:.0f} |"
        for r in rows
    ]
    table = header + "\n".join(lines) + "\n"
    if extra:
        two, sir = extra["two_stream"], extra["daemon"]
        table += (
            f"\nTwo streams (classifier-free guidance 1.5, batch {two['batch']}) against one stream: "
            f"**{two['ratio']:.2f}x**; DAEMON (M = {sir['candidates']}) against a plain batch-{sir['candidates']} "
            f"decode: **{sir['ratio_daemon_vs_plain']:.3f}x** ({sir['new_tokens']} new tokens, medians of "
            f"{_REPEATS.value}; compilations timed: {two['compilations_timed']}, {sir['compilations_timed']}).\n"
        )
    write_results(_OUT.value, results_name(), meta, rows, table, quiet=quiet)


if __name__ == "__main__":
    app.run(main)
