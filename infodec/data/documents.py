"""The records infodec's human-text corpora are made of, and their JSON-lines cache files."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from infodec.cache import atomic_file


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


def write_jsonl(documents: Iterable[Document], path: Path) -> None:
    """Writes documents as JSON lines, atomically (a temporary file renamed into place)."""
    with atomic_file(path) as out:
        for doc in documents:
            out.write(json.dumps(dataclasses.asdict(doc), ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[Document]:
    with open(path, encoding="utf-8") as lines:
        return [Document(**json.loads(line)) for line in lines if line.strip()]


def check_unique(documents: Sequence[Document]) -> None:
    """Raises ValueError naming the first id that occurs twice."""
    seen = set()
    for doc in documents:
        if doc.id in seen:
            raise ValueError(f"duplicate document id {doc.id!r}")
        seen.add(doc.id)
