r"""The floor under a decode step: a model's matrix products alone, per batch size, XLA against torch.

    python -m bench.products                       # smollm2-135m's shapes, rows 1, 2, 3, 8, 25, 96
    python -m bench.products --shape=gemma-3-1b --rows=1,16

One decode step multiplies ``rows`` activations by every layer's weight matrices (q, k, v, o, gate, up,
down) and by the LM head. This times exactly those products, with random weights of a ``bench/shapes.py``
shape, as one jitted program of the layers in order (each layer's output feeds the next, so nothing runs
ahead), and the LM head separately in both layouts, ``[D, V]`` (an untied kernel) and ``[V, D]`` (a tied
head reading the embedding); torch (``torch.set_num_threads(--threads)``) runs the same layer stack
in the same process, taking turns. A decode step cannot be faster than its products at the best rate any
library reaches here, so these times bound what tuning the rest of the step can win.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from bench import shapes
from bench.common import cpu_description, write_results

_SHAPE = flags.DEFINE_enum("shape", "smollm2-135m", list(shapes.SHAPES), "Model shape (bench/shapes.py).")
_ROWS = flags.DEFINE_list("rows", ["1", "2", "3", "8", "25", "96"], "Batch sizes (rows per product).")
_REPEATS = flags.DEFINE_integer("repeats", 15, "Timed calls per side (median reported).")
_THREADS = flags.DEFINE_integer("threads", 2, "torch threads (0: no torch).")
_OUT = flags.DEFINE_string("out", "bench/results", "Output folder.")


def layer_shapes(config: dict[str, Any]) -> list[tuple[int, int]]:
    """``[in, out]`` of q, k, v, o, gate, up, down for one layer of a ``config.json``."""
    hidden, mlp = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    return [(hidden, q), (hidden, kv), (hidden, kv), (q, hidden), (hidden, mlp), (hidden, mlp), (mlp, hidden)]


def layer_stack(x, weights, matmul, silu):
    """The products of ``len(weights)`` layers in order; the elementwise glue is the cheapest that keeps
    every product's input dependent on the previous layer's output."""
    for q, k, v, o, gate, up, down in weights:
        attended = x @ q + ((x @ k).sum(-1, keepdims=True) + (x @ v).sum(-1, keepdims=True))
        x = x + matmul(attended, o)
        x = x + matmul(silu(matmul(x, gate)) * matmul(x, up), down)
    return x


def median_seconds(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = shapes.SHAPES[_SHAPE.value].config
    rng = np.random.default_rng(0)
    per_layer = layer_shapes(config)
    host = [
        [(rng.standard_normal(s, np.float32) * 0.02) for s in per_layer] for _ in range(config["num_hidden_layers"])
    ]
    weights = jax.device_put(host)
    head = jnp.asarray(rng.standard_normal((config["hidden_size"], config["vocab_size"]), np.float32) * 0.02)
    embedding = jnp.asarray(np.ascontiguousarray(np.asarray(head).T))  # [V, D], as a tied head reads it
    stack = jax.jit(lambda x, w: layer_stack(x, w, jnp.matmul, jax.nn.silu))
    logits = jax.jit(jnp.matmul)
    tied_logits = jax.jit(lambda x, e: jnp.einsum("bd,vd->bv", x, e))
    layer_flops = 2 * config["num_hidden_layers"] * sum(a * b for a, b in per_layer)
    head_flops = 2 * config["hidden_size"] * config["vocab_size"]
    torch = None
    if _THREADS.value:
        import torch

        torch.set_num_threads(_THREADS.value)
        torch_weights = [[torch.from_numpy(w) for w in layer] for layer in host]
    rows_out = []
    for rows in map(int, _ROWS.value):
        x = jnp.asarray(rng.standard_normal((rows, config["hidden_size"]), np.float32))
        row: dict[str, Any] = {"rows": rows}
        seconds = median_seconds(lambda x=x: stack(x, weights).block_until_ready(), _REPEATS.value)
        row["layers_ms"], row["layers_gflop_s"] = 1e3 * seconds, rows * layer_flops / seconds / 1e9
        seconds = median_seconds(lambda x=x: logits(x, head).block_until_ready(), _REPEATS.value)
        row["head_ms"], row["head_gflop_s"] = 1e3 * seconds, rows * head_flops / seconds / 1e9
        seconds = median_seconds(lambda x=x: tied_logits(x, embedding).block_until_ready(), _REPEATS.value)
        row["tied_head_ms"], row["tied_head_gflop_s"] = 1e3 * seconds, rows * head_flops / seconds / 1e9
        if torch is not None:
            tx = torch.from_numpy(np.array(x))
            with torch.inference_mode():
                seconds = median_seconds(
                    lambda tx=tx: layer_stack(tx, torch_weights, torch.matmul, torch.nn.functional.silu), _REPEATS.value
                )
            row["torch_layers_ms"], row["torch_layers_gflop_s"] = 1e3 * seconds, rows * layer_flops / seconds / 1e9
        rows_out.append(row)
        print(row, flush=True)
    table = [
        "| rows | layers ms (XLA) | GFLOP/s | layers ms (torch) | GFLOP/s | head `[D, V]` ms | GFLOP/s "
        "| tied head `[V, D]` ms | GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows_out:
        torch_cells = (
            f"{r['torch_layers_ms']:.1f} | {r['torch_layers_gflop_s']:.0f}" if "torch_layers_ms" in r else "– | –"
        )
        table.append(
            f"| {r['rows']} | {r['layers_ms']:.1f} | {r['layers_gflop_s']:.0f} | {torch_cells} | "
            f"{r['head_ms']:.1f} | {r['head_gflop_s']:.0f} | {r['tied_head_ms']:.1f} | {r['tied_head_gflop_s']:.0f} |"
        )
    meta = {"shape": _SHAPE.value, "cpu": cpu_description(), "layer_gflop_per_row": layer_flops / 1e9}
    write_results(_OUT.value, f"products_{_SHAPE.value}", meta, rows_out, "\n".join(table) + "\n")


if __name__ == "__main__":
    app.run(main)
