"""Offline data sets fetched from package registries into infodec's cache (see ``docs/guides/data.md``)."""

from infodec.data.aclsum import AclsumExample, load_aclsum
from infodec.data.corpora import Document, Window, load_documents, load_windows, split_documents, windows
from infodec.data.wiki_leads import UNCATEGORIZED, WikiLead, load_wiki_leads, sample_leads, split, split_of, topics

__all__ = [
    "WikiLead",
    "load_wiki_leads",
    "split",
    "split_of",
    "topics",
    "sample_leads",
    "UNCATEGORIZED",
    "Document",
    "Window",
    "load_documents",
    "load_windows",
    "split_documents",
    "windows",
    "AclsumExample",
    "load_aclsum",
]
