r"""Peak host memory and speed of ``infodec.load`` on a random checkpoint of a real shape, in bf16 shards.

    python -m bench.load                      # Qwen2-0.5B's shape (494M parameters), 4 bf16 shards
    python -m bench.load --shape=qwen2-0.5b --dtypes=bfloat16 --mesh=false

The benchmark writes the checkpoint itself (``--folder``; random bf16 values in the layout
``save_pretrained`` gives a sharded model: ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``),
once, block by block. Then, for each target dtype, a fresh child process imports jax and infodec, records
its resident memory (the baseline), runs ``infodec.load`` and reports the peak resident memory of the
whole process (``ru_maxrss``: imports, baseline and load together) and the load's speed. The target:
peak ≤ 1.3 × the model's bytes in the target dtype + 500 MB.

With ``--mesh`` a child with 8 forced CPU devices loads the same checkpoint on a ``data:2, model:4`` mesh
and reports, per device, the bytes it holds and whether any device holds a whole copy of a tensor the
sharding rules split; it also checks the logits equal the single-device logits on a short input.
Writes ``bench/results/load.json`` and ``bench/results/load.md``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
from absl import app, flags

_SHAPE = flags.DEFINE_string("shape", "qwen2-0.5b", "Checkpoint shape (SHAPES).")
_FOLDER = flags.DEFINE_string("folder", "/tmp/infodec-bench-load", "Where the random checkpoint is written.")
_SHARDS = flags.DEFINE_integer("shards", 4, "Number of safetensors shards.", lower_bound=1)
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16", "float32"], "Target dtypes to load into.")
_MESH = flags.DEFINE_boolean("mesh", True, "Also load on an 8-device CPU mesh (data:2, model:4).")
_OUT = flags.DEFINE_string("out", "bench/results", "Output folder.")
_CHILD = flags.DEFINE_string("child", None, "Internal: 'single,DTYPE' or 'mesh' for a measuring child process.")

# config.json values of real checkpoints (model_type qwen2: q/k/v biases; tied embeddings).
SHAPES = {
    "qwen2-0.5b": {  # Qwen/Qwen2-0.5B
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    },
    "smollm2-360m": {  # HuggingFaceTB/SmolLM2-360M
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    },
}
MB = 1 << 20


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes of a Llama/Qwen2 checkpoint with this config."""
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head_dim = d // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes.update(
            {
                f"{p}.input_layernorm.weight": (d,),
                f"{p}.post_attention_layernorm.weight": (d,),
                f"{p}.self_attn.q_proj.weight": (q, d),
                f"{p}.self_attn.k_proj.weight": (kv, d),
                f"{p}.self_attn.v_proj.weight": (kv, d),
                f"{p}.self_attn.o_proj.weight": (d, q),
                f"{p}.mlp.gate_proj.weight": (f, d),
                f"{p}.mlp.up_proj.weight": (f, d),
                f"{p}.mlp.down_proj.weight": (d, f),
            }
        )
        if config["model_type"] == "qwen2":
            shapes.update({f"{p}.self_attn.q_proj.bias": (q,), f"{p}.self_attn.k_proj.bias": (kv,)})
            shapes[f"{p}.self_attn.v_proj.bias"] = (kv,)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def write_checkpoint(folder: Path, config: dict, shards: int) -> int:
    """Writes the random sharded bf16 checkpoint (unless already there); returns its parameter count."""
    from infodec.models.tensors import INDEX_FILE, TensorWriter, write_safetensors

    shapes = tensor_shapes(config)
    count = sum(math.prod(s) for s in shapes.values())
    if (folder / INDEX_FILE).exists() and json.loads((folder / "config.json").read_text()) == config:
        return count
    folder.mkdir(parents=True, exist_ok=True)
    names = list(shapes)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    rng = np.random.default_rng(0)

    def blocks(shape):
        def generate():
            step = max(1, (16 * MB) // (4 * math.prod(shape[1:])))  # float32 blocks of at most 16 MB
            for start in range(0, shape[0], step):
                yield rng.standard_normal((min(step, shape[0] - start), *shape[1:]), np.float32) * 0.02

        return generate

    for s in range(shards):
        filename = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        chunk = names[s * per_shard : (s + 1) * per_shard]
        writers = [TensorWriter(n, shapes[n], np.dtype(ml_dtypes.bfloat16), blocks(shapes[n])) for n in chunk]
        write_safetensors(folder / filename, writers, metadata={"format": "pt"})
        weight_map.update({n: filename for n in chunk})
    index = {"metadata": {"total_size": 2 * count}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return count


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def child_single(folder: str, dtype: str) -> dict:
    import resource
    import time

    import jax
    import jax.numpy as jnp

    import infodec

    jnp.zeros(1).block_until_ready()  # initialise the backend before the baseline
    baseline = rss_mb()
    start = time.perf_counter()
    _, params, _ = infodec.load(folder, dtype=dtype)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    leaves = jax.tree.leaves(params)
    return {
        "dtype": dtype,
        "seconds": seconds,
        "model_mb": sum(x.nbytes for x in leaves) / MB,
        "leaf_dtypes": sorted({str(x.dtype) for x in leaves}),
        "baseline_rss_mb": baseline,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child_mesh(folder: str) -> dict:
    import jax
    import numpy as np

    import infodec
    from infodec import sharding

    mesh = sharding.make_mesh(data=2, model=4)
    model, params, _ = infodec.load(folder, dtype="float32", mesh=mesh)
    single_model, single_params, _ = infodec.load(folder, dtype="float32")
    per_device = {str(d.id): 0 for d in mesh.devices.flat}
    full_copies, split = 0, 0
    specs = sharding.param_shardings(model, params, mesh)
    for leaf, target in zip(jax.tree.leaves(params), jax.tree.leaves(specs)):
        is_split = any(axis is not None for axis in target.spec)
        split += is_split
        for shard in leaf.addressable_shards:
            per_device[str(shard.device.id)] += shard.data.nbytes
            full_copies += is_split and shard.data.shape == leaf.shape
        assert leaf.sharding.is_equivalent_to(target, leaf.ndim), "a parameter is not on its intended sharding"
    tokens = np.arange(1, 17, dtype=np.int32)[None] % model.vocab_size
    positions = np.arange(16)[None]
    on_mesh = np.asarray(jax.jit(model.apply)(params, tokens, positions)[0])
    on_one = np.asarray(jax.jit(single_model.apply)(single_params, tokens, positions)[0])
    total = sum(x.nbytes for x in jax.tree.leaves(single_params))
    return {
        "mesh": "data:2,model:4",
        "model_mb": total / MB,
        "per_device_mb": {k: v / MB for k, v in per_device.items()},
        "split_tensors": split,
        "full_copies_of_split_tensors": int(full_copies),
        "max_abs_logit_diff_vs_one_device": float(np.abs(on_mesh - on_one).max()),
    }


def run_child(arg: str, devices: int = 1) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if devices > 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    command = [sys.executable, "-m", "bench.load", f"--child={arg}", f"--folder={_FOLDER.value}"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"child {arg} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if _CHILD.value:
        kind, _, dtype = _CHILD.value.partition(",")
        print(json.dumps(child_single(_FOLDER.value, dtype) if kind == "single" else child_mesh(_FOLDER.value)))
        return
    from bench.common import write_results

    config = SHAPES[_SHAPE.value]
    folder = Path(_FOLDER.value)
    count = write_checkpoint(folder, config, _SHARDS.value)
    print(f"checkpoint: {_SHAPE.value}, {count / 1e6:.0f}M parameters, {_SHARDS.value} bf16 shards in {folder}")
    rows = []
    lines = [
        f"Random {_SHAPE.value} checkpoint ({count / 1e6:.0f}M parameters, {_SHARDS.value} bf16 safetensors "
        "shards), loaded by a fresh process on one CPU device.",
        "",
        "| target dtype | model | peak RSS | baseline RSS | target (1.3 x model + 500 MB) | within | load | speed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dtype in _DTYPES.value:
        row = run_child(f"single,{dtype}")
        row["target_mb"] = 1.3 * row["model_mb"] + 500
        row["within_target"] = row["peak_rss_mb"] <= row["target_mb"]
        row["gb_per_s"] = row["model_mb"] * MB / 1e9 / row["seconds"]
        rows.append(row)
        lines.append(
            f"| {dtype} | {row['model_mb']:.0f} MB | {row['peak_rss_mb']:.0f} MB | {row['baseline_rss_mb']:.0f} MB "
            f"| {row['target_mb']:.0f} MB | {'yes' if row['within_target'] else 'NO'} | {row['seconds']:.1f} s "
            f"| {row['gb_per_s']:.2f} GB/s |"
        )
    if _MESH.value:
        mesh = run_child("mesh", devices=8)
        rows.append(mesh)
        sizes = sorted(mesh["per_device_mb"].values())
        lines += [
            "",
            f"On an 8-device CPU mesh ({mesh['mesh']}), float32: {mesh['model_mb']:.0f} MB of parameters; each device "
            f"holds {sizes[0]:.0f}-{sizes[-1]:.0f} MB; {mesh['split_tensors']} tensors are split and "
            f"{mesh['full_copies_of_split_tensors']} devices hold a whole copy of one; logits differ from one "
            f"device's by at most {mesh['max_abs_logit_diff_vs_one_device']:.1e}.",
        ]
    write_results(_OUT.value, "load", {"shape": _SHAPE.value, "parameters": count}, rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
