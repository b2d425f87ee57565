"""The streaming loader: sharded checkpoints, dtypes, block-wise placement, the abstract tree, a mesh, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import infodec
from infodec.models import checkpoints, gemma3, gpt2, llama, tensors
from infodec.models.base import CheckpointMismatchError
from tests.hf_tiny import hf_logits, save_tiny_llama

REPO = Path(__file__).resolve().parents[1]
TOKENS = np.random.RandomState(0).randint(3, 97, (2, 9))
POSITIONS = np.broadcast_to(np.arange(9), (2, 9))


def logits_of(model, params, tokens=TOKENS):
    return np.asarray(model.apply(params, tokens, np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape))[0])


def tree_equal(a, b) -> bool:
    same_structure = jax.tree.structure(a) == jax.tree.structure(b)
    return same_structure and all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny HF Llama saved twice: one file, and sharded with an index (float32)."""
    root = tmp_path_factory.mktemp("tiny")
    hf = save_tiny_llama(root / "single")
    hf.save_pretrained(root / "sharded", max_shard_size="40KB")
    return root, hf


def test_a_sharded_checkpoint_loads_like_its_single_file(tiny_checkpoint):
    root, hf = tiny_checkpoint
    assert (root / "sharded" / tensors.INDEX_FILE).exists()
    assert len(list((root / "sharded").glob("*.safetensors"))) > 2
    model, single, _ = infodec.load(root / "single")
    _, sharded, _ = infodec.load(root / "sharded")
    assert tree_equal(single, sharded)
    assert np.abs(logits_of(model, sharded) - hf_logits(hf, TOKENS)).max() < 1e-4


def test_bfloat16_parameters_cache_and_float32_logits(tiny_checkpoint):
    root, _ = tiny_checkpoint
    model, params, _ = infodec.load(root / "sharded", dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert model.dtype == jnp.bfloat16 and model.init_cache(2, 16).k.dtype == jnp.bfloat16
    logits, cache = model.apply(params, TOKENS, POSITIONS, model.init_cache(2, 16))
    assert logits.dtype == jnp.float32 and cache.k.dtype == jnp.bfloat16
    wide_cache, _, _ = infodec.load(root / "sharded", dtype="bfloat16", cache_dtype="float32")
    assert wide_cache.cache_dtype == jnp.float32 and wide_cache.init_cache(1, 4).v.dtype == jnp.float32


def test_dtype_default_and_bad_dtypes(tiny_checkpoint):
    root, _ = tiny_checkpoint
    assert checkpoints.param_dtype(None) == ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    model, _, _ = infodec.load(root / "single")
    assert model.dtype == jnp.float32
    with pytest.raises(ValueError, match="int8 is not a parameter dtype; use one of float32, bfloat16, float16"):
        infodec.load(root / "single", dtype=jnp.int8)
    with pytest.raises(ValueError, match="'fp8ish' is not a dtype"):
        infodec.load(root / "single", dtype="fp8ish")


@pytest.mark.parametrize("scan_layers", [False, True])
def test_block_wise_reads_equal_whole_reads(tiny_checkpoint, tmp_path, monkeypatch, scan_layers):
    """Tensors streamed in blocks of 256 bytes (rows, transposed columns, per layer of a scan, a GPT-2
    fused projection's thirds) land exactly where whole reads put them."""
    root, _ = tiny_checkpoint
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    whole = {
        name: infodec.load(root / name if name != "gpt2" else tmp_path / name, scan_layers=scan_layers)[1]
        for name in ("single", "gpt2")
    }
    monkeypatch.setattr(checkpoints, "BLOCK_BYTES", 256)
    for name in ("single", "gpt2"):
        _, blocks, _ = infodec.load(root / name if name != "gpt2" else tmp_path / name, scan_layers=scan_layers)
        assert tree_equal(whole[name], blocks), name


def _hf_configs():
    base = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    return {
        "llama": llama.LlamaConfig.from_hf({**base, "model_type": "llama", "num_key_value_heads": 2}),
        "qwen2": llama.LlamaConfig.from_hf({**base, "model_type": "qwen2", "num_key_value_heads": 2}),
        "gemma3": gemma3.Gemma3Config.from_hf({**base, "model_type": "gemma3_text", "num_key_value_heads": 2}),
        "gpt2": gpt2.GPT2Config.from_hf({**base, "model_type": "gpt2", "tie_word_embeddings": False}),
    }


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "gpt2"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_converted_tree_is_the_modules_abstract_tree(tmp_path, family, scan_layers):
    """The tree a converter builds from lazy references has the module's own paths, shapes and (after
    placing) dtype: what ``jax.eval_shape`` of its init gives."""
    import dataclasses

    config = dataclasses.replace(_hf_configs()[family], scan_layers=scan_layers, dtype="bfloat16")
    module = {"llama": llama, "qwen2": llama, "gemma3": gemma3, "gpt2": gpt2}[family]
    model = module.build(config)
    abstract = checkpoints.abstract_params(model)
    # Write the HF tensors the converter expects, by name, from a reference model's state dict.
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**{**config.to_hf(), "torch_dtype": "float32"})
    AutoModelForCausalLM.from_config(hf_config).save_pretrained(tmp_path)
    tree = module.convert_hf_weights(config, tensors.read_directory(tmp_path))
    assert jax.tree.structure(tree) == jax.tree.structure(abstract)
    assert [np.shape(x) for x in jax.tree.leaves(tree)] == [x.shape for x in jax.tree.leaves(abstract)]
    placed = checkpoints.place(tree, jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(placed))


def test_random_params_are_created_in_the_model_dtype():
    import dataclasses

    config = dataclasses.replace(_hf_configs()["llama"], dtype="bfloat16")
    model = llama.build(config)
    params = checkpoints.random_params(model, jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(checkpoints.abstract_params(model))
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert np.isfinite(logits_of(model, params, TOKENS % 97)).all()


# --- errors -----------------------------------------------------------------------------------------------


def _copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def test_index_naming_a_missing_file_or_tensor(tiny_checkpoint, tmp_path):
    root, _ = tiny_checkpoint
    folder = _copy(root / "sharded", tmp_path / "missing-file")
    index = json.loads((folder / tensors.INDEX_FILE).read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (folder / first).unlink()
    with pytest.raises(tensors.CheckpointError, match=f"names {first}, which is not in"):
        infodec.load(folder)

    folder = _copy(root / "sharded", tmp_path / "missing-tensor")
    index["weight_map"]["model.norm.weight"] = sorted(set(index["weight_map"].values()))[-1]
    index["weight_map"]["model.norm.weight"] = next(
        f for f in sorted(set(index["weight_map"].values())) if "model.norm.weight" not in _names(folder / f)
    )
    (folder / tensors.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(tensors.CheckpointError, match="puts tensor 'model.norm.weight' in .* which does not hold it"):
        infodec.load(folder)


def _names(file: Path) -> set[str]:
    return set(tensors.read_header(file))


def test_a_shard_cut_short_is_one_clear_error(tiny_checkpoint, tmp_path):
    root, _ = tiny_checkpoint
    folder = _copy(root / "sharded", tmp_path / "cut")
    shard = sorted(folder.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])  # the header survives; the last tensor's data does not
    with pytest.raises(tensors.CheckpointError, match="corrupt or truncated: delete it and fetch it again"):
        infodec.load(folder)


def test_a_tensor_of_the_wrong_dtype_or_shape(tiny_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    root, _ = tiny_checkpoint
    folder = _copy(root / "single", tmp_path / "wrong")
    weights = load_file(folder / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"].astype(np.int32)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="'norm.weight' holds int32, not floating-point weights"):
        infodec.load(folder)
    weights["model.norm.weight"] = np.zeros(47, np.float32)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"has shape \(47,\) but the config implies \(48,\)"):
        infodec.load(folder)


def test_streaming_writer_round_trips_through_safetensors(tmp_path):
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    values = {"a": rng.standard_normal((5, 3)).astype(np.float32), "b": np.arange(7, dtype=np.int64)}
    writers = [
        tensors.TensorWriter(name, value.shape, value.dtype, lambda v=value: iter(np.array_split(v, 3)))
        for name, value in values.items()
    ]
    tensors.write_safetensors(tmp_path / "x.safetensors", writers)
    loaded = load_file(tmp_path / "x.safetensors")  # the reference reader
    assert all(np.array_equal(loaded[name], value) for name, value in values.items())
    refs = tensors.read_header(tmp_path / "x.safetensors")
    assert np.array_equal(refs["a"].T.read((slice(1, 3),)), values["a"].T[1:3])


# --- a mesh ------------------------------------------------------------------------------------------------


MESH_CHILD = """
import json, sys
import jax, numpy as np
import infodec
from infodec import sharding
folder = sys.argv[1]
mesh = sharding.make_mesh(data=2, model=4)
model, params, _ = infodec.load(folder, mesh=mesh)
_, single, _ = infodec.load(folder)
intended = sharding.param_shardings(model, params, mesh)
report = {"on_intended": True, "split": 0, "full_copies": 0}
for leaf, target in zip(jax.tree.leaves(params), jax.tree.leaves(intended)):
    report["on_intended"] &= leaf.sharding.is_equivalent_to(target, leaf.ndim)
    split = any(axis is not None for axis in target.spec)
    report["split"] += split
    report["full_copies"] += sum(split and s.data.shape == leaf.shape for s in leaf.addressable_shards)
tokens = np.arange(3, 12, dtype=np.int32)[None]
positions = np.arange(9)[None]
mesh_logits = np.asarray(jax.jit(model.apply)(params, tokens, positions)[0])
one_logits = np.asarray(jax.jit(model.apply)(single, tokens, positions)[0])
report["max_diff"] = float(np.abs(mesh_logits - one_logits).max())
print(json.dumps(report))
"""


@pytest.mark.subprocess
def test_loading_onto_a_mesh_reads_each_devices_slice(tmp_path):
    """On 8 forced CPU devices (data 2 x model 4): every parameter on its ``infodec.sharding`` sharding,
    no device holding a whole copy of a split tensor, and the logits of one device."""
    save_tiny_llama(tmp_path, hidden_size=64, num_attention_heads=8, num_key_value_heads=4, vocab_size=96)
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", MESH_CHILD, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["on_intended"] and report["split"] >= 10 and report["full_copies"] == 0
    assert report["max_diff"] < 1e-5


@pytest.mark.download
def test_gguf_is_cached_in_the_target_dtype(smollm2_gguf, tmp_path, monkeypatch):
    """A GGUF file converts once per dtype, straight into that dtype: no float32 copy on disk for bf16."""
    from infodec import cache

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    copy = tmp_path / "smollm2.gguf"
    copy.write_bytes(smollm2_gguf.read_bytes())
    model, params, _ = infodec.load(copy, dtype=jnp.bfloat16)
    (converted,) = (tmp_path / "converted").glob("smollm2-*-bfloat16")
    stored = {ref.dtype for ref in tensors.read_directory(converted).values()}
    assert (
        stored == {np.dtype(jnp.bfloat16)}
        and json.loads((converted / "config.json").read_text())["torch_dtype"] == "bfloat16"
    )
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
