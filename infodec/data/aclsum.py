"""ACLSum: 250 ACL papers, each with a one-sentence human summary of three aspects (challenge,
approach, outcome) and sentence-level support labels — the summarisation task of [P2] (``docs/guides/data.md``).

Source: the PyPI wheel ``aclsum`` 0.1.2, fetched once into infodec's cache with ``pip download
--no-deps`` (``infodec.cache.download_wheel``) and read as a zip (the package, which needs ``sienna``, is
never installed). Members ``aclsum/dataset/{train,val,test}.jsonl`` (100 / 50 / 100 papers), one paper
per line::

    {"id": "P06-1112", "title": "...",
     "summary": {"challenge": "...", "approach": "...", "outcome": "..."},      # natural text
     "sentences": {"abstract": [...], "introduction": [...], "conclusion": [...]},   # PTB-tokenised
     "highlights": {aspect: {section: [0/1 per sentence]}},                      # human support labels
     "heuristic_highlights": {...}}

Sentences are detokenised here (``corpora.detokenize``; a closing bracket glued to the next
punctuation mark, ``( TPGN ):``, is split first), so no `` n't`` / `` ,`` artefacts reach a model.

    examples = load_aclsum("test")            # 100 papers x 3 aspects = 300 AclsumExample
    ex.evidence()                             # the abstract (sections=... for more)
    ex.query                                  # "Summarise the approach of this paper in one sentence."
    ex.summary                                # the human one-sentence summary
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

from infodec.cache import download_wheel
from infodec.data.parsers import detokenize

PACKAGE = "aclsum"
VERSION = "0.1.2"
SPLITS = ("train", "val", "test")
ASPECTS = ("challenge", "approach", "outcome")
SECTIONS = ("abstract", "introduction", "conclusion")
QUERY = "Summarise the {aspect} of this paper in one sentence."

_GLUED = re.compile(r"^([)\]])([:;,.!?]+)$")  # "):" as one token in the source


@dataclasses.dataclass(frozen=True)
class AclsumExample:
    """One (paper, aspect) pair.

    Attributes:
      paper_id: the ACL Anthology id (``P06-1112``).
      title: the paper's title.
      aspect: "challenge", "approach" or "outcome".
      summary: the human one-sentence summary of that aspect.
      sentences: section name -> detokenised sentences (abstract, introduction, conclusion).
      highlights: section name -> 0/1 per sentence: the annotators' support for this aspect's summary.
    """

    paper_id: str
    title: str
    aspect: str
    summary: str
    sentences: dict[str, tuple[str, ...]]
    highlights: dict[str, tuple[int, ...]]

    @property
    def query(self) -> str:
        """The instruction: ``"Summarise the {aspect} of this paper in one sentence."``."""
        return QUERY.format(aspect=self.aspect)

    def evidence(self, sections: Sequence[str] = ("abstract",)) -> str:
        """The text of ``sections`` (in the given order), sentences joined by spaces, sections by
        blank lines."""
        unknown = [s for s in sections if s not in SECTIONS]
        if unknown or not sections:
            raise ValueError(f"sections must be a non-empty subset of {SECTIONS}, got {list(sections)}")
        return "\n\n".join(" ".join(self.sentences[s]) for s in sections if self.sentences[s])

    def highlighted(self, sections: Sequence[str] = SECTIONS) -> list[str]:
        """The sentences the annotators marked as support for this aspect's summary."""
        return [sent for s in sections for sent, flag in zip(self.sentences[s], self.highlights[s]) if flag]


def load_aclsum(split: str = "test", wheel: str | Path | None = None) -> list[AclsumExample]:
    """The examples of ``split`` ("train", "val" or "test"): every paper × the three aspects, in file
    order (paper by paper, aspects in :data:`ASPECTS` order). Fetches the wheel on first use
    (``wheel``: a local wheel path instead); parsed once per path and split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if wheel is None:
        wheel = download_wheel(PACKAGE, VERSION)
    return list(_load(str(Path(wheel).resolve()), split))


@functools.lru_cache(maxsize=8)
def _load(path: str, split: str) -> tuple[AclsumExample, ...]:
    member = f"aclsum/dataset/{split}.jsonl"
    with zipfile.ZipFile(path) as archive:
        if member not in archive.namelist():
            raise ValueError(f"{path}: no member {member!r}; is this the {PACKAGE} {VERSION} wheel?")
        lines = archive.read(member).decode("utf-8").splitlines()
    return tuple(example for line in lines if line.strip() for example in parse_paper(json.loads(line)))


def detokenize_sentence(sentence: str) -> str:
    """A PTB-tokenised sentence as natural text (``corpora.detokenize`` after splitting ``"):"``)."""
    words = []
    for word in sentence.split():
        glued = _GLUED.match(word)
        words.extend(glued.groups() if glued else (word,))
    return detokenize(words)


def parse_paper(record: dict) -> list[AclsumExample]:
    """The three :class:`AclsumExample` of one JSONL record (see the module docstring)."""
    missing = [k for k in ("id", "title", "summary", "sentences", "highlights") if k not in record]
    if missing:
        raise ValueError(f"aclsum record {record.get('id', '?')!r} lacks fields {missing}")
    sentences = {s: tuple(detokenize_sentence(x) for x in record["sentences"].get(s, ())) for s in SECTIONS}
    examples = []
    for aspect in ASPECTS:
        flags = {s: tuple(int(v) for v in record["highlights"][aspect].get(s, ())) for s in SECTIONS}
        for s in SECTIONS:
            if len(flags[s]) != len(sentences[s]):
                raise ValueError(
                    f"aclsum {record['id']}: {len(flags[s])} {aspect} labels for {len(sentences[s])} {s} sentences"
                )
        examples.append(
            AclsumExample(
                record["id"], record["title"].strip(), aspect, record["summary"][aspect].strip(), sentences, flags
            )
        )
    return examples


__all__ = [
    "AclsumExample",
    "load_aclsum",
    "parse_paper",
    "detokenize_sentence",
    "ASPECTS",
    "SECTIONS",
    "SPLITS",
    "QUERY",
]
